"""bench.train_speed_ab: both sides time the same steps of a recipe stage in fresh processes, each with its own
commit's `vxl`, and the weights they end with are compared."""
from __future__ import annotations

import json
import subprocess

import pytest

from bench import train_speed_ab
from bench.common import REPO_ROOT


def test_extract_vxl_gives_the_commit_s_package(tmp_path):
    root = train_speed_ab.extract_vxl("HEAD", str(tmp_path))
    committed = subprocess.run(["git", "show", "HEAD:vxl/train/render.py"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert (tmp_path / "vxl" / "train" / "render.py").read_text() == committed and root == str(tmp_path)


@pytest.mark.parametrize("stage", [4])
def test_same_commit_on_both_sides_ends_with_identical_weights(tmp_path, stage):
    out = tmp_path / "ab.json"
    assert train_speed_ab.main(["--base", "HEAD", "--head", "HEAD", "--stages", str(stage), "--steps", "2",
                                "--pairs", "1", "--setting", "1,0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (record,) = result["stages"]
    assert record["identical_weights"] is True
    assert [(r["side"], r["pair"]) for r in record["runs"]] == [("base", 0), ("head", 0)]
    assert all(r["seconds"] > 0 for r in record["runs"]) and record["head_speedup"] > 0
    assert result["base"] == result["head"] and result["header"]["cpu"]
