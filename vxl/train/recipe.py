"""The recipes of the demo model: chains of `python -m vxl.train` stages, each starting from the previous
one's weights, run in order and resumable (a finished stage is skipped, an interrupted one resumes).

    python -m vxl.train.recipe [--recipe keyed|keyed-ranks|fast|nine] --out-dir runs/demo --export vxl/data/demo
                               [--num-threads N] [--ranks N]

`fast` (the model shipped before `keyed`; 2 threads, 51.0 minutes logged on 2 cores) keeps the vision tower as
stage 0 made it (`--freeze-vision`) in every end-to-end step, so no stage has to repair what end-to-end
training wears away:

1. from scratch (seed 0, stage 0 then the curriculum, task weights 0.45 / 0.3 / 0.25), vision frozen,
   paused at step 1250 of its 2200-step schedule: ordering is learnt here (96% at 128 frames);
2. the vision tower retrained alone for 2000 more steps of stage 0's frame task (it read digits 87% on a
   linear probe after stage 0), then frozen again for 800 retrieval-heavy end-to-end steps
   (0.6 / 0.2 / 0.2, lr 5e-4, 60% of retrieval needles digits) on videos of 8 to 256 frames;
3. 700 steps on videos of 8 to 512 frames, counting-heavy (0.35 / 0.15 / 0.5), lr 3e-4, 80% of steps with
   one ratio for every window (as at inference) (the model shipped before this one ended here);
4. 300 steps on videos of 8 to 128 frames, mostly counting (0.15 / 0.1 / 0.75), lr 5e-4;
5. 400 steps on videos of 8 to 512 frames (0.3 / 0.15 / 0.55), lr 2e-4, exported. Against stage 3
   (bench/results/demo_fast3_accuracy.md): counting 35-50% at 16-2048 frames (was 22.5-47.5%), ordering at
   2048 frames 73.8% (was 66.2%), retrieval at ratio 2 on 1024 frames 90.0% (was 81.2%); 10.7 minutes more.

`keyed` (the shipped model; 2 threads; all six stages logged 40.6 minutes on 2 cores in one run at 8911d69,
with identical steps and export (bench/results/demo_train/keyed_rerun_8911d69.json); the same computation
logged 62.1 minutes in its committed logs (stages 1-5 55.0 in their first run, stage 6 7.1) and 56.9 with
stages 1-5 rerun at 39d30a9, mostly as the machine's speed drifted (bench/README.md); `--layerwise`: long
videos train 1.03-1.07x faster, measured, with other float rounding) keeps fast's stages 1-2 and its long
stage 3, and spends the rest on the colour filter that counting needs and on counting in long videos
(bench/results/demo_counting_experiment.md):

1-2. fast's stages 1-2;
3. fast's stage 4 (300 counting-heavy steps on videos of 8 to 128 frames);
4. 1500 steps on videos of 8 to 64 frames (0.45 / 0.1 / 0.45), 60% of retrieval videos keyed ("What
   shape was the red object?"), lr 5e-4: the filter forms here;
5. fast's stage 3 (700 steps on 8 to 512 frames, 0.35 / 0.15 / 0.5, lr 3e-4) with half the retrieval
   videos keyed: carries ordering to long videos and keeps the filter (the model shipped in sessions 11-13
   ended here: bench/results/demo_keyed_accuracy.md);
6. 300 steps on videos of 384 to 512 frames (0.3 / 0.15 / 0.55, lr 2e-4, half the retrieval videos keyed),
   80% of them with `--card-window-prob`: every window that shows a thing (in any video of the batch) at
   ratio 16, every other window at ratio 2, so a thing shares its VST with background frames, as at ratio
   16 on a 2048-frame video, among 408-920 background VSTs (counted on 48 of its steps). Before it, the count read from long videos fell
   short (answers one below the truth at 2048 frames, 32.5%). Against stage 5 (demo_keyed6_accuracy.md vs
   demo_keyed_accuracy.md, ratio 16): counting 37.5 / 60.0 / 55.0 / 52.5 / 50.0 / 45.0 / 50.0 / 42.5% at
   16-2048 frames (was 40.0 / 55.0 / 67.5 / 50.0 / 57.5 / 65.0 / 35.0 / 35.0%), ordering 97.5 / 95.0% at
   1024 / 2048 (was 96.2 / 75.0%), retrieval 96.2% at 2048 (was 93.8%), NIAH mean 95.7% (was 94.7%).

`keyed-ranks` is `keyed` trained data-parallel (vxl.train.parallel): two processes of one thread each, each
rendering and computing half of every batch, the vision and text pretraining phases side by side. The same
stages and functions with other float rounding, so other weights (stage names keyedr1-5). Logged on 2
cores: 42.8 minutes (pretraining 326 s, the longer of its two side-by-side phases, then steps 537 / 99 +
440 / 141 / 536 / 488 s), against 49.8 for `keyed` rerun at 39d30a9 in the previous session (the machine's
speed drifts between sessions). Its model is a different draw, and a worse one, so it is not shipped
(bench/results/demo_keyedr_accuracy.md, same videos as keyed's): ordering at 2048 frames 37.5% (keyed
75.0%), digit needles 26-77% (keyed 64-88%), counting 25.0% at 2048 frames, NIAH mean 88.1% (94.7%);
retrieval 82.5-95.0% (95.0% at 2048). Its training diverged from keyed's in stage 2 (last 200 steps'
first-token accuracy 0.744 against 0.831), as runs differing only in rounding do over thousands of steps.

`nine` (the model shipped before, one thread by default, about 150 minutes) trains the vision tower end to
end and so retrains it alone three times:

1. from scratch (seed 0, stage 0 then the curriculum, task weights 0.45 / 0.3 / 0.25), paused at step 1250
   of its 2200-step schedule: the run that learns ordering and counting, but reads shapes and digits badly;
2. 1400 steps on videos of 8 to 256 frames, retrieval-heavy (0.6 / 0.25 / 0.15), lr 5e-4;
3. the vision tower retrained alone for 1500 steps (stage 0's frame task: restores shape and digit detail
   that end-to-end training wore away), then end to end (0.6 / 0.2 / 0.2), paused at step 600 of 1500;
4. the same once more: 1500 vision-only steps, then 800 end-to-end steps (0.6 / 0.2 / 0.2);
5. 600 steps at lr 3e-4 (0.5 / 0.25 / 0.25), 80% of them with one ratio for every window (as at inference):
   ordering at low ratios and retrieval improve;
6. 2000 vision-only steps, then 600 end-to-end steps (0.6 / 0.2 / 0.2) with 70% of retrieval needles digits
   (the weakest skill) and again 80% one-ratio steps;
7. 400 steps on videos of 8 to 512 frames (twice as long as before), 0.4 / 0.2 / 0.4 (counting-heavy),
   lr 3e-4, 80% one-ratio steps, half the retrieval needles digits;
8. the same with another seed;
9. 400 steps more at lr 2e-4, 0.35 / 0.15 / 0.5, exported. Measured at 1024 frames against stages 1-6:
   counting 37.5% (was 22.5%), ordering at ratios 2 / 4 / 8 80 / 76 / 92% (was 56 / 46 / 71%) but at
   ratio 12 57.5% (was 95%); bench/results/demo_nine_accuracy.md.

Each stage's config and step log: bench/results/demo_train/<stage>_config.json, <stage>_log.jsonl.
"""
from __future__ import annotations

import argparse
import os

from vxl.train.__main__ import parse_args
from vxl.train.loop import train

# stages after the first: no curriculum (every event on one frame, the full range of lengths from step 0)
FLAT = ["--hold-steps", "0", "--cover", "0", "--cover-steps", "0", "--ramp-steps", "0"]
# the last stage of each recipe (nine: 7-9): videos of 8 to 512 frames, 80% one-ratio steps, half the retrieval
# needles digits
LONG = ["--max-frames", "512", "--uniform-ratio-prob", "0.8", "--digit-prob", "0.5"]
FROZEN = ["--freeze-vision"]
Stage = tuple[str, list[str], int | None]       # (name, train arguments, stop after step)

FAST: list[Stage] = [
    ("fast1", ["--seed", "0", *FROZEN], 1250),
    ("fast2", ["--seed", "21", "--steps", "800", "--init-vision-steps", "2000", *FROZEN, *FLAT, "--lr", "5e-4",
               "--task-weights", "0.6", "0.2", "0.2", "--digit-prob", "0.6"], None),
    ("fast3", ["--seed", "81", "--steps", "700", *FROZEN, *FLAT, *LONG, "--lr", "3e-4", "--warmup-steps", "20",
               "--task-weights", "0.35", "0.15", "0.5"], None),
    ("fast4", ["--seed", "301", "--steps", "300", *FROZEN, *FLAT, "--max-frames", "128", "--uniform-ratio-prob", "0.8",
               "--lr", "5e-4", "--warmup-steps", "20", "--task-weights", "0.15", "0.1", "0.75"], None),
    ("fast5", ["--seed", "808", "--steps", "400", *FROZEN, *FLAT, *LONG, "--lr", "2e-4", "--warmup-steps", "20",
               "--task-weights", "0.3", "0.15", "0.55"], None),
]

# the fast recipe's stages 1-2 and 4 (counting), then colour-keyed training (the filter counting needs), then
# fast3's long stage last with keyed questions, all with the layerwise training forward
LAYERWISE = ["--layerwise"]
KEYED: list[Stage] = [
    ("keyed1", [*FAST[0][1], *LAYERWISE], FAST[0][2]),
    ("keyed2", [*FAST[1][1], *LAYERWISE], None),
    ("keyed3", [*FAST[3][1], *LAYERWISE], None),
    ("keyed4", ["--seed", "904", "--steps", "1500", *FROZEN, *FLAT, "--max-frames", "64", "--uniform-ratio-prob", "0.8",
                "--lr", "5e-4", "--warmup-steps", "20", "--task-weights", "0.45", "0.1", "0.45", "--keyed-prob", "0.6",
                *LAYERWISE], None),
    ("keyed5", [*FAST[2][1], "--keyed-prob", "0.5", *LAYERWISE], None),
    # long videos whose windows showing a thing are squeezed to ratio 16 among ratio-2 background windows: the
    # count read at 1024-2048 frames no longer falls short (bench/results/demo_counting_experiment.md)
    ("keyed6", ["--seed", "1501", "--steps", "300", *FROZEN, *FLAT, "--min-frames", "384", "--max-frames", "512",
                "--uniform-ratio-prob", "0.8", "--card-window-prob", "0.8", "--digit-prob", "0.5", "--lr", "2e-4",
                "--warmup-steps", "20", "--task-weights", "0.3", "0.15", "0.55", "--keyed-prob", "0.5", *LAYERWISE], None),
]

NINE: list[Stage] = [
    ("stage1", ["--seed", "0"], 1250),
    ("stage2", ["--seed", "21", "--steps", "1400", *FLAT, "--lr", "5e-4",
                "--task-weights", "0.6", "0.25", "0.15"], None),
    ("stage3", ["--seed", "41", "--steps", "1500", "--init-vision-steps", "1500", *FLAT, "--lr", "5e-4",
                "--task-weights", "0.6", "0.2", "0.2"], 600),
    ("stage4", ["--seed", "51", "--steps", "800", "--init-vision-steps", "1500", *FLAT, "--lr", "5e-4",
                "--task-weights", "0.6", "0.2", "0.2"], None),
    ("stage5", ["--seed", "61", "--steps", "600", *FLAT, "--lr", "3e-4", "--warmup-steps", "20",
                "--task-weights", "0.5", "0.25", "0.25", "--uniform-ratio-prob", "0.8"], None),
    ("stage6", ["--seed", "71", "--steps", "600", "--init-vision-steps", "2000", *FLAT, "--lr", "3e-4",
                "--warmup-steps", "20", "--task-weights", "0.6", "0.2", "0.2", "--digit-prob", "0.7",
                "--uniform-ratio-prob", "0.8"], None),
    # 7-9: videos of up to 512 frames and more counting (measured effect: see the docstring)
    ("stage7", ["--seed", "81", "--steps", "400", *FLAT, *LONG, "--lr", "3e-4", "--warmup-steps", "20",
                "--task-weights", "0.4", "0.2", "0.4"], None),
    ("stage8", ["--seed", "91", "--steps", "400", *FLAT, *LONG, "--lr", "3e-4", "--warmup-steps", "20",
                "--task-weights", "0.4", "0.2", "0.4"], None),
    ("stage9", ["--seed", "101", "--steps", "400", *FLAT, *LONG, "--lr", "2e-4", "--warmup-steps", "20",
                "--task-weights", "0.35", "0.15", "0.5"], None),
]

# keyed's stages trained data-parallel: two processes of one thread each (vxl.train.parallel), the pretraining
# phases side by side; the same functions, other float rounding, so other weights (hence other stage names)
# (its committed run had keyed's first five stages; stage 6's card windows need every video of a batch in one process)
KEYED_RANKS: list[Stage] = [(name.replace("keyed", "keyedr"), args, stop) for name, args, stop in KEYED[:5]]

# name -> (stages, threads per process, processes) of its committed run: float rounding, hence the weights,
# depend on both
RECIPES: dict[str, tuple[list[Stage], int, int]] = {"fast": (FAST, 2, 1), "nine": (NINE, 1, 1), "keyed": (KEYED, 2, 1),
                                                    "keyed-ranks": (KEYED_RANKS, 1, 2)}
SHIPPED = "keyed"
STAGES = RECIPES[SHIPPED][0]


def run_recipe(out_dir: str, export_dir: str | None, num_threads: int = RECIPES[SHIPPED][1],
               stages: list[Stage] = STAGES, extra: list[str] = (),
               data_workers: int = 0, ranks: int = RECIPES[SHIPPED][2]) -> None:
    """Run every stage under out_dir/<name>/ with `ranks` processes of num_threads threads each; `extra`
    arguments go to every stage (tests shrink it)."""
    previous = None
    for i, (name, args, stop) in enumerate(stages):
        stage_dir = os.path.join(out_dir, name)
        argv = [*args, *extra, "--out-dir", stage_dir, "--num-threads", str(num_threads), "--ranks", str(ranks)]
        if previous is not None:
            argv += ["--init-from", previous]
        cfg, _ = parse_args(argv)
        last = i == len(stages) - 1
        # resuming a finished stage runs no step and leaves its state untouched
        train(cfg, resume=True, export_dir=export_dir if last else None, stop_after=stop,
              data_workers=data_workers)
        previous = os.path.join(stage_dir, "state.pt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vxl.train.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--export", default=None, help="write the final model here (official layout)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=SHIPPED,
                   help=f"which recipe (default {SHIPPED}, the shipped model's)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch threads (default: what the recipe's committed run used, 2 for fast, 1 for nine; "
                        "another count gives other float rounding)")
    p.add_argument("--ranks", type=int, default=None,
                   help="training processes, each with --num-threads threads (default: what the recipe's committed "
                        "run used; another count gives other float rounding)")
    p.add_argument("--data-workers", type=int, default=0,
                   help="processes rendering the next steps' videos during training (same results; helps with "
                        "--num-threads 1 and a spare core)")
    args = p.parse_args(argv)
    stages, threads, ranks = RECIPES[args.recipe]
    run_recipe(args.out_dir, args.export, args.num_threads or threads, stages=stages,
               data_workers=args.data_workers, ranks=args.ranks or ranks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
