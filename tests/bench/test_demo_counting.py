"""bench/demo_counting.py tells answers that follow the asked colour's count from answers that count every card."""
from __future__ import annotations

from bench.demo_counting import counting_breakdown
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
