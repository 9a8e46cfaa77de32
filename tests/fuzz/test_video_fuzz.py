"""Property tests over video inputs on the built-in tiny model (it has a vision tower): uint8 arrays and
tensors of odd sizes, arrays of wrong dtypes and shapes, real, truncated and random-byte mp4 files, paths
that are missing, directories or not videos, junk values, and num_frames / compression_ratio of every
kind, each batch with good requests in one `LLM.generate` call (properties: tests/fuzz/fuzz_common.py)."""
from __future__ import annotations

import os
import pathlib
import uuid

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_common import ANY, GREEDY, OK, RATIOS, combine, fuzz_settings, run_batch, with_solos
from helpers import write_mp4
from vxl import LLM

VIDEO_WORDS = ("video",)


@pytest.fixture(scope="module")
def tiny_llm():
    return LLM("tiny", device="cpu", num_pages=256)


@pytest.fixture(scope="module")
def tiny_goods(tiny_llm):
    frames = np.random.default_rng(1).integers(0, 256, (3, 20, 28, 3), dtype=np.uint8)
    return with_solos(tiny_llm, [{"prompt": "What happens in the clip?", "video": frames, "request_id": "good1"},
                                 {"prompt": "Say something.", "request_id": "text"}])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder with a real 10-frame mp4, a text file and an empty file."""
    root = tmp_path_factory.mktemp("media")
    write_mp4(str(root / "real.mp4"), np.random.default_rng(5).integers(0, 256, (10, 32, 48, 3), dtype=np.uint8))
    (root / "notes.txt").write_text("not a video\n")
    (root / "empty.mp4").write_bytes(b"")
    return root


def file_video(root: pathlib.Path, spec: tuple):
    """A file spec drawn by `video_value` made real: ("real", as_path) | ("truncated", fraction) |
    ("random", bytes) | ("path", name)."""
    kind, arg = spec
    real = root / "real.mp4"
    if kind == "real":
        return real if arg else str(real)
    if kind == "path":
        return {"root": str(root), "null": "/dev/null", "empty": ""}.get(arg, str(root / arg))
    path = root / f"{kind}_{uuid.uuid4().hex}.mp4"
    data = real.read_bytes()
    path.write_bytes(data[:int(len(data) * arg)] if kind == "truncated" else arg)
    return str(path)


@st.composite
def video_value(draw):
    """(video or a file spec, num_frames, expectation)."""
    kind = draw(st.sampled_from(["array", "bad_array", "tensor", "real", "truncated", "random", "path", "other"]))
    t, h, w = draw(st.integers(1, 5)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    frames = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    if kind in ("array", "tensor"):
        video, expect = (frames if kind == "array" else torch.from_numpy(frames)), OK
    elif kind == "bad_array":
        video = draw(st.sampled_from([frames.astype(np.float32), frames.astype(np.int64), frames > 9, frames[0],
                                      frames[None], frames[..., :2], np.concatenate([frames, frames[..., :1]], -1),
                                      frames[:0], frames.tolist()]))
        expect = VIDEO_WORDS
    elif kind == "real":
        video, expect = ("file", ("real", draw(st.booleans()))), OK
    elif kind == "truncated":       # the last bytes of an mp4 may be metadata a decoder can do without
        fraction = draw(st.floats(0, 0.999))
        video, expect = ("file", ("truncated", fraction)), (ANY if fraction > 0.9 else VIDEO_WORDS)
    elif kind == "random":
        video, expect = ("file", ("random", draw(st.binary(max_size=4000)))), VIDEO_WORDS
    elif kind == "path":
        name = draw(st.sampled_from(["missing.mp4", "root", "null", "notes.txt", "empty.mp4", "empty"]))
        video, expect = ("file", ("path", name)), VIDEO_WORDS
    else:
        video, expect = draw(st.sampled_from([b"\x00\x00\x00 ftypisom", 42, 3.5, {"path": "real.mp4"}])), VIDEO_WORDS
    num_frames = draw(st.one_of(st.none(), st.integers(1, 12), st.sampled_from([0, -3, 2.5, "4", True, 10**6])))
    if num_frames is not None and not (isinstance(num_frames, int) and not isinstance(num_frames, bool)
                                       and num_frames >= 1):
        expect = combine(expect, ("num_frames",))
    return video, num_frames, expect


@st.composite
def video_request(draw):
    """(request with a video or a file spec, params, expectation)."""
    video, num_frames, expect = draw(video_value())
    req = {"prompt": draw(st.text(max_size=12).filter(lambda q: "<image>" not in q)), "video": video}
    if num_frames is not None:
        req["num_frames"] = num_frames
    if draw(st.booleans()):
        req["compression_ratio"], ratio_expect = draw(RATIOS)
        expect = combine(expect, ratio_expect)
    return req, GREEDY, expect


@given(fuzzed=st.lists(video_request(), min_size=1, max_size=3),
       positions=st.lists(st.integers(0, 5), min_size=3, max_size=3))
@fuzz_settings(0.7)
def test_video_inputs_fail_alone(tiny_llm, tiny_goods, media, fuzzed, positions):
    fuzzed = [({**req, "video": file_video(media, req["video"][1])} if isinstance(req["video"], tuple)
               and req["video"][:1] == ("file",) else req, p, e) for req, p, e in fuzzed]
    for req, out in run_batch(tiny_llm, tiny_goods, fuzzed, positions):
        if out.error is None and isinstance(req["video"], (str, os.PathLike)):
            assert out.metrics["video_decoder"] in ("decord", "pyav")
            assert 1 <= out.metrics["num_frames"] <= 10


def test_meta_device_video_names_the_field(tiny_llm):
    """A uint8 video tensor on the meta device holds no data: refused, naming `video`."""
    out = tiny_llm.generate([{"prompt": "q", "video": torch.zeros(2, 8, 8, 3, dtype=torch.uint8, device="meta")}],
                            GREEDY, use_tqdm=False)[0]
    assert out.finish_reason == "error" and "video" in out.error, out.error
