"""Synthetic videos: deterministic from the seed, and every answer is right about what was drawn."""
from __future__ import annotations

import numpy as np
import pytest

from vxl.train.data import LETTERS, TASKS, make_sample, stretch
from vxl.train.render import COLOURS


def frames_showing(frames: np.ndarray, colour: str) -> set[int]:
    """Frames with at least 40 pixels within 20 levels of `colour` (backgrounds never get that bright)."""
    near = np.abs(frames.astype(np.int16) - np.array(COLOURS[colour])).max(-1) <= 20
    return set(np.nonzero(near.sum((1, 2)) >= 40)[0].tolist())


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_from_seed(task):
    a, b, c = (make_sample(task, 40, seed, open_prob=0.5) for seed in ([1, 2], [1, 2], [1, 3]))
    assert np.array_equal(a.frames, b.frames) and [q.__dict__ for q in a.qas] == [q.__dict__ for q in b.qas]
    assert a.events == b.events
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (40, 64, 64, 3)


def check_choice(qa, right: str) -> None:
    assert qa.right == right and len(qa.options) == 4 and len(set(qa.options)) == 4
    assert qa.options[LETTERS.index(qa.letter)] == right and qa.answer == f"{right} ({qa.letter})"
    for letter, option in zip(LETTERS, qa.options):
        assert f"\n{option} ({letter})\n" in qa.prompt


@pytest.mark.parametrize("seed", range(6))
def test_retrieval_answers_name_the_needle(seed):
    s = make_sample("retrieval", 48, [7, seed])
    (start, length, thing), = s.events
    assert length == 1
    assert frames_showing(s.frames, thing.colour) == {start}
    check_choice(s.qas[0], thing.colour)
    check_choice(s.qas[1], thing.shape if thing.shape is not None else thing.digit)


@pytest.mark.parametrize("seed", range(6))
def test_ordering_answers_follow_time(seed):
    s = make_sample("ordering", 64, [8, seed])
    (f0, _, first), (f1, _, last) = s.events
    assert f0 < f1 and first.colour != last.colour
    assert min(frames_showing(s.frames, first.colour)) < min(frames_showing(s.frames, last.colour))
    by_question = {qa.prompt.split("\n")[0]: qa for qa in s.qas}
    check_choice(by_question["Which colour appeared first?"], first.colour)
    check_choice(by_question["Which colour appeared last?"], last.colour)
    assert last.colour in by_question["Which colour appeared first?"].options     # order, not presence


@pytest.mark.parametrize("seed", range(6))
def test_counting_answer_is_the_number_of_frames_with_the_colour(seed):
    s = make_sample("counting", 64, [9, seed], cover=1.0)          # counting is never stretched
    qa, = s.qas
    target = qa.prompt.split(" object")[0].split()[-1]
    shown = frames_showing(s.frames, target)
    assert len(shown) == sum(t.colour == target for _, _, t in s.events) == int(qa.right)
    assert all(length == 1 for _, length, _ in s.events)
    check_choice(qa, qa.right)


@pytest.mark.parametrize("seed", range(8))
def test_count_every_colour_asks_two_colours_their_counts(seed):
    s = make_sample("counting", 64, [10, seed], count_every_colour=True)
    asked = [qa.prompt.split(" object")[0].split()[-1] for qa in s.qas]
    assert len(asked) == 2 and asked[0] != asked[1]
    counts = {c: sum(t.colour == c for _, _, t in s.events) for c in asked}
    assert all(1 <= n <= 4 for n in counts.values())
    assert len({t.colour for _, _, t in s.events} - set(asked)) <= 1            # at most one unasked colour
    for colour, qa in zip(asked, s.qas):
        assert len(frames_showing(s.frames, colour)) == counts[colour] == int(qa.right)
        check_choice(qa, qa.right)
    # other tasks ignore the option
    assert make_sample("ordering", 30, seed, count_every_colour=True).qas[0].__dict__ == \
        make_sample("ordering", 30, seed).qas[0].__dict__


@pytest.mark.parametrize("seed", range(6))
def test_keyed_asks_the_shape_of_the_card_of_the_named_colour(seed):
    s = make_sample("retrieval", 48, [11, seed], keyed_prob=1.0)
    (qa,) = s.qas
    shown = {t.colour: t.shape for _, _, t in s.events}
    assert 2 <= len(s.events) == len(shown) == len(set(shown.values())) <= 4     # distinct colours, shapes
    asked = qa.prompt.split("the ")[1].split(" object")[0]
    assert qa.right == shown[asked] and all(len(frames_showing(s.frames, c)) == 1 for c in shown)
    check_choice(qa, qa.right)
    # other shown shapes are wrong options: knowing which shapes appeared is not enough
    assert len(set(qa.options) & set(shown.values())) >= min(3, len(shown))
    # keyed_prob 0 draws nothing: the default sample; ordering and counting ignore the option
    assert make_sample("retrieval", 48, [11, seed], keyed_prob=0.0).qas[0].__dict__ == \
        make_sample("retrieval", 48, [11, seed]).qas[0].__dict__
    assert make_sample("counting", 30, seed, keyed_prob=1.0).events == make_sample("counting", 30, seed).events
    with pytest.raises(ValueError, match="keyed_prob"):
        make_sample("retrieval", 10, 1, keyed_prob=-0.1)


def test_depth_places_the_needle():
    assert make_sample("retrieval", 30, 1, depth=0.0).events[0][0] == 0
    assert make_sample("retrieval", 30, 1, depth=1.0).events[0][0] == 29
    assert make_sample("retrieval", 31, 1, depth=0.5).events[0][0] == 15


def test_cover_stretches_events_in_order_with_gaps():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(20, 200))
        starts = sorted(rng.choice(n, size=int(rng.integers(1, 4)), replace=False).tolist())
        spans = stretch(rng, starts, n, float(rng.uniform(0.1, 1.0)))
        assert all(length >= 1 for _, length in spans) and spans[-1][0] + spans[-1][1] <= n
        for (a, la), (b, _) in zip(spans, spans[1:]):
            assert a + la < b                   # a blank frame between consecutive events
    assert stretch(rng, [5, 9], 20, 0.0) == [(5, 1), (9, 1)]


def test_open_ended_answers_are_words():
    s = make_sample("retrieval", 16, 4, open_prob=1.0)
    assert all(qa.options == [] and qa.answer == qa.right and "Answer with one word." in qa.prompt for qa in s.qas)


def test_digit_prob_sets_the_needle_kind_and_nothing_else():
    for seed in range(8):
        shape, digit, default = (make_sample("retrieval", 20, [9, seed], digit_prob=p) for p in (0.0, 1.0, 0.4))
        (i, _, ts), = shape.events
        (j, _, td), = digit.events
        assert ts.shape is not None and ts.digit is None and td.digit is not None and td.shape is None
        assert i == j and ts.colour == td.colour and shape.qas[0].__dict__ == digit.qas[0].__dict__
        assert "shape" in shape.qas[1].prompt and "digit" in digit.qas[1].prompt
        others = [f for f in range(20) if f != i]
        assert np.array_equal(shape.frames[others], digit.frames[others])
        # the default is one of the two (the kind is the only draw that digit_prob changes)
        assert default.events in (shape.events, digit.events)
    # digit_prob applies to retrieval needles only; ordering and counting samples ignore it
    assert make_sample("counting", 30, 3, digit_prob=1.0).events == make_sample("counting", 30, 3).events
    with pytest.raises(ValueError, match="digit_prob"):
        make_sample("retrieval", 10, 1, digit_prob=1.5)


@pytest.mark.parametrize("seed", range(6))
def test_count_others_shows_many_other_colours_and_counts_the_asked_one(seed):
    s = make_sample("counting", 160, [12, seed], count_others=9)
    (qa,) = s.qas
    target = qa.prompt.split(" object")[0].split()[-1]
    others = [t.colour for _, _, t in s.events if t.colour != target]
    assert len(others) <= 9 and len(s.events) == int(qa.right) + len(others)
    assert len(frames_showing(s.frames, target)) == int(qa.right)
    check_choice(qa, qa.right)
    # the default keeps the evaluation's draws exactly; other tasks ignore the option
    assert make_sample("counting", 30, seed, count_others=2).events == make_sample("counting", 30, seed).events
    assert make_sample("ordering", 30, seed, count_others=9).qas[0].__dict__ == \
        make_sample("ordering", 30, seed).qas[0].__dict__
    # very short videos still fit every card on its own frame
    short = make_sample("counting", 8, [13, seed], count_others=9)
    assert len({f for f, _, _ in short.events}) == len(short.events) <= 4
    with pytest.raises(ValueError, match="count_others"):
        make_sample("counting", 10, 1, count_others=-1)


def test_count_others_draws_beyond_two_colours_and_counts():
    samples = [make_sample("counting", 200, [14, i], count_others=9) for i in range(40)]
    colours_seen = [len({t.colour for _, _, t in s.events}) for s in samples]
    other_counts = [len(s.events) - int(s.qas[0].right) for s in samples]
    assert max(colours_seen) > 3 and max(other_counts) > 2 and min(other_counts) == 0
