"""vxl against the released Video-XL code's own outputs on a small random checkpoint
(../shared/data/videoxl_official_small): greedy tokens, logits, kept counts and kept K/V."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from vxl import LLM, SamplingParams
from vxl.kernels.reference import apply_rope

# a copy of ../shared/data/videoxl_official_small (1.9 MB), so every clone and CI run checks it
DATA = os.path.join(os.path.dirname(__file__), "..", "data", "videoxl_official_small")
CASES = ["p_r2", "p_r8", "p_r16", "p_r16_b"]


def gather_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
              length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `length` kept entries of one sequence: k, v [length, nkv, hd]."""
    page_size = k_cache.shape[1]
    idx = torch.arange(length, device=k_cache.device)
    pages = block_table[idx // page_size].long()
    return k_cache[pages, idx % page_size], v_cache[pages, idx % page_size]


@pytest.fixture(scope="module")
def official():
    with open(os.path.join(DATA, "cases.json")) as f:
        meta = json.load(f)["cases"]
    return meta, load_file(os.path.join(DATA, "cases.safetensors"))


@pytest.fixture(scope="module")
def engines():
    return {backend: LLM(os.path.join(DATA, "tiny_official"), device="cpu", dtype="float32", max_logprobs=None,
                         attention_backend=backend, page_size=16) for backend in ("torch", "triton")}


def request_of(tensors, case):
    return {"prompt_token_ids": tensors[f"{case}/input_ids"][0].tolist(),
            "visual_embeds": tensors[f"{case}/visual_embeds"],
            "compression_ratio": None}


# the Triton kernels run through the (slow) interpreter on CPU: two cases cover ratios 8 and 16 with
# partial windows and a remainder; the torch backend runs all four
@pytest.mark.parametrize("backend,case", [("torch", c) for c in CASES] + [("triton", "p_r8"), ("triton", "p_r16_b")])
def test_greedy_tokens_and_logits(engines, official, backend, case):
    llm = engines[backend]
    meta, tensors = official
    req = request_of(tensors, case)
    req["compression_ratio"] = meta[case]["beacon_ratio"]
    out = llm.generate([req], SamplingParams(max_tokens=10, ignore_eos=True, logprobs=384), use_tqdm=False)[0]
    assert out.error is None and out.finish_reason == "length"
    assert out.token_ids == tensors[f"{case}/greedy_tokens"].tolist()
    expected = torch.log_softmax(tensors[f"{case}/greedy_step_logits"].double(), -1)
    for step, lp in enumerate(out.logprobs):
        got = torch.tensor([lp[i] for i in range(384)], dtype=torch.float64)
        assert torch.allclose(got, expected[step], atol=1e-4, rtol=0), (case, step)
    mem = meta[case]["memory_after_prefill"]
    assert out.metrics["num_vst_tokens"] == mem["beacon"]
    assert out.metrics["num_kept_tokens"] == mem["sink"] + mem["beacon"] + mem["raw"]
    assert out.metrics["num_visual_tokens"] == meta[case]["n_visual"]
    assert llm.kv_cache_usage()["num_free_pages"] == llm.kv_cache_usage()["num_pages"]


@pytest.mark.parametrize("case", CASES)
def test_prefill_logits_and_kept_kv(official, case):
    """Run prefill through the engine's pieces and compare the last chunk's logits and every kept K/V
    (the official cache holds K before RoPE; rotate it to the kept positions before comparing)."""
    meta, tensors = official
    llm = LLM(os.path.join(DATA, "tiny_official"), device="cpu", dtype="float32", attention_backend="torch",
              page_size=16)
    req = request_of(tensors, case)
    req["compression_ratio"] = meta[case]["beacon_ratio"]
    seq, _ = llm.core.admission.request(0, __import__("vxl").Request(**req), SamplingParams(max_tokens=1), "0")
    expected_logits = tensors[f"{case}/prefill_logits"]
    with torch.inference_mode():
        while True:
            chunk = seq.next_chunk(max_rows=10**9)
            assert not llm.core.vision.encode([chunk])  # a window's embeddings, from the vision stage
            hidden, _, _ = llm.runner.forward([chunk])   # appends the kept K/V, advances the kept length
            if chunk.sample:      # the last text chunk (chunks of beacon_window rows, as the original)
                got = llm.model.compute_logits(hidden)
                break
    assert got.shape == expected_logits.shape
    assert torch.allclose(got, expected_logits, atol=1e-4, rtol=0)
    mem = meta[case]["memory_after_prefill"]
    sink, beacon, raw = mem["sink"], mem["beacon"], mem["raw"]
    for layer, (k_cache, v_cache) in enumerate(llm.kv_cache.layers):
        k, v = gather_kv(k_cache, v_cache, torch.tensor(seq.table.pages), sink + beacon + raw)
        ref_k = torch.cat([tensors[f"{case}/prefill_mem/{part}_key_L{layer}"] for part in ("sink", "beacon", "raw")], 1)
        ref_v = torch.cat([tensors[f"{case}/prefill_mem/{part}_value_L{layer}"] for part in ("sink", "beacon", "raw")], 1)
        ref_k = apply_rope(ref_k.transpose(0, 1), torch.arange(ref_k.shape[1]), llm.config.rope_theta)
        assert torch.allclose(k, ref_k, atol=1e-4), (case, layer)
        assert torch.allclose(v, ref_v.transpose(0, 1), atol=1e-4), (case, layer)
    seq.release()
    assert llm.kv_cache_usage()["num_free_pages"] == llm.kv_cache_usage()["num_pages"]

