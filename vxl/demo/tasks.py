"""Synthetic long videos with VNBench-style 4-option questions, the tasks the shipped `demo` model answers:
retrieval (the colour / shape / digit of the thing that appeared once), ordering (which of two things came
first / last) and counting (how many times a colour appeared). Options are written "red (A)" and the
answer repeats the chosen option, "red (A)" (scored by its letter). A sample is a pure function of
(task, num_frames, seed); the demo model's trainer (demo_model/, outside the package) draws its training
videos with the same functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vxl.demo.render import COLOURS, DIGITS, SHAPES, Thing, card, draw_background, render_video

TASKS = ("retrieval", "ordering", "counting")
LETTERS = "ABCD"
INSTRUCTION = "Answer with the right option."
MAX_COUNT = 4
DIGIT_PROB = 0.4             # share of needles that are digits (the rest are shapes)

Events = list[tuple[int, Thing]]        # (frame, thing shown there)


@dataclass
class QA:
    """One question about a video. `prompt` is what goes into the engine's `prompt` (the chat template is
    added around it); `answer` is the text the model must generate ("red (A)")."""
    task: str
    prompt: str
    answer: str
    options: list[str] = field(default_factory=list)
    right: str = ""              # the right option's text
    letter: str = ""             # the right option's letter


@dataclass
class VideoSample:
    frames: np.ndarray           # uint8 [T, S, S, 3]
    task: str
    qas: list[QA]
    events: list[tuple[int, int, Thing]]   # (first frame, number of frames, thing shown), in time order


def multiple_choice(rng: np.random.Generator, task: str, question: str, right: str, pool: list[str],
                    must: tuple[str, ...] = ()) -> QA:
    """`right`, the wrong options in `must`, and random wrong ones from `pool` (4 distinct options),
    shuffled. Options are written "word (letter)" with the word first and the answer repeats the right
    one, so the letter follows the word: a letter-first answer needs a two-hop lookup (find the option,
    fetch the letter before it) that a model this small does not learn."""
    wrong = [o for o in pool if o != right and o not in must]
    extra = rng.choice(wrong, size=len(LETTERS) - 1 - len(must), replace=False)
    options = [right, *must] + [str(o) for o in extra]
    rng.shuffle(options)
    lines = "\n".join(f"{opt} ({letter})" for letter, opt in zip(LETTERS, options))
    letter = LETTERS[options.index(right)]
    return QA(task, f"{question}\n{lines}\n{INSTRUCTION}", f"{right} ({letter})", options, right, letter)


# how a generator asks a question: (rng, task, question, right, pool of options, options that must appear) -> QA
Ask = Callable[..., QA]


def spread_frames(rng: np.random.Generator, num_frames: int, count: int, min_gap: int) -> list[int]:
    """`count` sorted distinct frame indices at least `min_gap` apart (the gap shrinks if they cannot fit)."""
    if count > num_frames:
        raise ValueError(f"{count} events do not fit in {num_frames} frames")
    gap = max(1, min(min_gap, num_frames // max(1, count)))
    slack = num_frames - 1 - gap * (count - 1)
    base = np.sort(rng.choice(slack + 1, size=count, replace=True))
    return [int(b + i * gap) for i, b in enumerate(base)]


def random_thing(rng: np.random.Generator, colours: list[str] | None = None, allow_digit: bool = True,
                 digit_prob: float = DIGIT_PROB) -> Thing:
    colour = str(rng.choice(colours or list(COLOURS)))
    if allow_digit and rng.uniform() < digit_prob:
        return Thing(colour, digit=str(rng.choice(DIGITS)))
    return Thing(colour, shape=str(rng.choice(SHAPES)))


def retrieval(rng, num_frames: int, depth: float | None = None, digit_prob: float = DIGIT_PROB,
              ask: Ask = multiple_choice):
    """One thing appears on one frame (at `depth` of the video when given); ask its colour and its shape
    or digit (a digit with probability `digit_prob`)."""
    idx = int(rng.integers(num_frames)) if depth is None else int(round(depth * (num_frames - 1)))
    thing = random_thing(rng, digit_prob=digit_prob)
    qas = [ask(rng, "retrieval", "What colour was the object that appeared once?", thing.colour, list(COLOURS))]
    if thing.shape is not None:
        qas.append(ask(rng, "retrieval", "What shape was the object that appeared once?", thing.shape, list(SHAPES)))
    else:
        qas.append(ask(rng, "retrieval", "Which digit appeared once?", thing.digit, list(DIGITS)))
    return [(idx, thing)], qas


def ordering(rng, num_frames: int, ask: Ask = multiple_choice):
    """Two things of different colours on two frames; ask which colour came first and which came last."""
    colours = [str(c) for c in rng.choice(list(COLOURS), size=2, replace=False)]
    frames = spread_frames(rng, num_frames, 2, max(2, num_frames // 8))
    events = [(f, random_thing(rng, [c])) for f, c in zip(frames, colours)]
    # the other thing's colour is always a wrong option: knowing which colours appeared is not enough
    qas = [ask(rng, "ordering", "Which colour appeared first?", colours[0], list(COLOURS), (colours[1],)),
           ask(rng, "ordering", "Which colour appeared last?", colours[1], list(COLOURS), (colours[0],))]
    return events, [qas[i] for i in rng.permutation(2)]


def counting(rng, num_frames: int, ask: Ask = multiple_choice):
    """A target colour appears 1..4 times and 0..2 things of two other colours appear too; ask the
    target's count."""
    target, second, third = [str(c) for c in rng.choice(list(COLOURS), size=3, replace=False)]
    room = max(1, num_frames // 2)
    count = min(int(rng.integers(1, MAX_COUNT + 1)), room)    # very short videos: fewer
    num_other = min(int(rng.integers(0, 3)), max(0, room - count))
    colours = [target] * count + [str(rng.choice([second, third])) for _ in range(num_other)]
    rng.shuffle(colours)
    frames = spread_frames(rng, num_frames, len(colours), max(2, num_frames // 16))
    events = [(f, random_thing(rng, [c])) for f, c in zip(frames, colours)]
    pool = [str(n) for n in range(1, MAX_COUNT + 1)]
    return events, [ask(rng, "counting", count_question(target), str(count), pool)]


def count_question(colour: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"How many times did {article} {colour} object appear?"


def draw_questions(rng: np.random.Generator, task: str, num_frames: int, depth: float | None = None,
                   digit_prob: float = DIGIT_PROB, ask: Ask = multiple_choice) -> tuple[Events, list[QA]]:
    """The events of a `task` video and its questions (`depth`, `digit_prob`: retrieval only); `ask`
    writes each question (4-option multiple choice by default)."""
    if task == "retrieval":
        return retrieval(rng, num_frames, depth, digit_prob, ask)
    if depth is not None:
        raise ValueError("depth applies to the retrieval task only")
    return ordering(rng, num_frames, ask) if task == "ordering" else counting(rng, num_frames, ask)


def render_sample(rng: np.random.Generator, task: str, num_frames: int, size: int, qas: list[QA],
                  events: list[tuple[int, int, Thing]]) -> VideoSample:
    """Paint a background of num_frames frames and each event's card (first frame, frames, thing) on it:
    the same size, place and tint on every frame of an event."""
    bg = draw_background(rng, num_frames, size)
    cards = [(start, length, card(int(rng.integers(2**31)), thing, size)) for start, length, thing in events]
    return VideoSample(render_video(bg, cards), task, qas, events)


def check_task(task: str, num_frames: int, digit_prob: float) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if not 0.0 <= digit_prob <= 1.0:
        raise ValueError(f"digit_prob must be in [0, 1], got {digit_prob}")


def make_sample(task: str, num_frames: int, seed, size: int = 64, depth: float | None = None,
                digit_prob: float = DIGIT_PROB) -> VideoSample:
    """The video and its questions for one seed (an int or a sequence of ints, as numpy's SeedSequence):
    each event shows its thing on one frame. `depth` (retrieval only) places the needle; `digit_prob`
    (retrieval only) changes which needles are digits, not the rest of the sample's draws."""
    check_task(task, num_frames, digit_prob)
    rng = np.random.default_rng(seed)
    events, qas = draw_questions(rng, task, num_frames, depth, digit_prob)
    events = sorted(events, key=lambda e: e[0])
    return render_sample(rng, task, num_frames, size, qas, [(f, 1, thing) for f, thing in events])
