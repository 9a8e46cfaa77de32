"""Training videos of the demo model: keyed retrieval, the curriculum's stretched events, and the
evaluation's samples draw for draw when neither is asked for."""
from __future__ import annotations

import numpy as np
import pytest

from demo_model.data import make_training_sample, stretch
from demo_model.tokenizer import corpus
from demo_helpers import check_choice, frames_showing
from vxl.demo.tasks import TASKS, make_sample


@pytest.mark.parametrize("seed", range(6))
def test_keyed_asks_the_shape_of_the_card_of_the_named_colour(seed):
    s = make_training_sample("retrieval", 48, [11, seed], keyed_prob=1.0)
    (qa,) = s.qas
    shown = {t.colour: t.shape for _, _, t in s.events}
    assert 2 <= len(s.events) == len(shown) == len(set(shown.values())) <= 4     # distinct colours, shapes
    asked = qa.prompt.split("the ")[1].split(" object")[0]
    assert qa.right == shown[asked] and all(len(frames_showing(s.frames, c)) == 1 for c in shown)
    check_choice(qa, qa.right)
    # other shown shapes are wrong options: knowing which shapes appeared is not enough
    assert len(set(qa.options) & set(shown.values())) >= min(3, len(shown))
    # ordering and counting ignore the option
    assert make_training_sample("counting", 30, seed, keyed_prob=1.0).events == make_sample("counting", 30, seed).events
    with pytest.raises(ValueError, match="keyed_prob"):
        make_training_sample("retrieval", 10, 1, keyed_prob=-0.1)


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


@pytest.mark.parametrize("task", TASKS)
def test_without_keyed_or_cover_a_training_sample_is_the_evaluation_sample(task):
    for seed in range(4):
        a, b = make_training_sample(task, 37, [5, seed], 32), make_sample(task, 37, [5, seed], 32)
        assert np.array_equal(a.frames, b.frames) and a.events == b.events
        assert [q.__dict__ for q in a.qas] == [q.__dict__ for q in b.qas]


@pytest.mark.parametrize("seed", range(4))
def test_cover_stretches_retrieval_but_never_counting(seed):
    stretched = make_training_sample("retrieval", 64, [9, seed], cover=1.0)
    assert stretched.events[0][1] > 1
    assert len(frames_showing(stretched.frames, stretched.events[0][2].colour)) == stretched.events[0][1]
    counted = make_training_sample("counting", 64, [9, seed], cover=1.0)
    assert all(length == 1 for _, length, _ in counted.events)
    assert counted.events == make_sample("counting", 64, [9, seed]).events


def test_tokenizer_corpus_asks_both_answer_forms():
    texts = list(corpus(20))
    assert any("Answer with one word." in t for t in texts) and any("Answer with the right option." in t for t in texts)
