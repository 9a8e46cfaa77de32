"""What the demo model's counting answers follow: the count of the asked colour, or the count of every
card shown (ignoring the colour named in the question), per number of other-coloured cards.

    python -m bench.demo_counting [--checkpoint DIR] [--frames 16,128,512] [--ratio 16] [--videos 80] [--seed 0]
                                  [--out F.json]

A model whose answers mostly equal the number of all cards counts but does not select by colour.
Videos are the held-out ones of `vxl.train.evaluate` (`eval_samples(..., seed)`; seed 0 holds the videos of the
accuracy tables, another seed a disjoint held-out set), greedy decoding. `confusion[k][j]` counts the videos
whose asked count is k + 1 answered with j + 1 (an answer that is not a count is left out of it), and
`rank_corr` is Spearman's rank correlation between asked count and answered count over those videos: a model
that counts but is miscalibrated (answers shrink as videos grow) keeps it clearly above 0.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from vxl.train.data import LETTERS, MAX_COUNT
from vxl.train.evaluate import ask, eval_samples, extract_letter


def counting_breakdown(samples, records) -> dict:
    """{accuracy, all_cards (share of answers equal to min(cards shown, MAX_COUNT)), by_others:
    {number of other-coloured cards: [right, videos]}, answered: {option said: videos}, confusion, rank_corr, n}
    over the first (the target's) question of each counting sample."""
    right = all_cards = 0
    by_others: dict[int, list[int]] = {}
    answered = Counter()
    confusion = [[0] * MAX_COUNT for _ in range(MAX_COUNT)]
    pairs = []
    for sample, rec in zip(samples, records):
        qa = sample.qas[0]
        letter = extract_letter(rec["answer"])
        said = qa.options[LETTERS.index(letter)] if letter else None
        shown = len(sample.events)
        right += said == qa.right
        all_cards += said == str(min(shown, MAX_COUNT))
        cell = by_others.setdefault(shown - int(qa.right), [0, 0])
        cell[0] += said == qa.right
        cell[1] += 1
        answered[said] += 1
        if said is not None and said.isdigit() and 1 <= int(said) <= MAX_COUNT:
            confusion[int(qa.right) - 1][int(said) - 1] += 1
            pairs.append((int(qa.right), int(said)))
    n = len(samples)
    return {"accuracy": right / n, "all_cards": all_cards / n, "by_others": dict(sorted(by_others.items())),
            "answered": {str(k): v for k, v in sorted(answered.items(), key=lambda kv: str(kv[0]))},
            "confusion": confusion, "rank_corr": spearman(pairs), "n": n}


def spearman(pairs: list[tuple[int, int]]) -> float:
    """Spearman's rank correlation of the (x, y) pairs (average ranks for ties); nan when either side is
    constant."""
    if len(pairs) < 2:
        return float("nan")
    xs, ys = zip(*pairs)
    rx, ry = np.asarray(average_ranks(xs)), np.asarray(average_ranks(ys))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def average_ranks(values) -> list[float]:
    """Ranks 1..n of `values`, tied values sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def main(argv: list[str] | None = None) -> int:
    import torch

    from vxl import LLM
    from vxl.train.demo import demo_checkpoint_path
    p = argparse.ArgumentParser(prog="python -m bench.demo_counting", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--frames", default="16,128,512")
    p.add_argument("--ratio", type=int, default=16)
    p.add_argument("--videos", type=int, default=80)
    p.add_argument("--seed", type=int, default=0, help="held-out video set (0: the accuracy tables' videos)")
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the cells here, with the hardware / versions header")
    args = p.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    llm = LLM(args.checkpoint or demo_checkpoint_path(), device="cpu", dtype="float32")
    size = llm.loaded.image_processor.crop_size
    cells = []
    for frames in (int(f) for f in args.frames.split(",")):
        samples = eval_samples("counting", frames, args.videos, args.seed, size)
        cells.append({"frames": frames, "ratio": args.ratio, "seed": args.seed, **counting_breakdown(samples, ask(llm, samples, args.ratio))})
        print(json.dumps(cells[-1]), flush=True)
    if args.out:
        from bench.common import env_info, write_json
        write_json(args.out, {"env": env_info(), "checkpoint": args.checkpoint or "vxl/data/demo", "cells": cells})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
