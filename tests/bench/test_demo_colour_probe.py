"""bench.demo_colour_probe: its ridge probe reads what features carry and nothing else, its VST map follows
the beacon layout, RoPE is undone exactly, and a run on a small random model gives well-formed shares."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.demo_colour_probe import colour_probe, ridge_probe, unrotate, vst_cover
from vxl.train.data import make_sample
from vxl.train.forward import rope_tables, rotate


def test_ridge_probe_reads_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 300)
    code = rng.normal(size=(8, 37))
    x = code[y] + 0.3 * rng.normal(size=(300, 37))
    assert ridge_probe(x, y, 8) >= 0.95
    assert ridge_probe(rng.normal(size=(300, 37)), y, 8) <= 0.3            # chance 1/8
    with pytest.raises(ValueError, match="both sides"):
        ridge_probe(x[:1], y[:1], 8)


def test_vst_cover_follows_the_interleaved_layout():
    # 12-frame windows of 4 tokens per frame: ratio 4 -> one VST per frame; ratio 16 -> one per 4 frames;
    # ratio 2 -> two per frame; later windows continue the kept order
    assert [vst_cover(f, 12, 4, 4) for f in (0, 5, 13)] == [[0], [5], [13]]
    assert [vst_cover(f, 12, 4, 16) for f in (0, 3, 4, 11, 12)] == [[0], [0], [1], [2], [3]]
    assert vst_cover(7, 12, 4, 2) == [14, 15] and vst_cover(13, 12, 4, 12) == [4]


def test_unrotate_inverts_rope():
    k = torch.randn(7, 3, 16, dtype=torch.float64)
    pos = torch.arange(31, 38)
    rotated = rotate(k, rope_tables(pos, 16, 1e4))
    assert torch.allclose(unrotate(rotated, pos, 1e4), k, atol=1e-10)
    assert not torch.allclose(rotated, k, atol=1e-3)


def test_colour_probe_runs_on_a_small_random_model():
    from vxl.train.arch import DemoArch, build_demo_model
    loaded = build_demo_model(DemoArch(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                       intermediate_size=32, clip_hidden_size=16, clip_intermediate_size=16,
                                       clip_heads=2, clip_layers=2), seed=3)
    out = colour_probe(loaded, num_frames=12, ratio=4, num_videos=9)
    # the colour-blind share, from the same videos drawn independently: the mean of 1 / cards shown
    blind = np.mean([1 / len(make_sample("retrieval", 12, [7_900_001, 0, i], 64, keyed_prob=1.0).events)
                     for i in range(9)])
    assert [row["layer"] for row in out["layers"]] == [0, 1]
    for row in out["layers"]:
        assert 0 <= row["query_colour"] <= 1 and 0 <= row["key_colour"] <= 1
        assert 0 < row["card_mass"] <= 1 + 1e-6 and 0 <= row["asked_share"] <= 1
        assert 1 / 4 <= row["blind_share"] <= 1 / 2                 # 2 to 4 cards shown
        assert row["blind_share"] == pytest.approx(blind, abs=1e-12)
    with pytest.raises(ValueError, match="whole windows"):
        colour_probe(loaded, num_frames=13, ratio=4, num_videos=3)
