"""Batch-job benchmark: V generated videos x Q questions each (default 64 x 4) on the demo model, run as
a `vxl batch` job in-process and on a local Ray cluster with 1 and 2 actors, each with and without the
per-video grouping (one encode per video vs one per question). Reports videos/s and questions/s over the
whole job; Ray's times include starting its actors and loading one model per actor, which is its overhead
at this size (the in-process runs load the model and warm up before the clock starts, as a long-lived
engine would). Every engine uses one thread (see `main`), so ray2 is the only mode using two cores.

    python -m bench.batch [--videos 64] [--questions 4] [--num-frames 32] [--ratio 4] [--max-tokens 8]
                          [--units-per-call 8]
                          [--modes inproc inproc-nogroup ray1 ray1-nogroup ray2 ray2-nogroup]
                          [--out bench/results/batch_demo_cpu.json]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench.common import RESULTS_DIR, env_info, header_line, log, write_json
from bench.serve import QUESTIONS, write_videos

MODES = ("inproc", "inproc-nogroup", "ray1", "ray1-nogroup", "ray2", "ray2-nogroup")


def job_units(videos: list[str], num_questions: int, num_frames: int, ratio: int, max_tokens: int, group: bool):
    from vxl.batch import BatchItem, make_units
    items = [BatchItem(0, f"v{v}-q{q}", {"prompt": QUESTIONS[q % len(QUESTIONS)], "video": path, "num_frames":
                                         num_frames, "compression_ratio": ratio, "request_id": f"v{v}-q{q}"},
                       {"max_tokens": max_tokens, "temperature": 0.0})
             for v, path in enumerate(videos) for q in range(num_questions)]
    return make_units(items, group)


def run_mode(mode: str, units, llm, engine: dict, units_per_call: int = 8) -> tuple[float, list[dict]]:
    """Seconds for the whole job in `mode`, and its rows."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    if mode.startswith("inproc"):
        from vxl.batch import run_job
        run_job(llm, units, rows.append, use_tqdm=False)
    else:
        from vxl.integrations.ray import run_on_ray
        run_on_ray(units, rows.append, engine, num_replicas=int(mode[3]), use_tqdm=False, units_per_call=units_per_call)
    return time.perf_counter() - t0, rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--num-frames", type=int, default=32)
    p.add_argument("--ratio", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--units-per-call", type=int, default=8, help="Ray: units (videos) per actor call")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "batch_demo_cpu.json"))
    args = p.parse_args(argv)
    import torch

    from vxl import LLM
    # one thread per engine in every mode, as Ray gives each 1-CPU actor (OMP_NUM_THREADS=1): the modes
    # compare like for like, and a thread pool wider than the idle cores degrades badly under other load
    torch.set_num_threads(1)
    engine = {"model": args.model, "device": "cpu"}
    llm = LLM(**engine) if any(m.startswith("inproc") for m in args.modes) else None
    info = env_info()
    log(header_line(info))
    results, reference = [], None
    with tempfile.TemporaryDirectory() as media:
        videos = write_videos(media, args.videos, args.num_frames)
        if llm is not None:     # first calls pay one-off costs (lazy init, allocator); keep them off the clock
            warmup = job_units(videos[:2], 2, args.num_frames, args.ratio, args.max_tokens, True)
            run_mode("inproc", warmup, llm, engine)
        for mode in args.modes:
            if mode.startswith("ray") and "ray" not in info:     # started after the in-process runs: its
                import ray                                       # idle workers stay out of their timings
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                info["ray"] = ray.__version__
            units = job_units(videos, args.questions, args.num_frames, args.ratio, args.max_tokens,
                              not mode.endswith("nogroup"))
            seconds, rows = run_mode(mode, units, llm, engine, args.units_per_call)
            answers = {r["request_id"]: r["token_ids"] for r in rows}
            reference = reference or answers
            n_q = args.videos * args.questions
            result = {"mode": mode, "seconds": seconds, "videos_per_s": args.videos / seconds,
                      "questions_per_s": n_q / seconds, "num_rows": len(rows),
                      "num_errors": sum(r["error"] is not None for r in rows), "same_answers": answers == reference}
            log(f"{mode:>15}: {seconds:7.1f}s  {result['videos_per_s']:6.2f} videos/s  "
                f"{result['questions_per_s']:6.2f} questions/s  same answers: {result['same_answers']}")
            result["load_average_1m"] = os.getloadavg()[0]      # other work on the machine skews the times
            results.append(result)
    write_json(args.out, {"env": info, "args": vars(args), "results": results})
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
