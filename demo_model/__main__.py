"""`python -m demo_model`: train one stage of the demo Video-XL on synthetic long videos (resumable with --resume) and
export it in the official checkpoint layout (--export DIR)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from demo_model.loop import TrainConfig, train


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m demo_model", description=__doc__)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("arch", "task_weights", "pretrain"):
            continue
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)
    p.add_argument("--task-weights", type=float, nargs=3, default=defaults.task_weights,
                   help="sampling weights of retrieval, ordering, counting")
    p.add_argument("--arch", type=json.loads, default={}, help='JSON overrides of DemoArch, e.g. {"hidden_size": 96}')
    p.add_argument("--pretrain", type=json.loads, default={}, help='JSON overrides of PretrainConfig, e.g. {"steps": 500}')
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/state.pt if it exists")
    p.add_argument("--export", default=None, help="write the trained model here (official layout) at the end")
    p.add_argument("--stop-after", type=int, default=None, help="pause after this step (continue with --resume)")
    p.add_argument("--data-workers", type=int, default=0,
                   help="processes rendering the next steps' videos during training (same results; helps with "
                        "--num-threads 1 and a spare core)")
    args = p.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in ("arch", "pretrain")}
    return TrainConfig.from_dict({**values, "arch": args.arch, "pretrain": args.pretrain}), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    train(cfg, resume=args.resume, export_dir=args.export, stop_after=args.stop_after,
          data_workers=args.data_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
