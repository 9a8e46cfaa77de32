"""Video needle-in-a-haystack (`python -m bench.niah`): a needle frame (a word written in it, or `--needle-image` pasted
into it with its own question and options) is put into a haystack video at depths 0..100% for a grid of
frame counts; the model answers a 4-option question about the needle, scored by
exact option-letter match (`generate`: first A-D letter of the answer; `likelihood`: most likely letter
token). Writes JSON + a frames x depth heatmap PNG. Run from the repository root: `python -m bench.niah -h`."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench.common import RESULTS_DIR, env_info, header_line, log, new_figure, save_figure, write_json
from bench.e2e import parse_size
from bench.niah_data import (
    CHANCE,
    LETTERS,
    WORDS,
    extract_letter,
    insert_needle,
    load_haystack,
    load_needle_image,
    make_image_question,
    make_question,
    needle_index,
    paste_image,
    render_needle,
)

RANDOM_MODELS = ("tiny", "full-random")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.niah", description=__doc__)
    p.add_argument("--model", default="tiny", help="'tiny' (random weights), 'full-random' or a checkpoint directory")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--attention-backend", default=None, choices=["torch", "triton"])
    p.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128], help="haystack lengths (frames)")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="needle positions as fractions of the video (0 = first frame, 1 = last)")
    p.add_argument("--trials", type=int, default=2, help="questions (different words) per cell")
    p.add_argument("--compression-ratio", type=int, default=None, help="default: the model's largest trained ratio")
    p.add_argument("--video", default=None, help="haystack video file (default: a generated video)")
    p.add_argument("--frame-size", type=parse_size, default=None,
                   help="generated haystack and needle size HxW (default: the model's crop size)")
    p.add_argument("--needle-image", default=None, metavar="PATH",
                   help="needle: this image pasted into the needle frame (default: a word rendered into it); "
                   "needs --needle-question, --needle-options and --needle-answer")
    p.add_argument("--needle-question", default=None, help="the question about the needle image")
    p.add_argument("--needle-options", nargs=len(LETTERS), default=None, metavar="OPTION",
                   help="the 4 answer options (shuffled per trial)")
    p.add_argument("--needle-answer", default=None, help="the right option: its text, or its letter A-D as given")
    p.add_argument("--needle-scale", type=float, default=1.0,
                   help="the image fits in this fraction of the frame (aspect kept, centred; the rest is haystack)")
    p.add_argument("--scoring", choices=["generate", "likelihood"], default="generate",
                   help="generate: first A-D letter of the greedy answer; likelihood: most likely letter token")
    p.add_argument("--max-tokens", type=int, default=8, help="answer length with --scoring generate")
    p.add_argument("--batch-size", type=int, default=8, help="requests per generate call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS_DIR, help="output directory")
    p.add_argument("--name", default=None, help="file stem (default niah_<model>)")
    return p


def check_args(args) -> None:
    if any(n < 1 for n in args.frames) or args.trials < 1 or args.batch_size < 1 or args.max_tokens < 1:
        raise SystemExit("error: frames, trials, batch size and max tokens must be >= 1")
    if any(not 0.0 <= d <= 1.0 for d in args.depths):
        raise SystemExit("error: depths must be within [0, 1]")
    if args.needle_image is None and args.trials > len(WORDS):
        raise SystemExit(f"error: at most {len(WORDS)} trials per cell (one word each)")
    if args.video is not None and not os.path.isfile(args.video):
        raise SystemExit(f"error: --video {args.video!r} is not a file")
    check_needle_args(args)


def check_needle_args(args) -> None:
    """An image needle comes with its question, 4 distinct options and the right one (text or letter);
    `args.needle_answer` becomes the right option's text."""
    image_args = (args.needle_question, args.needle_options, args.needle_answer)
    if args.needle_image is None:
        if any(a is not None for a in image_args):
            raise SystemExit("error: --needle-question/--needle-options/--needle-answer need --needle-image")
        return
    if any(a is None for a in image_args):
        raise SystemExit("error: --needle-image needs --needle-question, --needle-options and --needle-answer")
    try:
        load_needle_image(args.needle_image)
    except ValueError as exc:
        raise SystemExit(f"error: --needle-image: {exc}") from None
    if len(set(args.needle_options)) != len(LETTERS):
        raise SystemExit(f"error: --needle-options must be {len(LETTERS)} different options")
    if args.needle_answer in LETTERS and args.needle_answer not in args.needle_options:
        args.needle_answer = args.needle_options[LETTERS.index(args.needle_answer)]
    if args.needle_answer not in args.needle_options:
        raise SystemExit(f"error: --needle-answer {args.needle_answer!r} is not one of --needle-options")
    if not 0.0 < args.needle_scale <= 1.0:
        raise SystemExit("error: --needle-scale must be in (0, 1]")


def build_llm(args):
    from vxl import LLM
    kwargs = {"device": args.device, "dtype": args.dtype, "attention_backend": args.attention_backend}
    llm = LLM(args.model, seed=args.seed, max_logprobs=None, **kwargs)     # likelihood scoring reads every token
    if llm.tokenizer is None:
        raise SystemExit(f"error: {args.model} has no tokenizer files; the needle question needs a text prompt")
    if not llm.model.has_vision:
        raise SystemExit(f"error: {args.model} has no vision tower (mm_vision_tower); it cannot watch a video")
    return llm


def make_trials(args) -> list[dict]:
    """The grid: per frame count and depth, `trials` questions with different words (text needles) or
    with the image needle's options in a different order."""
    rng = np.random.default_rng(args.seed)
    trials = []
    for n in args.frames:
        for depth in args.depths:
            if args.needle_image is not None:
                for _ in range(args.trials):
                    question, options, answer = make_image_question(args.needle_question, args.needle_options,
                                                                    args.needle_answer, rng)
                    trials.append({"frames": n, "depth": depth, "needle_image": args.needle_image,
                                   "options": options, "answer": answer, "question": question})
                continue
            for word in rng.choice(WORDS, size=args.trials, replace=False):
                question, options, answer = make_question(str(word), rng)
                trials.append({"frames": n, "depth": depth, "word": str(word), "options": options,
                               "answer": answer, "question": question})
    return trials


def letter_token_ids(tokenizer) -> dict[str, int]:
    ids = {letter: tokenizer.encode(letter, add_special_tokens=False) for letter in LETTERS}
    bad = [letter for letter, i in ids.items() if len(i) != 1]
    if bad:
        raise SystemExit(f"error: --scoring likelihood needs single-token letters; {bad} are not")
    return {letter: i[0] for letter, i in ids.items()}


def predict(out, scoring: str, letter_ids: dict[str, int] | None) -> str | None:
    if out.error is not None:
        return None
    if scoring == "generate":
        return extract_letter(out.text)
    first = out.logprobs[0]        # every token's logprob at the first answer position
    return max(letter_ids, key=lambda letter: first.get(letter_ids[letter], float("-inf")))


def needle_video(trial: dict, haystack: np.ndarray, needle_image: np.ndarray | None,
                 scale: float) -> tuple[np.ndarray, int]:
    """The haystack with the trial's needle frame at its depth: the image pasted into the haystack frame
    there, or the trial's word rendered on white; and that frame's index."""
    if needle_image is not None:
        idx = needle_index(len(haystack), trial["depth"])
        return insert_needle(haystack, paste_image(haystack[idx], needle_image, scale), trial["depth"])
    return insert_needle(haystack, render_needle(trial["word"], *haystack.shape[1:3]), trial["depth"])


def run_trials(llm, args, trials: list[dict], size: tuple[int, int]) -> None:
    """Answers every trial in place: needle_frame, output, predicted letter, correct."""
    from vxl import SamplingParams
    letter_ids = None
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    if args.scoring == "likelihood":
        letter_ids = letter_token_ids(llm.tokenizer)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=llm.config.vocab_size)
    haystacks = {n: load_haystack(args.video, n, size[0], size[1], args.seed) for n in sorted(set(args.frames))}
    needle_image = load_needle_image(args.needle_image) if args.needle_image is not None else None
    for start in range(0, len(trials), args.batch_size):
        batch = trials[start:start + args.batch_size]
        requests = []
        for t in batch:
            hay = haystacks[t["frames"]]
            frames, t["needle_frame"] = needle_video(t, hay, needle_image, args.needle_scale)
            t["num_frames_used"] = len(frames)      # fewer than asked when a video file is shorter
            requests.append({"prompt": t["question"], "video": frames, "num_frames": len(frames),
                             "compression_ratio": args.compression_ratio})
        for t, out in zip(batch, llm.generate(requests, params, use_tqdm=False)):
            t["output"], t["error"] = out.text, out.error
            t["predicted"] = predict(out, args.scoring, letter_ids)
            t["correct"] = t["predicted"] == t["answer"]
        done = start + len(batch)
        log(f"{done}/{len(trials)} answered, accuracy so far {np.mean([t['correct'] for t in trials[:done]]):.1%}")


def score_cells(trials: list[dict]) -> list[dict]:
    cells = {}
    for t in trials:
        cells.setdefault((t["frames"], t["depth"]), []).append(t["correct"])
    return [{"frames": n, "depth": d, "accuracy": float(np.mean(v)), "num_trials": len(v)}
            for (n, d), v in sorted(cells.items())]


def plot_heatmap(cells: list[dict], path: str, title: str, header: str) -> str:
    frames = sorted({c["frames"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    grid = np.full((len(frames), len(depths)), np.nan)
    for c in cells:
        grid[frames.index(c["frames"]), depths.index(c["depth"])] = c["accuracy"]
    fig, (ax,) = new_figure(width=max(8.0, 1.2 * len(depths) + 3), height=0.6 * len(frames) + 2.4)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    for i in range(len(frames)):
        for j in range(len(depths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_yticks(range(len(frames)), [str(n) for n in frames])
    ax.set_xlabel("needle depth")
    ax.set_ylabel("frames")
    fig.colorbar(im, ax=ax, label="accuracy")
    return save_figure(fig, path, title, header)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    info = env_info()
    header = header_line(info)
    log(header)
    llm = build_llm(args)
    proc = llm.loaded.image_processor
    size = args.frame_size or (proc.crop_size, proc.crop_size)
    args.compression_ratio = args.compression_ratio or llm.config.default_ratio
    trials = make_trials(args)
    t0 = time.perf_counter()
    run_trials(llm, args, trials, size)
    seconds = time.perf_counter() - t0
    cells = score_cells(trials)
    accuracy = float(np.mean([t["correct"] for t in trials]))
    errors = sum(t["error"] is not None for t in trials)
    notes = [f"chance is {CHANCE:.0%} (4 options); scoring '{args.scoring}'"
             + ("; answers without an A-D letter count as wrong." if args.scoring == "generate" else ".")]
    if args.model in RANDOM_MODELS:
        notes.append(f"'{args.model}' has random weights: its answers are meaningless and its score is chance "
                     "level or below; this run checks that the harness works. Use a trained checkpoint.")
    name = os.path.basename(os.path.normpath(args.model))
    stem = args.name or f"niah_{name}"
    needle = f"image {os.path.basename(args.needle_image)}" if args.needle_image else "text"
    title = (f"vxl video NIAH: {name}, {needle} needle, r={args.compression_ratio}, {args.scoring} scoring, "
             f"accuracy {accuracy:.1%} (chance {CHANCE:.0%})")
    result = {"benchmark": "niah", "env": info, "header": header, "args": {k: v for k, v in vars(args).items()},
              "frame_size": list(size), "needle_kind": "image" if args.needle_image else "text", "accuracy": accuracy, "chance": CHANCE, "num_trials": len(trials),
              "num_errors": errors, "seconds": seconds, "cells": cells, "trials": trials, "notes": notes}
    paths = [write_json(os.path.join(args.out, f"{stem}.json"), result),
             plot_heatmap(cells, os.path.join(args.out, f"{stem}_heatmap.png"), title, header)]
    print(f"accuracy {accuracy:.1%} over {len(trials)} questions (chance {CHANCE:.0%}); {errors} errors; "
          f"{seconds:.1f} s")
    for c in cells:
        print(f"  frames {c['frames']:>5}  depth {c['depth']:>4.0%}  accuracy {c['accuracy']:.0%} ({c['num_trials']})")
    for note in notes:
        print(f"note: {note}")
    print("wrote " + ", ".join(paths))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
