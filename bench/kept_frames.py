"""What a bounded stream (`open_stream(max_kept_frames=N)`) costs in answers: retrieval questions of the demo
model about streamed synthetic videos whose needle lies inside the kept span (the last N frames) or before
it, against the same streams keeping everything. Keeping only recent VSTs departs from how the model was
trained (every earlier VST stays visible), so this measures the effect instead of assuming it.

    python -m bench.kept_frames [--frames 256] [--kept 64] [--videos 20] [--out bench/results/kept_frames_demo_cpu.json]
"""
from __future__ import annotations

import argparse
import json


def accuracy(llm, frames: int, kept: int | None, depths: list[float], videos: int, ratio: int, seed: int) -> dict:
    from vxl import SamplingParams
    from vxl.demo import extract_letter
    from vxl.demo.tasks import make_sample
    right = total = 0
    for depth in depths:
        for i in range(videos):
            sample = make_sample("retrieval", frames, [seed, int(depth * 1000), i], depth=depth)
            stream = llm.open_stream(compression_ratio=ratio, max_kept_frames=kept)
            stream.append(sample.frames)
            reqs = [{"prompt": qa.prompt, "video_stream": stream} for qa in sample.qas]
            outs = llm.generate(reqs, SamplingParams(max_tokens=8), use_tqdm=False)
            right += sum(extract_letter(o.text) == qa.letter for o, qa in zip(outs, sample.qas))
            total += len(outs)
            stream.close()
    return {"accuracy": right / total, "questions": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kept_frames", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--kept", type=int, default=64, help="max_kept_frames of the bounded streams")
    p.add_argument("--videos", type=int, default=20, help="videos per needle depth")
    p.add_argument("--ratio", type=int, default=16)
    p.add_argument("--out", default="bench/results/kept_frames_demo_cpu.json")
    args = p.parse_args(argv)
    from bench.common import env_info, write_json
    from vxl import LLM
    llm = LLM("demo")
    inside = [0.9, 0.97]                                 # the needle within the last `kept` frames
    before = [0.1, 0.3, 0.5]                             # the needle long before them
    assert min(inside) * (args.frames - 1) >= args.frames - args.kept, "inside depths must fall in the kept span"
    result = {"benchmark": "kept_frames", "env": env_info(), "args": vars(args), "cells": {}}
    for name, depths in (("needle_inside_kept_span", inside), ("needle_before_kept_span", before)):
        for kept in (None, args.kept):
            key = f"{name}/{'all' if kept is None else f'max_kept_frames={kept}'}"
            result["cells"][key] = accuracy(llm, args.frames, kept, depths, args.videos, args.ratio, 6_600_001)
            print(key, json.dumps(result["cells"][key]), flush=True)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
