"""Vision-stage throughput inside the engine (`python -m bench.vision_stage`): CLIP + projector + pool (the
model's `encode_frames`) while `LLM.generate` serves 1, 4 and 8 concurrent requests of 64 distinct random
uint8 frames each (`max_tokens=1`), on the built-in `demo` model (CPU, 2 torch threads by default).

`encode_frames` is wrapped on the model instance (`llm.model`): the wrapper counts calls and frames
(`pixels.shape[0]`) and times each call with `time.perf_counter` (CUDA synchronised). Per level: frames
encoded, calls, frames per call, vision seconds and frames/s, end-to-end wall seconds and frames/s (the
whole `generate` call), median of `--repeats` after one warm-up; and vision / end-to-end frames/s at 4 and 8
requests over 1. "batching alone" calls `encode_frames` directly on preprocessed pixels: 8 chunks of k
frames one call each (k = ceil(beacon_window / tokens_per_frame), one LLM window's frames) vs all 8k frames
in one call, the two interleaved `--micro-iters` times (medians). Writes one labelled run ("before",
"after", ...) into a JSON that keeps the other labels. On a shared 2-core CPU, 2 torch threads are very
sensitive to other load (each op waits for both threads); `--threads 1` is steadier there.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

import vxl
from bench.common import RESULTS_DIR, env_info, header_line, log, write_labelled_run

PROMPT = "What happens?"


class TimedEncode:
    """Replaces `model.encode_frames` on the instance; the original bound method does the work."""

    def __init__(self, model):
        self.model, self.inner = model, model.encode_frames
        self.calls = self.frames = 0
        self.seconds = 0.0
        model.encode_frames = self

    def __call__(self, pixels, *args, **kwargs):
        sync = torch.cuda.synchronize if pixels.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        out = self.inner(pixels, *args, **kwargs)
        sync()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.frames += int(pixels.shape[0])
        return out

    def reset(self) -> None:
        self.calls = self.frames = 0
        self.seconds = 0.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.vision_stage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="a built-in model name or checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--vision-overlap", choices=["on", "off"], default=None,
                   help="encode the next windows on a side CUDA stream during the forward (default: the engine's)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="requests per generate call")
    p.add_argument("--num-frames", type=int, default=64, help="frames per request")
    p.add_argument("--frame-size", type=int, default=None, help="frame height = width (default: the CLIP crop)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per level (the median is reported)")
    p.add_argument("--micro-iters", type=int, default=20, help="timed passes of the batching-alone test")
    p.add_argument("--label", default="run", help="name of this run in the JSON (e.g. before, after)")
    p.add_argument("--commit", default=None, help="commit string to record instead of the checkout's")
    p.add_argument("--note", default="", help="free text stored with the run")
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "vision_stage_demo_cpu.json"),
                   help="JSON file; other labels already in it are kept")
    return p


def make_requests(n: int, args, size: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt": PROMPT, "num_frames": args.num_frames,
             "video": rng.integers(0, 256, (args.num_frames, size, size, 3), dtype=np.uint8)} for _ in range(n)]


def one_run(llm, timer: TimedEncode, n: int, args, size: int, seed: int) -> dict:
    reqs = make_requests(n, args, size, seed)
    timer.reset()
    t0 = time.perf_counter()
    outs = llm.generate(reqs, vxl.SamplingParams(max_tokens=1), use_tqdm=False)
    wall = time.perf_counter() - t0
    errors = [o.error for o in outs if o.finish_reason == "error"]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    if timer.frames != n * args.num_frames:
        log(f"warning: {timer.frames} frames encoded for {n * args.num_frames} asked (is llm.model the encoder?)")
    return {"frames": timer.frames, "calls": timer.calls, "frames_per_call": timer.frames / max(1, timer.calls),
            "vision_s": timer.seconds, "vision_frames_per_s": timer.frames / timer.seconds if timer.seconds else None,
            "wall_s": wall, "e2e_frames_per_s": n * args.num_frames / wall}


def level(llm, timer, n: int, args, size: int) -> dict:
    one_run(llm, timer, n, args, size, seed=1000 * n)                           # warm-up
    runs = [one_run(llm, timer, n, args, size, seed=1000 * n + r + 1) for r in range(args.repeats)]
    med = runs[sorted(range(len(runs)), key=lambda i: runs[i]["wall_s"])[len(runs) // 2]]     # median-wall run
    res = {"requests": n, **{k: med[k] for k in ("frames", "calls", "frames_per_call")},
           "vision_s": statistics.median(r["vision_s"] for r in runs),
           "wall_s": statistics.median(r["wall_s"] for r in runs)}
    res["vision_frames_per_s"] = res["frames"] / res["vision_s"]
    res["e2e_frames_per_s"] = n * args.num_frames / res["wall_s"]
    res["all_runs"] = runs
    return res


def batching_alone(llm, timer: TimedEncode, size: int, args) -> dict:
    """encode_frames on 8 chunks of k frames, one call each, vs the 8k frames in one call."""
    from vxl.engine.preprocess import preprocess_frames
    k = math.ceil(llm.config.beacon_window / llm.model.tokens_per_frame)
    frames = torch.from_numpy(make_requests(1, argparse.Namespace(num_frames=8 * k), size, 7)[0]["video"])
    param = next(llm.model.parameters())
    pixels = preprocess_frames(frames, llm.loaded.image_processor).to(param.device, param.dtype)
    chunks = list(pixels.split(k))

    def timed(fn) -> float:
        timer.reset()
        fn()
        return timer.seconds
    separate, together = (lambda: [llm.model.encode_frames(c) for c in chunks]), (lambda: llm.model.encode_frames(pixels))
    with torch.inference_mode():
        timed(separate), timed(together)                                        # warm-up
        pairs = [(timed(separate), timed(together)) for _ in range(args.micro_iters)]     # interleaved: same load
    sep, one = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return {"frames_per_window": k, "chunks": 8, "frames": 8 * k, "pixel_shape": list(pixels.shape),
            "separate_s": sep, "separate_frames_per_s": 8 * k / sep, "one_call_s": one,
            "one_call_frames_per_s": 8 * k / one, "one_call_over_separate": sep / one,
            "one_call_over_separate_per_pair": statistics.median(a / b for a, b in pairs)}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    env = env_info()
    if args.commit is not None:
        env["commit"], env["checkout_commit"] = args.commit, env["commit"]
    log(f"vxl from {vxl.__file__}")
    extra = {} if args.vision_overlap is None else {"vision_overlap": args.vision_overlap == "on"}
    llm = vxl.LLM(model=args.model, device=args.device, **extra)   # extra: only engines that know the setting
    size = args.frame_size or llm.loaded.image_processor.crop_size
    timer = TimedEncode(llm.model)
    levels = {}
    for n in args.concurrency:
        levels[str(n)] = lv = level(llm, timer, n, args, size)
        log(f"{n} requests: {lv['frames']} frames in {lv['calls']} calls ({lv['frames_per_call']:.1f}/call), "
            f"vision {lv['vision_s']:.3f} s = {lv['vision_frames_per_s']:.0f} frames/s, "
            f"wall {lv['wall_s']:.3f} s = {lv['e2e_frames_per_s']:.0f} frames/s")
    base = levels[str(args.concurrency[0])]
    ratios = {n: {"vision": lv["vision_frames_per_s"] / base["vision_frames_per_s"],
                  "e2e": lv["e2e_frames_per_s"] / base["e2e_frames_per_s"]} for n, lv in levels.items()}
    micro = batching_alone(llm, timer, size, args)
    log(f"batching alone: 8 x {micro['frames_per_window']} frames separately {micro['separate_frames_per_s']:.0f} "
        f"frames/s, in one call {micro['one_call_frames_per_s']:.0f} frames/s ({micro['one_call_over_separate']:.2f}x)")
    core_model = getattr(getattr(llm, "core", None), "model", None)
    return {"env": env, "load_average_1m_end": os.getloadavg()[0], "note": args.note,
            "vxl_source": os.path.dirname(vxl.__file__), "model": args.model, "device": args.device, "vision_overlap": args.vision_overlap,
            "threads": args.threads, "num_frames": args.num_frames, "frame_size": size,
            "tokens_per_frame": llm.model.tokens_per_frame, "beacon_window": llm.config.beacon_window,
            "core_model_is_llm_model": None if core_model is None else core_model is llm.model,
            "repeats": args.repeats, "levels": levels, f"ratio_to_{args.concurrency[0]}": ratios,
            "batching_alone": micro}


def compare(runs: dict) -> dict:
    """after / before vision and end-to-end frames/s per level (where both runs exist)."""
    if "before" not in runs or "after" not in runs:
        return {}
    b, a = runs["before"]["levels"], runs["after"]["levels"]
    return {n: {"vision": a[n]["vision_frames_per_s"] / b[n]["vision_frames_per_s"],
                "e2e": a[n]["e2e_frames_per_s"] / b[n]["e2e_frames_per_s"]} for n in b if n in a}


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if min(args.concurrency) < 1 or args.repeats < 1 or args.threads < 1 or args.num_frames < 1:
        raise SystemExit("error: --concurrency, --repeats, --threads and --num-frames must be >= 1")
    result = run(args)
    log(header_line(result["env"]))
    log(f"wrote {write_labelled_run(args.out, args.label, result, __doc__.strip(), {'after_over_before': compare})}")


if __name__ == "__main__":
    main()
