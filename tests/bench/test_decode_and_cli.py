"""The sampled-frame decoding benchmark on a tiny generated video, and the end-to-end and needle benchmarks
(`python -m bench.e2e`, `python -m bench.niah`) on 2-point sweeps."""
import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from bench import decode  # noqa: E402
from bench.e2e import CPU_FRAMES, sweep_frames  # noqa: E402
from bench import e2e, niah  # noqa: E402
from helpers import moving_square_frames, write_mp4  # noqa: E402

POINT_FIELDS = {"method", "readers", "keyframe_snap", "num_frames", "seconds", "seconds_all", "frames_per_s",
                "speedup_vs_released", "frame_indices", "max_index_shift"}


def test_decode_benchmark_on_a_generated_video(tmp_path):
    rc = decode.main(["--size", "64x96", "--video-frames", "40", "--gop", "8", "--num-frames", "10",
                      "--workers", "1", "2", "--repeats", "2", "--out", str(tmp_path), "--name", "d"])
    assert rc == 0
    with open(tmp_path / "d.json") as f:
        result = json.load(f)
    assert {"commit", "torch", "cpu", "num_cpus"} <= set(result["env"]) and "vxl@" in result["header"]
    video = result["video"]
    assert (video["total_frames"], video["height"], video["width"], video["num_keyframes"]) == (40, 64, 96, 5)
    points = result["points"]
    assert [(p["method"], p["readers"], p["keyframe_snap"]) for p in points] == [
        ("released", 1, False), ("vxl", 1, False), ("vxl", 2, False), ("vxl", 1, True), ("vxl", 2, True)]
    exact = points[0]["frame_indices"]
    for p in points:
        assert POINT_FIELDS <= set(p) and p["num_frames"] == 10 and len(p["seconds_all"]) == 2
        assert p["frames_per_s"] == pytest.approx(10 / p["seconds"])
        assert p["frame_indices"] == (exact if not p["keyframe_snap"] else p["frame_indices"])
    snapped = points[-1]["frame_indices"]
    keyframes = set(range(0, 40, 8))
    assert snapped != exact and sum(i in keyframes for i in snapped) > sum(i in keyframes for i in exact)
    assert 0 < points[-1]["max_index_shift"] < 8 and points[0]["speedup_vs_released"] == 1.0


def test_decode_benchmark_on_a_given_file_and_bad_arguments(tmp_path):
    video = write_mp4(tmp_path / "v.mp4", moving_square_frames(24, 64, 80), lossless=False)
    assert decode.main(["--video", video, "--num-frames", "6", "--workers", "1", "--repeats", "1",
                        "--out", str(tmp_path)]) == 0
    with open(tmp_path / "decode_v.json") as f:
        result = json.load(f)
    assert result["video"]["path"] == video and not result["video"]["generated"]
    for argv in (["--workers", "0"], ["--video", str(tmp_path / "missing.mp4")], ["--gop", "0"]):
        with pytest.raises(SystemExit) as exc:
            decode.main(argv + ["--out", str(tmp_path)])
        assert exc.value.code != 0


def test_e2e_max_frames_extends_the_default_sweep():
    import torch
    cpu = torch.device("cpu")
    assert sweep_frames(cpu, None) == CPU_FRAMES
    assert sweep_frames(cpu, 3000) == [64, 128, 256, 512, 1024, 2048, 3000]
    assert sweep_frames(cpu, 256) == [64, 128, 256] and sweep_frames(cpu, 20) == [20]
    from bench import e2e
    for argv in (["--max-frames", "0"], ["--max-frames", "64", "--frames", "64"]):
        with pytest.raises(SystemExit) as exc:
            e2e.main(argv)
        assert exc.value.code != 0


def test_e2e_benchmark_runs_a_two_point_sweep(tmp_path):
    rc = e2e.main([ "--max-frames", "20", "--ratios", "2", "4", "--no-isolate", "--max-tokens", "2",
                   "--repeats", "1", "--min-seconds", "0", "--no-warmup", "--threads", "1",
                   "--out", str(tmp_path), "--name", "cli"])
    assert rc == 0
    with open(tmp_path / "cli.json") as f:
        result = json.load(f)
    assert [(p["compression_ratio"], p["num_frames"]) for p in result["points"]] == [(2, 20), (4, 20)]
    assert result["args"]["max_frames"] == 20 and all("error" not in p for p in result["points"])
    assert os.path.isfile(tmp_path / "cli_memory.png") and os.path.isfile(tmp_path / "cli_time.png")


def test_niah_benchmark_runs_a_two_point_grid(tmp_path):
    rc = niah.main([ "--frames", "8", "--depths", "0", "1", "--trials", "1", "--max-tokens", "2",
                   "--out", str(tmp_path), "--name", "cli"])
    assert rc == 0
    with open(tmp_path / "cli.json") as f:
        result = json.load(f)
    assert [(c["frames"], c["depth"]) for c in result["cells"]] == [(8, 0.0), (8, 1.0)]
    assert os.path.isfile(tmp_path / "cli_heatmap.png")
