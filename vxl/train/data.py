"""Synthetic long videos with VNBench-style questions: retrieval (the colour / shape / digit of the thing
that appeared once), ordering (which of two things came first / last) and counting (how many times a
colour appeared). 4-option multiple choice: options are written "red (A)" and the answer repeats the
chosen option, "red (A)" (scored by its letter); open-ended forms (answer: the word) can be mixed in.
A sample is a pure function of (task, num_frames, seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vxl.train.render import COLOURS, DIGITS, SHAPES, Thing, card, draw_background, render_video

TASKS = ("retrieval", "ordering", "counting")
LETTERS = "ABCD"
INSTRUCTION = "Answer with the right option."
OPEN_INSTRUCTION = "Answer with one word."
MAX_COUNT = 4
DIGIT_PROB = 0.4             # share of needles that are digits (the rest are shapes)
COUNT_OTHERS = 2             # counting videos show up to this many other-coloured things (evaluation: always 2)


@dataclass
class QA:
    """One question about a video. `prompt` is what goes into the engine's `prompt` (the chat template is
    added around it); `answer` is the text the model must generate ("red (A)", or "red" when open)."""
    task: str
    prompt: str
    answer: str
    options: list[str] = field(default_factory=list)
    right: str = ""              # the right option's text
    letter: str = ""             # the right option's letter ("" when open-ended)


@dataclass
class VideoSample:
    frames: np.ndarray           # uint8 [T, S, S, 3]
    task: str
    qas: list[QA]
    events: list[tuple[int, int, Thing]]   # (first frame, number of frames, thing shown), in time order


def multiple_choice(rng: np.random.Generator, task: str, question: str, right: str, pool: list[str],
                    must: tuple[str, ...] = ()) -> QA:
    """`right`, the wrong options in `must`, and random wrong ones from `pool` (4 distinct options),
    shuffled. Options are written "word (letter)" with the word first, and the answer repeats the right
    one: a letter-first answer needs a two-hop lookup (find the option, fetch the letter before it) that
    a model this small does not learn within the training budget; this way the letter follows the word."""
    wrong = [o for o in pool if o != right and o not in must]
    extra = rng.choice(wrong, size=len(LETTERS) - 1 - len(must), replace=False)
    options = [right, *must] + [str(o) for o in extra]
    rng.shuffle(options)
    lines = "\n".join(f"{opt} ({letter})" for letter, opt in zip(LETTERS, options))
    letter = LETTERS[options.index(right)]
    return QA(task, f"{question}\n{lines}\n{INSTRUCTION}", f"{right} ({letter})", options, right, letter)


def open_ended(task: str, question: str, right: str) -> QA:
    return QA(task, f"{question} {OPEN_INSTRUCTION}", right, [], right)


def make_qa(rng: np.random.Generator, task: str, question: str, right: str, pool: list[str],
            open_prob: float, must: tuple[str, ...] = ()) -> QA:
    if open_prob > 0 and rng.uniform() < open_prob:
        return open_ended(task, question, right)
    return multiple_choice(rng, task, question, right, pool, must)


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


def retrieval(rng, num_frames: int, open_prob: float, depth: float | None = None, digit_prob: float = DIGIT_PROB,
              keyed_prob: float = 0.0):
    """One thing appears on one frame (at `depth` of the video when given); ask its colour and its shape
    or digit (a digit with probability `digit_prob`). With probability `keyed_prob` (training) the
    video is `keyed` instead."""
    if keyed_prob > 0 and rng.uniform() < keyed_prob:
        return keyed(rng, num_frames, open_prob)
    idx = int(rng.integers(num_frames)) if depth is None else int(round(depth * (num_frames - 1)))
    thing = random_thing(rng, digit_prob=digit_prob)
    qas = [make_qa(rng, "retrieval", "What colour was the object that appeared once?", thing.colour,
                   list(COLOURS), open_prob)]
    if thing.shape is not None:
        qas.append(make_qa(rng, "retrieval", "What shape was the object that appeared once?", thing.shape,
                           list(SHAPES), open_prob))
    else:
        qas.append(make_qa(rng, "retrieval", "Which digit appeared once?", thing.digit, list(DIGITS), open_prob))
    return [(idx, thing)], qas


def keyed(rng, num_frames: int, open_prob: float):
    """2..4 shapes of distinct colours and distinct shapes on their own frames; ask the shape of the one of
    a named colour. Answering needs the question's colour word matched against what each card shows,
    the selection counting needs too (training only: the evaluation's retrieval has one needle)."""
    num = min(int(rng.integers(2, 5)), num_frames)
    colours = [str(c) for c in rng.choice(list(COLOURS), size=num, replace=False)]
    shapes = [str(s) for s in rng.choice(list(SHAPES), size=num, replace=False)]
    frames = spread_frames(rng, num_frames, num, max(2, num_frames // 16))
    events = [(f, Thing(c, shape=sh)) for f, c, sh in zip(frames, colours, shapes)]
    k = int(rng.integers(num))
    return events, [make_qa(rng, "retrieval", f"What shape was the {colours[k]} object?", shapes[k],
                            list(SHAPES), open_prob, tuple(shapes[:k] + shapes[k + 1:])[:2])]


def ordering(rng, num_frames: int, open_prob: float):
    """Two things of different colours on two frames; ask which colour came first and which came last."""
    colours = [str(c) for c in rng.choice(list(COLOURS), size=2, replace=False)]
    frames = spread_frames(rng, num_frames, 2, max(2, num_frames // 8))
    events = [(f, random_thing(rng, [c])) for f, c in zip(frames, colours)]
    # the other thing's colour is always a wrong option: knowing which colours appeared is not enough
    qas = [make_qa(rng, "ordering", "Which colour appeared first?", colours[0], list(COLOURS), open_prob,
                   (colours[1],)),
           make_qa(rng, "ordering", "Which colour appeared last?", colours[1], list(COLOURS), open_prob,
                   (colours[0],))]
    return events, [qas[i] for i in rng.permutation(2)]


def counting(rng, num_frames: int, open_prob: float, every_colour: bool = False, others: int = COUNT_OTHERS):
    """A target colour appears 1..4 times, 0..2 other-coloured things appear too; ask the target's count.
    `every_colour` (training): a second colour also appears 1..4 times (0..1 more things of a third) and
    both counts are asked, so that counting every card, or a count's prior, is wrong. `others` (training)
    other than 2: 0..others other-coloured things, each of any colour but the target's, so that the number
    of every card shown says little about the asked count."""
    target, second, third = [str(c) for c in rng.choice(list(COLOURS), size=3, replace=False)]
    room = max(1, num_frames // 2)
    count = min(int(rng.integers(1, MAX_COUNT + 1)), room)    # very short videos: fewer
    if every_colour:
        num_second = min(int(rng.integers(1, MAX_COUNT + 1)), max(0, room - count))
        colours = [target] * count + [second] * num_second
        colours += [third] * min(int(rng.integers(0, 2)), max(0, room - len(colours)))
        asked = [target] + ([second] if num_second else [])
    elif others == COUNT_OTHERS:
        num_other = min(int(rng.integers(0, 3)), max(0, room - count))
        colours = [target] * count + [str(rng.choice([second, third])) for _ in range(num_other)]
        asked = [target]
    else:
        num_other = min(int(rng.integers(0, others + 1)), max(0, room - count))
        rest = [c for c in COLOURS if c != target]
        colours = [target] * count + [str(rng.choice(rest)) for _ in range(num_other)]
        asked = [target]
    rng.shuffle(colours)
    frames = spread_frames(rng, num_frames, len(colours), max(2, num_frames // 16))
    events = [(f, random_thing(rng, [c])) for f, c in zip(frames, colours)]
    pool = [str(n) for n in range(1, MAX_COUNT + 1)]
    return events, [make_qa(rng, "counting", count_question(c), str(colours.count(c)), pool, open_prob)
                    for c in asked]


def count_question(colour: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"How many times did {article} {colour} object appear?"


GENERATORS = {"retrieval": retrieval, "ordering": ordering, "counting": counting}


def stretch(rng: np.random.Generator, starts: list[int], num_frames: int, cover: float) -> list[tuple[int, int]]:
    """(first frame, length) of each event. cover = 0: single frames at `starts`. cover > 0 (training
    curriculum): each event spreads over about cover x its share of the video around its start, keeping
    the order of events and a blank frame between them; cover = 1 with one event fills the video."""
    if cover <= 0:
        return [(s, 1) for s in starts]
    n = len(starts)
    lo = [0] + [s + 1 for s in starts[:-1]]              # an event may extend back to just after the previous
    hi = [s - 1 for s in starts[1:]] + [num_frames]        # and forward to just before the next
    spans = []
    for i, s in enumerate(starts):
        left, right = (lo[i] + s) // 2 if i else 0, (s + hi[i]) // 2 if i < n - 1 else num_frames
        length = max(1, int(round(cover * rng.uniform(0.5, 1.0) * (right - left))))
        first = int(np.clip(s - length // 2, left, max(left, right - length)))
        spans.append((first, min(length, right - first)))
    return spans


def make_sample(task: str, num_frames: int, seed, size: int = 64, open_prob: float = 0.0,
                depth: float | None = None, cover: float = 0.0, digit_prob: float = DIGIT_PROB,
                count_every_colour: bool = False, keyed_prob: float = 0.0,
                count_others: int = COUNT_OTHERS) -> VideoSample:
    """The video and its questions for one seed (an int or a sequence of ints, as numpy's SeedSequence).
    Each event shows its thing on 1 frame, or (training curriculum, `cover` > 0) on a run of frames.
    `digit_prob` (retrieval only) changes which needles are digits, not the rest of the sample's draws.
    `count_every_colour` (counting only): a second colour is counted and asked too (see `counting`).
    `keyed_prob` (retrieval only): the share of retrieval videos that are `keyed` instead.
    `count_others` (counting only): the most other-coloured things a counting video shows."""
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if depth is not None and task != "retrieval":
        raise ValueError("depth applies to the retrieval task only")
    for name, prob in (("digit_prob", digit_prob), ("keyed_prob", keyed_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    rng = np.random.default_rng(seed)
    kwargs = {"depth": depth} if depth is not None else {}
    if task == "retrieval":
        kwargs["digit_prob"] = digit_prob
        if keyed_prob > 0:
            kwargs["keyed_prob"] = keyed_prob
    if count_others < 0:
        raise ValueError(f"count_others must be >= 0, got {count_others}")
    if task == "counting" and count_every_colour:
        kwargs["every_colour"] = True
    if task == "counting" and count_others != COUNT_OTHERS:
        kwargs["others"] = count_others
    events, qas = GENERATORS[task](rng, num_frames, open_prob, **kwargs)
    events = sorted(events, key=lambda e: e[0])
    # counting counts frames: its things are never stretched
    spans = stretch(rng, [e[0] for e in events], num_frames, cover if task != "counting" else 0.0)
    bg = draw_background(rng, num_frames, size)
    # the same size, place and tint on every frame of an event
    cards = [(start, length, card(int(rng.integers(2**31)), thing, size))
             for (start, length), (_, thing) in zip(spans, events)]
    return VideoSample(render_video(bg, cards), task, qas, [(s, n, t) for (s, n), (_, t) in zip(spans, events)])
