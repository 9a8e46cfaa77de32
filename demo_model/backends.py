"""The demo model's answers from the `torch` and `triton` attention backends on the same held-out videos
(every task, greedy): the answers must be identical. On CPU the Triton kernels run in the interpreter
(TRITON_INTERPRET=1, set here before triton is imported), so keep the videos short.

    python -m demo_model.backends [--checkpoint DIR] [--frames 48] [--videos 3] [--out demo_model/results/backends.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo_model.backends", description=__doc__)
    p.add_argument("--checkpoint", default="demo", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--videos", type=int, default=3, help="videos per task")
    p.add_argument("--ratio", type=int, default=16)
    p.add_argument("--out", default="demo_model/results/backends.json")
    args = p.parse_args(argv)
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from vxl import LLM
    from vxl.demo.tasks import TASKS
    from demo_model.evaluate import ask, eval_samples

    from bench.common import env_info, write_json
    checkpoint = args.checkpoint
    result: dict = {}
    for backend in ("torch", "triton"):
        llm = LLM(checkpoint, device=device, dtype="float32", attention_backend=backend)
        size = llm.loaded.image_processor.crop_size
        t0 = time.perf_counter()
        records = [r for task in TASKS
                   for r in ask(llm, eval_samples(task, args.frames, args.videos, 99, size), args.ratio)]
        result[backend] = {"answers": [r["answer"] for r in records], "correct": [r["correct"] for r in records],
                           "seconds": time.perf_counter() - t0}
    result.update(identical_answers=result["torch"]["answers"] == result["triton"]["answers"],
                  frames=args.frames, videos_per_task=args.videos, ratio=args.ratio, header=env_info())
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("identical_answers", "frames", "videos_per_task")}))
    return 0 if result["identical_answers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
