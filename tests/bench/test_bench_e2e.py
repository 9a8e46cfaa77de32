"""The end-to-end benchmark on tiny sweeps (in-process and one process per point), its scaling fit and
FLOP count, peak-RSS measurement, and the full-size random model's config arithmetic (never allocated)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from bench import e2e  # noqa: E402
from bench.common import PeakRSS, env_info  # noqa: E402
from bench.flops import llm_row_flops, request_flops  # noqa: E402
from bench.scaling import fit_quadratic  # noqa: E402
from helpers import moving_square_frames, write_mp4  # noqa: E402
from vxl.vst import count_vst  # noqa: E402
from vxl.model.tiny import TINY_CLIP, tiny_model_config  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POINT_FIELDS = {"num_frames", "compression_ratio", "num_visual_tokens", "num_vst_tokens", "num_kept_tokens",
                "kept_kv_bytes", "seconds", "wall_seconds", "frames_per_s", "visual_tokens_per_s",
                "peak_memory_bytes", "peak_memory_kind", "flops", "tflops_per_s", "mfu", "input_bytes"}


def read_outputs(out_dir, stem):
    with open(os.path.join(out_dir, f"{stem}.json")) as f:
        result = json.load(f)
    for suffix in ("memory", "time"):
        with open(os.path.join(out_dir, f"{stem}_{suffix}.png"), "rb") as f:
            assert f.read(8) == PNG_MAGIC
    return result


def test_e2e_sweep_in_process(tmp_path):
    rc = e2e.main(["--frames", "10", "25", "--ratios", "2", "--no-isolate", "--max-tokens", "2", "--repeats", "2",
                   "--min-seconds", "100", "--threads", "1", "--out", str(tmp_path), "--name", "t"])
    assert rc == 0
    result = read_outputs(tmp_path, "t")
    assert {"commit", "torch", "triton", "transformers", "cpu", "num_cpus"} <= set(result["env"])
    assert "vxl@" in result["header"]
    points = result["points"]
    assert [p["num_frames"] for p in points] == [10, 25]
    for p in points:
        assert POINT_FIELDS <= set(p)
        assert p["compression_ratio"] == 2 and p["num_visual_tokens"] == 16 * p["num_frames"]
        assert p["num_vst_tokens"] == count_vst(p["num_visual_tokens"], 160, 2)
        assert p["kept_kv_bytes"] == p["num_kept_tokens"] * 2 * 3 * 2 * 32 * 4      # tiny, float32
        assert {"windows", "text_prefill", "vision"} <= set(p["seconds"]) and p["wall_seconds"] > 0
        assert p["peak_memory_kind"] == "process RSS" and p["peak_memory_bytes"] > 0
        assert p["mfu"] is None                                                   # CPU: no MFU
        assert len(p["wall_seconds_all"]) == 2 and p["torch_num_threads"] == 1
    fit = result["scaling_fits"]["2"]
    assert fit["frames"] == [10, 25] and {"a", "b", "r2"} <= set(fit["wall"])
    assert result["memory_growth"]["2"]["frames"] == [10, 25]
    assert any("GPU-only" in n for n in result["notes"])


def test_e2e_isolated_points_and_video_file(tmp_path):
    video = write_mp4(tmp_path / "v.mp4", moving_square_frames(24), lossless=False)
    rc = e2e.main(["--frames", "12", "--ratios", "1", "4", "--isolate", "--max-tokens", "2", "--min-seconds", "0",
                   "--video", video,
                   "--out", str(tmp_path), "--name", "iso"])
    assert rc == 0
    result = read_outputs(tmp_path, "iso")
    assert result["isolated_points"] is True
    assert [(p["compression_ratio"], p["num_frames"]) for p in result["points"]] == [(1, 12), (4, 12)]
    for p in result["points"]:
        assert p["input"] == video and p["input_bytes"] == 0 and len(p["wall_seconds_all"]) == 1
        assert p["rss_growth_bytes"] >= 0 and p["peak_rss_bytes"] >= p["rss_baseline_bytes"]
    assert result["points"][0]["num_kept_tokens"] > result["points"][1]["num_kept_tokens"]
    assert result["scaling_fits"] == {}          # one frame count per ratio: nothing to fit


@pytest.mark.parametrize("argv", [["--bogus"], ["--ratios", "0"], ["--max-frames-search", "16", "--device", "cpu"],
                                  ["--frame-size", "12by3"]])
def test_e2e_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as exc:
        e2e.main(argv)
    assert exc.value.code != 0


def test_fit_quadratic_recovers_coefficients():
    n = np.array([64, 128, 256, 512, 1024], dtype=float)
    fit = fit_quadratic(n, 2e-3 * n + 3e-6 * n * n)
    assert fit["a"] == pytest.approx(2e-3, rel=1e-6) and fit["b"] == pytest.approx(3e-6, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    share = 3e-6 * 1024 ** 2 / (2e-3 * 1024 + 3e-6 * 1024 ** 2)
    assert fit["attention_share_at_n_max"] == pytest.approx(share)


def test_request_flops_counts_rows_and_shrinks_attention_with_ratio():
    from transformers import CLIPVisionConfig
    cfg, clip = tiny_model_config(vocab_size=259), CLIPVisionConfig(**TINY_CLIP)
    frames, tpf, text, gen = 100, 16, 30, 5
    by_ratio = {r: request_flops(cfg, clip, frames, tpf, r, text, gen) for r in (1, 4, 16)}
    for r, f in by_ratio.items():
        rows = frames * tpf + count_vst(frames * tpf, cfg.beacon_window, r) + text + gen - 1
        assert f["llm_linear"] == rows * llm_row_flops(cfg)
        assert f["total"] == f["vision"] + f["llm_linear"] + f["llm_attention"] + f["lm_head"]
    assert by_ratio[1]["vision"] == by_ratio[16]["vision"]
    assert by_ratio[1]["llm_attention"] > 4 * by_ratio[4]["llm_attention"] > 4 * by_ratio[16]["llm_attention"]


def test_peak_rss_sees_an_allocation():
    with PeakRSS() as rss:
        block = np.ones(64 * 2**20 // 8)           # 64 MiB, touched
        del block
    assert rss.growth >= 60 * 2**20 and rss.method in ("VmHWM", "sampled VmRSS")


def test_env_info_has_versions_and_commit():
    info = env_info()
    assert info["torch"] == torch.__version__ and info["commit"]


def parameter_counts(cfg, clip) -> dict[str, int]:
    """Parameters per part of the full-size model, counted on the meta device (nothing allocated): `llm`
    (Qwen2 without beacon weights), `beacon`, `vision` (the CLIP layers actually built), `projector`."""
    from vxl.model.random_full import meta_model
    counts = {"llm": 0, "beacon": 0, "vision": 0, "projector": 0}
    for name, p in meta_model(cfg, clip).named_parameters():
        part = ("vision" if ".vision_tower." in name else "projector" if ".mm_projector." in name
                else "beacon" if "beacon_" in name else "llm")
        counts[part] += p.numel()
    return counts


def test_random_full_config_arithmetic():
    from vxl.model.random_full import random_full_configs
    from vxl.model.vision import tokens_per_frame
    cfg, clip = random_full_configs()
    params = parameter_counts(cfg, clip)
    assert params["llm"] == 7_615_616_512                  # Qwen2-7B
    assert params["beacon"] == 28 * (3584 * 3584 + 3584 + 2 * (3584 * 512 + 512)) + 3584   # + beacon embedding
    assert 0.28e9 < params["vision"] < 0.31e9              # CLIP-L/336 up to layer -2
    assert 7.9e9 < params["llm"] + params["vision"] < 8.0e9
    assert cfg.bytes_per_token(2) == 56 * 1024 and tokens_per_frame(clip, cfg.mm_spatial_pool_stride) == 144
    assert cfg.beacon_window == 1440 and cfg.num_key_value_heads == 4 and cfg.head_dim == 128
    # DESIGN: 2048 frames at r = 16 keep 18,432 VSTs = about 1 GiB
    assert count_vst(2048 * 144, cfg.beacon_window, 16) * cfg.bytes_per_token(2) == 18432 * 56 * 1024


def test_build_random_full_narrow_runs_in_place():
    """The full-size builder's code path (meta -> one allocation in the target dtype -> in-place init),
    on a narrow override so the test allocates a few MB."""
    from vxl import LLM, SamplingParams
    from vxl.model.random_full import build_random_full
    loaded = build_random_full("cpu", torch.bfloat16, seed=1, llm_overrides=dict(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, beacon_window=144, beacon_stride=144), clip_overrides=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56))
    params = dict(loaded.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in params.values())
    assert all(torch.isfinite(p.float()).all() for p in params.values())
    assert loaded.model.tokens_per_frame == 4 and loaded.name == "full-random"
    llm = LLM(loaded, device="cpu", dtype="bfloat16")
    frames = np.random.default_rng(0).integers(0, 255, (6, 40, 50, 3), dtype=np.uint8)
    out = llm.generate([{"prompt": "hi", "video": frames, "compression_ratio": 4}],
                       SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    assert out.error is None and out.metrics["num_vst_tokens"] == 6 and len(out.token_ids) == 3


@pytest.mark.parametrize("fits,start,limit,expect", [(1000, 64, 10**6, 1000), (10**9, 64, 4096, 4096),
                                                     (10, 64, 4096, 0), (64, 64, 4096, 64)])
def test_max_frames_bisection_logic(fits, start, limit, expect):
    """The GPU search's bracketing, with a fake run that succeeds up to `fits` frames (no GPU needed)."""
    from bench.maxframes import bisect_max
    tried = []
    good, bad = bisect_max(lambda n: tried.append(n) or n <= fits, start, limit, tolerance=0.0, budget_s=60)
    assert good == expect and all(n <= limit for n in tried)
    assert bad == (None if fits >= limit else (start if expect == 0 else expect + 1))


def test_max_frames_predictions():
    from bench.maxframes import planner_max_frames, predict_max_frames
    from vxl.model.tiny import build_tiny
    first = {"peak_memory_bytes": 20 * 10**9, "kv_pool_bytes": 10**9, "kept_kv_bytes": 57344 * 100,
             "num_kept_tokens": 100, "compression_ratio": 16, "attention_backend": "triton"}
    assert predict_max_frames(first, 144, 80 * 10**9) == int(61 * 10**9 / (9 * 57344))
    loaded = build_tiny(torch.device("cpu"), torch.float32)
    assert planner_max_frames(loaded, first, 16, 2**30) > planner_max_frames(loaded, first, 4, 2**30) > 0
