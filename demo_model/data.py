"""Training videos of the demo model: the evaluation tasks of vxl.demo.tasks plus what only training
draws: `keyed` retrieval videos (several cards; the shape of the one of a named colour) and the
curriculum's stretched events (a thing shown on a run of frames instead of one). A sample is a pure
function of its arguments.
"""
from __future__ import annotations

import numpy as np

from vxl.demo.render import COLOURS, SHAPES, Thing
from vxl.demo.tasks import (DIGIT_PROB, QA, VideoSample, check_task, draw_questions, multiple_choice,
                            render_sample, spread_frames)


def keyed(rng: np.random.Generator, num_frames: int) -> tuple[list[tuple[int, Thing]], list[QA]]:
    """2..4 shapes of distinct colours and distinct shapes on their own frames; ask the shape of the one of
    a named colour. Answering needs the question's colour word matched against what each card shows,
    the selection counting needs too."""
    num = min(int(rng.integers(2, 5)), num_frames)
    colours = [str(c) for c in rng.choice(list(COLOURS), size=num, replace=False)]
    shapes = [str(s) for s in rng.choice(list(SHAPES), size=num, replace=False)]
    frames = spread_frames(rng, num_frames, num, max(2, num_frames // 16))
    events = [(f, Thing(c, shape=sh)) for f, c, sh in zip(frames, colours, shapes)]
    k = int(rng.integers(num))
    return events, [multiple_choice(rng, "retrieval", f"What shape was the {colours[k]} object?", shapes[k],
                                    list(SHAPES), tuple(shapes[:k] + shapes[k + 1:])[:2])]


def stretch(rng: np.random.Generator, starts: list[int], num_frames: int, cover: float) -> list[tuple[int, int]]:
    """(first frame, length) of each event. cover = 0: single frames at `starts`. cover > 0 (the
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


def make_training_sample(task: str, num_frames: int, seed, size: int = 64, cover: float = 0.0,
                         digit_prob: float = DIGIT_PROB, keyed_prob: float = 0.0) -> VideoSample:
    """vxl.demo.tasks.make_sample with the training draws: with probability `keyed_prob` a retrieval video
    is `keyed`; with `cover` > 0 events other than counting's (which counts frames) are stretched. With
    keyed_prob = cover = 0 it is make_sample's sample, draw for draw."""
    check_task(task, num_frames, digit_prob)
    if not 0.0 <= keyed_prob <= 1.0:
        raise ValueError(f"keyed_prob must be in [0, 1], got {keyed_prob}")
    rng = np.random.default_rng(seed)
    if task == "retrieval" and keyed_prob > 0 and rng.uniform() < keyed_prob:
        events, qas = keyed(rng, num_frames)
    else:
        events, qas = draw_questions(rng, task, num_frames, digit_prob=digit_prob)
    events = sorted(events, key=lambda e: e[0])
    spans = stretch(rng, [e[0] for e in events], num_frames, cover if task != "counting" else 0.0)
    return render_sample(rng, task, num_frames, size, qas, [(s, n, t) for (s, n), (_, t) in zip(spans, events)])
