"""Training speed of this checkout against an earlier commit, turn about: bench.train_speed (this checkout's
benchmark code) runs each recipe stage's first steps with the `vxl` package of `--base` (extracted with git
archive) and with this checkout's, alternating base / head `--pairs` times, so that both see the machine in the
same state (its speed drifts by tens of percent within a session). Records each run's seconds, the ratio of
the median base time to the median head time per stage, and whether the two ended with identical weights
(a change meant to keep results bit for bit must).

    python -m bench.train_speed_ab --base 92da3cc [--head REV] [--recipe keyed] [--stages 5 4 1] [--steps 30] [--pairs 2]
                                   [--setting 2,0,layer] [--out bench/results/train_speed_ab_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

from bench.common import REPO_ROOT, env_info, write_json


def extract_vxl(rev: str, dest: str) -> str:
    """The `vxl` package of commit `rev` under dest/ (a directory to put first on sys.path)."""
    archive = subprocess.run(["git", "archive", rev, "vxl"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def timed_run(vxl_root: str | None, recipe: str, stage: int, steps: int, setting: str, tmp: str,
              tag: str) -> tuple[dict, dict]:
    """(the run record of bench.train_speed, its final weights), in a fresh process whose `vxl` is
    vxl_root's (None: this checkout's)."""
    out, weights = os.path.join(tmp, f"{tag}.json"), os.path.join(tmp, f"{tag}.pt")
    path = [p for p in (vxl_root, REPO_ROOT) if p]
    code = (f"import sys; sys.path[:0] = {path!r}; from bench.train_speed import main; "
            f"raise SystemExit(main(sys.argv[1:]))")
    subprocess.run([sys.executable, "-c", code, "--recipe", recipe, "--stage", str(stage), "--steps", str(steps),
                    "--settings", setting, "--out", out, "--save-weights", weights], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    with open(out) as f:
        record = json.load(f)["runs"][0]
    return record, torch.load(weights, weights_only=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare with (any git revision)")
    p.add_argument("--head", default=None, help="a commit to time instead of this checkout's files")
    p.add_argument("--recipe", default="keyed")
    p.add_argument("--stages", type=int, nargs="+", default=[5, 4, 1], help="1-based recipe stages")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--setting", default="2,0,layer", help="one bench.train_speed setting")
    p.add_argument("--out", default="bench/results/train_speed_ab_cpu.json")
    args = p.parse_args(argv)
    def short(rev: str) -> str:
        return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    stages = []
    with tempfile.TemporaryDirectory() as tmp:
        base_root = extract_vxl(args.base, os.path.join(tmp, "base"))
        head_root = extract_vxl(args.head, os.path.join(tmp, "head")) if args.head else None
        for stage in args.stages:
            runs, final = [], {}
            for pair in range(args.pairs):
                for side, root in (("base", base_root), ("head", head_root)):
                    record, weights = timed_run(root, args.recipe, stage, args.steps, args.setting, tmp,
                                                f"s{stage}_{side}_{pair}")
                    final.setdefault(side, weights)
                    runs.append({"side": side, "pair": pair, "seconds": record["seconds"],
                                 "sec_per_step": record["sec_per_step"]})
                    print(json.dumps({"stage": stage, **runs[-1]}), flush=True)
            median = {s: statistics.median(r["seconds"] for r in runs if r["side"] == s) for s in ("base", "head")}
            same = final["base"].keys() == final["head"].keys() and all(
                torch.equal(final["base"][k], final["head"][k]) for k in final["base"])
            stages.append({"stage": stage, "steps": args.steps, "runs": runs, "median_seconds": median,
                           "head_speedup": median["base"] / median["head"], "identical_weights": same})
            print(json.dumps({k: v for k, v in stages[-1].items() if k != "runs"}), flush=True)
    header = env_info()       # its commit is this checkout's (+dirty when files differ from it)
    write_json(args.out, {"recipe": args.recipe, "setting": args.setting, "base": short(args.base),
                          "head": short(args.head) if args.head else header["commit"], "stages": stages,
                          "header": header})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
