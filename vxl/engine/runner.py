"""Model runner: embeds the chunks of one step and packs them into a single forward over the paged KV cache
(`vxl.engine.kv_cache.KVCache`, whose pages the model's layers read and append to).

A step's metadata (positions, slot mapping, block tables, boundaries) and its token ids are built on the
host from the chunks' Python lists with numpy and reach the device in one copy (`vxl.engine.staging`:
persistent pinned buffers on CUDA); nothing in the step path reads a device tensor back to the host.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch

from vxl.engine.kv_cache import KVCache
from vxl.engine.sequence import Chunk
from vxl.engine.staging import StepStaging
from vxl.model.qwen2 import StepInfo


@dataclass
class HostStep:
    """A step's metadata on the host (numpy), as `ModelRunner.upload` sends it: rows [T], chunks [B]."""
    positions: np.ndarray           # [T] int64
    kept_positions: np.ndarray      # [T] int64
    slots: np.ndarray               # [T] int64, -1: not kept
    token_ids: np.ndarray           # text/decode tokens, in chunk order
    logit_rows: np.ndarray          # rows whose logits are computed
    cu: np.ndarray                  # [B+1] chunk boundaries in rows
    cu_src: np.ndarray              # [B+1] chunk boundaries in source rows
    ratios: np.ndarray              # [B]
    rems: np.ndarray                # [B]
    kept: np.ndarray                # [B] kept entries before the step
    block_tables: np.ndarray        # [B, max_pages], -1 past a table's pages
    is_vst: np.ndarray              # [T] bool
    is_decode: bool

    def arrays(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """(int64 arrays, int32 arrays, bool flags) in the order `ModelRunner.upload` sends them."""
        return ([self.positions, self.kept_positions, self.slots, self.token_ids, self.logit_rows],
                [self.cu, self.cu_src, self.ratios, self.rems, self.kept, self.block_tables.ravel()], self.is_vst)

    def padded(self, num_rows: int, width: int) -> HostStep:
        """This decode step padded to `num_rows` sequences and `width` block-table columns (a captured decode
        graph's shape). A padding row is a one-token sequence with no kept entries that keeps nothing
        (slot -1) and reads entry 0 of page 0, a valid page whose values are never used: its logits row is
        dropped."""
        real, pad = len(self.kept), num_rows - len(self.kept)
        assert self.is_decode and pad >= 0 and width >= self.block_tables.shape[1]
        tables = np.full((num_rows, width), -1, dtype=np.int64)
        tables[:real, :self.block_tables.shape[1]] = self.block_tables
        tables[real:, 0] = 0

        def grow(a, fill):
            return np.concatenate([a, np.full(pad, fill, dtype=a.dtype)])
        bounds = np.arange(num_rows + 1)            # one row per sequence
        return replace(self, positions=grow(self.positions, 0), kept_positions=grow(self.kept_positions, 0),
                       slots=grow(self.slots, -1), token_ids=grow(self.token_ids, 0), logit_rows=np.arange(num_rows),
                       cu=bounds, cu_src=bounds, ratios=grow(self.ratios, 0), rems=grow(self.rems, 0),
                       kept=grow(self.kept, 0), block_tables=tables, is_vst=grow(self.is_vst, False))


class ModelRunner:
    def __init__(self, model, ops, kv_cache: KVCache):
        self.model, self.ops, self.kv_cache = model, ops, kv_cache
        self.device = kv_cache.device
        self.staging = StepStaging(self.device)         # the step's metadata: one copy (pinned buffers on CUDA)
        self.graphs = None                              # DecodeGraphs when decode steps replay CUDA graphs

    def embed(self, chunks: list[Chunk], token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(S, H) source rows of the step in chunk order: token embeddings of text/decode chunks, the raw
        visual embeddings of windows (their VSTs are added by the first layer). `token_ids`: the text and
        decode chunks' ids concatenated, already on the device (`upload` sends them)."""
        if token_ids is None:
            ids = [t for c in chunks if c.token_ids is not None for t in c.token_ids]
            token_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        tokens = self.model.embed_tokens(token_ids) if token_ids.numel() else None   # one lookup for all chunks
        if all(c.token_ids is not None for c in chunks):
            return tokens
        dtype = self.model.beacon_embedding().dtype
        parts, start = [], 0
        for c in chunks:
            if c.token_ids is not None:
                parts.append(tokens[start:start + len(c.token_ids)])
                start += len(c.token_ids)
            else:
                parts.append(c.embeds.to(device=self.device, dtype=dtype))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def host_step(self, chunks: list[Chunk]) -> HostStep:
        """The step's metadata as host arrays (`HostStep`); reserves the pages the chunks' kept rows need."""
        ps = self.kv_cache.page_size
        lens, kept, num_inputs, tables, ids, logit_rows, is_vst, row = [], [], [], [], [], [], [], 0
        for c in chunks:
            kept_len, table, n = c.seq.kept_len, c.seq.table, c.num_slots
            table.reserve(kept_len + c.num_kept)
            lens.append(n)
            kept.append(kept_len)
            tables.append(table.pages)
            row += n
            if c.prompt_idx is not None:
                logit_rows.extend(range(row - n, row))
            elif c.sample:
                logit_rows.append(row - 1)
            if c.token_ids is not None:
                ids += c.token_ids
                num_inputs.append(n)
            else:
                is_vst.append((row - n, c.is_vst()))
                num_inputs.append(c.num_inputs)
        is_vst = _scatter_flags(row, is_vst)
        lens_np, kept_np = np.array(lens, dtype=np.int64), np.array(kept, dtype=np.int64)
        cu = np.concatenate([[0], np.cumsum(lens_np)])
        block_tables = _pad_tables(tables)
        positions, kept_idx = _row_indices(cu, lens_np, kept_np, is_vst, [c.token_ids is None for c in chunks])
        chunk_of_row = np.repeat(np.arange(len(chunks)), lens_np)
        safe = np.maximum(kept_idx, 0)
        slots = np.where(kept_idx >= 0, block_tables[chunk_of_row, safe // ps] * ps + safe % ps, -1)
        # entries a table dropped (a bounded stream's oldest VSTs) keep counting in positions, not in slots
        dropped = np.repeat(np.array([c.seq.table.num_dropped for c in chunks], dtype=np.int64), lens_np)
        positions, safe = positions + dropped, safe + dropped
        return HostStep(positions=positions, kept_positions=safe, slots=slots, token_ids=np.array(ids, dtype=np.int64),
                        logit_rows=np.array(logit_rows, dtype=np.int64), cu=cu,
                        cu_src=np.concatenate([[0], np.cumsum(num_inputs)]),
                        ratios=np.array([c.ratio for c in chunks]), rems=np.array([c.rem for c in chunks]),
                        kept=kept_np, block_tables=block_tables, is_vst=is_vst,
                        is_decode=all(c.kind == "decode" for c in chunks))

    def upload(self, host: HostStep, out: torch.Tensor | None = None
               ) -> tuple[StepInfo, torch.Tensor, torch.Tensor]:
        """(StepInfo, token ids [the text/decode tokens, in chunk order], logit rows [in chunk order: every
        slot of a scored chunk (`prompt_idx` set), the last slot of any other chunk that samples]) of a host
        step on the device, in one copy; into the device buffer `out` when given (a captured decode graph's
        inputs: the same arrays' shapes always give the same views of it, `vxl.engine.staging`)."""
        dev = self.staging.to_device(*host.arrays(), out=out)
        (positions, kept_positions, slot_mapping, token_ids, logit_idx), small_dev, is_vst_dev = dev
        cu_t, cu_src_t, ratios, rems, kept_lens, tables_t = small_dev
        step = StepInfo(positions=positions, is_vst=is_vst_dev, kept_positions=kept_positions,
                        slot_mapping=slot_mapping, cu_seqlens=cu_t, block_tables=tables_t.view(host.block_tables.shape),
                        cu_src=cu_src_t, ratios=ratios, rems=rems, kept_lens=kept_lens,
                        is_decode=host.is_decode, has_vst=bool(host.is_vst.any()))
        return step, token_ids, logit_idx

    def forward(self, chunks: list[Chunk], host: HostStep | None = None
                ) -> tuple[torch.Tensor, StepInfo, torch.Tensor]:
        """(hidden states (T, H) of every slot of the step, its StepInfo, its logit rows): uploads `host`
        (built from the chunks when not given), appends the kept rows' K/V to their pages and advances
        each sequence's kept length."""
        step, token_ids, logit_idx = self.upload(host if host is not None else self.host_step(chunks))
        embeds = self.embed(chunks, token_ids)                                      # (S, H) source rows
        hidden = self.model(embeds, step, self.kv_cache.layers, self.ops)           # (T, H) slots
        _advance(chunks)
        return hidden, step, logit_idx

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor | None:
        """One forward over the packed chunks; returns float32 logits [logit rows, V] in chunk order (one
        row per sampling chunk, every row of a scored chunk: `upload`), or None when no chunk needs
        logits. Advances each sequence's kept length. A decode step replays its shape's CUDA graph when
        `graphs` is set (`vxl.engine.cuda_graphs`; the same logits, read before the next step)."""
        host = self.host_step(chunks)
        if self.graphs is not None:
            logits = self.graphs.run(host)
            if logits is not None:
                _advance(chunks)
                return logits
        hidden, _, logit_idx = self.forward(chunks, host)
        if not logit_idx.numel():
            return None
        return self.model.compute_logits(hidden[logit_idx])


def _advance(chunks: list[Chunk]) -> None:
    """Count each chunk's kept rows in its sequence's table (after the forward that stored them)."""
    for c in chunks:
        c.seq.table.num_tokens += c.num_kept


def _scatter_flags(num_rows: int, windows: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """is_vst [T] of the step: False but in the windows' rows, given as (first row, their is_vst)."""
    flags = np.zeros(num_rows, dtype=bool)
    for start, window in windows:
        flags[start:start + window.shape[0]] = window
    return flags


def _pad_tables(tables: list[list[int]]) -> np.ndarray:
    """Block tables [B, max_pages] (int64), rows padded with -1."""
    num_pages = np.array([len(t) for t in tables])
    out = np.full((len(tables), max(num_pages.max(), 1)), -1, dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int64, count=int(num_pages.sum()))
    col = np.arange(flat.shape[0]) - np.repeat(np.cumsum(num_pages) - num_pages, num_pages)
    out[np.repeat(np.arange(len(tables)), num_pages), col] = flat
    return out


def _row_indices(cu, lens, kept, is_vst, is_window) -> tuple[np.ndarray, np.ndarray]:
    """(positions, kept_idx) [T] of the step's rows. A chunk's rows sit at positions kept .. kept + n - 1;
    a text/decode row is kept at its position, the k-th VST of a window becomes kept entry kept + k and
    the window's raw rows are not kept (-1)."""
    chunk_start = np.repeat(cu[:-1], lens)
    positions = np.repeat(kept, lens) + np.arange(cu[-1]) - chunk_start
    if not any(is_window):
        return positions, positions
    vst_before = np.concatenate([[0], np.cumsum(is_vst)])                   # VSTs in rows [0, i)
    vst_rank = vst_before[1:] - vst_before[chunk_start] - 1                 # k of a VST row within its chunk
    window_row = np.repeat(np.array(is_window), lens)
    kept_idx = np.where(window_row, np.where(is_vst, np.repeat(kept, lens) + vst_rank, -1), positions)
    return positions, kept_idx
