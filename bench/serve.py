"""Serving benchmark: N concurrent clients (default 1, 4, 16, 32) stream chat completions from `vxl serve`
on a repeated-question workload (every video is asked several questions), with the video cache on and
off, against the same requests through one closed-batch `LLM.generate` call.

Reports per run: requests/s, frames/s (frames the requests asked about, per second), time to first token
and time per output token (p50 / p90 / p99, from the streamed events as the client sees them).

    python -m bench.serve [--model demo] [--clients 1 4 16 32] [--videos 4] [--questions 4]
                          [--num-frames 64] [--ratio 16] [--out bench/results/serve_demo_cpu.json]
                          [--label before --note "..." --commit ad38cb1]

Without --label the output file holds this one run. With --label NAME the run (the same document) is stored
under runs[NAME] of the output file, other labels already there kept (a file written without --label is
not overwritten by a labelled run: name another --out). The server runs the vxl imported here (PYTHONPATH).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

QUESTIONS = ["Which colour appeared first?", "Which colour appeared last?",
             "How many times did a red object appear?", "What colour was the object that appeared once?"]


def write_videos(root: str, count: int, num_frames: int) -> list[str]:
    import av

    from vxl.demo.tasks import make_sample
    paths = []
    for i in range(count):
        path = os.path.join(root, f"video{i}.mp4")
        with av.open(path, mode="w") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width = stream.height = 64
            stream.pix_fmt = "yuv420p"
            for frame in make_sample("ordering", num_frames, [31, i]).frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, media: str, max_frames: int, cache: bool) -> tuple[subprocess.Popen, str]:
    import vxl
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(vxl.__file__)))        # the same vxl as this process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "vxl.cli", "serve", model, "--port", str(port), "--allowed-local-media-path",
           media, "--max-frames", str(max_frames)] + ([] if cache else ["--no-video-cache"])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/health", timeout=5):
                return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def stream_request(base: str, body: dict) -> dict:
    """One streamed completion: seconds to the first content token and between later tokens."""
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    times, usage = [], None
    with urllib.request.urlopen(req, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter() - t0)
    return {"ttft": times[0] if times else None, "gaps": list(np.diff(times)), "usage": usage,
            "seconds": time.perf_counter() - t0}


def body_of(path: str, question: str, args) -> dict:
    return {"model": args.model, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "compression_ratio": args.ratio,
            "media_io_kwargs": {"video": {"num_frames": args.num_frames}},
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file://" + path}},
                                                       {"type": "text", "text": question}]}]}


def workload(paths: list[str], args, clients: int) -> list[tuple[str, str]]:
    """Every video asked every question, repeated until each client has at least two requests."""
    base = [(p, q) for p in paths for q in QUESTIONS[:args.questions]]
    return (base * (1 + (2 * clients) // len(base)))[:max(len(base), 2 * clients)]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def run_clients(base: str, jobs: list[tuple[str, str]], args, clients: int) -> dict:
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)

    def client() -> list[dict]:
        done = []
        while True:
            try:
                path, question = todo.get_nowait()
            except queue.Empty:
                return done
            done.append(stream_request(base, body_of(path, question, args)))
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(lambda _: client(), range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "frames_per_s": len(results) * args.num_frames / wall,
            "ttft_s": percentiles([r["ttft"] for r in results if r["ttft"] is not None]),
            "time_per_output_token_s": percentiles([g for r in results for g in r["gaps"]])}


def closed_batch(paths: list[str], args, jobs: list[tuple[str, str]]) -> dict:
    from vxl import LLM, SamplingParams
    llm = LLM(args.model)
    reqs = [{"prompt": q, "video": p, "num_frames": args.num_frames, "compression_ratio": args.ratio} for p, q in jobs]
    llm.generate(reqs[:1], SamplingParams(max_tokens=args.max_tokens), use_tqdm=False)      # warm-up
    t0 = time.perf_counter()
    llm.generate(reqs, SamplingParams(max_tokens=args.max_tokens), use_tqdm=False)
    wall = time.perf_counter() - t0
    return {"requests": len(reqs), "wall_s": wall, "requests_per_s": len(reqs) / wall,
            "frames_per_s": len(reqs) * args.num_frames / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--questions", type=int, default=4, choices=range(1, len(QUESTIONS) + 1))
    p.add_argument("--num-frames", type=int, default=64)
    p.add_argument("--ratio", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--out", default="bench/results/serve_demo_cpu.json")
    p.add_argument("--label", default=None, help="store the run under runs[LABEL], keeping the file's other labels")
    p.add_argument("--note", default="", help="free text stored with the run")
    p.add_argument("--commit", default=None, help="commit string to record instead of the checkout's")
    args = p.parse_args(argv)
    import vxl
    from bench.common import env_info, write_json
    doc = {}
    if args.label is not None and os.path.exists(args.out):
        with open(args.out) as f:
            doc = json.load(f)
        if not isinstance(doc.get("runs", {}), dict):
            raise SystemExit(f"error: {args.out} holds an unlabelled run; give another --out for --label")
    env = env_info()
    if args.commit is not None:
        env["commit"], env["checkout_commit"] = args.commit, env["commit"]
    result = {"benchmark": "serve", "env": env, "args": vars(args), "note": args.note,
              "vxl_source": os.path.dirname(vxl.__file__), "runs": []}
    with tempfile.TemporaryDirectory() as media:
        paths = write_videos(media, args.videos, args.num_frames)
        for cache in (True, False):
            proc, base = start_server(args.model, media, args.num_frames, cache)
            try:
                stream_request(base, body_of(paths[0], QUESTIONS[0], args))        # warm-up
                for clients in args.clients:
                    run = {"video_cache": cache, **run_clients(base, workload(paths, args, clients), args, clients)}
                    print(json.dumps(run), flush=True)
                    result["runs"].append(run)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        result["closed_batch"] = {c: closed_batch(paths, args, workload(paths, args, c)) for c in args.clients}
    for run in result["runs"]:
        run["ratio_to_closed_batch"] = run["requests_per_s"] / result["closed_batch"][run["clients"]]["requests_per_s"]
    result["load_average_1m_end"] = os.getloadavg()[0]
    if args.label is not None:
        doc.update(benchmark="serve", description=__doc__.strip())
        doc.setdefault("runs", {})[args.label] = result
    write_json(args.out, doc if args.label is not None else result)
    print(json.dumps({"closed_batch": result["closed_batch"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
