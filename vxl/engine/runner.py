"""Model runner: packs the chunks of one step into a single forward over the paged KV cache.

Owns the cache tensors: per layer (k_cache, v_cache), each [num_pages, page_size, nkv, hd].
"""
from __future__ import annotations

import torch

from vxl.engine.sequence import Chunk
from vxl.model.qwen2 import StepInfo


class ModelRunner:
    def __init__(self, model, ops, num_pages: int, page_size: int, dtype: torch.dtype, device: torch.device):
        cfg = model.config
        self.model, self.ops, self.device = model, ops, device
        shape = (num_pages, page_size, cfg.num_key_value_heads, cfg.head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                          for _ in range(cfg.num_hidden_layers)]

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
        pages = torch.tensor(table.pages, dtype=torch.long, device=self.device)
        ps = table.manager.page_size
        safe = kept_idx.clamp(min=0)
        slots = torch.where(kept_idx >= 0, pages[safe // ps] * ps + safe % ps, -1)
        return is_vst, kept_idx.clamp(min=0), slots

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
        cu_src = torch.tensor([0] + [c.embeds.shape[0] for c in chunks], device=self.device).cumsum(0).to(torch.int32)
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

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor | None:
        """One forward over the packed chunks; returns float32 logits [num sampling chunks, V] in
        chunk order, or None when no chunk samples. Advances each sequence's kept length."""
        step = self.build_step(chunks)
        embeds = torch.cat([c.embeds for c in chunks])
        hidden = self.model(embeds, step, self.kv_caches, self.ops)        # (S, H) source rows -> (T, H) slots
        for c in chunks:
            c.seq.table.num_tokens += c.num_kept
        last_rows = [int(step.cu_seqlens[i + 1]) - 1 for i, c in enumerate(chunks) if c.sample]
        if not last_rows:
            return None
        return self.model.compute_logits(hidden[torch.tensor(last_rows, device=self.device)])
