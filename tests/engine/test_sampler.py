"""Sampling: greedy, temperature, top-k, top-p, seeds and logprobs against direct computations."""
from __future__ import annotations

import pytest
import torch

from vxl.engine.sampler import SamplingParams, filter_logits, sample_token


def test_greedy_is_argmax_and_logprobs_are_log_softmax():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    token, lp = sample_token(logits, SamplingParams(logprobs=3), None)
    assert token == int(logits.argmax())
    ref = torch.log_softmax(logits.double(), -1)
    top3 = torch.topk(ref, 3).indices.tolist()
    assert set(lp) == set(top3) | {token}
    for t, v in lp.items():
        assert abs(v - float(ref[t])) < 1e-6


def test_top_k_and_top_p_filters():
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0, -1.0])
    kept = filter_logits(logits, 2, 1.0)
    assert torch.isfinite(kept).tolist() == [True, False, True, False, False]
    probs = torch.softmax(logits, -1)                  # sorted: 0.64, 0.24, 0.09, ...
    kept = filter_logits(logits, 0, float(probs[0]) + 0.01)
    assert torch.isfinite(kept).tolist() == [True, False, True, False, False]
    kept = filter_logits(logits, 0, float(probs[0]) - 0.01)
    assert torch.isfinite(kept).tolist() == [True, False, False, False, False]
    for tiny in (5e-324, 1e-45, 1e-30):              # below float32's range or near its smallest normal
        assert torch.isfinite(filter_logits(logits, 0, tiny)).tolist() == [True, False, False, False, False]
        assert sample_token(logits, SamplingParams(temperature=1.0, top_p=tiny), torch.Generator())[0] == 0


def test_temperature_sampling_follows_the_distribution_and_the_seed():
    logits = torch.tensor([1.0, 0.0, 2.0, -1.0])
    params = SamplingParams(temperature=0.7, top_k=3)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 4000
    for _ in range(n):
        counts[sample_token(logits, params, gen)[0]] += 1
    expected = torch.softmax(filter_logits(logits / 0.7, 3, 1.0), -1)
    assert counts[3] == 0
    assert torch.allclose(counts / n, expected, atol=0.03)
    a = [sample_token(logits, params, torch.Generator().manual_seed(5))[0] for _ in range(5)]
    b = [sample_token(logits, params, torch.Generator().manual_seed(5))[0] for _ in range(5)]
    assert a == b


@pytest.mark.parametrize("kwargs", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0.0), dict(top_k=-2),
                                    dict(logprobs=-1)])
def test_bad_params_raise(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
