"""CUDA graphs of decode steps (`vxl.engine.cuda_graphs`).

Everywhere: the graph path with `eager_capture` (replay = the captured forward run again over the graph's
own input buffer) gives the same tokens and logprobs as the eager engine over many batch sizes and
block-table widths: padding rows, the bucketed shapes and the fixed input buffer are what is tested.
With CUDA: real graphs (`cuda_capture`, triton backend): in float32 the same tokens and logprobs; in bf16,
where padding a batch to its bucket may change cuBLAS's rounding, the same token wherever the eager run's
top token leads the second by a clear margin (compared up to each answer's first divergence)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vxl import LLM, SamplingParams
from vxl.config import EngineConfig
from vxl.engine.cuda_graphs import MIN_WIDTH, DecodeGraphs, eager_capture
from vxl.engine.runner import HostStep


def requests(num: int, seed: int) -> list[dict]:
    """Videos and text prompts of different lengths; different max_tokens (`params`) make the decode batch
    shrink step by step (every bucket size is visited) and the tables grow past a width bucket."""
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(num):
        if i % 3 == 0:
            frames = int(rng.integers(3, 17))
            reqs.append({"prompt": f"Question {i}: what happens?", "num_frames": frames, "compression_ratio": 1 + i % 4,
                         "video": rng.integers(0, 256, (frames, 36, 44, 3), dtype=np.uint8)})
        else:
            reqs.append({"prompt": "word " * int(rng.integers(1, 30)) + f"number {i}"})
    return reqs


def params(num: int) -> list[SamplingParams]:
    """Videos answer in 3 tokens; then the text requests' tables alone set the width, and grow past a bucket."""
    return [SamplingParams(max_tokens=3 if i % 3 == 0 else 3 + 7 * i, ignore_eos=True, logprobs=2) for i in range(num)]


def assert_same(got, want):
    for g, w in zip(got, want):
        assert g.error is None and w.error is None, (g.error, w.error)
        assert g.token_ids == w.token_ids, g.request_id
        for lg, lw in zip(g.logprobs, w.logprobs):
            assert lg.keys() == lw.keys()
            np.testing.assert_allclose(list(lg.values()), list(lw.values()), rtol=1e-4, atol=1e-4)


def assert_same_where_clear(got, want, margin: float):
    compared = 0
    for g, w in zip(got, want):
        assert g.error is None and w.error is None, (g.error, w.error)
        for tok_g, tok_w, lp in zip(g.token_ids, w.token_ids, w.logprobs):
            top = sorted(lp.values(), reverse=True)
            if len(top) > 1 and top[0] - top[1] < margin:
                break                       # a near tie: the rest of the answer may differ
            assert tok_g == tok_w, (g.request_id, g.token_ids, w.token_ids)
            compared += 1
    assert compared >= len(want), compared


@pytest.fixture(scope="module")
def cpu_llm():
    return LLM("tiny", device="cpu", dtype="float32", page_size=8, num_pages=512)


@pytest.mark.parametrize("max_graphs", [64, 2])
def test_decode_graphs_give_the_eager_answers(cpu_llm, max_graphs):
    reqs, sp = requests(11, seed=max_graphs), params(11)
    want = cpu_llm.generate(reqs, sp, use_tqdm=False)
    graphs = DecodeGraphs(cpu_llm.runner, batch_buckets=(1, 2, 4, 16), max_graphs=max_graphs, capture=eager_capture)
    cpu_llm.runner.graphs = graphs
    try:
        got = cpu_llm.generate(reqs, sp, use_tqdm=False)
    finally:
        cpu_llm.runner.graphs = None
    assert_same(got, want)
    assert_same_where_clear(got, want, margin=0.1)      # (the GPU bf16 test's comparison, exercised here)
    assert graphs.stats["replays"] > 0 and graphs.stats["eager"] > 0    # prefill and window steps
    assert len(graphs.graphs) == graphs.stats["captures"] <= max_graphs
    if max_graphs == 2:     # more shapes occur than the cap allows: the rest of the decode steps ran eagerly
        assert len(graphs.graphs) == 2
    rows = {r for r, _ in graphs.graphs}
    widths = {w for _, w in graphs.graphs}
    if max_graphs > 2:      # several batch buckets and two table widths (the longest tables pass 256 entries: 32 pages of 8)
        assert len(rows) >= 3 and len(widths) >= 2, graphs.graphs.keys()
    assert cpu_llm.block_manager.num_free_pages == cpu_llm.block_manager.num_pages


def test_a_padded_step_keeps_the_real_rows_and_pads_harmlessly():
    rng = np.random.default_rng(5)
    num, width = 3, 5
    tables = rng.integers(0, 50, (num, width))
    tables[1, 3:] = -1
    kept = np.array([17, 9, 19])
    host = HostStep(positions=kept.copy(), kept_positions=kept.copy(), slots=tables[np.arange(num), kept // 4] * 4 + kept % 4,
                    token_ids=rng.integers(0, 90, num), logit_rows=np.arange(num), cu=np.arange(num + 1),
                    cu_src=np.arange(num + 1), ratios=np.zeros(num, dtype=np.int64), rems=np.zeros(num, dtype=np.int64),
                    kept=kept, block_tables=tables, is_vst=np.zeros(num, dtype=bool), is_decode=True)
    pad = host.padded(8, 16)
    assert pad.block_tables.shape == (8, 16) and (pad.block_tables[:num, :width] == tables).all()
    assert (pad.block_tables[:num, width:] == -1).all() and (pad.block_tables[num:, 0] == 0).all()
    assert (pad.slots[num:] == -1).all() and (pad.kept[num:] == 0).all() and not pad.is_vst.any()
    for name in ("positions", "kept_positions", "slots", "token_ids", "kept"):
        assert (getattr(pad, name)[:num] == getattr(host, name)).all(), name
    assert (pad.cu == np.arange(9)).all() and (pad.logit_rows == np.arange(8)).all()


def test_shape_buckets():
    class Runner:
        device = torch.device("cpu")
    graphs = DecodeGraphs(Runner(), batch_buckets=(1, 4, 16), capture=eager_capture)
    assert graphs.shape_for(1, 1) == (1, MIN_WIDTH)
    assert graphs.shape_for(2, MIN_WIDTH) == (4, MIN_WIDTH)
    assert graphs.shape_for(5, MIN_WIDTH + 1) == (16, 2 * MIN_WIDTH)
    assert graphs.shape_for(16, 100) == (16, 128)
    assert graphs.shape_for(17, 1) is None


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        LLM("tiny", device="cpu", cuda_graphs=True)


def test_cuda_graphs_need_the_triton_backend():
    with pytest.raises(ValueError, match="needs attention_backend='triton'"):
        EngineConfig("cuda", "bfloat16", "torch", cuda_graphs=True).validate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_graph_decode_gives_the_eager_answers(dtype):
    reqs, sp = requests(11, seed=1), params(11)
    kwargs = dict(device="cuda", dtype=dtype, attention_backend="triton", page_size=8, num_pages=512)
    want = LLM("tiny", **kwargs).generate(reqs, sp, use_tqdm=False)
    llm = LLM("tiny", **kwargs, cuda_graphs=True)
    check = assert_same if dtype == "float32" else lambda g, w: assert_same_where_clear(g, w, margin=0.1)
    got = llm.generate(reqs, sp, use_tqdm=False)
    check(got, want)
    again = llm.generate(reqs, sp, use_tqdm=False)           # graphs captured by the first call replay now
    check(again, want)
    stats = llm.runner.graphs.stats
    assert stats["captures"] >= 3 and stats["replays"] > stats["captures"], stats
    assert llm.block_manager.num_free_pages == llm.block_manager.num_pages
