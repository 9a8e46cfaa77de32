"""End-to-end benchmark (`python -m bench.e2e`): frames x compression ratio sweep of one request per point (r = 1 is
the uncompressed baseline), kept KV, peak memory, seconds per stage, frames/s, tokens/s, MFU on GPU;
JSON + PNG plots in bench/results/, a scaling-law fit at the end, and a max-frames search on GPU.
Run from the repository root: `python -m bench.e2e --help`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from bench.common import RESULTS_DIR, env_info, header_line, log, write_json
from bench.e2e_plots import plot_memory, plot_time
from bench.e2e_point import PointSpec, load_model, run_isolated, run_point
from bench.scaling import format_summary, memory_growth, scaling_fits

CPU_FRAMES = [64, 128, 256, 512, 1024]
GPU_FRAMES = [64, 128, 256, 512, 1024, 2048]


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must look like 120x160 (HxW), not {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError("frame size must be positive")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    p.add_argument("--model", default="tiny", help="'tiny', 'full-random' (Qwen2-7B + CLIP-L/336, random "
                   "weights; needs a GPU) or a checkpoint directory")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--attention-backend", default=None, choices=["torch", "triton"])
    p.add_argument("--frames", type=int, nargs="+", default=None,
                   help=f"frame counts (default {CPU_FRAMES} on CPU, {GPU_FRAMES} on GPU)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="instead of --frames: the default sweep doubled from 64 up to N, N included")
    p.add_argument("--ratios", type=int, nargs="+", default=[1, 4, 16], help="compression ratios (1 = uncompressed)")
    p.add_argument("--video", default=None, help="a video file (default: generated uint8 frames, no decoding)")
    p.add_argument("--frame-size", type=parse_size, default=(120, 160), help="generated frames, HxW")
    p.add_argument("--max-tokens", type=int, default=4, help="tokens generated per request")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one fresh process per point (default on CPU: exact peak RSS per point)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one-window warm-up request before each measured one")
    p.add_argument("--repeats", type=int, default=5, help="at most this many measured runs per point ...")
    p.add_argument("--min-seconds", type=float, default=3.0, help="... repeating until this much time is "
                   "measured (the median run is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per point (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS_DIR, help="output directory")
    p.add_argument("--name", default=None, help="file stem (default e2e_<model>_<device>)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="re-fit and re-plot the points of an earlier result instead of running")
    p.add_argument("--max-frames-search", type=int, nargs="*", default=None, metavar="RATIO",
                   help="GPU only: find the largest frame count that runs at these ratios (default 16)")
    p.add_argument("--search-start", type=int, default=256)
    p.add_argument("--search-limit", type=int, default=131072)
    p.add_argument("--search-tolerance", type=float, default=0.05)
    p.add_argument("--search-budget", type=float, default=1800.0, help="seconds for the whole search")
    return p


def sweep_frames(device: torch.device, max_frames: int | None) -> list[int]:
    """The default frame counts, or with max_frames N: 64, 128, ... (doubling) up to N, and N itself."""
    if max_frames is None:
        return GPU_FRAMES if device.type == "cuda" else CPU_FRAMES
    frames = [n for n in (64 * 2 ** i for i in range(max_frames.bit_length())) if n < max_frames]
    return frames + [max_frames]


def check_args(args, device: torch.device) -> None:
    if any(n < 1 for n in args.frames) or any(r < 1 for r in args.ratios):
        raise SystemExit("error: frames and ratios must be >= 1")
    if args.max_tokens < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        raise SystemExit("error: --max-tokens, --repeats and --threads must be >= 1")
    if args.model == "full-random" and device.type != "cuda" and args.device is None:
        raise SystemExit("error: full-random (8.4B parameters) needs a CUDA device; pass --device cpu to force it")
    if args.video is not None and not os.path.isfile(args.video):
        raise SystemExit(f"error: --video {args.video!r} is not a file")
    if args.max_frames_search is not None and device.type != "cuda":
        raise SystemExit("error: --max-frames-search runs on a CUDA device only")


def sweep(args, base: PointSpec, loaded) -> list[dict]:
    """Every (ratio, frames) point; a failed point is recorded with its error and the sweep goes on."""
    log(f"{'frames':>6} {'r':>3} {'kept tok':>9} {'kept KV MiB':>11} {'peak MiB':>9} {'wall s':>8} "
        f"{'frames/s':>9} {'vis tok/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
    points = []
    for ratio in args.ratios:
        for n in sorted(args.frames):
            spec = dataclasses.replace(base, num_frames=n, ratio=ratio)
            try:
                p = run_isolated(spec) if loaded is None else run_point(spec, loaded)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                log(f"{n:>6} {ratio:>3} failed: {str(exc).strip().splitlines()[-1]}")
                points.append({"num_frames": n, "compression_ratio": ratio, "error": str(exc)})
                continue
            mfu = f"{p['mfu']:.1%}" if p["mfu"] is not None else "-"
            log(f"{n:>6} {ratio:>3} {p['num_kept_tokens']:>9} {p['kept_kv_bytes'] / 2**20:11.2f} "
                f"{p['peak_memory_bytes'] / 2**20:9.1f} {p['wall_seconds']:8.2f} {p['frames_per_s']:9.1f} "
                f"{p['visual_tokens_per_s']:10.0f} {p['tflops_per_s']:8.3f} {mfu:>6}")
            points.append(p)
    return points


def run_searches(args, loaded, base: PointSpec) -> list[dict]:
    from bench.maxframes import search_max_frames
    searches = []
    for ratio in args.max_frames_search or [16]:
        res = search_max_frames(loaded, base, ratio, args.search_start, args.search_limit,
                                args.search_tolerance, args.search_budget)
        print(f"max frames at r={ratio}: {res['max_frames']} (first failure: {res['failed_at']}; "
              f"planner: {res.get('planner_max_frames')}; measured formula: {res.get('predicted_max_frames')})")
        searches.append(res)
    return searches


def notes_for(args, device: torch.device) -> list[str]:
    notes = []
    if args.model in ("tiny", "full-random"):
        notes.append(f"'{args.model}' has random weights: speed and memory are real, answers are meaningless.")
    if device.type != "cuda":
        notes.append("CPU run: peak memory is process RSS; MFU and the max-frames search are GPU-only and were "
                     "not run.")
    return notes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.frames is not None and args.max_frames is not None:
        raise SystemExit("error: give --frames or --max-frames, not both")
    if args.max_frames is not None and args.max_frames < 1:
        raise SystemExit("error: --max-frames must be >= 1")
    args.frames = args.frames or sweep_frames(device, args.max_frames)
    check_args(args, device)
    isolate = args.isolate if args.isolate is not None else device.type != "cuda"
    if args.from_json:
        return replot(args.from_json, args.out, args.name)
    base = PointSpec(model=args.model, device=args.device, dtype=args.dtype, attention_backend=args.attention_backend,
                     video=args.video, height=args.frame_size[0], width=args.frame_size[1],
                     max_tokens=args.max_tokens, warmup=args.warmup, repeats=args.repeats,
                     min_seconds=args.min_seconds, num_threads=args.threads, seed=args.seed)
    info = env_info()
    header = header_line(info)
    log(header)
    loaded = None
    if not isolate or args.max_frames_search is not None:
        from vxl.engine.llm import resolve_dtype
        loaded = load_model(args.model, device, resolve_dtype(args.dtype, device), args.seed)
    points = sweep(args, base, None if isolate else loaded)
    fits, growth = scaling_fits(points), memory_growth(points)
    for line in format_summary(fits, growth):
        print(line)
    searches = run_searches(args, loaded, base) if args.max_frames_search is not None else []
    stem = args.name or f"e2e_{os.path.basename(os.path.normpath(args.model))}_{device.type}"
    out = {"benchmark": "e2e", "env": info, "header": header, "isolated_points": isolate,
           "args": {k: v for k, v in vars(args).items()}, "points": points, "scaling_fits": fits,
           "memory_growth": growth, "max_frames": searches, "load_average_1m_end": os.getloadavg()[0],
           "notes": notes_for(args, device)}
    for note in out["notes"]:
        print(f"note: {note}")
    write_outputs(out, args.out, stem)
    return 0 if all("error" not in p for p in points) else 1


def write_outputs(out: dict, out_dir: str, stem: str) -> None:
    points, header = out["points"], out["header"]
    paths = [write_json(os.path.join(out_dir, f"{stem}.json"), out),
             plot_memory(points, os.path.join(out_dir, f"{stem}_memory.png"), header),
             plot_time(points, out["scaling_fits"], os.path.join(out_dir, f"{stem}_time.png"), header)]
    print("wrote " + ", ".join(paths))


def replot(path: str, out_dir: str, name: str | None) -> int:
    """Fit and plot the points of an earlier result again (its header and points are kept as they were)."""
    with open(path) as f:
        out = json.load(f)
    out["scaling_fits"], out["memory_growth"] = scaling_fits(out["points"]), memory_growth(out["points"])
    for line in format_summary(out["scaling_fits"], out["memory_growth"]):
        print(line)
    write_outputs(out, out_dir, name or os.path.splitext(os.path.basename(path))[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
