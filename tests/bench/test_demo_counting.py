"""bench/demo_counting.py tells answers that follow the asked colour's count from answers that count every card."""
from __future__ import annotations

import numpy as np

from bench.demo_counting import average_ranks, counting_breakdown, spearman
from vxl.train.data import LETTERS, MAX_COUNT, make_sample


def answering(samples, pick) -> list[dict]:
    """Records whose answer is the option `pick(sample)` (an option text), as ask() writes them."""
    recs = []
    for s in samples:
        qa = s.qas[0]
        said = pick(s)
        letter = LETTERS[qa.options.index(said)] if said in qa.options else "A"
        recs.append({"answer": f"{said} ({letter})"})
    return recs


def test_breakdown_tells_the_asked_count_from_all_cards():
    samples = [make_sample("counting", 40, [5, i]) for i in range(30)]
    others = [len(s.events) - int(s.qas[0].right) for s in samples]
    assert 0 in others and max(others) > 0            # both kinds of video occur (fresh seeds, not assumed)

    exact = counting_breakdown(samples, answering(samples, lambda s: s.qas[0].right))
    assert exact["accuracy"] == 1.0 and exact["n"] == 30
    assert all(r == n for r, n in exact["by_others"].values())
    assert exact["all_cards"] == sum(o == 0 or int(s.qas[0].right) == MAX_COUNT
                                     for o, s in zip(others, samples)) / 30

    cards = counting_breakdown(samples, answering(samples, lambda s: str(min(len(s.events), MAX_COUNT))))
    assert cards["all_cards"] == 1.0
    assert cards["by_others"][0] == [others.count(0), others.count(0)]          # right only without others
    assert cards["accuracy"] == sum(str(min(len(s.events), MAX_COUNT)) == s.qas[0].right for s in samples) / 30
    assert sum(cards["answered"].values()) == 30


def test_confusion_and_rank_correlation():
    samples = [make_sample("counting", 24, [6, i]) for i in range(40)]
    rights = [int(s.qas[0].right) for s in samples]
    assert len(set(rights)) > 2                       # several counts occur (fresh seeds, not assumed)

    exact = counting_breakdown(samples, answering(samples, lambda s: s.qas[0].right))
    assert [sum(row) for row in exact["confusion"]] == [rights.count(k) for k in range(1, MAX_COUNT + 1)]
    assert all(exact["confusion"][k][j] == 0 for k in range(MAX_COUNT) for j in range(MAX_COUNT) if k != j)
    assert abs(exact["rank_corr"] - 1.0) < 1e-12

    # an answer one below the truth (floored at 1) keeps the order: high rank correlation, low accuracy
    low = counting_breakdown(samples, answering(samples, lambda s: str(max(1, int(s.qas[0].right) - 1))))
    assert low["accuracy"] == rights.count(1) / 40
    assert low["rank_corr"] > 0.8
    assert sum(map(sum, low["confusion"])) == 40

    # the reference: scipy's Spearman on answers drawn at random
    from scipy.stats import spearmanr
    rng = np.random.default_rng(7)
    said = [str(int(rng.integers(1, MAX_COUNT + 1))) for _ in samples]
    noisy = counting_breakdown(samples, answering(samples, lambda s, it=iter(said): next(it)))
    assert abs(noisy["rank_corr"] - spearmanr(rights, [int(x) for x in said]).statistic) < 1e-12


def test_average_ranks_share_ties():
    assert average_ranks([3, 1, 3, 2]) == [3.5, 1.0, 3.5, 2.0]
    assert np.isnan(spearman([(1, 2), (2, 2), (3, 2)]))          # constant answers: no correlation defined
    assert abs(spearman([(1, 4), (2, 3), (3, 1)]) + 1.0) < 1e-12
