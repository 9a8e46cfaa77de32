"""bench.train_speed: settings run the same steps from the same weights; a data-parallel setting ends near the
one-process weights (the same function, other float rounding) and says what it was compared with."""
from __future__ import annotations

import json

from bench import train_speed


def test_a_data_parallel_setting_is_compared_with_one_process(tmp_path):
    out = tmp_path / "speed.json"
    assert train_speed.main(["--recipe", "keyed", "--stage", "4", "--steps", "2", "--settings", "1,0", "1,0,seq,2",
                             "--out", str(out)]) == 0
    one, two = json.loads(out.read_text())["runs"]
    assert "ranks" not in one and "rel_weight_diff" not in one
    assert two["ranks"] == 2 and two["weight_diff_vs"] == "1 threads, seq, 1 process"
    assert 0 < two["rel_weight_diff"] < 1e-5 and two["seconds"] > 0
