"""A sequence in flight: its token layout, the chunks its prefill is cut into, its pages and outputs.

    prompt ids:   [ prefix text (P) | <image> | suffix text (S) ]
    processing:   prefix chunks -> visual windows (raw + interleaved VSTs) -> suffix chunks -> decode
    kept entries: [ prefix (P) | VSTs (sum nb) | suffix (S) | generated ... ]   (entry i at position i)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from vxl.engine.block_manager import BlockTable
from vxl.engine.sampler import SamplingParams
from vxl.engine.vst import interleave, window_lengths


@dataclass
class Chunk:
    """Rows one sequence contributes to a step. A window's slots interleave its raw visual rows with VSTs
    (the beacon embedding) by the rule of `vst.interleave(n, ratio, rem)`; they are never built here: the
    model's first layer reads each slot from `embeds` or the beacon by slot index. VST rows use beacon
    weights; only kept rows enter pages: all rows of a text/decode chunk, only the VST rows of a window."""
    seq: "Sequence"
    embeds: torch.Tensor            # (n, H): text embeddings, or the window's raw visual embeddings (no VSTs)
    is_vst: torch.Tensor | None     # (num_slots,) bool, None for text
    num_kept: int
    sample: bool                    # logits of the last row are needed
    kind: str                       # "text" | "window" | "decode"
    ratio: int = 0                  # a window's compression ratio (0: no VSTs)
    rem: int = 0                    # the remainder carried into the window

    @property
    def num_slots(self) -> int:
        """Rows of the chunk in the step (a window: raw rows + VSTs)."""
        return self.embeds.shape[0] if self.is_vst is None else self.is_vst.shape[0]


class Sequence:
    def __init__(self, index: int, request_id: str, prompt_ids: list[int], placeholder_idx: int | None,
                 visual, ratio: int, params: SamplingParams, table: BlockTable, model, window: int,
                 text_chunk: int, generator: torch.Generator | None, memory=None):
        self.index, self.request_id = index, request_id
        self.prompt_ids, self.placeholder_idx = prompt_ids, placeholder_idx
        self.visual, self.ratio, self.params, self.table = visual, ratio, params, table
        self.model, self.window, self.text_chunk, self.generator = model, window, text_chunk, generator
        self.output_ids: list[int] = []
        self.output_logprobs: list[dict] | None = [] if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.memory = memory              # a VideoMemory holding the prefix + VSTs already: prefill the suffix only
        self.num_vst = memory.num_vst if memory is not None else 0
        self.num_kept_after_prefill: int | None = None
        self.seconds: dict[str, float] = {}
        self.prefill = self._prefill_chunks()     # lazy: a chunk is built once the previous one has run
        self.is_prefilling = True

    @property
    def kept_len(self) -> int:
        return self.table.num_tokens

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def _text_chunks(self, ids: list[int], sample_last: bool) -> Iterator[Chunk]:
        for start in range(0, len(ids), self.text_chunk):
            piece = ids[start:start + self.text_chunk]
            last = start + self.text_chunk >= len(ids)
            t = torch.tensor(piece, dtype=torch.long, device=self.model.lm_head.weight.device)
            yield Chunk(self, self.model.embed_tokens(t), None, len(piece), sample_last and last, "text")

    def _window_chunks(self) -> Iterator[Chunk]:
        dtype = self.model.beacon_embedding().dtype
        rem = 0
        for length in window_lengths(self.visual.num_tokens, self.window):
            raw = self.visual.take(length).to(dtype)                      # (L, H)
            is_vst, next_rem = interleave(length, self.ratio, rem)
            nb = is_vst.shape[0] - length
            self.num_vst += nb
            yield Chunk(self, raw, is_vst.to(raw.device), nb, False, "window", self.ratio, rem)
            rem = next_rem

    def _prefill_chunks(self) -> Iterator[Chunk]:
        if self.memory is not None:
            yield from self._text_chunks(self.prompt_ids[self.placeholder_idx + 1:], True)
            return
        if self.placeholder_idx is None:
            yield from self._text_chunks(self.prompt_ids, True)
            return
        yield from self._text_chunks(self.prompt_ids[:self.placeholder_idx], False)
        yield from self._window_chunks()
        self.visual.close()
        yield from self._text_chunks(self.prompt_ids[self.placeholder_idx + 1:], True)

    def next_chunk(self) -> Chunk:
        """The next prefill chunk, or the decode chunk of the last sampled token."""
        if self.is_prefilling:
            chunk = next(self.prefill, None)
            if chunk is not None:
                return chunk
            self.is_prefilling = False
        t = torch.tensor([self.output_ids[-1]], dtype=torch.long, device=self.model.lm_head.weight.device)
        return Chunk(self, self.model.embed_tokens(t), None, 1, True, "decode")

    def append_token(self, token: int, logprobs: dict | None, eos_ids: list[int]) -> None:
        if self.num_kept_after_prefill is None:
            self.num_kept_after_prefill = self.kept_len
            self.is_prefilling = False
        self.output_ids.append(token)
        if self.output_logprobs is not None:
            self.output_logprobs.append(logprobs)
        stops = set(self.params.stop_token_ids or [])
        if not self.params.ignore_eos:
            stops |= set(eos_ids)
        if token in stops:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.params.max_tokens:
            self.finish_reason = "length"

    def fail(self, message: str) -> None:
        self.finish_reason, self.error = "error", message
        self.release()

    def release(self) -> None:
        self.table.release()
        if self.visual is not None:
            self.visual.close()
