"""Training throughput of the demo model on this machine: end-to-end steps of a recipe stage (default: the
last, videos of 8 to 512 frames) with 1 or 2 compute threads, rendering the videos in the training process
(0 data workers) or in a worker process ahead of it (1). Every setting runs the same steps from the same
initial weights; settings with the same thread count and forward must end with identical weights (the worker
changes where batches are rendered, not what they are), which is checked and recorded. A setting's third field
picks the training forward: `seq` (window after window, vxl.train.forward.encode_video; the default) or `layer`
(every window of a layer at once, encode_video_layerwise: the same function with other float rounding, so
its weights are compared with the first `seq` run of its thread count: the L2 norm of the difference of
all weights over the L2 norm of the weights). A fourth field, RANKS, trains data-parallel in that many
processes of THREADS threads each (vxl.train.parallel; the same function, other float rounding: compared with
the first one-process run of the same forward).

    python -m bench.train_speed [--recipe nine] [--stage 9] [--steps 30] [--settings 1,0 1,1 2,0 2,1 2,0,layer 1,0,layer,2]
                                [--out bench/results/train_speed_cpu.json] [--save-weights FILE]

bench/train_speed_ab.py runs it on two commits turn about.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from bench.common import env_info, write_json


def run_setting(cfg, threads: int, workers: int, steps: int, out_dir: str,
                layerwise: bool = False, ranks: int = 1) -> tuple[float, dict]:
    """(seconds, final weights) of steps 0..steps-1 of cfg from its seed's fresh weights; ranks > 1 runs
    them data-parallel in that many processes (vxl.train.parallel) and times them in the first, from
    the moment every process is ready (process start-up is left out)."""
    from vxl.train.loop import TrainConfig
    import dataclasses
    extra = {"ranks": ranks} if ranks > 1 else {}     # (runs on commits before data-parallel training too)
    cfg = TrainConfig.from_dict({**dataclasses.asdict(cfg), "out_dir": out_dir, "num_threads": threads,
                                 "save_every": 10**9, "log_every": 10**9, "layerwise": layerwise, **extra})
    if ranks == 1:
        return _timed_steps(cfg, workers, steps)
    import os
    from vxl.train import parallel
    result = os.path.join(out_dir, "result.pt")
    parallel.spawn(_rank_steps, ranks, threads, cfg, steps, result)
    return torch.load(result, weights_only=True)


def _rank_steps(cfg, steps: int, result: str) -> None:
    from vxl.train import parallel
    parallel.barrier()
    seconds, state = _timed_steps(cfg, 0, steps)
    if parallel.rank() == 0:
        torch.save((seconds, state), result)


def _timed_steps(cfg, workers: int, steps: int) -> tuple[float, dict]:
    from vxl.train.arch import build_demo_model
    from vxl.train.loop import run_steps
    import os
    out_dir, threads = cfg.out_dir, cfg.num_threads
    torch.set_num_threads(threads)
    try:        # what vxl.train.loop.train does first (on commits that have it)
        from vxl.train.malloc import keep_freed_memory
        keep_freed_memory()
    except ImportError:
        pass
    loaded = build_demo_model(cfg.arch, cfg.seed)
    model = loaded.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    log = os.path.join(out_dir, "log.jsonl")
    t0 = time.perf_counter()
    extra = {"data_workers": workers} if workers else {}      # (runs on commits before data workers too)
    run_steps(cfg, loaded, opt, 0, steps, os.path.join(out_dir, "state.pt"), log, **extra)
    seconds = time.perf_counter() - t0
    return seconds, {k: v.clone() for k, v in model.state_dict().items()}


def frames_trained(cfg, steps: int) -> int:
    """Frames (videos x frames) in steps 0..steps-1: the same draws as vxl.train.loop.step_batch."""
    import numpy as np
    from vxl.train.loop import frames_at
    total = 0
    for step in range(steps):
        num_frames = frames_at(cfg, step, np.random.default_rng([cfg.seed, step]))
        total += num_frames * int(np.clip(cfg.batch_frames // num_frames, cfg.min_batch, cfg.max_batch))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="nine", help="recipe whose stage to time (vxl.train.recipe.RECIPES)")
    p.add_argument("--stage", type=int, default=9, help="recipe stage whose configuration to time (1-based)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--settings", nargs="+", default=["1,0", "1,1", "2,0", "2,1"],
                   help="THREADS,DATA_WORKERS pairs")
    p.add_argument("--out", default="bench/results/train_speed_cpu.json")
    p.add_argument("--save-weights", default=None, help="save the first setting's final weights here (torch.save)")
    args = p.parse_args(argv)
    from vxl.train.__main__ import parse_args
    from vxl.train.recipe import RECIPES
    name, stage_args, _ = RECIPES[args.recipe][0][args.stage - 1]
    cfg, _ = parse_args(stage_args)
    frames = frames_trained(cfg, args.steps)
    runs, weights = [], {}
    for setting in args.settings:
        fields = setting.split(",")
        threads, workers = int(fields[0]), int(fields[1])
        forward = fields[2] if len(fields) > 2 else "seq"
        ranks = int(fields[3]) if len(fields) > 3 else 1
        if forward not in ("seq", "layer"):
            raise SystemExit(f"setting {setting!r}: the forward must be seq or layer, got {forward!r}")
        if ranks > 1 and workers:
            raise SystemExit(f"setting {setting!r}: data workers serve a single process, not {ranks} ranks")
        with tempfile.TemporaryDirectory() as d:
            seconds, state = run_setting(cfg, threads, workers, args.steps, d, layerwise=forward == "layer",
                                         ranks=ranks)
        same = None
        key = (threads, forward, ranks)
        if key in weights:
            same = all(torch.equal(state[k], v) for k, v in weights[key].items())
        if args.save_weights and not runs:
            torch.save(state, args.save_weights)
        weights.setdefault(key, state)
        run = {"threads": threads, "data_workers": workers, "forward": forward, "seconds": seconds,
               "sec_per_step": seconds / args.steps, "frames_per_s": frames / seconds,
               "identical_weights_to_first_with_these_threads": same}
        if ranks > 1:
            run["ranks"] = ranks
        # the reference: a one-process run of the same forward (ranks > 1), or of `seq` with these threads
        ref_key = (next((k for k in weights if k[1] == forward and k[2] == 1), None) if ranks > 1
                   else (threads, "seq", 1) if forward == "layer" else None)
        if ref_key in weights:
            ref = weights[ref_key]
            run["weight_diff_vs"] = f"{ref_key[0]} threads, {ref_key[1]}, 1 process"
            # Adam turns rounding-sized gradient differences into lr-sized steps, so compare all weights at once
            diff = sum(float((state[k] - v).double().pow(2).sum()) for k, v in ref.items() if v.is_floating_point())
            norm = sum(float(v.double().pow(2).sum()) for v in ref.values() if v.is_floating_point())
            run["rel_weight_diff"] = (diff / norm) ** 0.5
        runs.append(run)
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["seconds"]
    for r in runs:
        r["speedup_vs_first"] = base / r["seconds"]
    result = {"stage": name, "steps": args.steps, "frames": frames, "config": {"min_frames": cfg.min_frames, "max_frames": cfg.max_frames,
              "batch_frames": cfg.batch_frames, "seed": cfg.seed}, "runs": runs, "header": env_info()}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
