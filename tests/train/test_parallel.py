"""Data-parallel training (vxl.train.parallel): two processes compute the same function as one, resume exactly
and keep identical weights; bad settings are refused."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from test_loop import tiny_config
from vxl.train import parallel
from vxl.train.arch import build_demo_model
from vxl.train.loop import TrainConfig, step_batch, train


def two_ranks(out_dir, steps: int) -> TrainConfig:
    return dataclasses.replace(tiny_config(out_dir, steps), ranks=2)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def rel_diff(a: dict, b: dict) -> float:
    diff = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a)
    return (diff / sum(float(v.double().pow(2).sum()) for v in a.values())) ** 0.5


def test_two_ranks_train_the_function_of_one(tmp_path):
    """The same batches and the same mean loss, so the weights agree up to float rounding (amplified a
    little by Adam); each phase and step is logged once, with the whole batch's loss."""
    train(tiny_config(tmp_path / "one", 4))
    record = train(two_ranks(tmp_path / "two", 4))
    a, b = weights(tmp_path / "one" / "state.pt"), weights(tmp_path / "two" / "state.pt")
    assert a.keys() == b.keys()
    assert not all(torch.equal(a[k], b[k]) for k in a)     # really computed apart (other rounding)
    assert rel_diff(a, b) < 1e-4
    one = [json.loads(line) for line in open(tmp_path / "one" / "log.jsonl")]
    two = [json.loads(line) for line in open(tmp_path / "two" / "log.jsonl")]
    assert [r.get("phase") for r in two[:2]] == ["vision", "text"]
    assert [r["step"] for r in two[2:]] == [1, 2, 3, 4] and record == two[-1]
    for x, y in zip(one[2:], two[2:]):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
        assert y["first_token_acc"] == pytest.approx(x["first_token_acc"])
        assert y["mean_frames"] == x["mean_frames"]


def test_two_ranks_resume_exactly_and_export(tmp_path):
    train(two_ranks(tmp_path / "straight", 4), export_dir=str(tmp_path / "export"))
    train(two_ranks(tmp_path / "resumed", 4), stop_after=2)
    train(two_ranks(tmp_path / "resumed", 4), resume=True)
    a = {k: v for f in sorted((tmp_path / "export").glob("model-*.safetensors")) for k, v in load_file(str(f)).items()}
    b = weights(tmp_path / "resumed" / "state.pt")
    assert len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(line) for line in open(tmp_path / "resumed" / "log.jsonl")]
    assert [r["step"] for r in logs if "step" in r] == [1, 2, 3, 4]


def test_rank_shares_partition_every_batch():
    cfg = tiny_config("unused", 4)
    cfg = dataclasses.replace(cfg, min_batch=3, max_batch=3)
    loaded = build_demo_model(cfg.arch, cfg.seed)
    for step in range(3):
        whole = step_batch(cfg, loaded, step)
        parts = [step_batch(cfg, loaded, step, (r, 2)) for r in range(2)]
        assert [p.pixels.shape[0] for p in parts] == [2, 1]
        assert torch.equal(parts[0].pixels, whole.pixels[0::2]) and torch.equal(parts[1].pixels, whole.pixels[1::2])
        assert all(p.ratios == whole.ratios and torch.equal(p.prefix_ids, whole.prefix_ids) for p in parts)
        # every answer target of the batch, each in exactly one share
        assert sorted(torch.cat([p.targets for p in parts]).tolist()) == sorted(whole.targets.tolist())


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ranks must be between 1 and min_batch"):
        dataclasses.replace(tiny_config(tmp_path, 2), ranks=3)
    with pytest.raises(ValueError, match="data_workers"):
        train(two_ranks(tmp_path / "w", 2), data_workers=1)
    with pytest.raises(ValueError, match="process group"):
        _in_group_of_one(two_ranks(tmp_path / "x", 2))


def _in_group_of_one(cfg):      # ranks=2 asked inside a process group of 1 (a misuse the loop refuses)
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{cfg.out_dir}-store", rank=0, world_size=1)
    try:
        train(cfg)
    finally:
        dist.destroy_process_group()


def _grads_on_rank(result: str) -> None:
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    r = parallel.rank()
    a.grad = torch.tensor([1.0, 2.0, 3.0]) * (r + 1)
    if r == 1:
        b.grad = torch.tensor([5.0, 6.0, 7.0])
    parallel.sum_grads([a, b, c])
    if r == 0:
        torch.save({"a": a.grad, "b": b.grad, "c_none": c.grad is None}, result)


def test_sum_grads_adds_gradients_and_keeps_none(tmp_path):
    result = str(tmp_path / "grads.pt")
    parallel.spawn(_grads_on_rank, 2, 1, result)
    got = torch.load(result, weights_only=True)
    assert torch.equal(got["a"], torch.tensor([3.0, 6.0, 9.0]))      # 1x + 2x
    assert torch.equal(got["b"], torch.tensor([5.0, 6.0, 7.0]))      # only rank 1 had one
    assert got["c_none"]                                              # no rank had one: stays None


def test_a_stage_start_retrains_the_vision_tower_alone_in_rank_0(tmp_path):
    """--init-vision-steps in a data-parallel run: rank 0 retrains the tower (with every core), the others take
    its weights; the stage then ends near the one-process run's weights."""
    train(tiny_config(tmp_path / "base", 2))
    ends = {}
    for ranks in (1, 2):
        cfg = dataclasses.replace(tiny_config(tmp_path / f"r{ranks}", 3), init_from=str(tmp_path / "base" / "state.pt"),
                                  init_vision_steps=5, ranks=ranks)
        train(cfg)
        ends[ranks] = weights(tmp_path / f"r{ranks}" / "state.pt")
        logs = [json.loads(line) for line in open(tmp_path / f"r{ranks}" / "log.jsonl")]
        assert [r.get("phase") for r in logs] == ["vision", None, None, None]
    tower = [k for k in ends[1] if "vision_tower" in k]
    assert rel_diff({k: ends[1][k] for k in tower}, {k: ends[2][k] for k in tower}) < 1e-5
    assert rel_diff(ends[1], ends[2]) < 1e-4
