"""A rerun of a training recipe against its committed run: whether every logged step (loss, first-token
accuracy) came out the same, what each stage's pretraining phases and steps took in both runs, and whether
the rerun's export equals the shipped model file for file. A change meant to speed training up without
changing its results must give identical steps and an identical export; the times are then the recipe's
new training time on this machine.

    python -m demo_model.recipe --out-dir runs/rerun --export runs/rerun/export
    python -m demo_model.rerun --run-dir runs/rerun [--export runs/rerun/export]
                               [--shipped vxl/data/demo] [--logs demo_model/results] --out FILE.json

A step's time includes waiting for its batch and any state save before it (demo_model.loop.run_steps), so a
stage's step time is the sum of its logged windows' sec_per_step x steps (the same as the last record's
elapsed_s for a stage run in one process, and still right for one resumed across processes).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os

from bench.common import env_info, write_json


def read_log(path: str) -> tuple[dict[str, float], list[dict]]:
    """(pretraining phase -> seconds, step records) of a stage's log.jsonl. A phase or window logged twice
    (a stage resumed after an interruption) counts once, its last record."""
    phases, steps = {}, {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "phase" in record:
                phases[record["phase"]] = record["seconds"]
            elif "step" in record:
                steps[record["step"]] = record
    return phases, [steps[s] for s in sorted(steps)]


def step_seconds(records: list[dict]) -> float:
    total, previous = 0.0, 0
    for r in records:
        total += r["sec_per_step"] * (r["step"] - previous)
        previous = r["step"]
    return total


def same_steps(a: list[dict], b: list[dict]) -> bool:
    keys = ("step", "loss", "first_token_acc", "mean_frames", "lr")
    return len(a) == len(b) and all(all(x[k] == y[k] for k in keys) for x, y in zip(a, b))


def compare_dirs(a: str, b: str) -> list[str]:
    """The files of the two directory trees that differ or exist in one only (relative paths)."""
    diffs = []
    for root, _, files in os.walk(a):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), a)
            other = os.path.join(b, rel)
            if not os.path.exists(other) or not filecmp.cmp(os.path.join(a, rel), other, shallow=False):
                diffs.append(rel)
    for root, _, files in os.walk(b):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), b)
            if not os.path.exists(os.path.join(a, rel)):
                diffs.append(rel)
    return sorted(diffs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo_model.rerun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="the rerun's --out-dir (a directory per stage)")
    p.add_argument("--logs", default="demo_model/results", help="the committed run's <stage>_log.jsonl")
    p.add_argument("--export", default=None, help="the rerun's export, compared with --shipped")
    p.add_argument("--shipped", default="vxl/data/demo")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from demo_model.recipe import STAGES
    stages = []
    for stage, _, _ in STAGES:
        logged_phases, logged = read_log(os.path.join(args.logs, f"{stage}_log.jsonl"))
        rerun_phases, rerun = read_log(os.path.join(args.run_dir, stage, "log.jsonl"))
        stages.append({"stage": stage, "logged_pretrain_s": sum(logged_phases.values()),
                       "logged_steps_s": step_seconds(logged), "rerun_pretrain_s": sum(rerun_phases.values()),
                       "rerun_steps_s": step_seconds(rerun), "rerun_phases_s": rerun_phases,
                       "steps_logged": len(logged), "step_records_identical": same_steps(logged, rerun)})
        print(json.dumps(stages[-1]), flush=True)
    total = lambda side: sum(s[f"{side}_pretrain_s"] + s[f"{side}_steps_s"] for s in stages) / 60
    result = {"recipe": "keyed", "run_dir": args.run_dir, "stages": stages,
              "logged_minutes": total("logged"), "rerun_minutes": total("rerun"),
              "all_step_records_identical": all(s["step_records_identical"] for s in stages)}
    if args.export:
        result["export_vs_shipped_differences"] = compare_dirs(args.shipped, args.export)
    result["env"] = env_info()
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("stages", "env")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
