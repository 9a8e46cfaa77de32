"""The cheap step path: the torch backend's batched decode / window attention against a one-sequence-at-a-
time statement written here, and `ModelRunner.host_step` + `upload` (host-built, one copy) against the
per-chunk construction."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import paged_cache
from vxl.vst import interleave
from vxl.kernels import reference


def kept_entries(cache, block_table, length: int) -> torch.Tensor:
    """The first `length` entries of one sequence's pages: [length, nkv, hd]."""
    idx = torch.arange(length)
    return cache[block_table[idx // cache.shape[1]].long(), idx % cache.shape[1]]


def attend(q, keys, values, visible) -> torch.Tensor:
    """Softmax attention, q [n, nh, hd] over keys/values [m, nkv, hd] (GQA), visible [n, m] -> [n, nh, hd]."""
    group = q.shape[1] // keys.shape[1]
    scores = torch.einsum("nhd,mhd->hnm", q, keys.repeat_interleave(group, 1)) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("hnm,mhd->nhd", probs, values.repeat_interleave(group, 1))


def decode_attention_per_seq(q, k_cache, v_cache, block_tables, seq_lens) -> torch.Tensor:
    """`decode_attention` one sequence at a time: q [B, nh, hd] over each sequence's seq_lens[b] entries."""
    out = torch.empty_like(q)
    for b, m in enumerate(seq_lens.tolist()):
        keys, values = kept_entries(k_cache, block_tables[b], m), kept_entries(v_cache, block_tables[b], m)
        out[b:b + 1] = attend(q[b:b + 1], keys, values, torch.ones(1, m, dtype=torch.bool))
    return out


def window_attention_per_seq(q, k, v, k_cache, v_cache, block_tables, kept_lens, cu_seqlens) -> torch.Tensor:
    """`window_attention` one chunk at a time: chunk b's rows over [its kept_lens[b] entries ; itself, causally]."""
    out = torch.empty_like(q)
    for b, m in enumerate(kept_lens.tolist()):
        s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        keys = torch.cat([kept_entries(k_cache, block_tables[b], m), k[s:e]])
        values = torch.cat([kept_entries(v_cache, block_tables[b], m), v[s:e]])
        visible = torch.ones(e - s, m + e - s, dtype=torch.bool)
        visible[:, m:] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
        out[s:e] = attend(q[s:e], keys, values, visible)
    return out


def random_kept(seq_lens, num_kv_heads, head_dim, gen):
    return ([torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in seq_lens],
            [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in seq_lens])


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 32), (6, 1, 24), (3, 3, 8)])
def test_batched_decode_attention_matches_per_sequence(page_size, permute, num_heads, num_kv_heads, head_dim):
    gen = torch.Generator().manual_seed(page_size * 7 + num_heads)
    seq_lens = [1, 19, 33, 101, 2]          # odd lengths, a partial page, very different lengths
    kept_k, kept_v = random_kept(seq_lens, num_kv_heads, head_dim, gen)
    k_cache, v_cache, tables = paged_cache(kept_k, kept_v, page_size, permute, spare_pages=2, seed=3)
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=gen)
    args = (q, k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32))
    out = reference.decode_attention(*args)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, decode_attention_per_seq(*args), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("chunk_lens,kept_lens", [
    ([1, 1, 1], [5, 0, 17]),                    # decode-like chunks in a prefill step
    ([7, 1, 13, 1, 3], [0, 9, 40, 1, 16]),      # windows mixed with single tokens, empty and partial pages
    ([37], [21]),
])
def test_batched_window_attention_matches_per_sequence(page_size, permute, chunk_lens, kept_lens):
    gen = torch.Generator().manual_seed(len(chunk_lens) + page_size)
    num_heads, num_kv_heads, head_dim = 6, 2, 16
    kept_k, kept_v = random_kept([max(m, 1) for m in kept_lens], num_kv_heads, head_dim, gen)
    k_cache, v_cache, tables = paged_cache(kept_k, kept_v, page_size, permute, spare_pages=1, seed=5)
    num_rows = sum(chunk_lens)
    q = torch.randn(num_rows, num_heads, head_dim, generator=gen)
    k = torch.randn(num_rows, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(num_rows, num_kv_heads, head_dim, generator=gen)
    cu = torch.tensor([0] + chunk_lens).cumsum(0).to(torch.int32)
    args = (q, k, v, k_cache, v_cache, tables, torch.tensor(kept_lens, dtype=torch.int32), cu)
    out = reference.window_attention(*args)
    assert out.shape == q.shape
    torch.testing.assert_close(out, window_attention_per_seq(*args), atol=1e-5, rtol=1e-5)


class _Seq:  # the runner only needs a block table and a kept length from a sequence
    def __init__(self, table):
        self.table = table

    @property
    def kept_len(self):
        return self.table.num_tokens


def per_chunk_rows(kv_cache, chunk):
    """(is_vst, kept_positions, slot_mapping) of one chunk, built with torch one chunk at a time (the
    construction host_step replaced)."""
    n, kept = chunk.num_slots, chunk.seq.kept_len
    if chunk.kind != "window":
        is_vst, kept_idx = torch.zeros(n, dtype=torch.bool), kept + torch.arange(n)
    else:
        is_vst, _ = interleave(chunk.num_raw, chunk.ratio, chunk.rem)
        kept_idx = torch.where(is_vst, kept + is_vst.long().cumsum(0) - 1, -1)
    pages, ps = torch.tensor(chunk.seq.table.pages), kv_cache.page_size
    safe = kept_idx.clamp(min=0)
    return is_vst, safe, torch.where(kept_idx >= 0, pages[safe // ps] * ps + safe % ps, -1)


@pytest.mark.parametrize("page_size", [1, 16])
def test_host_step_matches_per_chunk_construction(page_size):
    from vxl.engine.kv_cache import KVCache
    from vxl.engine.runner import ModelRunner
    from vxl.engine.sequence import Chunk
    kv_cache = KVCache(1, 400, page_size, 1, 4, torch.float32, torch.device("cpu"))
    kv_cache.pool.allocate(7)                           # the sequences' pages do not start at 0
    seqs = [_Seq(kv_cache.new_table()) for _ in range(5)]
    for seq, num_kept in zip(seqs, [0, 5, 17, 33, 1]):
        seq.table.reserve(num_kept)
        seq.table.num_tokens = num_kept
    kv_cache.pool.release(kv_cache.pool.allocate(3))    # freed pages are reused out of order
    chunks = [Chunk(seq=seqs[0], kind="text", num_kept=9, sample=False, token_ids=list(range(9))),
              Chunk(seq=seqs[1], kind="window", num_kept=(23 + 1) // 4, sample=False, num_raw=23,
                    embeds=torch.randn(23, 8), ratio=4, rem=1),
              Chunk(seq=seqs[2], kind="decode", num_kept=1, sample=True, token_ids=[3]),
              Chunk(seq=seqs[3], kind="window", num_kept=0, sample=False, num_raw=3, embeds=torch.randn(3, 8),
                    ratio=8),                           # a window with no VST
              Chunk(seq=seqs[4], kind="text", num_kept=4, sample=True, token_ids=[1, 2, 3, 4])]
    runner = ModelRunner(None, None, kv_cache)
    step, token_ids, sample_idx = runner.upload(runner.host_step(chunks))
    rows = [per_chunk_rows(kv_cache, c) for c in chunks]
    lens = [c.num_slots for c in chunks]
    assert torch.equal(step.is_vst, torch.cat([r[0] for r in rows])) and step.has_vst
    assert torch.equal(step.kept_positions, torch.cat([r[1] for r in rows]))
    assert torch.equal(step.slot_mapping, torch.cat([r[2] for r in rows]))
    assert torch.equal(step.positions, torch.cat([c.seq.kept_len + torch.arange(n) for c, n in zip(chunks, lens)]))
    assert step.positions.dtype == step.slot_mapping.dtype == step.kept_positions.dtype == torch.int64
    cu = torch.tensor([0] + lens).cumsum(0)
    assert step.cu_seqlens.dtype == torch.int32 and step.cu_seqlens.tolist() == cu.tolist()
    assert step.cu_src.tolist() == torch.tensor([0] + [c.num_inputs for c in chunks]).cumsum(0).tolist()
    assert step.kept_lens.tolist() == [c.seq.kept_len for c in chunks]
    assert step.ratios.tolist() == [0, 4, 0, 8, 0] and step.rems.tolist() == [0, 1, 0, 0, 0]
    max_pages = max(len(c.seq.table.pages) for c in chunks)
    assert step.block_tables.dtype == torch.int32 and step.block_tables.shape == (5, max_pages)
    for c, row in zip(chunks, step.block_tables.tolist()):
        assert row == c.seq.table.pages + [-1] * (max_pages - len(c.seq.table.pages))
    assert token_ids.tolist() == list(range(9)) + [3, 1, 2, 3, 4]
    assert sample_idx.tolist() == [int(cu[3]) - 1, int(cu[5]) - 1]
    assert not step.is_decode


def test_decode_step_is_flagged_and_has_no_vst():
    from vxl.engine.kv_cache import KVCache
    from vxl.engine.runner import ModelRunner
    from vxl.engine.sequence import Chunk
    kv_cache = KVCache(1, 50, 16, 1, 4, torch.float32, torch.device("cpu"))
    seqs = [_Seq(kv_cache.new_table()) for _ in range(3)]
    for seq, num_kept in zip(seqs, [16, 3, 40]):
        seq.table.reserve(num_kept)
        seq.table.num_tokens = num_kept
    chunks = [Chunk(seq=s, kind="decode", num_kept=1, sample=True, token_ids=[7]) for s in seqs]
    runner = ModelRunner(None, None, kv_cache)
    step, _, _ = runner.upload(runner.host_step(chunks))
    assert step.is_decode and not step.has_vst and not step.is_vst.any()
    assert step.positions.tolist() == [16, 3, 40]
    assert step.slot_mapping.tolist() == [seqs[0].table.pages[1] * 16, seqs[1].table.pages[0] * 16 + 3,
                                          seqs[2].table.pages[2] * 16 + 8]


def test_step_overhead_bench_runs(tmp_path):
    import json
    from bench.step_overhead import main
    out = tmp_path / "so.json"
    main(["--batch-sizes", "2", "--steps", "2", "--warmup", "1", "--window-seqs", "1", "--label", "t",
          "--out", str(out)])
    cases = json.loads(out.read_text())["runs"]["t"]["cases"]
    assert set(cases) == {"decode_2", "window_1"}
    assert all(c["host"]["ms_median"] > 0 and c["whole"]["ms_median"] > 0 for c in cases.values())
