"""Shared by the fuzz suites: the hypothesis profile in use, the expectations of fuzzed requests, and
`run_batch`, which checks the properties of one `LLM.generate` call mixing fuzzed and good requests."""
from __future__ import annotations

import os

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from vxl import IMAGE_TOKEN_INDEX, SamplingParams

PH = IMAGE_TOKEN_INDEX
GREEDY = SamplingParams(max_tokens=3, ignore_eos=True)
OK = None           # expectation of a request that must succeed
ANY = ()            # a request that may succeed or fail (its outcome is not the property)


def fuzz_settings(fraction: float = 1.0) -> settings:
    """The profile of tests/fuzz/conftest.py: bounded, or VXL_FUZZ_EXAMPLES examples per property."""
    base = settings.get_profile("vxl-fuzz-long" if os.environ.get("VXL_FUZZ_EXAMPLES") else "vxl-fuzz")
    return settings(base, max_examples=max(1, int(base.max_examples * fraction)))


def with_solos(llm, goods: list[dict]) -> tuple[list[dict], list[list[int]]]:
    """The good requests and their answers alone (greedy)."""
    return goods, [llm.generate([g], GREEDY, use_tqdm=False)[0].token_ids for g in goods]


def assert_pool_free(llm) -> None:
    llm.block_manager.check()
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"], usage


def check_output(req, out, expect) -> None:
    """A fuzzed request's output against its expectation (OK, ANY, or words one of which its error holds)."""
    if expect is OK:
        assert out.error is None and out.finish_reason in ("stop", "length"), (req, out.error)
    elif expect:
        assert out.finish_reason == "error" and out.error_type in ("bad_request", "too_large"), (req, out)
        assert any(w.lower() in out.error.lower() for w in expect), (expect, out.error)
    else:
        assert out.finish_reason in ("stop", "length", "error") and (out.finish_reason == "error") == bool(out.error)


def run_batch(llm, good_solos, fuzzed: list[tuple], positions: list[int], free_after: bool = True) -> list:
    """Generate the good requests with the fuzzed (request, params, expectation) interleaved at `positions`;
    check every property; returns (request, output) of each fuzzed request, in batch order."""
    goods, solos = good_solos
    entries = [(g, GREEDY, ("good", i)) for i, g in enumerate(goods)]
    for entry, pos in zip(fuzzed, positions):
        entries.insert(pos % (len(entries) + 1), entry)
    outs = llm.generate([e[0] for e in entries], [e[1] for e in entries], use_tqdm=False)   # never raises
    assert len(outs) == len(entries)
    fuzzed_outs = []
    for (req, _, expect), out in zip(entries, outs):
        if isinstance(expect, tuple) and expect[:1] == ("good",):       # its solo answer
            assert out.error is None and out.token_ids == solos[expect[1]], out
        else:
            check_output(req, out, expect)
            fuzzed_outs.append((req, out))
    if free_after:
        assert_pool_free(llm)
    assert llm.generate([goods[0]], GREEDY, use_tqdm=False)[0].token_ids == solos[0]     # the next call
    return fuzzed_outs


RATIOS = st.one_of(st.sampled_from([1, 2, 4, 8]).map(lambda r: (r, OK)),
                   st.sampled_from([0, -1, -(2**70), 2.5, "4", True, float("nan"), float("inf"), np.int64(4), [4]]).map(
                       lambda r: (r, ("compression_ratio",))),
                   st.integers(10**4, 10**30).map(lambda r: (r, ("compression_ratio", "summary token"))))


def combine(req_expect, params_expect):
    if req_expect is OK:
        return params_expect
    if params_expect is OK or req_expect == ANY:
        return req_expect
    return ANY                      # both bad: which one is named first is the engine's choice
