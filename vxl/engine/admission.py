"""Admission: a request (or an encode job, or a question over a live stream) validated and turned into a
`Sequence` with its worst-case kept tokens, ready for the scheduler. Problems are `RequestError`s naming
them (the core reports them as that request's error)."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from vxl.config import IMAGE_TOKEN_INDEX, EngineConfig
from vxl.engine.inputs import InputContext, RequestError, check_params, check_token_ids, prepare_request, \
    prompt_ids_from_text
from vxl.engine.kv_cache import KVCache
from vxl.engine.request import Request
from vxl.engine.sampler import SamplingParams
from vxl.engine.sequence import Sequence
from vxl.engine.stream import VideoStream

if TYPE_CHECKING:
    from vxl.engine.core import EngineCore


class Admission:
    """Builds the sequences of one engine core (`core`: the engine a stream must belong to)."""

    def __init__(self, core: "EngineCore", config: EngineConfig, inputs: InputContext, kv_cache: KVCache,
                 fingerprint: str, device: torch.device):
        self.core, self.config, self.inputs, self.kv_cache = core, config, inputs, kv_cache
        self.model_config, self.tokenizer = inputs.config, inputs.tokenizer
        self.fingerprint, self.device = fingerprint, device

    def generator(self, params: SamplingParams, index: int) -> torch.Generator | None:
        """A sampling request's own generator, on the device that samples."""
        if params.is_greedy:
            return None
        seed = params.seed if params.seed is not None else self.config.seed + index
        return torch.Generator(device=self.device).manual_seed(seed)

    def request(self, index: int, request: Request, params: SamplingParams,
                      default_id: str) -> tuple[Sequence, int]:
        if not isinstance(params, SamplingParams):
            raise RequestError(f"sampling params must be a vxl.SamplingParams, not {type(params).__name__}")
        check_params(params, self.model_config.vocab_size, self.config.max_logprobs)    # stream questions too
        if request.video_stream is not None:
            return self._stream_question(index, request, params, default_id)
        prep = prepare_request(self.inputs, request, params)
        rid = prep.request_id if prep.request_id is not None else default_id
        seq, max_kept = self._sequence_of(prep, params, rid, index, self.generator(params, index))
        self._warn_past_trained_positions(seq.kept_len + max_kept, rid)      # a memory's entries come first
        return seq, max_kept

    def _warn_past_trained_positions(self, max_kept: int, rid: str) -> None:
        """RoPE positions run to the kept entries plus one window of raw rows: past the model's
        max_position_embeddings the answer is computed as asked but the model never saw such positions."""
        last = max_kept + self.model_config.beacon_window
        if last > self.model_config.max_position_embeddings:
            warnings.warn(f"request {rid}: positions up to {last} pass the model's max_position_embeddings "
                          f"({self.model_config.max_position_embeddings}); raise the compression ratio or lower "
                          f"num_frames to stay where the model was trained", RuntimeWarning, stacklevel=2)

    def _sequence_of(self, prep, params: SamplingParams, rid: str, index: int, generator,
                     is_encode_job: bool = False) -> tuple[Sequence, int]:
        table = None
        try:
            if prep.memory is not None:
                try:
                    prep.memory.bind(self.kv_cache, self.fingerprint)
                except ValueError as exc:
                    raise RequestError(str(exc)) from None
                table = prep.memory.fork_table()
            else:
                table = self.kv_cache.new_table()
            seq = Sequence(index=index, request_id=str(rid), prompt_ids=prep.prompt_ids,
                           placeholder_idx=prep.placeholder_idx, visual=prep.visual, ratio=prep.ratio, params=params,
                           table=table, window=self.model_config.beacon_window, text_chunk=self.text_chunk,
                           generator=generator, memory=prep.memory, is_encode_job=is_encode_job)
        except BaseException:
            if table is not None:
                table.release()
            if prep.visual is not None:
                prep.visual.close()
            raise
        return seq, prep.max_kept_tokens(self.model_config, params)

    @property
    def text_chunk(self) -> int:
        return self.config.text_chunk_size or self.model_config.beacon_window

    def default_prefix(self) -> list[int]:
        """The chat template's token ids before the video."""
        ids = prompt_ids_from_text(self.tokenizer, "", True)
        return ids[:ids.index(IMAGE_TOKEN_INDEX)]

    def encode_job(self, request: Request, prefix_token_ids, job_id: str) -> tuple[Sequence, int]:
        params = SamplingParams(max_tokens=1)
        if request.video_stream is not None:
            stream = self._stream_of(request)
            return stream.question_sequence(0, job_id, [], params, None, self.text_chunk, is_encode_job=True)
        if all(getattr(request, n) is None for n in ("video", "image", "images", "visual_embeds")):
            raise RequestError("an encode job needs a video, image, images, visual_embeds or video_stream")
        prefix = check_token_ids(prefix_token_ids if prefix_token_ids is not None else self.default_prefix(),
                                 self.model_config.vocab_size, "prefix_token_ids")
        if IMAGE_TOKEN_INDEX in prefix:
            raise RequestError("prefix_token_ids must not contain the video placeholder")
        fields = {k: v for k, v in vars(request).items() if k not in ("prompt", "prompt_token_ids", "request_id")}
        job = Request(**fields, prompt_token_ids=prefix + [IMAGE_TOKEN_INDEX], request_id=job_id)
        prep = prepare_request(self.inputs, job, params, is_encode_job=True)
        return self._sequence_of(prep, params, job_id, 0, None, is_encode_job=True)

    def _stream_of(self, request: Request) -> VideoStream:
        stream = request.video_stream
        if not isinstance(stream, VideoStream) or stream.core is not self.core:
            raise RequestError("video_stream must be a stream opened on this engine (LLM.open_stream)")
        others = [n for n in ("video", "image", "images", "visual_embeds", "video_memory", "num_frames")
                  if getattr(request, n) is not None]
        if others:
            raise RequestError(f"a video_stream request takes no {', '.join(others)}")
        if request.compression_ratio is not None and request.compression_ratio != stream.ratio:
            raise RequestError(f"compression_ratio {request.compression_ratio} differs from the stream's ({stream.ratio})")
        return stream

    def _stream_question(self, index: int, request: Request, params: SamplingParams,
                         default_id: str) -> tuple[Sequence, int]:
        """A question over a live stream: every frame appended so far (vxl.engine.stream)."""
        stream = self._stream_of(request)
        if request.prompt_token_ids is not None:
            ids = check_token_ids(request.prompt_token_ids, self.model_config.vocab_size)
        else:
            ids = prompt_ids_from_text(self.tokenizer, request.prompt, True)
        if ids.count(IMAGE_TOKEN_INDEX) != 1 or ids[:ids.index(IMAGE_TOKEN_INDEX)] != stream.prefix_ids:
            raise RequestError("the prompt's text before the video differs from the stream's prefix")
        rid = str(request.request_id if request.request_id is not None else default_id)
        return stream.question_sequence(index, rid, ids[ids.index(IMAGE_TOKEN_INDEX) + 1:], params,
                                        self.generator(params, index), self.text_chunk)
