"""End to end on the built-in tiny model with real video files: CLI, streaming, failure isolation."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from helpers import moving_square_frames, write_mp4
from vxl import LLM, SamplingParams
from vxl.cli import main
from vxl.vst import window_lengths


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_mp4(tmp_path_factory.mktemp("v") / "clip.mp4", moving_square_frames(40, 72, 96), lossless=False)


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu")


def test_video_file_and_same_frames_as_array_agree(llm, video):
    import decord
    frames = decord.VideoReader(video).get_batch(list(range(40))).asnumpy()
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    a, b = llm.generate([{"prompt": "Describe.", "video": video, "num_frames": 40},
                         {"prompt": "Describe.", "video": frames}], params, use_tqdm=False)
    assert a.error is None and b.error is None
    assert a.token_ids == b.token_ids
    tpf = llm.model.tokens_per_frame
    assert a.metrics["num_frames"] == 40 and a.metrics["num_visual_tokens"] == 40 * tpf
    assert a.metrics["num_vst_tokens"] == 40 * tpf // 16
    assert {"vision", "decode_video", "windows", "text_prefill", "decode"} <= set(a.metrics["seconds"])
    assert "prefill" not in a.metrics["seconds"]


def test_frames_are_encoded_window_by_window(llm, video):
    sizes = []
    original = llm.model.encode_frames

    def recording(pixels):
        sizes.append(pixels.shape[0])
        return original(pixels)
    llm.model.encode_frames = recording
    try:
        out = llm.generate({"prompt": "Q", "video": video, "num_frames": 40}, SamplingParams(max_tokens=1),
                           use_tqdm=False)[0]
    finally:
        del llm.model.encode_frames
    frames_per_window = -(-llm.config.beacon_window // llm.model.tokens_per_frame)
    assert out.error is None and sum(sizes) == 40 and max(sizes) <= frames_per_window and len(sizes) > 1


class RecordRanges:
    """Stands in for nvtx.annotate: records each range's name as it opens (from any thread)."""

    def __init__(self):
        self.names: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.names.append(name)
        yield


def test_nvtx_ranges_around_every_stage(llm, video):
    ranges, saved = RecordRanges(), llm.core.annotate
    llm.core.set_annotate(ranges)
    try:
        out = llm.generate({"prompt": "Q", "video": video, "num_frames": 40},
                           SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    finally:
        llm.core.set_annotate(saved)
    assert out.error is None
    frames_per_window = -(-llm.config.beacon_window // llm.model.tokens_per_frame)
    num_chunks = -(-40 // frames_per_window)
    names = ranges.names
    assert num_chunks <= names.count("decode-video") <= num_chunks + 1      # + the read that finds the end
    assert names.count("vision") == num_chunks
    assert names.count("windows") == len(window_lengths(40 * llm.model.tokens_per_frame, llm.config.beacon_window))
    assert names.count("text-prefill") == 2                                 # the text before and after the video
    assert names.count("decode") == 2                                       # the 3rd token is never fed back
    assert set(names) == {"decode-video", "vision", "windows", "text-prefill", "decode"}


def test_bad_videos_fail_alone(llm, video, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    reqs = [{"prompt": "Q", "video": video, "num_frames": 8},
            {"prompt": "Q", "video": str(tmp_path / "missing.mp4")},
            {"prompt": "Q", "video": str(not_video)},
            {"prompt": "Q", "video": np.zeros((0, 32, 32, 3), dtype=np.uint8)},
            {"prompt": "Q", "video": np.zeros((4, 32, 32, 3), dtype=np.float32)},
            {"prompt": "Q", "video": video, "compression_ratio": 0},
            {"prompt": "Q", "video": video, "num_frames": 0},
            {"prompt": "Q <image> twice", "video": video},
            {"prompt": "Q", "video": video, "num_frames": 8}]
    outs = llm.generate(reqs, SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert [o.finish_reason == "error" for o in outs] == [False] + [True] * 7 + [False]
    for o in outs[1:-1]:
        assert o.error and len(o.error) > 10
    assert "missing.mp4" in outs[1].error or "exist" in outs[1].error
    assert outs[0].token_ids == outs[-1].token_ids
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_cli_generate_and_demo(video, capsys):
    assert main(["generate", video, "--model", "tiny", "--prompt", "What moves?", "--max-tokens", "4", "--num-frames", "20"]) == 0
    out = capsys.readouterr().out
    assert "frames=20" in out and "vst_kept=" in out and "kept_kv=" in out
    assert main(["generate", video, "--model", "tiny", "--prompt", "Q", "--max-tokens", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["finish_reason"] in ("stop", "length") and record["metrics"]["num_frames"] == 40
    assert main(["demo", "--num-frames", "48", "--model", "tiny", "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "video: 48 synthetic frames" in out and "right answer:" in out and "model answer:" in out
    assert main(["generate", video + ".missing", "--model", "tiny", "--prompt", "Q"]) == 1


def test_uint8_tensor_input_and_text_only(llm):
    frames = torch.randint(0, 256, (12, 50, 70, 3), dtype=torch.uint8)
    outs = llm.generate([{"prompt": "Q", "video": frames, "num_frames": 7}, {"prompt": "Just text"}],
                        SamplingParams(max_tokens=2), use_tqdm=False)
    assert outs[0].error is None and outs[0].metrics["num_frames"] == 7
    assert outs[1].error is None and outs[1].metrics["num_frames"] == 0


def test_decode_error_mid_stream_fails_only_that_request(llm, video, monkeypatch):
    import vxl.engine.video as video_module
    real_open = video_module.open_video

    class Breaks:
        def __init__(self, source):
            self.source, self.num_frames, self.total_frames = source, source.num_frames, source.total_frames
            self.decoder = source.decoder

        def iter_chunks(self, n):
            for i, chunk in enumerate(self.source.iter_chunks(n)):
                if i == 2:
                    raise RuntimeError("corrupt packet at frame 20")
                yield chunk

        def close(self):
            self.source.close()

    def fake_open(v, num_frames=None, **kw):
        src = real_open(v, num_frames, **kw)
        return Breaks(src) if isinstance(v, str) and v.endswith("clip.mp4") else src

    monkeypatch.setattr(video_module, "open_video", fake_open)
    frames = torch.randint(0, 256, (30, 48, 64, 3), dtype=torch.uint8)
    outs = llm.generate([{"prompt": "Q", "video": frames}, {"prompt": "Q", "video": video},
                         {"prompt": "Q", "video": frames}], SamplingParams(max_tokens=3, ignore_eos=True),
                        use_tqdm=False)
    assert outs[1].finish_reason == "error" and "corrupt packet" in outs[1].error
    assert outs[0].error is None and outs[0].token_ids == outs[2].token_ids
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_cli_images_and_jsonl(video, tmp_path, capsys):
    from PIL import Image
    paths = []
    for i, (w, h) in enumerate([(90, 60), (40, 70)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    assert main(["generate", "--model", "tiny", paths[0], video, "--prompt", "Q", "--max-tokens", "2", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["error"] for r in records] == [None, None] and records[1]["metrics"]["num_frames"] == 40
    assert main(["generate", "--model", "tiny", "--images", *paths, "--prompt", "Q", "--max-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["metrics"]["num_frames"] == 2
    jsonl = tmp_path / "reqs.jsonl"
    jsonl.write_text(json.dumps({"prompt": "A?", "video": video, "num_frames": 8}) + "\n" +
                     json.dumps({"prompt": "B?", "image": paths[1]}) + "\n")
    assert main(["generate", "--model", "tiny", "--requests", str(jsonl), "--max-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("frames=") == 2 and "line1:" in out


def test_parallel_decoding_and_keyframe_snap(video):
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    req = {"prompt": "Q", "video": video, "num_frames": 24}
    base = LLM("tiny", device="cpu").generate([req], params, use_tqdm=False)[0]
    par = LLM("tiny", device="cpu", video_decode_workers=3).generate([req], params, use_tqdm=False)[0]
    assert par.error is None and par.token_ids == base.token_ids and par.metrics["decode_fps"] > 0
    snap = LLM("tiny", device="cpu", keyframe_snap=True).generate([req], params, use_tqdm=False)[0]
    assert snap.error is None and snap.metrics["num_frames"] == 24
    with pytest.raises(ValueError):
        LLM("tiny", device="cpu", video_decode_workers=0)


def test_cli_single_long_video_shows_its_windows_bar(video, tmp_path, capsys):
    long_video = write_mp4(tmp_path / "long.mp4", moving_square_frames(200, 64, 96), lossless=False)
    argv = ["generate", long_video, "--model", "tiny", "--prompt", "Q", "--max-tokens", "1", "--num-frames", "200",
            "--compression-ratio", "16"]
    assert main(argv) == 0                       # 200 frames = 20 windows of the tiny model: a bar
    err = capsys.readouterr().err
    assert "windows" in err and "/20 [" in err and "requests" not in err
    assert main(argv + ["--no-progress"]) == 0
    assert "windows" not in capsys.readouterr().err
    assert main(["generate", video, "--model", "tiny", "--prompt", "Q", "--max-tokens", "1"]) == 0
    assert "windows" not in capsys.readouterr().err       # 4 windows: too short for a bar
