"""Video input: uniform sampling, decord decoding of the sampled frames (chunked, parallel, keyframe
snapped) against frame-by-frame decord reads, array inputs and bad inputs. Test videos are written here
with PyAV (lossless x264, frame i mostly grey level 10 + 5 i so a decoded frame tells its index).
"""
import math

import decord
import numpy as np
import pytest
import torch

from helpers import write_mp4
from vxl.engine.video import (DEFAULT_FILE_FRAMES, open_video, sample_indices,
                              snap_to_keyframes)


def frame_grey(i: int) -> int:
    """Frame i is mostly this grey (grey survives YUV 4:2:0 within ~1 level), so it tells its index."""
    return 10 + 5 * i


def write_video(path, num_frames: int, width: int, height: int, gop: int) -> None:
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i, img in enumerate(frames):
        img[...] = frame_grey(i)
        img[: height // 2, : width // 3] = (255 - frame_grey(i), 90, 30)         # some spatial content
    write_mp4(path, frames, options={"g": str(gop), "preset": "ultrafast"})


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    specs = {"even": (48, 64, 48, 12), "odd": (30, 33, 17, 7)}
    paths = {}
    for name, (n, w, h, gop) in specs.items():
        paths[name] = d / f"{name}.mp4"
        write_video(paths[name], n, w, h, gop)
    paths["text"] = d / "notes.mp4"
    paths["text"].write_text("this is not a video\n")
    paths["empty"] = d / "empty.mp4"                          # a video stream with zero frames
    write_mp4(paths["empty"], np.zeros((0, 48, 64, 3), np.uint8))
    return paths


def read_all(source, chunk_frames):
    chunks = list(source.iter_chunks(chunk_frames))
    assert all(1 <= c.shape[0] <= chunk_frames and c.dtype == torch.uint8 for c in chunks)
    return torch.cat(chunks)


def decord_one_by_one(path, indices):
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return torch.from_numpy(np.stack([vr[i].asnumpy() for i in indices]))


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("total,n", [(1, 1), (48, 1), (48, 7), (48, 16), (48, 48), (1000, 128), (901, 900)])
def test_sample_indices_is_linspace(total, n):
    assert sample_indices(total, n) == np.linspace(0, total - 1, n, dtype=int).tolist()


def test_sample_indices_clamps_to_length():
    assert sample_indices(5, 9) == [0, 1, 2, 3, 4]
    assert sample_indices(1, 128) == [0]


@pytest.mark.parametrize("total,n,match", [(0, 4, "0 frames"), (10, 0, "num_frames"), (10, -3, "num_frames"),
                                           (10, 2.5, "num_frames"), (10, True, "num_frames")])
def test_sample_indices_errors(total, n, match):
    with pytest.raises(ValueError, match=match):
        sample_indices(total, n)


def test_snap_to_keyframes():
    assert snap_to_keyframes([0, 19, 38, 57, 260, 501, 1199], [0, 250, 500, 750, 1000]) == \
        [0, 19, 38, 57, 250, 500, 1000]
    assert snap_to_keyframes([0, 10, 20], [5, 15]) == [5, 15, 20]      # ties go to the earlier sample
    assert snap_to_keyframes([3, 9], []) == [3, 9]
    rng = np.random.default_rng(0)
    for _ in range(300):
        total = int(rng.integers(1, 400))
        idx = sample_indices(total, int(rng.integers(1, 60)))
        keys = rng.integers(0, total, int(rng.integers(0, 30))).tolist()
        out = snap_to_keyframes(idx, keys)
        assert len(out) == len(idx) and all(a < b for a, b in zip(out, out[1:]))
        assert all(o == i or o in keys for o, i in zip(out, idx))


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("name,n", [("even", 7), ("even", 16), ("even", 48), ("even", 100), ("odd", 11)])
def test_file_frames_equal_one_by_one_decode(videos, name, n):
    with open_video(videos[name], n) as source:
        frames = read_all(source, 5)
        total = source.total_frames
        assert source.frame_indices == sample_indices(total, n) and source.num_frames == min(n, total)
    assert torch.equal(frames, decord_one_by_one(videos[name], source.frame_indices))
    # the content identifies the frame: decoded grey level -> index
    grey = frames[:, -1, -1].double().mean(-1)
    assert [round((g - 10) / 5) for g in grey.tolist()] == source.frame_indices


@pytest.mark.parametrize("chunk", [1, 3, 5, 16, 1000])
def test_chunks_equal_full_read(videos, chunk):
    source = open_video(videos["even"], 16)
    assert torch.equal(read_all(source, chunk), read_all(source, 16))
    assert len(list(source.iter_chunks(chunk))) == math.ceil(16 / chunk)


@pytest.mark.parametrize("num_workers", [2, 3])
def test_parallel_readers_keep_order(videos, num_workers):
    serial = read_all(open_video(videos["even"], 23), 4)
    parallel = open_video(videos["even"], 23, num_workers=num_workers)
    assert torch.equal(read_all(parallel, 4), serial)
    assert torch.equal(read_all(parallel, 3), serial)                  # re-iterable, readers reused
    it = parallel.iter_chunks(2)
    next(it)
    it.close()                                                       # stopping early shuts the pool down


def test_keyframe_snap(videos):
    vr = decord.VideoReader(str(videos["even"]))
    keys = list(vr.get_key_indices())
    assert keys == [0, 12, 24, 36]
    source = open_video(videos["even"], 6, keyframe_snap=True)
    assert source.frame_indices == snap_to_keyframes(sample_indices(48, 6), keys)
    assert source.num_frames == 6 and set(keys[1:]) <= set(source.frame_indices)
    assert torch.equal(read_all(source, 4), decord_one_by_one(videos["even"], source.frame_indices))


def test_default_num_frames(videos):
    assert open_video(videos["even"]).num_frames == min(48, DEFAULT_FILE_FRAMES)
    arr = np.random.default_rng(0).integers(0, 256, (9, 5, 7, 3), dtype=np.uint8)
    assert open_video(arr).frame_indices == list(range(9))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_array_input(kind):
    arr = np.random.default_rng(1).integers(0, 256, (20, 13, 7, 3), dtype=np.uint8)
    video = arr if kind == "numpy" else torch.from_numpy(arr.copy())
    source = open_video(video, 6)
    assert source.total_frames == 20 and source.num_frames == 6
    want = torch.from_numpy(arr[np.linspace(0, 19, 6, dtype=int)])
    assert torch.equal(read_all(source, 4), want)


def test_path_like_and_str(videos):
    assert open_video(str(videos["odd"]), 3).frame_indices == open_video(videos["odd"], 3).frame_indices


# ---------------------------------------------------------------- bad inputs

def test_bad_files(videos, tmp_path):
    cases = [(tmp_path / "missing.mp4", "not found"), (tmp_path, "not a file"),
             (videos["text"], "notes.mp4 is not a video file: its bytes look like text"), (videos["empty"], "as a video")]
    for path, match in cases:
        with pytest.raises(ValueError, match=match):
            open_video(path, 4)


@pytest.mark.parametrize("video,match", [
    (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
    (np.zeros((4, 0, 8, 3), np.uint8), "empty"),
    (np.zeros((4, 8, 8, 3), np.float32), "uint8"),
    (torch.zeros(4, 8, 8, 3, dtype=torch.int64), "uint8"),
    (np.zeros((4, 8, 8), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((4, 3, 8, 8), np.uint8), r"\[T, H, W, 3\]"),
    ([[1, 2]], "path or a uint8 array"),
])
def test_bad_arrays(video, match):
    with pytest.raises(ValueError, match=match):
        open_video(video)


def test_bad_arguments(videos):
    arr = np.zeros((4, 8, 8, 3), np.uint8)
    for kwargs, match in [({"num_frames": 0}, "num_frames"), ({"num_workers": 2}, "arrays"),
                          ({"keyframe_snap": True}, "arrays")]:
        with pytest.raises(ValueError, match=match):
            open_video(arr, **kwargs)
    with pytest.raises(ValueError, match="num_workers"):
        open_video(videos["even"], 4, num_workers=0)
    with pytest.raises(ValueError, match="chunk_frames"):
        next(open_video(arr).iter_chunks(0))
    with pytest.raises(TypeError):
        open_video(arr, 4, prefetch=2)


@pytest.mark.parametrize("content,kind", [(b"Meeting notes\nnothing to see here\n" * 20, "text"),
                                          (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
                                          (bytes(range(256)) * 3, "no known video container")])
def test_a_file_that_is_no_video_container_is_refused_naming_what_it_is(tmp_path, content, kind):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"not a video file: its bytes look like {kind}"):
        open_video(str(path))


def test_containers_are_recognised_from_their_first_bytes(videos):
    from vxl.engine.video import container_of
    with open(videos["even"], "rb") as f:
        assert container_of(f.read(512)) == "mp4/mov"
    assert container_of(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert container_of(b"\x1a\x45\xdf\xa3" + bytes(8)) == "matroska/webm"
