"""The training loop is deterministic from its seed and resumes exactly; its export loads with vxl.LLM."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vxl import LLM
from demo_model.__main__ import parse_args
from demo_model.loop import TrainConfig, train

ARCH = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 32,
        "clip_hidden_size": 16, "clip_intermediate_size": 16, "clip_heads": 2, "clip_layers": 2}


def tiny_config(out_dir, steps: int) -> TrainConfig:
    return TrainConfig.from_dict({"out_dir": str(out_dir), "steps": steps, "min_frames": 4, "max_frames": 16,
                                  "hold_frames": 8, "hold_steps": 1, "cover_steps": 2, "ramp_steps": 3,
                                  "batch_frames": 16, "min_batch": 2, "max_batch": 2, "save_every": 2,
                                  "log_every": 1, "warmup_steps": 1, "arch": ARCH,
                                  "pretrain": {"steps": 2, "batch_size": 4, "text_steps": 2, "text_batch_size": 4}})


def test_resume_continues_the_same_run(tmp_path):
    train(tiny_config(tmp_path / "straight", 4), export_dir=str(tmp_path / "export"))
    train(tiny_config(tmp_path / "resumed", 4), stop_after=2)         # interrupted...
    train(tiny_config(tmp_path / "resumed", 4), resume=True)           # ...and resumed
    a = {k: v for f in sorted((tmp_path / "export").glob("model-*.safetensors")) for k, v in load_file(str(f)).items()}
    assert len(a) > 0
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(line) for line in open(tmp_path / "resumed" / "log.jsonl")]
    # the pretraining phases (timed once: the resumed run does not repeat them), then every step
    assert [r["phase"] for r in logs[:2]] == ["vision", "text"] and [r["steps"] for r in logs[:2]] == [2, 2]
    assert all(r["seconds"] > 0 for r in logs[:2])
    assert [r["step"] for r in logs[2:]] == [1, 2, 3, 4]
    llm = LLM(str(tmp_path / "export"), device="cpu")
    out = llm.generate([{"prompt": "Which digit appeared once?", "video": torch.zeros(8, 64, 64, 3, dtype=torch.uint8)}],
                       use_tqdm=False)[0]
    assert out.error is None and out.metrics["num_visual_tokens"] == 32


def test_a_data_worker_renders_the_same_batches(tmp_path):
    """Rendering the next steps' videos in a worker process changes nothing: the same weights, bit for bit,
    whether run straight or paused and resumed, and every logged step."""
    train(tiny_config(tmp_path / "inline", 4))
    train(tiny_config(tmp_path / "worker", 4), stop_after=1, data_workers=1)
    train(tiny_config(tmp_path / "worker", 4), resume=True, data_workers=1)
    a = torch.load(tmp_path / "inline" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "worker" / "state.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(line) for line in open(tmp_path / "worker" / "log.jsonl")]
    inline = [json.loads(line) for line in open(tmp_path / "inline" / "log.jsonl")]
    steps = [r for r in logs if "step" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["loss"] for r in steps] == [r["loss"] for r in inline if "step" in r]


def test_worker_batches_equal_step_batch():
    from demo_model.arch import build_demo_model
    from demo_model.loop import batches, step_batch
    cfg = tiny_config("unused", 6)
    loaded = build_demo_model(cfg.arch, cfg.seed)
    for got, step in zip(batches(cfg, loaded, 2, 5, data_workers=1), range(2, 5), strict=True):
        want = step_batch(cfg, loaded, step)
        assert got.ratios == want.ratios and torch.equal(got.pixels, want.pixels)
        for name in ("prefix_ids", "text_ids", "video_idx", "rows", "targets"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert list(batches(cfg, loaded, 3, 3, data_workers=1)) == []


def test_freeze_vision_keeps_the_tower_and_trains_the_rest(tmp_path):
    cfg = tiny_config(tmp_path / "frozen", 3)
    cfg.freeze_vision = True
    train(cfg, stop_after=0)                                   # stage 0 only: the tower as pretrained
    before = torch.load(tmp_path / "frozen" / "state.pt", weights_only=True)["model"]
    train(cfg, resume=True)
    after = torch.load(tmp_path / "frozen" / "state.pt", weights_only=True)["model"]
    tower = [k for k in before if "vision_tower" in k]
    rest = [k for k in before if "vision_tower" not in k]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert any("mm_projector" in k and not torch.equal(before[k], after[k]) for k in rest)
    assert any("layers" in k and not torch.equal(before[k], after[k]) for k in rest)
    flag, _ = parse_args(["--freeze-vision"])
    assert flag.freeze_vision and not parse_args([])[0].freeze_vision


def test_resume_accepts_a_state_written_before_newer_options(tmp_path):
    cfg = tiny_config(tmp_path / "old", 3)
    train(cfg, stop_after=1)
    path = tmp_path / "old" / "state.pt"
    state = torch.load(path, weights_only=True)
    for name in ("digit_prob", "uniform_ratio_prob"):      # options added after the first runs
        del state["config"][name]
    torch.save(state, path)
    assert train(cfg, resume=True)["step"] == 3
    changed = tiny_config(tmp_path / "old", 3)
    changed.digit_prob = 0.9                               # a real change of configuration is refused
    with pytest.raises(ValueError, match="different configuration"):
        train(changed, resume=True)


def test_init_from_starts_a_stage_on_earlier_weights(tmp_path):
    train(tiny_config(tmp_path / "first", 2))
    first = torch.load(tmp_path / "first" / "state.pt", weights_only=True)["model"]
    cfg = tiny_config(tmp_path / "second", 1)
    cfg.init_from = str(tmp_path / "first" / "state.pt")
    train(cfg, stop_after=0)                 # stage start only: the earlier weights, no stage 0 pretraining
    start = torch.load(tmp_path / "second" / "state.pt", weights_only=True)
    assert start["step"] == 0 and all(torch.equal(first[k], start["model"][k]) for k in first)


def test_cli_arguments_map_to_the_config():
    cfg, args = parse_args(["--steps", "7", "--arch", '{"hidden_size": 64}', "--pretrain", '{"steps": 3}',
                            "--task-weights", "1", "0", "0", "--resume"])
    assert cfg.steps == 7 and cfg.arch.hidden_size == 64 and cfg.pretrain.steps == 3
    assert cfg.task_weights == [1.0, 0.0, 0.0] and args.resume


def test_init_from_an_exported_checkpoint_directory(tmp_path):
    """A later stage can start from a shipped checkpoint (official layout), not only from a run's state."""
    train(tiny_config(tmp_path / "first", 2), export_dir=str(tmp_path / "export"))
    first = torch.load(tmp_path / "first" / "state.pt", weights_only=True)["model"]
    cfg = tiny_config(tmp_path / "second", 1)
    cfg.init_from = str(tmp_path / "export")
    train(cfg, stop_after=0)
    start = torch.load(tmp_path / "second" / "state.pt", weights_only=True)["model"]
    assert start.keys() == first.keys() and all(torch.equal(first[k], start[k]) for k in first)


def test_init_vision_steps_retrain_only_the_vision_tower(tmp_path):
    train(tiny_config(tmp_path / "first", 2))
    first = torch.load(tmp_path / "first" / "state.pt", weights_only=True)["model"]
    cfg = tiny_config(tmp_path / "second", 1)
    cfg.init_from, cfg.init_vision_steps = str(tmp_path / "first" / "state.pt"), 2
    train(cfg, stop_after=0)
    start = torch.load(tmp_path / "second" / "state.pt", weights_only=True)["model"]
    vision = [k for k in first if k.startswith("model.vision_tower")]
    assert vision and all(torch.equal(first[k], start[k]) for k in first if k not in vision)
    assert any(not torch.equal(first[k], start[k]) for k in vision)
    logs = [json.loads(line) for line in open(tmp_path / "second" / "log.jsonl")]
    assert len(logs) == 1 and logs[0]["phase"] == "vision" and logs[0]["steps"] == 2 and logs[0]["seconds"] > 0


def test_uniform_ratio_steps_use_one_ratio_for_every_window():
    from demo_model.arch import build_demo_model
    from demo_model.loop import step_batch
    cfg = TrainConfig.from_dict({"min_frames": 40, "max_frames": 48, "hold_steps": 0, "cover": 0.0,
                                 "ramp_steps": 0, "min_batch": 1, "max_batch": 1, "arch": ARCH})
    loaded = build_demo_model(cfg.arch, 0)
    mixed = [step_batch(cfg, loaded, s).ratios for s in range(1, 6)]
    assert all(len(r) >= 3 for r in mixed) and any(len(set(r)) > 1 for r in mixed)
    cfg.uniform_ratio_prob = 1.0
    uniform = [step_batch(cfg, loaded, s).ratios for s in range(1, 6)]
    assert all(len(set(r)) == 1 and len(r) == len(m) for r, m in zip(uniform, mixed))


def test_video_lengths_stay_within_min_and_max_frames():
    import numpy as np
    from demo_model.loop import frames_at
    # a flat stage (no curriculum) on long videos only: even step 0, where the curriculum would still hold
    # at hold_frames (16), draws between min_frames and max_frames
    cfg = TrainConfig.from_dict({"min_frames": 128, "max_frames": 512, "hold_steps": 0, "ramp_steps": 0})
    lengths = [frames_at(cfg, s, np.random.default_rng([3, s])) for s in range(50)]
    assert all(128 <= n <= 512 and n % 4 == 0 for n in lengths) and len(set(lengths)) > 10
    for bad in ({"min_frames": 600, "max_frames": 512}, {"min_frames": 2}, {"hold_frames": 1024}):
        with pytest.raises(ValueError, match="min_frames"):
            TrainConfig.from_dict(bad)


def test_card_window_ratios_squeeze_the_windows_that_show_things(monkeypatch):
    import dataclasses

    from demo_model import loop
    from demo_model.arch import build_demo_model
    from vxl.demo.tasks import make_sample
    samples = [make_sample("counting", 100, [15, i]) for i in range(3)]
    ratios = loop.card_window_ratios(samples, 9, 12, [2, 4, 8, 12, 16])
    shown = sorted({f // 12 for s in samples for first, n, _ in s.events for f in range(first, first + n)})
    assert shown and len(shown) < 9                          # some windows show things, some do not
    assert [w for w, r in enumerate(ratios) if r == 16] == shown
    assert all(r == 2 for w, r in enumerate(ratios) if w not in shown)

    # in a step: the batch's ratios are those of its own videos when the option fires; the videos and
    # questions are the same as without the option
    seen = []
    real = loop.card_window_ratios
    monkeypatch.setattr(loop, "card_window_ratios", lambda s, *a: seen.append((s, real(s, *a))) or seen[-1][1])
    cfg = TrainConfig(seed=3, min_frames=480, max_frames=480, min_batch=2, max_batch=2, card_window_prob=1.0)
    loaded = build_demo_model(cfg.arch, 0)
    batch = loop.step_batch(cfg, loaded, 0)
    (videos, expected), = seen
    assert batch.ratios == expected and len(videos) == batch.pixels.shape[0]
    assert max(expected) == 16 and min(expected) == 2
    plain = loop.step_batch(dataclasses.replace(cfg, card_window_prob=0.0), loaded, 0)
    assert torch.equal(plain.pixels, batch.pixels) and torch.equal(plain.text_ids, batch.text_ids)


def test_card_windows_cover_stretched_events_and_refuse_bad_settings():
    from demo_model.data import make_training_sample
    from demo_model.loop import card_window_ratios
    samples = [make_training_sample("ordering", 100, [16, i], cover=1.0) for i in range(2)]
    assert max(n for s in samples for _, n, _ in s.events) > 12        # events spanning several windows
    per_frame = {f // 12 for s in samples for first, n, _ in s.events for f in range(first, first + n)}
    ratios = card_window_ratios(samples, 9, 12, [2, 4, 8, 12, 16])
    assert {w for w, r in enumerate(ratios) if r == 16} == per_frame
    with pytest.raises(ValueError, match="card_window_prob"):
        TrainConfig(card_window_prob=1.5)


def test_retired_options_load_only_at_the_values_the_shipped_stages_used():
    from demo_model.loop import RETIRED
    old = {"open_prob": 0.0, "count_every_colour": False, "count_others": 2, "ranks": 1}
    assert RETIRED == old
    assert TrainConfig.from_dict({**old, "steps": 5}) == TrainConfig(steps=5)
    for name, value in (("open_prob", 0.5), ("count_others", 8), ("ranks", 2), ("count_every_colour", True)):
        with pytest.raises(ValueError, match=name):
            TrainConfig.from_dict({name: value})
