"""Linear probes: how much of a needle's colour, shape and digit the demo model's visual tokens carry.

A multinomial logistic regression per attribute, fitted on the projected visual tokens of single frames
(what the language model receives for one frame, flattened) and scored on held-out frames. When a probe
reads an attribute well but the model answers questions about it badly, the language model (not the
vision tower) is what falls short.

    python -m bench.demo_probe [--checkpoint DIR] [--train 3000] [--test 1000] [--out bench/results/demo_probe.json]
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import env_info, write_json
from vxl.train.evaluate import EVAL_TAG
from vxl.train.pretrain import HEADS, frame_batch

PROBE_TAG = 7_700_002


@torch.no_grad()
def visual_features(llm, num_frames: int, seed: int, batch: int = 200) -> tuple[torch.Tensor, dict]:
    """Flattened visual tokens [N, tokens_per_frame * H] of N frames that each show one thing, and the
    labels of pretrain.frame_batch (the last class of a head means "not applicable")."""
    from vxl.engine.preprocess import preprocess_frames
    size = llm.loaded.image_processor.crop_size
    feats, labels = [], {name: [] for name in HEADS}
    for start in range(0, num_frames, batch):
        rng = np.random.default_rng([EVAL_TAG, PROBE_TAG, seed, start])
        frames, lab = frame_batch(rng, min(batch, num_frames - start), size, thing_prob=1.0)
        pixels = preprocess_frames(torch.from_numpy(frames), llm.loaded.image_processor)
        tokens = llm.model.encode_frames(pixels.to(llm.device, llm.model.lm_head.weight.dtype)).float().cpu()
        feats.append(tokens.reshape(len(frames), -1))
        for name in HEADS:
            labels[name].append(torch.from_numpy(lab[name]))
    return torch.cat(feats), {name: torch.cat(v) for name, v in labels.items()}


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
              steps: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression (L-BFGS, L2 penalty) on standardised x (the caller standardises)."""
    probe = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return probe


def probe_accuracy(train: tuple[torch.Tensor, dict], test: tuple[torch.Tensor, dict]) -> dict:
    """{attribute: {accuracy, n_train, n_test, chance}} over the frames the attribute applies to."""
    x_tr, y_tr = train
    x_te, y_te = test
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = ((x_tr - mean) / std).double(), ((x_te - mean) / std).double()
    out = {}
    for name, values in HEADS.items():
        keep_tr, keep_te = y_tr[name] < len(values), y_te[name] < len(values)
        probe = fit_probe(x_tr[keep_tr], y_tr[name][keep_tr], len(values))
        with torch.no_grad():
            pred = probe(x_te[keep_te]).argmax(-1)
        out[name] = {"accuracy": (pred == y_te[name][keep_te]).double().mean().item(),
                     "n_train": int(keep_tr.sum()), "n_test": int(keep_te.sum()), "chance": 1 / len(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/demo_probe.json")
    p.add_argument("--num-threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    from vxl import LLM
    from vxl.train.demo import demo_checkpoint_path
    checkpoint = args.checkpoint or demo_checkpoint_path()
    llm = LLM(checkpoint, device="cpu", dtype="float32")
    result = probe_accuracy(visual_features(llm, args.train, 2 * args.seed),
                            visual_features(llm, args.test, 2 * args.seed + 1))
    record = {"checkpoint": os.path.relpath(checkpoint), "features": "projected visual tokens of one frame, flattened",
              "probe": "multinomial logistic regression, L-BFGS, L2 1e-3, standardised features",
              "num_train": args.train, "num_test": args.test, "results": result, "header": env_info()}
    print(json.dumps(record, indent=1))
    if args.out:
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
