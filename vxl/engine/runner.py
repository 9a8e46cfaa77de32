"""Model runner: embeds the chunks of one step and packs them into a single forward over the paged KV cache
(`vxl.engine.kv_cache.KVCache`, whose pages the model's layers read and append to).
"""
from __future__ import annotations

import torch

from vxl.engine.kv_cache import KVCache
from vxl.engine.sequence import Chunk
from vxl.model.qwen2 import StepInfo


class ModelRunner:
    def __init__(self, model, ops, kv_cache: KVCache):
        self.model, self.ops, self.kv_cache = model, ops, kv_cache
        self.device = kv_cache.device

    def embed(self, chunks: list[Chunk]) -> torch.Tensor:
        """(S, H) source rows of the step in chunk order: token embeddings of text/decode chunks, the raw
        visual embeddings of windows (their VSTs are added by the first layer)."""
        dtype = self.model.beacon_embedding().dtype
        parts = []
        for c in chunks:
            if c.token_ids is not None:
                ids = torch.tensor(c.token_ids, dtype=torch.long, device=self.device)
                parts.append(self.model.embed_tokens(ids))
            else:
                parts.append(c.embeds.to(device=self.device, dtype=dtype))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _rows_of(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(is_vst, kept_positions, slot_mapping) of one chunk's rows; reserves the pages it needs."""
        n, kept = chunk.num_slots, chunk.seq.kept_len
        table = chunk.seq.table
        table.reserve(kept + chunk.num_kept)
        if chunk.is_vst is None:
            is_vst = torch.zeros(n, dtype=torch.bool, device=self.device)
            kept_idx = kept + torch.arange(n, device=self.device)
        else:
            is_vst = chunk.is_vst
            # the k-th VST of the window becomes kept entry kept + k; raw rows are not kept (-1)
            kept_idx = torch.where(is_vst, kept + is_vst.long().cumsum(0) - 1, -1)
        return is_vst, kept_idx.clamp(min=0), self.kv_cache.slot_mapping(table, kept_idx)

    def build_step(self, chunks: list[Chunk]) -> StepInfo:
        rows = [self._rows_of(c) for c in chunks]
        lens = [c.num_slots for c in chunks]
        kept = [c.seq.kept_len for c in chunks]
        positions = torch.cat([k + torch.arange(n, device=self.device) for k, n in zip(kept, lens)])
        max_pages = max(len(c.seq.table.pages) for c in chunks)
        tables = torch.full((len(chunks), max_pages), -1, dtype=torch.int32, device=self.device)
        for i, c in enumerate(chunks):
            tables[i, :len(c.seq.table.pages)] = torch.tensor(c.seq.table.pages, dtype=torch.int32)
        cu = torch.tensor([0] + lens, device=self.device).cumsum(0).to(torch.int32)
        cu_src = torch.tensor([0] + [c.num_inputs for c in chunks], device=self.device).cumsum(0).to(torch.int32)
        is_vst = torch.cat([r[0] for r in rows])
        return StepInfo(positions=positions, is_vst=is_vst,
                        kept_positions=torch.cat([r[1] for r in rows]),
                        slot_mapping=torch.cat([r[2] for r in rows]),
                        cu_seqlens=cu, block_tables=tables, cu_src=cu_src,
                        ratios=torch.tensor([c.ratio for c in chunks], dtype=torch.int32, device=self.device),
                        rems=torch.tensor([c.rem for c in chunks], dtype=torch.int32, device=self.device),
                        kept_lens=torch.tensor(kept, dtype=torch.int32, device=self.device),
                        is_decode=all(c.kind == "decode" for c in chunks),
                        has_vst=bool(is_vst.any()))

    def forward(self, chunks: list[Chunk]) -> tuple[torch.Tensor, StepInfo]:
        """Hidden states (T, H) of every slot of the step; appends the kept rows' K/V to their pages and
        advances each sequence's kept length."""
        step = self.build_step(chunks)
        hidden = self.model(self.embed(chunks), step, self.kv_cache.layers, self.ops)   # (S, H) rows -> (T, H) slots
        for c in chunks:
            c.seq.table.num_tokens += c.num_kept
        return hidden, step

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor | None:
        """One forward over the packed chunks; returns float32 logits [num sampling chunks, V] in
        chunk order, or None when no chunk samples. Advances each sequence's kept length."""
        hidden, step = self.forward(chunks)
        last_rows = [int(step.cu_seqlens[i + 1]) - 1 for i, c in enumerate(chunks) if c.sample]
        if not last_rows:
            return None
        return self.model.compute_logits(hidden[torch.tensor(last_rows, device=self.device)])
