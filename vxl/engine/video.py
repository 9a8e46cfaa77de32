"""Video input: uniform frame sampling and `VideoSource`, which yields the sampled uint8 frames chunk by
chunk in time order (decord for files, slicing for arrays) so frames are decoded window by window and
never all held at once. Parallel decoding (several readers, order kept) and keyframe snapping are options.
"""
from __future__ import annotations

import os
import queue
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from vxl.engine.preprocess import preprocess_frames
from vxl.model.clip_configs import ImageProcessorConfig

__all__ = ["DEFAULT_FILE_FRAMES", "ImageProcessorConfig", "VideoSource", "open_video", "preprocess_frames",
           "sample_indices", "snap_to_keyframes"]

DEFAULT_FILE_FRAMES = 128   # frames sampled from a file when a request gives no num_frames: the
                            # released evaluation setting (lmms-eval max_frames_num=128)


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Uniform indices as the released code: `np.linspace(0, total - 1, n, dtype=int)` (truncation, not
    rounding), with n = min(num_frames, total): a count above the video's length is clamped, where the
    original would repeat frames."""
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
        raise ValueError(f"video has {total} frames; at least 1 is needed")
    _check_num_frames(num_frames)
    n = min(int(num_frames), int(total))
    return np.linspace(0, total - 1, n, dtype=int).tolist()


def snap_to_keyframes(indices: list[int], key_indices: list[int]) -> list[int]:
    """Move each sampled index to the nearest keyframe among those closer to it than to any other sample.

    A keyframe decodes without the rest of its group of pictures, so snapped samples are far cheaper.
    Each keyframe goes to its nearest sample (ties to the earlier one); a sample owning several takes the
    nearest, a sample owning none keeps its exact index. Samples stay strictly increasing and as many;
    the spacing becomes slightly uneven. Keyframes sparser than the samples snap only some of them.
    """
    idx = np.asarray(indices, dtype=np.int64)
    keys = np.unique(np.asarray(key_indices, dtype=np.int64))
    if idx.size == 0 or keys.size == 0:
        return list(indices)
    right = np.clip(np.searchsorted(idx, keys), 0, idx.size - 1)       # first sample >= keyframe
    left = np.clip(right - 1, 0, idx.size - 1)
    owner = np.where(np.abs(keys - idx[left]) <= np.abs(idx[right] - keys), left, right)
    dist = np.abs(keys - idx[owner])
    order = np.lexsort((dist, owner))                                  # by owner, then distance
    first = np.ones(order.size, dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    out = idx.copy()
    out[owner[order][first]] = keys[order][first]
    return out.tolist()


def _check_num_frames(num_frames) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")


def _check_chunk(chunk_frames) -> None:
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")


def _decord_message(e: Exception) -> str:
    """decord's first error line without its timestamp and source location."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return lines[0].rsplit("ERROR ", 1)[-1].strip()


class VideoSource:
    """The sampled frames of one video, read lazily.

    `frame_indices` are the sampled indices into the video's `total_frames` frames (strictly increasing);
    `num_frames == len(frame_indices)`. `iter_chunks(c)` yields uint8 tensors [n, H, W, 3] (RGB, CPU for
    files), n <= c, covering `frame_indices` in order; it may be called again to re-read, but one
    iteration at a time (file readers are shared between iterations). `close()` drops the readers.
    """

    num_frames: int
    total_frames: int
    frame_indices: list[int]

    def iter_chunks(self, chunk_frames: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArrayVideoSource(VideoSource):
    """Frames given in memory as a uint8 numpy array or torch tensor [T, H, W, 3]."""

    def __init__(self, frames: np.ndarray | torch.Tensor, num_frames: int | None):
        if isinstance(frames, np.ndarray):
            if frames.dtype != np.uint8:
                raise ValueError(f"video array must have dtype uint8, got {frames.dtype}")
            frames = torch.from_numpy(frames)
        if frames.dtype != torch.uint8:
            raise ValueError(f"video tensor must have dtype uint8, got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video array must have shape [T, H, W, 3], got {tuple(frames.shape)}")
        if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
            raise ValueError(f"video array is empty: shape {tuple(frames.shape)}")
        self._frames = frames
        self.total_frames = int(frames.shape[0])
        self.frame_indices = sample_indices(self.total_frames, self.total_frames if num_frames is None
                                            else num_frames)
        self.num_frames = len(self.frame_indices)

    def iter_chunks(self, chunk_frames: int) -> Iterator[torch.Tensor]:
        _check_chunk(chunk_frames)
        idx = torch.tensor(self.frame_indices, device=self._frames.device)
        for start in range(0, self.num_frames, chunk_frames):
            yield self._frames[idx[start:start + chunk_frames]]               # (n, H, W, 3)


class FileVideoSource(VideoSource):
    """A video file read with decord. Only the sampled frames are decoded, `get_batch` per chunk.

    With `num_workers` > 1, chunks are decoded by that many decord readers in threads (decord releases
    the GIL), chunk k by whichever reader is free, at most 2 x num_workers chunks ahead of the consumer:
    order kept, memory bounded. This pays off for sparse sampling, where every sampled frame costs a
    decode of its group of pictures anyway; for dense sampling each chunk re-decodes from its keyframe.
    """

    def __init__(self, path: str | os.PathLike, num_frames: int | None, num_workers: int = 1,
                 keyframe_snap: bool = False):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        self.path = os.fspath(path)
        self.num_workers = num_workers
        if not os.path.exists(self.path):
            raise ValueError(f"video file not found: {self.path}")
        if not os.path.isfile(self.path):
            raise ValueError(f"video path is not a file: {self.path}")
        reader = self._open_reader()
        self.total_frames = len(reader)
        if self.total_frames == 0:
            raise ValueError(f"video has no frames: {self.path}")
        self.frame_indices = sample_indices(self.total_frames, DEFAULT_FILE_FRAMES if num_frames is None
                                            else num_frames)
        if keyframe_snap:
            self.frame_indices = snap_to_keyframes(self.frame_indices, list(reader.get_key_indices()))
        self.num_frames = len(self.frame_indices)
        self._readers = [reader]                 # opened readers, reused across iter_chunks calls

    def _open_reader(self):
        import decord
        threads = 0 if self.num_workers == 1 else 1   # ffmpeg's own threads only for a single reader
        try:
            return decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
        except Exception as e:   # decord raises a bare DECORDError (RuntimeError) for every failure
            raise ValueError(f"cannot read {self.path} as a video (not a video, no video stream or no "
                             f"frames): {_decord_message(e)}") from e

    def _decode(self, readers: queue.SimpleQueue, indices: list[int]) -> torch.Tensor:
        reader = readers.get()
        try:
            return torch.from_numpy(reader.get_batch(indices).asnumpy())     # (n, H, W, 3)
        except Exception as e:
            raise ValueError(f"failed to decode frames {indices[0]}..{indices[-1]} of {self.path}: "
                             f"{_decord_message(e)}") from e
        finally:
            readers.put(reader)

    def iter_chunks(self, chunk_frames: int) -> Iterator[torch.Tensor]:
        _check_chunk(chunk_frames)
        chunks = [self.frame_indices[s:s + chunk_frames] for s in range(0, self.num_frames, chunk_frames)]
        while len(self._readers) < self.num_workers:
            self._readers.append(self._open_reader())
        readers: queue.SimpleQueue = queue.SimpleQueue()
        for reader in self._readers:
            readers.put(reader)
        if self.num_workers == 1:
            for indices in chunks:
                yield self._decode(readers, indices)
            return
        yield from self._iter_parallel(readers, chunks)

    def _iter_parallel(self, readers: queue.SimpleQueue, chunks: list[list[int]]) -> Iterator[torch.Tensor]:
        max_ahead = 2 * self.num_workers
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="vxl-decode")
        pending: deque[Future] = deque()         # chunks submitted, not yet yielded, in time order
        next_idx = 0
        try:
            for _ in range(len(chunks)):
                while len(pending) < max_ahead and next_idx < len(chunks):
                    pending.append(pool.submit(self._decode, readers, chunks[next_idx]))
                    next_idx += 1
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._readers.clear()


def open_video(video, num_frames: int | None = None, *, num_workers: int = 1,
               keyframe_snap: bool = False) -> VideoSource:
    """A path (str / os.PathLike, read with decord) or uint8 frames [T, H, W, 3] (numpy or torch).

    num_frames: frames to sample uniformly, clamped to the video's length; None takes every frame of an
    array and DEFAULT_FILE_FRAMES (128) from a file. num_workers and keyframe_snap apply to files only.
    Bad input raises ValueError naming the problem.
    """
    if num_frames is not None:
        _check_num_frames(num_frames)
    if isinstance(video, (str, os.PathLike)):
        return FileVideoSource(video, num_frames, num_workers=num_workers, keyframe_snap=keyframe_snap)
    if isinstance(video, (np.ndarray, torch.Tensor)):
        if num_workers != 1 or keyframe_snap:
            raise ValueError("num_workers and keyframe_snap apply to video files, not arrays")
        return ArrayVideoSource(video, num_frames)
    raise ValueError(f"video must be a path or a uint8 array/tensor [T, H, W, 3], got {type(video).__name__}")
