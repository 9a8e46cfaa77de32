"""Video input: uniform frame sampling and `VideoSource`, which yields the sampled uint8 frames chunk by
chunk in time order (decord for files, PyAV for files decord cannot read, slicing for arrays) so frames
are decoded window by window and never all held at once. Parallel decoding (several readers, order kept)
and keyframe snapping are options.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

__all__ = ["DEFAULT_FILE_FRAMES", "VideoSource", "open_video", "sample_indices", "snap_to_keyframes"]

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


def _error_line(e: Exception) -> str:
    """An exception's first line; decord's without its timestamp and source location."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return lines[0].rsplit("ERROR ", 1)[-1].strip()


class PyAVReader:
    """The fallback reader: PyAV decoding of a file's first video stream, for files decord cannot open
    or decode (decord fails on some sizes, e.g. 2x2, 16x16, 48x32).

    Same interface and indexing as decord's VideoReader: `len` counts the stream's packets, as decord
    does, so both sample the same indices; frame i is the i-th decoded frame (presentation order);
    `get_batch(indices)` (increasing) -> uint8 [n, H, W, 3] RGB. It decodes forward from its last read
    and restarts from the file's start only when asked for an earlier frame: no seeking, so exact on
    any file PyAV plays, but slower than decord on long sparsely sampled videos. Not thread-safe.
    """

    def __init__(self, path: str):
        import av
        self.path = path
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            is_key = [p.is_keyframe for p in container.demux(video=0) if p.size]   # size 0: flush packet
        if not is_key:
            raise ValueError("no video frames")
        self.num_packets = len(is_key)
        self.key_indices = [i for i, k in enumerate(is_key) if k]
        self._container = None
        self._frames: Iterator | None = None     # the current pass's decoded frames
        self._next_idx = 0                       # index of the frame self._frames yields next

    def __len__(self) -> int:
        return self.num_packets

    def get_key_indices(self) -> list[int]:
        return self.key_indices

    def get_batch(self, indices: list[int]) -> np.ndarray:
        if self._frames is None or indices[0] < self._next_idx:
            import av
            self.close()
            self._container = av.open(self.path)
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"          # frame + slice threads inside ffmpeg
            self._frames, self._next_idx = self._container.decode(stream), 0
        out = []
        for idx in indices:
            for frame in self._frames:
                self._next_idx += 1
                if self._next_idx - 1 == idx:
                    out.append(frame.to_ndarray(format="rgb24"))                # (H, W, 3)
                    break
            else:
                raise ValueError(f"the video ended after {self._next_idx} frames, before frame {idx}")
        return np.stack(out)                                                      # (n, H, W, 3)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None


class VideoSource:
    """The sampled frames of one video, read lazily.

    `frame_indices` are the sampled indices into the video's `total_frames` frames (strictly increasing);
    `num_frames == len(frame_indices)`. `iter_chunks(c)` yields uint8 tensors [n, H, W, 3] (RGB, CPU for
    files), n <= c, covering `frame_indices` in order; it may be called again to re-read, but one
    iteration at a time (file readers are shared between iterations). `close()` drops the readers.
    `decoder` names what decodes a file ("decord" or "pyav"), None for arrays.
    """

    num_frames: int
    total_frames: int
    frame_indices: list[int]
    decoder: str | None = None

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
    """A video file read with decord, else PyAV. Only the sampled frames are decoded, `get_batch` per chunk.

    decord is the fast path. A file it cannot open or whose frame 0 it cannot decode is read with PyAV
    (`decoder` "pyav", one sequential reader); so is a later chunk decord fails on (`decoder` becomes
    "pyav"). Same sampled indices either way; a file neither reads raises ValueError naming it.

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
        with open(self.path, "rb") as f:
            check_container(f.read(512), self.path)
        self._pyav_lock = threading.Lock()       # guards the PyAV reader of chunks decord failed on
        self._pyav_fallback: PyAVReader | None = None
        reader = self._open_first_reader()
        self.total_frames = len(reader)
        if self.total_frames == 0:
            raise ValueError(f"video has no frames: {self.path}")
        self.frame_indices = sample_indices(self.total_frames, DEFAULT_FILE_FRAMES if num_frames is None
                                            else num_frames)
        if keyframe_snap:
            self.frame_indices = snap_to_keyframes(self.frame_indices, list(reader.get_key_indices()))
        self.num_frames = len(self.frame_indices)
        self._readers = [reader]                 # opened readers, reused across iter_chunks calls

    def _open_first_reader(self):
        """decord's reader if it opens the file and decodes frame 0, else PyAV's."""
        self.decoder = "decord"
        try:
            reader = self._open_reader()
            reader.get_batch([0])                # decord opens some files whose frames it cannot convert
            return reader
        except Exception as e:   # decord raises a bare DECORDError (RuntimeError) for every failure
            decord_error = _error_line(e)
        try:
            reader = PyAVReader(self.path)
        except Exception as e:   # av.error.FFmpegError subclasses, or our ValueError
            raise ValueError(f"cannot read {self.path} as a video (not a video, no video stream or no "
                             f"frames): decord: {decord_error}; PyAV: {_error_line(e)}") from e
        self.decoder = "pyav"
        return reader

    def _open_reader(self):
        if self.decoder == "pyav":
            return PyAVReader(self.path)
        import decord
        threads = 0 if self.num_workers == 1 else 1   # ffmpeg's own threads only for a single reader
        return decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)

    def _decode(self, readers: queue.SimpleQueue, indices: list[int]) -> torch.Tensor:
        reader = readers.get()
        try:
            frames = reader.get_batch(indices)                                 # (n, H, W, 3)
            return torch.from_numpy(frames if isinstance(frames, np.ndarray) else frames.asnumpy())
        except Exception as e:
            if isinstance(reader, PyAVReader):
                raise ValueError(f"failed to decode frames {indices[0]}..{indices[-1]} of {self.path}: "
                                 f"PyAV: {_error_line(e)}") from e
            return self._decode_with_pyav(indices, e)
        finally:
            readers.put(reader)

    def _decode_with_pyav(self, indices: list[int], decord_error: Exception) -> torch.Tensor:
        """A chunk decord failed on, from one shared PyAV reader (locked: parallel chunks may arrive out
        of order, which costs the reader a restart, never a wrong frame)."""
        with self._pyav_lock:
            try:
                if self._pyav_fallback is None:
                    self._pyav_fallback = PyAVReader(self.path)
                frames = torch.from_numpy(self._pyav_fallback.get_batch(indices))  # (n, H, W, 3)
            except Exception as e:
                raise ValueError(f"failed to decode frames {indices[0]}..{indices[-1]} of {self.path}: "
                                 f"decord: {_error_line(decord_error)}; PyAV: {_error_line(e)}") from e
            self.decoder = "pyav"
            return frames

    def iter_chunks(self, chunk_frames: int) -> Iterator[torch.Tensor]:
        _check_chunk(chunk_frames)
        chunks = [self.frame_indices[s:s + chunk_frames] for s in range(0, self.num_frames, chunk_frames)]
        is_parallel = self.num_workers > 1 and self.decoder == "decord"   # PyAV decodes in one pass
        while is_parallel and len(self._readers) < self.num_workers:
            self._readers.append(self._open_reader())
        readers: queue.SimpleQueue = queue.SimpleQueue()
        for reader in self._readers:
            readers.put(reader)
        if not is_parallel:
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
        for reader in [*self._readers, self._pyav_fallback]:
            if isinstance(reader, PyAVReader):
                reader.close()
        self._readers.clear()
        self._pyav_fallback = None


# leading bytes of the containers vxl reads: FFmpeg would also "decode" a text file (as rendered text) or
# an image, which is no video to answer about
CONTAINERS = ((4, b"ftyp", "mp4/mov"), (4, b"moov", "mov"), (4, b"mdat", "mov"), (4, b"free", "mov"),
              (4, b"wide", "mov"), (4, b"skip", "mov"), (0, b"\x1a\x45\xdf\xa3", "matroska/webm"),
              (0, b"OggS", "ogg"), (0, b"FLV", "flv"), (0, b"\x00\x00\x01\xba", "mpeg-ps"),
              (0, b"\x00\x00\x01\xb3", "mpeg video"), (0, b"\x00\x00\x00\x01", "h264/hevc stream"),
              (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf/wmv"))
NOT_VIDEO = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
             (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive"))


def container_of(head: bytes) -> str | None:
    """The video container a file's first bytes name, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:1] == b"\x47" and head[188:189] in (b"", b"\x47"):
        return "mpeg-ts"
    return next((name for offset, magic, name in CONTAINERS if head[offset:offset + len(magic)] == magic), None)


def check_container(head: bytes, name: str) -> str:
    """The container of a video file's first bytes, or ValueError naming what the bytes look like instead."""
    container = container_of(head)
    if container is None:
        kind = next((what for magic, what in NOT_VIDEO if head.startswith(magic)), None)
        if kind is None:
            try:
                head.decode("utf-8")
                kind = "text"
            except UnicodeDecodeError:
                kind = "no known video container"
        raise ValueError(f"{name} is not a video file: its bytes look like {kind} (vxl reads mp4, mov, mkv, webm, "
                         f"avi, mpeg-ts, ogg, flv and wmv)")
    return container


def open_video(video, num_frames: int | None = None, *, num_workers: int = 1,
               keyframe_snap: bool = False) -> VideoSource:
    """A path (str / os.PathLike, read with decord, else PyAV) or uint8 frames [T, H, W, 3] (numpy or torch).

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
