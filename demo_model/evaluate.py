"""Accuracy of a checkpoint on held-out synthetic videos, through the public API only
(`vxl.LLM(checkpoint).generate` with uint8 frames as `video`, greedy): accuracy vs frames and vs
compression ratio per task, and the needle-in-a-haystack grid (needle depth x frames).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vxl.demo import extract_letter
from vxl.demo.tasks import TASKS, VideoSample, make_sample

EVAL_TAG = 7_700_001          # eval seeds are [EVAL_TAG, seed, ...]: a stream training never draws from


@dataclass
class EvalConfig:
    checkpoint: str
    out_prefix: str = "demo_model/results/eval"
    seed: int = 0
    num_videos: int = 40
    frames: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048])
    ratio: int = 16                       # ratio of the accuracy-vs-frames table
    ratios: list[int] = field(default_factory=lambda: [2, 4, 8, 12, 16])
    ratio_frames: list[int] = field(default_factory=lambda: [256, 1024])
    niah_frames: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048])
    niah_depths: list[float] = field(default_factory=lambda: [i / 10 for i in range(11)])
    niah_videos: int = 6
    attention_backend: str = "torch"
    num_threads: int = 1


def eval_samples(task: str, num_frames: int, num_videos: int, seed: int, size: int,
                 depth: float | None = None) -> list[VideoSample]:
    """Held-out videos; the same seeds for every ratio, so ratio comparisons are paired."""
    key = [EVAL_TAG, seed, TASKS.index(task), num_frames, 1001 if depth is None else int(round(depth * 1000))]
    return [make_sample(task, num_frames, key + [i], size, depth) for i in range(num_videos)]


def ask(llm, samples: list[VideoSample], ratio: int) -> list[dict]:
    """Every question of every sample through llm.generate (greedy, 8 tokens); one record per question."""
    from vxl import SamplingParams
    reqs, meta = [], []
    for i, sample in enumerate(samples):
        for qa in sample.qas:
            reqs.append({"prompt": qa.prompt, "video": sample.frames, "compression_ratio": ratio})
            meta.append((i, qa))
    outs = llm.generate(reqs, SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
    records = []
    for (i, qa), out in zip(meta, outs):
        if out.error is not None:
            raise RuntimeError(f"request failed: {out.error}")
        got = extract_letter(out.text)
        records.append({"video": i, "task": qa.task, "question": qa.prompt.split("\n")[0], "right": qa.answer,
                        "answer": out.text, "correct": got == qa.letter,
                        "num_vst_tokens": out.metrics["num_vst_tokens"]})
    return records


def accuracy(records: list[dict]) -> dict:
    n = len(records)
    return {"accuracy": sum(r["correct"] for r in records) / n if n else float("nan"), "n": n}


# retrieval asks two questions about its needle: its colour, and its shape or its digit (finer detail)
RETRIEVAL_KINDS = {"retrieval: colour": lambda q: "colour" in q,
                   "retrieval: shape or digit": lambda q: "colour" not in q,
                   "retrieval: shape": lambda q: "shape" in q,
                   "retrieval: digit": lambda q: "digit" in q}


def by_task(records_of: dict) -> dict:
    """{task: {key: records}} -> {row: {key: {accuracy, n}}}, with retrieval also split by question kind."""
    out = {}
    for task, cells in records_of.items():
        out[task] = {k: accuracy(recs) for k, recs in cells.items()}
        if task == "retrieval":
            for row, keep in RETRIEVAL_KINDS.items():
                out[row] = {k: accuracy([r for r in recs if keep(r["question"])]) for k, recs in cells.items()}
    return out


def accuracy_vs_frames(llm, cfg: EvalConfig, size: int) -> dict:
    """{row: {frames: {accuracy, n}}} at ratio cfg.ratio (rows: tasks, and retrieval by question kind)."""
    return by_task({task: {f: ask(llm, eval_samples(task, f, cfg.num_videos, cfg.seed, size), cfg.ratio)
                           for f in cfg.frames} for task in TASKS})


def accuracy_vs_ratio(llm, cfg: EvalConfig, size: int, num_frames: int) -> dict:
    """{row: {ratio: {accuracy, n}}} on the same videos of `num_frames` frames."""
    records = {}
    for task in TASKS:
        samples = eval_samples(task, num_frames, cfg.num_videos, cfg.seed, size)
        records[task] = {r: ask(llm, samples, r) for r in cfg.ratios}
    return by_task(records)


def niah_grid(llm, cfg: EvalConfig, size: int) -> np.ndarray:
    """Retrieval accuracy [depths, frames] with the needle at each depth, at ratio cfg.ratio."""
    grid = np.zeros((len(cfg.niah_depths), len(cfg.niah_frames)))
    for j, f in enumerate(cfg.niah_frames):
        for i, d in enumerate(cfg.niah_depths):
            samples = eval_samples("retrieval", f, cfg.niah_videos, cfg.seed, size, depth=d)
            grid[i, j] = accuracy(ask(llm, samples, cfg.ratio))["accuracy"]
    return grid


def run_eval(cfg: EvalConfig, header: list[str] | None = None) -> dict:
    """Every table and the needle grid for cfg.checkpoint; writes them under cfg.out_prefix."""
    import time

    import torch

    from vxl import LLM
    from demo_model.report import write_results
    torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    llm = LLM(cfg.checkpoint, device="cpu", dtype="float32", attention_backend=cfg.attention_backend)
    size = llm.loaded.image_processor.crop_size
    results = {"config": asdict(cfg), "vs_frames": accuracy_vs_frames(llm, cfg, size),
               "vs_ratio": {f: accuracy_vs_ratio(llm, cfg, size, f) for f in cfg.ratio_frames}}
    grid = niah_grid(llm, cfg, size)
    results["niah"] = {"grid": grid.tolist(), "depths": cfg.niah_depths, "frames": cfg.niah_frames}
    results["seconds"] = time.perf_counter() - t0
    write_results(results, cfg.out_prefix, header or [])
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m demo_model.evaluate", description=__doc__)
    p.add_argument("--checkpoint", default="demo", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--out-prefix", default=EvalConfig.out_prefix)
    p.add_argument("--config", type=json.loads, default={}, help="JSON overrides of EvalConfig")
    p.add_argument("--header", default="", help="markdown put above the tables (e.g. the training command)")
    args = p.parse_args(argv)
    cfg = EvalConfig(checkpoint=args.checkpoint, out_prefix=args.out_prefix, **args.config)
    results = run_eval(cfg, args.header.split("\\n") if args.header else None)
    print(json.dumps({k: results[k] for k in ("vs_frames", "vs_ratio", "seconds")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
