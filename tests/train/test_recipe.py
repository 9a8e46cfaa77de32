"""The multi-stage recipe chains stages (each starts from the previous one's weights), skips finished
stages on a rerun and exports the last one in the official layout."""
from __future__ import annotations

import json
import os

import torch

from vxl import LLM
from vxl.train import loop
from vxl.train.loop import initial_weights
from vxl.train.recipe import STAGES, run_recipe

ARCH = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 32,
        "clip_hidden_size": 16, "clip_intermediate_size": 16, "clip_heads": 2, "clip_layers": 2}

SMALL = ["--min-frames", "4", "--max-frames", "16", "--hold-frames", "8", "--batch-frames", "16", "--min-batch", "2",
         "--max-batch", "2", "--save-every", "1", "--log-every", "1", "--warmup-steps", "1",
         "--arch", json.dumps(ARCH), "--pretrain", json.dumps({"steps": 2, "batch_size": 4, "text_steps": 2,
                                                               "text_batch_size": 4})]


def test_recipe_chains_stages_and_exports(tmp_path, monkeypatch):
    stages = [("a", ["--seed", "0", "--steps", "4", "--hold-steps", "1", "--cover-steps", "2", "--ramp-steps", "3"], 2),
              ("b", ["--seed", "5", "--steps", "2", "--init-vision-steps", "1", "--hold-steps", "0", "--cover", "0"], None)]
    loaded = []

    def spy(path):
        weights = initial_weights(path)
        loaded.append((path, {k: v.clone() for k, v in weights.items()}))
        return weights
    monkeypatch.setattr(loop, "initial_weights", spy)
    run_recipe(str(tmp_path / "run"), str(tmp_path / "export"), stages=stages, extra=SMALL)
    a = torch.load(tmp_path / "run" / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "b" / "state.pt", weights_only=True)
    assert a["step"] == 2 and b["step"] == 2
    assert b["config"]["init_from"] == str(tmp_path / "run" / "a" / "state.pt")
    # stage b started from stage a's final weights, all of them
    (path, start), = loaded
    assert path == b["config"]["init_from"] and start.keys() == a["model"].keys()
    assert all(torch.equal(start[k], a["model"][k]) for k in start)
    mtime = os.path.getmtime(tmp_path / "run" / "a" / "state.pt")
    run_recipe(str(tmp_path / "run"), None, stages=stages, extra=SMALL)       # finished: nothing reruns
    assert os.path.getmtime(tmp_path / "run" / "a" / "state.pt") == mtime
    llm = LLM(str(tmp_path / "export"), device="cpu")
    assert llm.model.tokens_per_frame == 4


def test_shipped_recipe_starts_from_scratch_and_chains():
    assert len(STAGES) == 9 and "--init-from" not in " ".join(a for _, args, _ in STAGES for a in args)
    assert STAGES[0][2] is not None and STAGES[-1][2] is None


def test_shipped_recipe_matches_the_committed_stage_configs():
    """bench/results/demo_train/ holds the configs the shipped model was trained with; the recipe must
    reproduce each of them (paths and thread counts aside)."""
    from dataclasses import asdict

    from vxl.train.__main__ import parse_args
    root = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results", "demo_train")
    for name, args, _ in STAGES:
        saved = json.load(open(os.path.join(root, f"{name}_config.json")))
        cfg, _ = parse_args(args)
        ours = json.loads(json.dumps(asdict(cfg)))
        saved = json.loads(json.dumps(asdict(type(cfg).from_dict(saved))))
        for key in ("out_dir", "init_from", "num_threads"):
            ours.pop(key), saved.pop(key)
        assert ours == saved, name
