"""Live-stream benchmark: an hour of synthetic 1 fps video (3600 frames) appended to one stream a minute at
a time. Reports the encode throughput against real time (frames/s: how many 1 fps streams one engine keeps
up with), the kept KV bytes and the process RSS after every 10 minutes (RSS should stay flat apart from the
kept KV), and the latency of a question asked at minutes 10, 30 and 60. With --max-kept-frames N the
stream keeps the VSTs of the last N frames only, so the kept KV too stays flat once N frames have passed.

    python -m bench.live [--model demo] [--minutes 60] [--ratio 16] [--max-kept-frames N]
                         [--out bench/results/live_demo_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import time


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--minutes", type=int, default=60, help="minutes of 1 fps video")
    p.add_argument("--ratio", type=int, default=16)
    p.add_argument("--max-kept-frames", type=int, default=None,
                   help="keep the VSTs of the last N frames only (default: every frame, exact)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="bench/results/live_demo_cpu.json")
    args = p.parse_args(argv)
    import torch

    from bench.common import env_info, write_json
    from vxl import LLM, SamplingParams
    from vxl.demo.tasks import make_sample
    if args.threads:
        torch.set_num_threads(args.threads)
    num_frames = args.minutes * 60
    sample = make_sample("retrieval", num_frames, [8_800_001, 0])
    llm = LLM(args.model)
    stream = llm.open_stream(compression_ratio=args.ratio, max_kept_frames=args.max_kept_frames)
    question = sample.qas[0]
    result = {"benchmark": "live", "env": env_info(), "args": vars(args), "question": question.prompt,
              "right_answer": question.answer, "needle_frame": sample.events[0][0], "checkpoints": []}
    encode_s, rss_start = 0.0, rss_bytes()
    for minute in range(args.minutes):
        t0 = time.perf_counter()
        stream.append(sample.frames[minute * 60:(minute + 1) * 60])
        encode_s += time.perf_counter() - t0
        done = minute + 1
        if done % 10 == 0 or done == args.minutes:
            point = {"minute": done, "frames": stream.num_frames, "kept_kv_bytes": stream.kept_kv_bytes,
                     "rss_bytes": rss_bytes(), "rss_growth_excl_kv_bytes": rss_bytes() - rss_start - stream.kept_kv_bytes,
                     "encode_frames_per_s": stream.num_frames / encode_s}
            if done in (10, 30, 60) or done == args.minutes:
                t0 = time.perf_counter()
                out = llm.generate([{"prompt": question.prompt, "video_stream": stream}],
                                   SamplingParams(max_tokens=8), use_tqdm=False)[0]
                point.update(question_latency_s=time.perf_counter() - t0, answer=out.text)
            print(json.dumps(point), flush=True)
            result["checkpoints"].append(point)
    stream.close()
    result["encode_frames_per_s"] = num_frames / encode_s
    result["realtime_streams_at_1fps"] = result["encode_frames_per_s"]
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("encode_frames_per_s", "realtime_streams_at_1fps")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
