"""The multi-stage recipe chains stages (each starts from the previous one's weights), skips finished
stages on a rerun and exports the last one in the official layout."""
from __future__ import annotations

import json
import os

import torch

from vxl import LLM
from vxl.train import loop
from vxl.train.loop import initial_weights
from vxl.train.recipe import RECIPES, SHIPPED, STAGES, main, run_recipe

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


def test_recipe_chains_data_parallel_stages(tmp_path):
    """Each stage of a recipe run with two processes resumes from the previous stage's final weights."""
    stages = [("a", ["--seed", "0", "--steps", "2", "--hold-steps", "1", "--cover-steps", "2", "--ramp-steps", "3"], None),
              ("b", ["--seed", "5", "--steps", "1", "--init-vision-steps", "1", "--hold-steps", "0", "--cover", "0"], None)]
    run_recipe(str(tmp_path / "run"), str(tmp_path / "export"), num_threads=1, stages=stages, extra=SMALL, ranks=2)
    a = torch.load(tmp_path / "run" / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "b" / "state.pt", weights_only=True)
    assert a["config"]["ranks"] == b["config"]["ranks"] == 2 and a["step"] == 2 and b["step"] == 1
    assert b["config"]["init_from"] == str(tmp_path / "run" / "a" / "state.pt")
    logs = [json.loads(line) for line in open(tmp_path / "run" / "b" / "log.jsonl")]
    assert [r.get("phase") for r in logs] == ["vision", None]           # the vision retraining, then one step
    assert LLM(str(tmp_path / "export"), device="cpu").model.tokens_per_frame == 4


def test_recipes_start_from_scratch_and_chain():
    assert STAGES is RECIPES[SHIPPED][0] and SHIPPED == "keyed"
    for stages, threads, ranks in RECIPES.values():
        assert "--init-from" not in " ".join(a for _, args, _ in stages for a in args)
        assert stages[0][2] is not None and stages[-1][2] is None and threads in (1, 2)
    assert len(RECIPES["nine"][0]) == 9
    # the fast and keyed recipes never train the vision tower end to end
    for name in ("fast", "keyed", "keyed-ranks"):
        assert all("--freeze-vision" in args for _, args, _ in RECIPES[name][0]), name


def test_recipes_match_the_committed_stage_configs():
    """bench/results/demo_train/ holds the configs each recipe's committed run used (the shipped model's:
    fast); the recipe must reproduce each of them (paths aside) and the thread count it names."""
    from dataclasses import asdict

    from vxl.train.__main__ import parse_args
    root = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "results", "demo_train")
    for stages, threads, ranks in RECIPES.values():
        for name, args, _ in stages:
            saved = json.load(open(os.path.join(root, f"{name}_config.json")))
            cfg, _ = parse_args(args)
            ours = json.loads(json.dumps(asdict(cfg)))
            saved = json.loads(json.dumps(asdict(type(cfg).from_dict(saved))))
            for key in ("out_dir", "init_from"):
                ours.pop(key), saved.pop(key)
            assert saved["num_threads"] == threads and saved["ranks"] == ranks, name
            for key in ("num_threads", "ranks"):
                ours.pop(key), saved.pop(key)
            assert ours == saved, name


def test_recipe_command_runs_the_chosen_recipe_with_its_thread_count(tmp_path, monkeypatch):
    from vxl.train import recipe
    seen = []
    monkeypatch.setattr(recipe, "run_recipe", lambda out, export, threads, stages, data_workers, ranks: seen.append(
        (out, export, threads, stages, data_workers, ranks)))
    main(["--out-dir", str(tmp_path), "--recipe", "nine"])
    main(["--out-dir", str(tmp_path), "--export", "e", "--num-threads", "1", "--data-workers", "1"])
    main(["--out-dir", str(tmp_path), "--recipe", "keyed-ranks"])
    main(["--out-dir", str(tmp_path), "--recipe", "keyed-ranks", "--ranks", "1", "--num-threads", "2"])
    assert seen == [(str(tmp_path), None, 1, RECIPES["nine"][0], 0, 1), (str(tmp_path), "e", 1, RECIPES["keyed"][0], 1, 1),
                    (str(tmp_path), None, 1, RECIPES["keyed-ranks"][0], 0, 2),
                    (str(tmp_path), None, 2, RECIPES["keyed-ranks"][0], 0, 1)]
