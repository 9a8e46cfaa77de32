"""A sequence in flight (bookkeeping only: the runner embeds and runs its chunks): its token layout, the
chunks its prefill is cut into, its pages and outputs.

    prompt ids:   [ prefix text (P) | <image> | suffix text (S) ]
    processing:   prefix chunks -> visual windows (raw + interleaved VSTs) -> suffix chunks -> decode
    kept entries: [ prefix (P) | VSTs (sum nb) | suffix (S) | generated ... ]   (entry i at position i)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from vxl.engine.kv_cache import BlockTable
from vxl.engine.sampler import SamplingParams, prompt_token_logprobs
from vxl.engine.vst import interleave, window_lengths


@dataclass
class Chunk:
    """Rows one sequence contributes to a step. Text and decode chunks carry token ids, windows their raw
    visual embeddings; the runner embeds them. A window's slots interleave its raw visual rows with VSTs
    (the beacon embedding) by the rule of `vst.interleave(n, ratio, rem)`; they are never built here: the
    model's first layer reads each slot from the embeddings or the beacon by slot index. VST rows use beacon
    weights; only kept rows enter pages: all rows of a text/decode chunk, only the VST rows of a window."""
    seq: "Sequence"
    kind: str                       # "text" | "window" | "decode"
    num_kept: int
    sample: bool                    # logits of the last row are needed
    token_ids: list[int] | None = None      # text/decode: the chunk's tokens
    embeds: torch.Tensor | None = None      # window: (L, H) raw visual embeddings (no VSTs)
    is_vst: torch.Tensor | None = None      # window: (num_slots,) bool
    ratio: int = 0                  # a window's compression ratio (0: no VSTs)
    rem: int = 0                    # the remainder carried into the window
    prompt_idx: int | None = None   # text: the prompt index of its first token when the logits of all its
                                    # rows are wanted (prompt_logprobs)

    @property
    def num_inputs(self) -> int:
        """Rows the chunk feeds the model (a window's raw rows, before VSTs are interleaved)."""
        return len(self.token_ids) if self.token_ids is not None else self.embeds.shape[0]

    @property
    def num_slots(self) -> int:
        """Rows of the chunk in the step (a window: raw rows + VSTs)."""
        return self.num_inputs if self.is_vst is None else self.is_vst.shape[0]


class Sequence:
    def __init__(self, index: int, request_id: str, prompt_ids: list[int], placeholder_idx: int | None,
                 visual, ratio: int, params: SamplingParams, table: BlockTable, window: int, text_chunk: int,
                 generator: torch.Generator | None, memory=None, encode_only: bool = False,
                 resume: tuple[int, int] | None = None):
        self.index, self.request_id = index, request_id
        self.prompt_ids, self.placeholder_idx = prompt_ids, placeholder_idx
        self.visual, self.ratio, self.params, self.table = visual, ratio, params, table
        self.window, self.text_chunk, self.generator = window, text_chunk, generator
        self.output_ids: list[int] = []
        self.output_logprobs: list[dict] | None = [] if params.logprobs is not None else None
        self.prompt_logprobs: list[dict | None] | None = None
        if params.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(prompt_ids)
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.memory = memory              # a VideoMemory holding the prefix + VSTs already: prefill the suffix only
        self.num_vst = memory.num_vst if memory is not None else 0
        # a live stream's question: the table holds the prefix and the stream's windows already; `visual`
        # has the rest, encoded from the carried remainder on
        self.resume = resume
        if resume is not None:
            self.num_vst = resume[1]
        self.num_kept_after_prefill: int | None = None
        self.seconds: dict[str, float] = {}
        self.prefill = self._prefill_chunks()     # lazy: a chunk is built once the previous one has run
        self.is_prefilling = True
        self.output = None                # the RequestOutput, set by the engine core once the request ends
        # an encode job: prefix and windows only, its pages become a VideoMemory (finish_reason "encoded")
        self.encode_only = encode_only
        self.error_type: str | None = None

    @property
    def kept_len(self) -> int:
        return self.table.num_tokens

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def _text_chunks(self, begin: int, end: int, sample_last: bool) -> Iterator[Chunk]:
        """Chunks of the prompt tokens [begin, end)."""
        is_scored = self.prompt_logprobs is not None
        for start in range(begin, end, self.text_chunk):
            piece = self.prompt_ids[start:min(start + self.text_chunk, end)]
            last = start + self.text_chunk >= end
            yield Chunk(self, "text", len(piece), sample_last and last, token_ids=piece,
                        prompt_idx=start if is_scored else None)

    def _window_chunks(self, rem: int = 0) -> Iterator[Chunk]:
        for length in window_lengths(self.visual.num_tokens, self.window):
            raw = self.visual.take(length)                                # (L, H)
            is_vst, next_rem = interleave(length, self.ratio, rem)
            nb = is_vst.shape[0] - length
            self.num_vst += nb
            yield Chunk(self, "window", nb, False, embeds=raw, is_vst=is_vst.to(raw.device), ratio=self.ratio,
                        rem=rem)
            rem = next_rem

    def _prefill_chunks(self) -> Iterator[Chunk]:
        end = len(self.prompt_ids)
        if self.resume is not None:
            yield from self._window_chunks(self.resume[0])
            self.visual.close()
            yield from self._text_chunks(self.placeholder_idx + 1, end, True)
            return
        if self.memory is not None:
            yield from self._text_chunks(self.placeholder_idx + 1, end, True)
            return
        if self.placeholder_idx is None:
            yield from self._text_chunks(0, end, True)
            return
        yield from self._text_chunks(0, self.placeholder_idx, False)
        yield from self._window_chunks()
        self.visual.close()
        yield from self._text_chunks(self.placeholder_idx + 1, end, True)

    def next_chunk(self) -> Chunk | None:
        """The next prefill chunk, or the decode chunk of the last sampled token; None once an encode job
        has run its last window (it is then finished)."""
        if self.is_prefilling:
            chunk = next(self.prefill, None)
            if chunk is not None:
                return chunk
            self.is_prefilling = False
        if self.encode_only:
            self.num_kept_after_prefill = self.kept_len
            self.finish_reason = "encoded"
            return None
        return Chunk(self, "decode", 1, True, token_ids=self.output_ids[-1:])

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

    def record_prompt_logprobs(self, chunk: Chunk, logits: torch.Tensor) -> None:
        """Prompt logprobs from a scored chunk's logits [its rows, V]. The row of prompt token i scores token
        i + 1 when that is text of the same run: not the placeholder after the prefix's last row, and not
        the first generated token after the prompt's last row (sampled as usual)."""
        first = chunk.prompt_idx + 1
        before_video = self.placeholder_idx is not None and first <= self.placeholder_idx
        end = self.placeholder_idx if before_video else len(self.prompt_ids)
        targets = self.prompt_ids[first:end][:chunk.num_slots]
        if targets:
            self.prompt_logprobs[first:first + len(targets)] = prompt_token_logprobs(
                logits[:len(targets)], targets, self.params.prompt_logprobs)

    def fail(self, message: str, error_type: str = "bad_request") -> None:
        self.finish_reason, self.error, self.error_type = "error", message, error_type
        self.release()

    def release(self) -> None:
        self.table.release()
        if self.visual is not None:
            self.visual.close()
