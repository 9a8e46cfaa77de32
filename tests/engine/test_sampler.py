"""Sampling: greedy, temperature, top-k, top-p, seeds and logprobs against direct computations."""
from __future__ import annotations

import pytest
import torch

from vxl.engine.sampler import LogitRow, SamplingParams, filter_logits, filter_logits_batch, sample_rows, sample_token


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


def reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """float64 top-k then top-p mask of one row, written directly from the definitions."""
    x = logits.double()
    if 0 < top_k < x.shape[0]:
        x = torch.where(x < torch.sort(x, descending=True).values[top_k - 1], float("-inf"), x)
    probs, order = torch.sort(torch.softmax(x, -1), descending=True)
    keep = torch.zeros_like(x, dtype=torch.bool)
    mass = 0.0
    for p, i in zip(probs.tolist(), order.tolist()):
        if mass >= top_p and keep.any():
            break
        keep[i], mass = True, mass + p
    return torch.where(keep, x, float("-inf"))


@pytest.mark.parametrize("vocab", [7, 131])
def test_batched_filters_equal_each_rows_reference(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(9, vocab, generator=gen) * 3
    top_k = torch.tensor([0, 1, 3, vocab, vocab + 5, 2, 0, 5, 0])
    top_p = torch.tensor([1.0, 1.0, 0.5, 0.9, 1.0, 0.3, 0.05, 0.999, 0.7])
    got = filter_logits_batch(logits, top_k, top_p)
    for row in range(9):
        ref = reference_filter(logits[row], int(top_k[row]), float(top_p[row]))
        assert torch.equal(torch.isfinite(got[row]), torch.isfinite(ref)), row
        assert torch.equal(got[row][torch.isfinite(got[row])], logits[row][torch.isfinite(ref)])


def test_one_pass_over_mixed_rows_equals_the_rows_alone():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 53, generator=gen)
    rows = [LogitRow(3, SamplingParams(logprobs=3)),
            LogitRow(None, SamplingParams(temperature=0.8, top_k=10, seed=4), torch.Generator().manual_seed(4)),
            LogitRow(2, target=17), LogitRow(None, target=5),
            LogitRow(0, SamplingParams(temperature=1.3, top_p=0.6, logprobs=0, seed=9), torch.Generator().manual_seed(9)),
            LogitRow(5, SamplingParams(logprobs=5))]
    tokens, logprobs = sample_rows(logits, rows)
    ref_lp = torch.log_softmax(logits.double(), -1)
    assert tokens[0] == int(logits[0].argmax()) and tokens[5] == int(logits[5].argmax())
    assert tokens[2] == 17 and tokens[3] == 5 and logprobs[1] is None and logprobs[3] is None
    for i, row in enumerate(rows):
        alone_tokens, alone_lp = sample_rows(logits[i:i + 1], [row if row.generator is None else
                                                               LogitRow(row.logprobs, row.params,
                                                                        torch.Generator().manual_seed(row.params.seed),
                                                                        row.target)])
        assert alone_tokens[0] == tokens[i] and alone_lp[0] == logprobs[i]
        if row.logprobs is not None:
            top = torch.topk(ref_lp[i], row.logprobs).indices.tolist()
            assert set(logprobs[i]) == set(top) | {tokens[i]}
            assert all(abs(v - float(ref_lp[i, t])) < 1e-6 for t, v in logprobs[i].items())


def test_the_exponential_race_draws_from_the_filtered_distribution():
    logits = torch.tensor([[1.0, 0.0, 2.0, -1.0, 0.5]]).repeat(4000, 1)
    params = SamplingParams(temperature=0.9, top_k=4, top_p=0.95)
    gen = torch.Generator().manual_seed(0)
    tokens, _ = sample_rows(logits, [LogitRow(None, params, gen)] * 4000)
    counts = torch.bincount(torch.tensor(tokens), minlength=5).double() / 4000
    expected = torch.softmax(reference_filter(logits[0] / 0.9, 4, 0.95), -1)
    assert counts[3] == 0 and torch.allclose(counts, expected, atol=0.03)
