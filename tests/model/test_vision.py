"""Vision side against transformers computed directly: CLIPVisionModel hidden_states[select] with CLS
dropped, the same projector, and a 2x2 average pool written here by explicit slicing. Also the built-in
CLIP ViT-L/14-336 config and reading a CLIP directory.
"""
import json

import pytest
import torch
from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModel

from vxl.model.clip_configs import ImageProcessorConfig
from vxl.model.clip_configs import (CLIP_VIT_L_336_NAME, clip_vit_large_patch14_336, load_clip_dir,
                                    resolve_vision_tower)
from vxl.model.vision import VisionTower, build_projector, encode_frames, tokens_per_frame


def tiny_clip_config() -> CLIPVisionConfig:
    # image 56, patch 14 -> 4 x 4 = 16 patches -> 2 x 2 = 4 tokens per frame after the 2x2 pool
    return CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                            image_size=56, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fresh random values everywhere (norm weights and biases included), not the init's ones/zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def reference_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """[N, side*side, H] row-major grid -> [N, (side/stride)^2, H]: mean of each stride x stride block."""
    n, p, h = x.shape
    side = int(p ** 0.5)
    grid = x.reshape(n, side, side, h)                                  # (N, row, col, H)
    rows = []
    for i in range(0, side, stride):
        for j in range(0, side, stride):
            rows.append(grid[:, i:i + stride, j:j + stride].mean(dim=(1, 2)))
    return torch.stack(rows, dim=1)                                     # (N, blocks, H)


@pytest.mark.parametrize("select_layer", [-2, -1, 1, -4])
def test_encode_frames_matches_transformers(select_layer):
    torch.manual_seed(0)
    cfg = tiny_clip_config()
    tower = VisionTower(cfg, select_layer).eval()
    randomize_(tower, seed=1)
    projector = build_projector(32, 24).eval()
    randomize_(projector, seed=2)
    pixel_values = torch.randn(3, 3, 56, 56)
    ours = encode_frames(tower, projector, pixel_values, 2)

    ref_model = CLIPVisionModel(cfg).eval()
    missing, unexpected = ref_model.load_state_dict(tower.vision_tower.vision_model.state_dict(), strict=False)
    used = tower.num_layers_used
    assert not unexpected and all(k.startswith("encoder.layers.") and int(k.split(".")[2]) >= used
                                  for k in missing)
    with torch.no_grad():
        hidden = ref_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[select_layer]
        want = reference_pool(projector(hidden[:, 1:]), 2).flatten(0, 1)   # (N * 4, 24)

    assert ours.shape == (3 * tokens_per_frame(cfg, 2), 24) == (12, 24)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("select_layer", [-5, 4, 10])
def test_select_layer_out_of_range(select_layer):
    with pytest.raises(ValueError, match="out of range"):
        VisionTower(tiny_clip_config(), select_layer)


def test_builtin_clip_vit_l_336():
    cfg = clip_vit_large_patch14_336()
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == \
        (1024, 4096, 24, 16)
    assert (cfg.image_size, cfg.patch_size, cfg.hidden_act, cfg.layer_norm_eps, cfg.projection_dim) == \
        (336, 14, "quick_gelu", 1e-5, 768)
    assert tokens_per_frame(cfg, 2) == 144
    with torch.device("meta"):                                          # shapes only, no 300M init
        tower = VisionTower(cfg, -2)
    assert tower.num_layers_used == 23 and tower.num_patches == 576
    emb = tower.vision_tower.vision_model.embeddings
    assert emb.position_embedding.weight.shape == (577, 1024)
    assert emb.patch_embedding.weight.shape == (1024, 3, 14, 14)


def write_clip_dir(path, full: bool) -> CLIPVisionConfig:
    path.mkdir()
    vision = tiny_clip_config()
    if full:
        config = CLIPConfig(vision_config=vision.to_dict(),
                            text_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                                         "num_attention_heads": 4}).to_dict()
    else:
        config = vision.to_dict()
    (path / "config.json").write_text(json.dumps(config))
    (path / "preprocessor_config.json").write_text(json.dumps({"size": 64, "crop_size": 56, "resample": 3}))
    return vision


@pytest.mark.parametrize("full", [True, False])
def test_load_clip_dir(tmp_path, full):
    want = write_clip_dir(tmp_path / "clip", full)
    cfg, proc = load_clip_dir(tmp_path / "clip")
    for key in ("hidden_size", "num_hidden_layers", "image_size", "patch_size", "hidden_act", "intermediate_size"):
        assert getattr(cfg, key) == getattr(want, key)
    assert proc == ImageProcessorConfig(shortest_edge=64, crop_size=56)


def test_load_clip_dir_errors(tmp_path):
    write_clip_dir(tmp_path / "clip", full=False)
    (tmp_path / "clip" / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        load_clip_dir(tmp_path / "clip")
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (tmp_path / "qwen" / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="not a CLIP config"):
        load_clip_dir(tmp_path / "qwen")


def test_resolve_vision_tower(tmp_path):
    cfg, proc, where = resolve_vision_tower(CLIP_VIT_L_336_NAME, tmp_path)
    assert where is None and cfg.image_size == 336 and proc == ImageProcessorConfig.clip_vit_l_336()
    write_clip_dir(tmp_path / "my_clip", full=True)
    cfg, proc, where = resolve_vision_tower("my_clip", tmp_path)           # relative to the checkpoint
    assert where == str(tmp_path / "my_clip") and cfg.image_size == 56 and proc.crop_size == 56
    assert resolve_vision_tower(str(tmp_path / "my_clip"))[2] == str(tmp_path / "my_clip")
    with pytest.raises(ValueError, match="openai/clip-vit-base"):
        resolve_vision_tower("openai/clip-vit-base-patch32", tmp_path)
