"""The evaluation's bookkeeping: held-out samples are paired across ratios and split by question kind."""
from demo_model.evaluate import by_task, eval_samples
from vxl.demo.tasks import make_sample


def _records(samples, correct_of):
    return [{"question": qa.prompt.split("\n")[0], "correct": correct_of(qa)} for s in samples for qa in s.qas]


def test_retrieval_rows_split_by_question_kind():
    samples = eval_samples("retrieval", 9, 12, seed=3, size=32)
    # right on colours and digits, wrong on shapes: every kind row must show exactly that
    recs = _records(samples, lambda qa: "shape" not in qa.prompt)
    rows = by_task({"retrieval": {9: recs}})
    n_shape = sum("shape" in r["question"] for r in recs)
    n_digit = sum("digit" in r["question"] for r in recs)
    assert n_shape > 0 and n_digit > 0 and n_shape + n_digit == 12
    assert rows["retrieval: colour"][9] == {"accuracy": 1.0, "n": 12}
    assert rows["retrieval: shape"][9] == {"accuracy": 0.0, "n": n_shape}
    assert rows["retrieval: digit"][9] == {"accuracy": 1.0, "n": n_digit}
    assert rows["retrieval: shape or digit"][9]["n"] == 12
    assert rows["retrieval"][9] == {"accuracy": (12 + n_digit) / 24, "n": 24}


def test_eval_samples_are_held_out_and_deterministic():
    a = eval_samples("counting", 17, 3, seed=5, size=32)
    b = eval_samples("counting", 17, 3, seed=5, size=32)
    assert all((x.frames == y.frames).all() and x.qas == y.qas for x, y in zip(a, b))
    assert not (a[0].frames == a[1].frames).all()
    # training draws samples from plain integer seeds; the evaluation's keys never coincide with them
    assert not (make_sample("counting", 17, 5, 32).frames == a[0].frames).all()
