"""Loading official-layout checkpoints: single file and sharded, beacon initialisation, clear errors."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import small_config, write_checkpoint
from vxl.model.loader import load_checkpoint

CPU = torch.device("cpu")


def assert_same_weights(loaded, model):
    expected = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


@pytest.mark.parametrize("num_shards", [1, 3])
def test_loads_single_and_sharded(tmp_path, num_shards):
    cfg = small_config()
    model = write_checkpoint(tmp_path, cfg, seed=1, num_shards=num_shards)
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == (num_shards > 1)
    loaded = load_checkpoint(str(tmp_path), CPU, torch.float32)
    assert_same_weights(loaded.model, model)
    assert loaded.tokenizer is None and loaded.image_processor is None


def test_sharded_without_index(tmp_path):
    cfg = small_config()
    model = write_checkpoint(tmp_path, cfg, seed=2, num_shards=2)
    os.remove(tmp_path / "model.safetensors.index.json")
    assert_same_weights(load_checkpoint(str(tmp_path), CPU, torch.float32).model, model)


def test_missing_beacon_weights_are_initialised_like_the_original(tmp_path):
    cfg = small_config()
    drop = [f"model.layers.{i}.self_attn.beacon_{p}_proj.{s}" for i in range(2) for p in "qkv" for s in ("weight", "bias")]
    model = write_checkpoint(tmp_path, cfg, seed=4, drop=drop + ["model.beacon_embed_tokens.weight"])
    loaded = load_checkpoint(str(tmp_path), CPU, torch.float32).model
    attn = loaded.model.layers[1].self_attn
    for p in "qkv":
        assert torch.equal(getattr(attn, f"beacon_{p}_proj").weight, getattr(attn, f"{p}_proj").weight)
        assert torch.equal(getattr(attn, f"beacon_{p}_proj").bias, getattr(attn, f"{p}_proj").bias)
    eos = cfg.eos_token_ids[0]
    assert torch.equal(loaded.model.beacon_embed_tokens.weight[0], model.model.embed_tokens.weight[eos])


def test_wrong_shape_names_the_key(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=5)
    state = load_file(tmp_path / "model.safetensors")
    key = "model.layers.1.self_attn.beacon_k_proj.weight"
    state[key] = torch.randn(3, 48)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_checkpoint(str(tmp_path), CPU, torch.float32)


def test_unexpected_tensor_is_an_error(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=6)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.surprise"] = torch.randn(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="surprise"):
        load_checkpoint(str(tmp_path), CPU, torch.float32)


def test_missing_ordinary_tensor_is_an_error(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=7, drop=["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(str(tmp_path), CPU, torch.float32)


def test_pickled_weights_are_not_loaded(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=8)
    os.remove(tmp_path / "model.safetensors")
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint(str(tmp_path), CPU, torch.float32)


def test_bad_config_is_an_error(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=9)
    with open(tmp_path / "config.json") as f:
        d = json.load(f)
    d["model_type"] = "llama"
    with open(tmp_path / "config.json", "w") as f:
        json.dump(d, f)
    with pytest.raises(ValueError, match="llava_qwen"):
        load_checkpoint(str(tmp_path), CPU, torch.float32)
    with pytest.raises(ValueError, match="config.json"):
        load_checkpoint(str(tmp_path / "nowhere"), CPU, torch.float32)


def test_loads_in_half_precision(tmp_path):
    model = write_checkpoint(tmp_path, small_config(), seed=10)
    loaded = load_checkpoint(str(tmp_path), CPU, torch.float16).model
    w = loaded.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float16
    assert torch.equal(w, model.model.layers[0].self_attn.q_proj.weight.half())


def test_tiny_with_vision_and_tokenizer_round_trips(tmp_path):
    """The built-in model saved in the official layout (CLIP dir, tokenizer) answers exactly like itself,
    also when the vision weights come from the CLIP directory instead of the checkpoint."""
    from vxl import LLM, SamplingParams
    from vxl.model.loader import VISION_PREFIX
    from vxl.model.tiny import build_tiny, save_checkpoint
    tiny = build_tiny(CPU, torch.float32, seed=0)
    save_checkpoint(tiny, str(tmp_path / "a"), num_shards=2)
    vision = {k: v for k, v in tiny.model.state_dict().items() if k.startswith(VISION_PREFIX)}
    save_checkpoint(tiny, str(tmp_path / "b"), drop=tuple(vision))
    save_file({"vision_model." + k[len(VISION_PREFIX):]: v.contiguous() for k, v in vision.items()},
              tmp_path / "b" / "clip" / "model.safetensors")
    frames = torch.randint(0, 256, (9, 40, 52, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    req = {"prompt": "What is shown?", "video": frames, "compression_ratio": 2}
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    expected = LLM("tiny", device="cpu").generate([req], params, use_tqdm=False)[0]
    for name in ("a", "b"):
        got = LLM(str(tmp_path / name), device="cpu").generate([req], params, use_tqdm=False)[0]
        assert got.error is None and got.token_ids == expected.token_ids and got.text == expected.text
