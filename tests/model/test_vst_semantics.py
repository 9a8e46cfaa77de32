"""The engine against an independent Video-XL written here from DESIGN.md section 1, in float64, the way
the released code computes it: full re-rotation of pre-RoPE kept keys at every call, explicit masks."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import small_config, write_checkpoint
from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams


def rope(x, pos, theta):                                    # x (heads, n, hd), pos (n,)
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    return x * cos + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin


class Reference:
    """Processes one sequence step by step; kept[layer] = (pre-RoPE K, V) of every kept entry."""

    def __init__(self, model, cfg):
        self.p = {k: v.double() for k, v in model.state_dict().items()}
        self.cfg = cfg
        self.kept = [(torch.zeros(cfg.num_key_value_heads, 0, cfg.head_dim, dtype=torch.float64),) * 2
                     for _ in range(cfg.num_hidden_layers)]

    def norm(self, x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)

    def step(self, x, is_vst, keep):
        """x (n, H) embeddings of the step; keep (n,) bool rows whose K/V are kept afterwards."""
        cfg, p = self.cfg, self.p
        m, n, hd = self.kept[0][0].shape[1], x.shape[0], cfg.head_dim
        pos = torch.arange(m, m + n)
        for i in range(cfg.num_hidden_layers):
            a = f"model.layers.{i}."
            h = self.norm(x, p[a + "input_layernorm.weight"])
            proj = {}
            for name in "qkv":
                ordinary = h @ p[a + f"self_attn.{name}_proj.weight"].T + p[a + f"self_attn.{name}_proj.bias"]
                beacon = h @ p[a + f"self_attn.beacon_{name}_proj.weight"].T + p[a + f"self_attn.beacon_{name}_proj.bias"]
                proj[name] = torch.where(is_vst[:, None], beacon, ordinary)
            q = proj["q"].view(n, -1, hd).transpose(0, 1)
            k = proj["k"].view(n, -1, hd).transpose(0, 1)
            v = proj["v"].view(n, -1, hd).transpose(0, 1)
            k_all = torch.cat([self.kept[i][0], k], 1)          # pre-RoPE, re-rotated every call
            v_all = torch.cat([self.kept[i][1], v], 1)
            q = rope(q, pos, cfg.rope_theta)
            k_all = rope(k_all, torch.arange(m + n), cfg.rope_theta)
            group = cfg.num_attention_heads // cfg.num_key_value_heads
            k_all, v_all_r = k_all.repeat_interleave(group, 0), v_all.repeat_interleave(group, 0)
            mask = torch.ones(n, m + n, dtype=torch.bool)
            mask[:, m:] = torch.ones(n, n, dtype=torch.bool).tril()
            s = (q @ k_all.transpose(1, 2)) / math.sqrt(hd)
            attn = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v_all_r
            attn = attn.transpose(0, 1).reshape(n, -1)
            out = attn @ p[a + "self_attn.o_proj.weight"].T
            if "o" in cfg.beacon_param:                          # VST rows through beacon_o_proj
                out = torch.where(is_vst[:, None], attn @ p[a + "self_attn.beacon_o_proj.weight"].T, out)
            x = x + out
            h = self.norm(x, p[a + "post_attention_layernorm.weight"])
            gate = h @ p[a + "mlp.gate_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * (h @ p[a + "mlp.up_proj.weight"].T)) @ p[a + "mlp.down_proj.weight"].T
            self.kept[i] = (torch.cat([self.kept[i][0], k[:, keep]], 1), torch.cat([self.kept[i][1], v[:, keep]], 1))
        return self.norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T

    def text(self, ids):
        x = self.p["model.embed_tokens.weight"][torch.tensor(ids)]
        return self.step(x, torch.zeros(len(ids), dtype=torch.bool), torch.ones(len(ids), dtype=torch.bool))

    def video(self, embeds, ratio):
        rem, w = 0, self.cfg.beacon_window
        for start in range(0, embeds.shape[0], w):
            raw = embeds[start:start + w].double()
            nb = (raw.shape[0] + rem) // ratio
            slots = torch.arange(raw.shape[0] + nb)
            is_vst = slots % (ratio + 1) == ratio - rem
            x = torch.empty(len(slots), raw.shape[1], dtype=torch.float64)
            x[~is_vst] = raw
            x[is_vst] = self.p["model.beacon_embed_tokens.weight"][0]
            self.step(x, is_vst, is_vst)
            rem = (raw.shape[0] + rem) % ratio

    def generate(self, ids, embeds, ratio, steps):
        ph = ids.index(IMAGE_TOKEN_INDEX)
        self.text(ids[:ph])
        self.video(embeds, ratio)
        logits = self.text(ids[ph + 1:])[-1]
        out, all_logits = [], []
        for _ in range(steps):
            all_logits.append(logits)
            out.append(int(logits.argmax()))
            logits = self.text([out[-1]])[-1]
        return out, torch.stack(all_logits)


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
    llm = LLM(str(path), device="cpu", dtype="float32", attention_backend="torch", page_size=page_size)
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
