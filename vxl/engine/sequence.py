"""A sequence in flight (bookkeeping only: the vision stage fills its windows' embeddings, the runner embeds
and runs its chunks): its token layout, the chunks its prefill is cut into, its pages and outputs.

    prompt ids:   [ prefix text (P) | <image> | suffix text (S) ]
    processing:   prefix chunks -> visual windows (raw + interleaved VSTs) -> suffix chunks -> decode
    kept entries: [ prefix (P) | VSTs (sum nb) | suffix (S) | generated ... ]   (entry i at position i)

The prefill is a plan of segments (text ranges and one run of windows) walked by a cursor: `next_chunk`
cuts the next chunk to fit the step's remaining rows and vision frames, or returns None when it does not
fit (a window is never split), and changes nothing then.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vxl.engine.kv_cache import BlockTable
from vxl.engine.sampler import LogitRow, SamplingParams
from vxl.engine.visual import VisualSupplier
from vxl.vst import vst_mask, window_lengths


@dataclass(kw_only=True)
class Chunk:
    """Rows one sequence contributes to a step. Text and decode chunks carry token ids, windows the number
    of raw visual rows (`num_raw`) whose embeddings the vision stage puts in `embeds` before the forward.
    A window's slots interleave its raw rows with `num_kept` VSTs (the beacon embedding) by the rule of
    `vst.vst_mask(num_raw, ratio, rem)`; they are never built here: the model's first layer reads each slot
    from the embeddings or the beacon by slot index. Only kept rows enter pages: all rows of a text/decode
    chunk, only the VST rows of a window."""
    seq: "Sequence"
    kind: str                       # "text" | "window" | "decode"
    num_kept: int
    sample: bool                    # logits of the last row are needed
    token_ids: list[int] | None = None      # text/decode: the chunk's tokens
    num_raw: int = 0                # window: raw visual rows
    embeds: torch.Tensor | None = None      # window: (num_raw, H) raw visual embeddings, set by the vision stage
    num_frames: int = 0             # window: frames the vision stage must encode for it
    ratio: int = 0                  # a window's compression ratio (0: no VSTs)
    rem: int = 0                    # the remainder carried into the window
    prompt_idx: int | None = None   # text: the prompt index of its first token when the logits of all its
                                    # rows are wanted (prompt_logprobs)

    @property
    def num_inputs(self) -> int:
        """Rows the chunk feeds the model (a window's raw rows, before VSTs are interleaved)."""
        return len(self.token_ids) if self.token_ids is not None else self.num_raw

    @property
    def num_slots(self) -> int:
        """Rows of the chunk in the step (a window: raw rows + VSTs)."""
        return self.num_inputs + (self.num_kept if self.kind == "window" else 0)

    def is_vst(self) -> np.ndarray:
        """(num_slots,) bool: which slots are VSTs (none outside windows)."""
        if self.kind != "window":
            return np.zeros(self.num_slots, dtype=bool)
        return vst_mask(self.num_raw, self.ratio, self.rem)

    def logit_rows(self) -> list[LogitRow]:
        """What each logit row this chunk asks for is for, in row order: every row of a scored chunk (its
        prompt logprobs, the last row sampled when `sample`), else the last row when `sample`."""
        seq = self.seq
        rows = []
        if self.prompt_idx is not None:
            targets = seq.prompt_targets(self)
            rows = [LogitRow(seq.params.prompt_logprobs if i < len(targets) else None,
                             target=targets[i] if i < len(targets) else 0) for i in range(self.num_slots)]
            if self.sample:
                rows[-1] = seq.sample_row()
        elif self.sample:
            rows = [seq.sample_row()]
        return rows


class Sequence:
    def __init__(self, *, index: int, request_id: str, prompt_ids: list[int], placeholder_idx: int | None,
                 visual: VisualSupplier | None, ratio: int, params: SamplingParams, table: BlockTable, window: int,
                 text_chunk: int, generator: torch.Generator | None, memory=None, is_encode_job: bool = False,
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
        self.error_type: str | None = None
        self.memory = memory              # a VideoMemory holding the prefix + VSTs already: prefill the suffix only
        self.num_vst = memory.num_vst if memory is not None else 0
        # a live stream's question: the table holds the prefix and the stream's windows already; `visual`
        # has the rest, encoded from the carried remainder (resume[0]) on; resume[1] VSTs are kept already
        self.resume = resume
        self.rem = 0
        if resume is not None:
            self.rem, self.num_vst = resume
        # an encode job: prefix and windows only; once they ran its pages become a VideoMemory
        self.is_encode_job = is_encode_job
        self.num_kept_after_prefill: int | None = None
        self.seconds: dict[str, float] = {}
        self.is_prefilling = True
        self.output = None                # set by the engine core once it ends: RequestOutput or EncodeResult
        self._plan = self._prefill_plan()
        self._segment, self._pos = 0, None
        self._windows = window_lengths(visual.num_tokens, window) if visual is not None and memory is None else []
        self._window_idx = 0

    @property
    def kept_len(self) -> int:
        return self.table.num_tokens

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def _prefill_plan(self) -> list[tuple]:
        """Segments: ("text", begin, end, sample_last) prompt ranges and ("windows",)."""
        end, ph = len(self.prompt_ids), self.placeholder_idx
        suffix = [] if self.is_encode_job else [("text", ph + 1 if ph is not None else 0, end, True)]
        if self.resume is not None:
            return [("windows",)] + suffix
        if self.memory is not None or ph is None:
            return suffix
        return [("text", 0, ph, False), ("windows",)] + suffix

    def next_chunk(self, max_rows: int, max_frames: int | None = None) -> Chunk | None:
        """The next chunk within `max_rows` step rows and `max_frames` frames still to encode: a prefill
        chunk (text cut to fit; a window whole or not at all), or the decode chunk of the last sampled
        token; None when nothing fits, or when an encode job has run its last window (it is then
        finished)."""
        while self._segment < len(self._plan):
            segment = self._plan[self._segment]
            chunk = self._text_chunk(*segment[1:], max_rows) if segment[0] == "text" else \
                self._window_chunk(max_rows, max_frames)
            if chunk is not None or not self._segment_done(segment):
                return chunk
            self._segment, self._pos = self._segment + 1, None
        self.is_prefilling = False
        if self.is_encode_job:
            self.num_kept_after_prefill = self.kept_len
            self.finish_reason = "stop"
            return None
        if max_rows < 1:
            return None
        return Chunk(seq=self, kind="decode", num_kept=1, sample=True, token_ids=self.output_ids[-1:])

    def _segment_done(self, segment: tuple) -> bool:
        if segment[0] == "text":
            return (self._pos if self._pos is not None else segment[1]) >= segment[2]
        if self._window_idx < len(self._windows):
            return False
        if self.visual is not None:
            self.visual.close()
        return True

    def _text_chunk(self, begin: int, end: int, sample_last: bool, max_rows: int) -> Chunk | None:
        start = self._pos if self._pos is not None else begin
        num = min(self.text_chunk, end - start, max_rows)
        if num <= 0:
            return None
        self._pos = start + num
        return Chunk(seq=self, kind="text", num_kept=num, sample=sample_last and self._pos >= end,
                     token_ids=self.prompt_ids[start:start + num],
                     prompt_idx=start if self.prompt_logprobs is not None else None)

    def _window_chunk(self, max_rows: int, max_frames: int | None) -> Chunk | None:
        if self._window_idx >= len(self._windows):
            return None
        num_raw = self._windows[self._window_idx]
        num_vst = (num_raw + self.rem) // self.ratio
        if num_raw + num_vst > max_rows:
            return None
        num_frames = self.visual.frames_to_encode(num_raw)
        if max_frames is not None and num_frames > max_frames:
            return None
        chunk = Chunk(seq=self, kind="window", num_kept=num_vst, sample=False, num_raw=num_raw, ratio=self.ratio,
                      rem=self.rem, num_frames=num_frames)
        self._window_idx += 1
        self.rem = (num_raw + self.rem) % self.ratio
        self.num_vst += num_vst
        return chunk

    @property
    def num_prefill_windows(self) -> int:
        """Visual windows this sequence's prefill runs in all."""
        return len(self._windows)

    def upcoming_window(self) -> int | None:
        """Raw rows of the next window this sequence will run (None: no window left)."""
        if self.is_finished or self._window_idx >= len(self._windows):
            return None
        return self._windows[self._window_idx]

    def sample_row(self) -> LogitRow:
        return LogitRow(self.params.logprobs, self.params, self.generator)

    def prompt_targets(self, chunk: Chunk) -> list[int]:
        """The prompt tokens a scored chunk's rows score: the row of prompt token i scores token i + 1 when
        that is text of the same run (not the placeholder after the prefix's last row, and not the first
        generated token after the prompt's last row, which is sampled as usual)."""
        first = chunk.prompt_idx + 1
        before_video = self.placeholder_idx is not None and first <= self.placeholder_idx
        end = self.placeholder_idx if before_video else len(self.prompt_ids)
        return self.prompt_ids[first:end][:chunk.num_slots]

    def record_prompt_logprobs(self, chunk: Chunk, logprobs: list[dict | None]) -> None:
        """Store a scored chunk's prompt logprobs (one per row, `Chunk.logit_rows` order)."""
        first = chunk.prompt_idx + 1
        targets = self.prompt_targets(chunk)
        self.prompt_logprobs[first:first + len(targets)] = logprobs[:len(targets)]

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

    def fail(self, message: str, error_type: str = "bad_request") -> None:
        self.finish_reason, self.error, self.error_type = "error", message, error_type
        self.release()

    def release(self) -> None:
        self.table.release()
        if self.visual is not None:
            self.visual.close()
