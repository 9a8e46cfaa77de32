"""The whole model on the `triton` backend equals the `torch` backend (greedy tokens, logprobs within
1e-4 in fp32) on the built-in tiny model, for several ratios, batched requests and decode steps."""
from __future__ import annotations

import pytest
import torch

from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams


@pytest.fixture(scope="module")
def engines():
    return {b: LLM("tiny", device="cpu", dtype="float32", attention_backend=b, page_size=7, max_logprobs=None) for b in ("torch", "triton")}


def test_triton_backend_matches_torch_backend(engines):
    vocab = engines["torch"].config.vocab_size
    gen = torch.Generator().manual_seed(0)
    reqs = []
    for ratio, num_visual in [(2, 37), (4, 170), (8, 90), (16, 200), (12, 161)]:
        ids = torch.randint(0, 256, (7,), generator=gen).tolist()
        reqs.append({"prompt_token_ids": ids[:3] + [IMAGE_TOKEN_INDEX] + ids[3:],
                     "visual_embeds": torch.randn(num_visual, 128, generator=gen), "compression_ratio": ratio})
    reqs.append({"prompt_token_ids": torch.randint(0, 256, (9,), generator=gen).tolist()})
    params = SamplingParams(max_tokens=4, ignore_eos=True, logprobs=vocab)
    outs = {b: e.generate(reqs, params, use_tqdm=False) for b, e in engines.items()}
    for a, b in zip(outs["torch"], outs["triton"]):
        assert a.error is None and b.error is None
        assert a.token_ids == b.token_ids
        for lp_a, lp_b in zip(a.logprobs, b.logprobs):
            diff = max(abs(lp_a[t] - lp_b[t]) for t in range(vocab))
            assert diff < 1e-4
    for e in engines.values():
        usage = e.kv_cache_usage()
        assert usage["num_free_pages"] == usage["num_pages"]
