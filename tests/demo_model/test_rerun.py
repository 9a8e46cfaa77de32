"""demo_model.rerun: a rerun's stage logs against the committed ones (identical steps or not, times summed
per stage, a resumed stage's repeated records counted once) and its export against the shipped files."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from bench.common import REPO_ROOT
from demo_model import rerun as recipe_rerun
from demo_model.recipe import STAGES

LOGS = os.path.join(REPO_ROOT, "demo_model", "results")


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def write(path, recs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)


def test_rerun_against_the_committed_logs_and_the_shipped_export(tmp_path):
    stages = [name for name, _, _ in STAGES]
    run = tmp_path / "run"
    expected_s, halved = 0.0, stages[1]
    for name in stages:
        recs = records(os.path.join(LOGS, f"{name}_log.jsonl"))
        if name == halved:      # a faster machine: every time halved, the steps unchanged
            recs = [{**r, **{k: r[k] / 2 for k in ("sec_per_step", "seconds", "elapsed_s") if k in r}} for r in recs]
        if name == stages[2]:   # resumed: the window before the interruption logged again
            steps = [i for i, r in enumerate(recs) if "step" in r]
            recs = recs[:steps[3] + 1] + [recs[steps[3]]] + recs[steps[3] + 1:]
        if name == stages[3]:   # one loss off by a rounding step
            i = next(i for i, r in enumerate(recs) if "step" in r)
            recs[i] = {**recs[i], "loss": recs[i]["loss"] * (1 + 2 ** -40)}
        write(str(run / name / "log.jsonl"), recs)
        steps = [r for r in records(str(run / name / "log.jsonl")) if "step" in r]
        # independently: in a stage run in one process, its steps take the last record's elapsed time
        expected_s += steps[-1]["elapsed_s"] + sum(r["seconds"] for r in recs if "phase" in r)
    shipped, export = tmp_path / "shipped", tmp_path / "export"
    for d, text in ((shipped, "a"), (export, "b")):
        (d / "clip").mkdir(parents=True)
        (d / "same.json").write_text("{}")
        (d / "clip" / "config.json").write_text(text)
    (export / "extra.bin").write_bytes(b"x")
    out = tmp_path / "rerun.json"
    assert recipe_rerun.main(["--run-dir", str(run), "--logs", LOGS, "--export", str(export),
                              "--shipped", str(shipped), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    by_stage = {s["stage"]: s for s in result["stages"]}
    assert [s["stage"] for s in result["stages"]] == stages
    assert [by_stage[n]["step_records_identical"] for n in stages] == [n != stages[3] for n in stages]
    assert result["all_step_records_identical"] is False
    assert by_stage[halved]["rerun_steps_s"] == pytest.approx(by_stage[halved]["logged_steps_s"] / 2, rel=1e-9)
    assert by_stage[halved]["rerun_pretrain_s"] == pytest.approx(by_stage[halved]["logged_pretrain_s"] / 2, rel=1e-9)
    assert result["rerun_minutes"] == pytest.approx(expected_s / 60, rel=1e-6)
    assert result["logged_minutes"] > result["rerun_minutes"]
    assert result["export_vs_shipped_differences"] == [os.path.join("clip", "config.json"), "extra.bin"]


def test_an_unchanged_export_has_no_differences(tmp_path):
    shipped = os.path.join(REPO_ROOT, "vxl", "data", "demo")
    copy = tmp_path / "copy"
    shutil.copytree(shipped, copy)
    assert recipe_rerun.compare_dirs(shipped, str(copy)) == []
    os.remove(copy / "config.json")
    assert recipe_rerun.compare_dirs(shipped, str(copy)) == ["config.json"]
