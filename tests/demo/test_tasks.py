"""Synthetic videos of `vxl demo`: deterministic from the seed, and every answer is right about what was drawn."""
from __future__ import annotations

import numpy as np
import pytest

from demo_helpers import check_choice, frames_showing
from vxl.demo import extract_letter
from vxl.demo.tasks import TASKS, make_sample


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_from_seed(task):
    a, b, c = (make_sample(task, 40, seed) for seed in ([1, 2], [1, 2], [1, 3]))
    assert np.array_equal(a.frames, b.frames) and [q.__dict__ for q in a.qas] == [q.__dict__ for q in b.qas]
    assert a.events == b.events
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (40, 64, 64, 3)


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
    s = make_sample("counting", 64, [9, seed])
    qa, = s.qas
    target = qa.prompt.split(" object")[0].split()[-1]
    shown = frames_showing(s.frames, target)
    assert len(shown) == sum(t.colour == target for _, _, t in s.events) == int(qa.right)
    assert all(length == 1 for _, length, _ in s.events)
    check_choice(qa, qa.right)


def test_depth_places_the_needle():
    assert make_sample("retrieval", 30, 1, depth=0.0).events[0][0] == 0
    assert make_sample("retrieval", 30, 1, depth=1.0).events[0][0] == 29
    assert make_sample("retrieval", 31, 1, depth=0.5).events[0][0] == 15


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


@pytest.mark.parametrize("text,letter", [("red (B)", "B"), ("3 (D)<|im_end|>", "D"), ("C", "C"), ("A red", "A"),
                                         ("", None), ("   ", None), ("Apple", None), ("red", None), ("(E)", None)])
def test_extract_letter_reads_the_option_letter_or_none(text, letter):
    assert extract_letter(text) == letter
