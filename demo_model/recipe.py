"""The recipe of the shipped demo model: six `python -m demo_model` stages, each starting from the previous
one's weights, run in order and resumable (a finished stage is skipped, an interrupted one resumes).

    python -m demo_model.recipe --out-dir runs/demo --export runs/demo/export [--num-threads N]

Every stage keeps the vision tower as stage 0 made it (`--freeze-vision`: the projector still trains) and
encodes long videos a layer at a time (`--layerwise`):

1. from scratch (seed 0): stage 0 (vision tower, then language model, pretrained alone), then end-to-end
   steps with a curriculum (things shown on many frames of short videos first), task weights
   0.45 / 0.3 / 0.25 (retrieval / ordering / counting), paused at step 1250 of 2200: ordering is learnt here;
2. the vision tower retrained alone for 2000 steps of stage 0's frame task, then 800 retrieval-heavy steps
   (0.6 / 0.2 / 0.2, lr 5e-4, 60% of needles digits) on videos of 8 to 256 frames;
3. 300 counting-heavy steps (0.15 / 0.1 / 0.75) on videos of 8 to 128 frames, lr 5e-4;
4. 1500 steps on videos of 8 to 64 frames (0.45 / 0.1 / 0.45), 60% of retrieval videos `keyed` ("What shape
   was the red object?"), lr 5e-4: the colour filter that counting needs forms here;
5. 700 steps on videos of 8 to 512 frames (0.35 / 0.15 / 0.5, lr 3e-4), half the retrieval videos keyed;
6. 300 steps on videos of 384 to 512 frames (0.3 / 0.15 / 0.55, lr 2e-4), 80% of them with card windows:
   every window that shows a thing (in any video of the batch) at ratio 16, every other window at ratio 2,
   so a thing shares its VST with background frames among hundreds of background VSTs, as at ratio 16 on a
   2048-frame video. Exported.

From stage 3 on, 80% of steps use one ratio for every window (as at inference). Float rounding, hence the
weights, depend on the thread count: the shipped model was trained with 2. Each stage's config and step
log: demo_model/results/<stage>_config.json, <stage>_log.jsonl.
"""
from __future__ import annotations

import argparse
import os

from demo_model.__main__ import parse_args
from demo_model.loop import train

# stages after the first: no curriculum (every event on one frame, the full range of lengths from step 0)
FLAT = ["--hold-steps", "0", "--cover", "0", "--cover-steps", "0", "--ramp-steps", "0"]
LONG = ["--max-frames", "512", "--uniform-ratio-prob", "0.8", "--digit-prob", "0.5"]
COMMON = ["--freeze-vision", "--layerwise"]
Stage = tuple[str, list[str], int | None]       # (name, train arguments, pause after step)

STAGES: list[Stage] = [
    ("keyed1", ["--seed", "0", *COMMON], 1250),
    ("keyed2", ["--seed", "21", "--steps", "800", "--init-vision-steps", "2000", *COMMON, *FLAT, "--lr", "5e-4",
                "--task-weights", "0.6", "0.2", "0.2", "--digit-prob", "0.6"], None),
    ("keyed3", ["--seed", "301", "--steps", "300", *COMMON, *FLAT, "--max-frames", "128", "--uniform-ratio-prob", "0.8",
                "--lr", "5e-4", "--warmup-steps", "20", "--task-weights", "0.15", "0.1", "0.75"], None),
    ("keyed4", ["--seed", "904", "--steps", "1500", *COMMON, *FLAT, "--max-frames", "64", "--uniform-ratio-prob", "0.8",
                "--lr", "5e-4", "--warmup-steps", "20", "--task-weights", "0.45", "0.1", "0.45", "--keyed-prob", "0.6"],
     None),
    ("keyed5", ["--seed", "81", "--steps", "700", *COMMON, *FLAT, *LONG, "--lr", "3e-4", "--warmup-steps", "20",
                "--task-weights", "0.35", "0.15", "0.5", "--keyed-prob", "0.5"], None),
    ("keyed6", ["--seed", "1501", "--steps", "300", *COMMON, *FLAT, "--min-frames", "384", "--max-frames", "512",
                "--uniform-ratio-prob", "0.8", "--card-window-prob", "0.8", "--digit-prob", "0.5", "--lr", "2e-4",
                "--warmup-steps", "20", "--task-weights", "0.3", "0.15", "0.55", "--keyed-prob", "0.5"], None),
]
NUM_THREADS = 2             # the shipped run's; another count gives other float rounding, hence other weights


def run_recipe(out_dir: str, export_dir: str | None, num_threads: int = NUM_THREADS,
               stages: list[Stage] = STAGES, extra: list[str] = (), data_workers: int = 0) -> None:
    """Run every stage under out_dir/<name>/ with num_threads threads; `extra` arguments go to every stage
    (tests shrink it)."""
    previous = None
    for i, (name, args, stop) in enumerate(stages):
        stage_dir = os.path.join(out_dir, name)
        argv = [*args, *extra, "--out-dir", stage_dir, "--num-threads", str(num_threads)]
        if previous is not None:
            argv += ["--init-from", previous]
        cfg, _ = parse_args(argv)
        last = i == len(stages) - 1
        # resuming a finished stage runs no step and leaves its state untouched
        train(cfg, resume=True, export_dir=export_dir if last else None, stop_after=stop,
              data_workers=data_workers)
        previous = os.path.join(stage_dir, "state.pt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo_model.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--export", default=None, help="write the final model here (official layout)")
    p.add_argument("--num-threads", type=int, default=NUM_THREADS,
                   help=f"torch threads (default {NUM_THREADS}, the shipped run's; another count gives other "
                        "float rounding)")
    p.add_argument("--data-workers", type=int, default=0,
                   help="processes rendering the next steps' videos during training (same results; helps with "
                        "--num-threads 1 and a spare core)")
    args = p.parse_args(argv)
    run_recipe(args.out_dir, args.export, args.num_threads, data_workers=args.data_workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
