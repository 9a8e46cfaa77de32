"""The engine against an independent Video-XL (tests/reference_model.py: written from DESIGN.md section 1, in
float64, the way the released code computes it: full re-rotation of pre-RoPE kept keys at every call,
explicit masks)."""
from __future__ import annotations

import pytest
import torch
from helpers import small_config, write_checkpoint
from reference_model import Reference

from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams


# (ratio, prefix, visual tokens, suffix): windows that divide and do not divide the span, a partial last
# window, remainders carried across windows, and text longer than a window (24)
SCENARIOS = [(2, 3, 48, 5), (4, 1, 61, 30), (8, 5, 53, 7), (12, 2, 100, 3), (16, 4, 75, 26), (3, 2, 23, 4)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = small_config()
    path = tmp_path_factory.mktemp("ckpt")
    model = write_checkpoint(path, cfg, seed=3)
    return path, model, cfg


def run_and_compare(path, model, cfg, scenarios, seed, page_size=5):
    """All scenarios in one generate call (batched), each against its own reference run."""
    requests, expected = [], []
    for ratio, prefix, num_visual, suffix in scenarios:
        gen = torch.Generator().manual_seed(seed * 7919 + ratio * 1000 + num_visual)
        ids = torch.randint(2, cfg.vocab_size, (prefix + suffix,), generator=gen).tolist()
        ids = ids[:prefix] + [IMAGE_TOKEN_INDEX] + ids[prefix:]
        embeds = torch.randn(num_visual, cfg.hidden_size, generator=gen)
        expected.append(Reference(model, cfg).generate(ids, embeds, ratio, steps=6))
        requests.append({"prompt_token_ids": ids, "visual_embeds": embeds, "compression_ratio": ratio})
    llm = LLM(str(path), device="cpu", dtype="float32", attention_backend="torch", page_size=page_size,
              max_logprobs=None)
    outs = llm.generate(requests, SamplingParams(max_tokens=6, ignore_eos=True, logprobs=cfg.vocab_size),
                        use_tqdm=False)
    for (ratio, prefix, num_visual, suffix), out, (ref_tokens, ref_logits) in zip(scenarios, outs, expected):
        case = f"r={ratio} prefix={prefix} visual={num_visual} suffix={suffix}"
        assert out.error is None, case
        assert out.token_ids == ref_tokens, case
        ref_lp = torch.log_softmax(ref_logits, -1)
        got_lp = torch.tensor([[lp[t] for t in range(cfg.vocab_size)] for lp in out.logprobs], dtype=torch.float64)
        assert (got_lp - ref_lp).abs().max() < 1e-4, case
        windows = [min(cfg.beacon_window, num_visual - s) for s in range(0, num_visual, cfg.beacon_window)]
        rem, num_vst = 0, 0
        for length in windows:
            num_vst, rem = num_vst + (length + rem) // ratio, (length + rem) % ratio
        assert out.metrics["num_vst_tokens"] == num_vst, case
        assert out.metrics["num_kept_tokens"] == prefix + num_vst + suffix, case
        assert out.metrics["kept_kv_bytes"] == out.metrics["num_kept_tokens"] * llm.kv_cache_usage()["bytes_per_token"]


@pytest.mark.parametrize("ratio,prefix,num_visual,suffix", SCENARIOS)
def test_engine_matches_independent_reference(checkpoint, ratio, prefix, num_visual, suffix):
    path, model, cfg = checkpoint
    run_and_compare(path, model, cfg, [(ratio, prefix, num_visual, suffix)], seed=0)


# fresh random configs: hidden sizes, head counts (MHA, MQA, GQA groups 2..4), odd head dims, windows
# (a window shorter than the ratio carries its whole remainder on), layers, rope bases, beacon "o"
CONFIGS = {
    "mha-w16": (11, dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, beacon_window=16,
                         beacon_stride=16, rope_theta=1e6)),
    "mqa-w20-3layers": (12, dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=1, beacon_window=20,
                                 beacon_stride=20, num_hidden_layers=3, intermediate_size=56)),
    "gqa4-w32": (13, dict(hidden_size=96, num_attention_heads=8, num_key_value_heads=2, beacon_window=32,
                          beacon_stride=32, intermediate_size=120, rope_theta=5e5)),
    "gqa2-hd12-w9-beacon-o": (14, dict(hidden_size=72, num_attention_heads=6, num_key_value_heads=3,
                                       beacon_window=9, beacon_stride=9, beacon_param=["q", "k", "v", "o"])),
}


def scenarios_for(window: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Ratios drawn per config; spans that divide into windows, end in a partial window, or fit in one;
    text after the span longer than a window. A span must keep at least one VST (a larger ratio is a
    request error), so the one-window span's ratio is at most its length."""
    rng = torch.Generator().manual_seed(seed)
    ratios = [[2, 4, 8, 12, 16][i] for i in torch.randperm(5, generator=rng)[:3].tolist()]
    return [(ratios[0], 2, 3 * window, window + 3),
            (ratios[1], 1, 2 * window + window // 2 + 1, 4),
            (min(ratios[2], window - 1), 3, window - 1, 2)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_matches_reference_on_random_configs(tmp_path, name):
    seed, overrides = CONFIGS[name]
    cfg = small_config(**overrides)
    model = write_checkpoint(tmp_path, cfg, seed=seed)
    if "o" in cfg.beacon_param:
        assert model.model.layers[0].self_attn.beacon_o_proj is not None
    run_and_compare(tmp_path, model, cfg, scenarios_for(cfg.beacon_window, seed), seed, page_size=1 + seed % 4)
