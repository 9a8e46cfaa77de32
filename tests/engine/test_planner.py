"""Memory planner: kept-KV arithmetic of DESIGN.md section 3 for Qwen2-7B, and the plan's consistency."""
from __future__ import annotations

import json

import pytest

from vxl.cli import main
from vxl.engine.planner import GiB, configs_for, parse_bytes, plan_memory, workspace_bytes


def test_qwen2_7b_numbers_equal_the_design_formula():
    cfg, clip = configs_for("full-random")
    plan = plan_memory(cfg, clip, 80 * GiB, ratio=16, dtype_bytes=2)
    assert plan.bytes_per_token == 2 * 28 * 4 * 128 * 2 == 56 * 1024
    assert plan.tokens_per_frame == 144
    assert plan.kv_bytes_per_frame == 144 / 16 * 56 * 1024
    assert plan.kv_bytes(2048, cfg.beacon_window) == 18432 * 56 * 1024          # about 1 GiB
    llm_params = 152064 * 3584 * 2 + 28 * (3584 * (3584 + 2 * 512) + 3584 + 2 * 512 + 3584 * 3584
                                           + 3 * 3584 * 18944 + 2 * 3584) + 3584
    beacon = 3584 + 28 * (3584 * (3584 + 2 * 512) + 3584 + 2 * 512)
    assert plan.weights_bytes > 2 * (llm_params + beacon)                        # + CLIP and projector
    assert plan.weights_bytes < 2 * (llm_params + beacon + 400_000_000)
    budget = 80 * GiB - plan.weights_bytes - plan.workspace_bytes - plan.reserve_bytes
    assert plan.max_frames == int(budget // plan.kv_bytes_per_frame)
    assert plan.max_frames > 100_000                                              # an hour-plus at r = 16


@pytest.mark.parametrize("ratio", [1, 2, 4, 8, 16])
def test_max_frames_scales_with_the_ratio(ratio):
    cfg, clip = configs_for("full-random")
    base = plan_memory(cfg, clip, 80 * GiB, ratio=1)
    plan = plan_memory(cfg, clip, 80 * GiB, ratio=ratio)
    assert abs(plan.max_frames - base.max_frames * ratio) <= ratio + base.max_frames * ratio * 0.01


def test_parse_bytes_and_cli(capsys):
    assert parse_bytes("80GiB") == 80 * GiB and parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError):
        parse_bytes("lots")
    assert main(["plan", "--model", "full-random", "--gpu-memory", "24GiB", "--compression-ratio", "16", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["bytes_per_token"] == 57344 and plan["max_frames"] > 2048
    assert main(["plan", "--model", "tiny", "--gpu-memory", "2GiB", "--dtype", "float32"]) == 0
    assert "max frames" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_plan_fits_its_memory(backend):
    """max_frames fit and one frame more does not; the torch backend's score matrix grows with the kept
    tokens, so the work space is recomputed at each frame count rather than taken from the plan."""
    cfg, clip = configs_for("tiny")
    plan = plan_memory(cfg, clip, GiB, ratio=16, dtype_bytes=4, attention_backend=backend)

    def used(num_frames):
        kept = num_frames * plan.tokens_per_frame / plan.ratio
        work = workspace_bytes(cfg, clip, plan.ratio, 4, 8192, backend, kept)
        return plan.weights_bytes + plan.reserve_bytes + work + kept * plan.bytes_per_token

    assert plan.max_frames > 0
    assert used(plan.max_frames) <= GiB < used(plan.max_frames + 1)
    kept = plan.max_frames * plan.tokens_per_frame / plan.ratio
    assert abs(plan.workspace_bytes - workspace_bytes(cfg, clip, plan.ratio, 4, 8192, backend, kept)) <= 1
    base_work = workspace_bytes(cfg, clip, plan.ratio, 4, 8192, backend, 0)
    assert (plan.workspace_bytes > base_work) == (backend == "torch")
