"""Built-in models: one list of names; configs without weights equal the built models' own configs;
unknown names are refused with the list; a checkpoint directory goes through the same functions."""
from __future__ import annotations

import pytest
import torch

from helpers import small_config, write_checkpoint
from vxl.model.registry import builtin_model_names, demo_checkpoint_path, load_model, model_configs
from vxl.model.vision import tokens_per_frame


def test_names():
    assert builtin_model_names() == ["tiny", "demo", "full-random"]


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_configs_match_the_built_model(name):
    cfg, clip = model_configs(name)
    loaded = load_model(name, torch.device("cpu"), torch.float32, seed=0)
    assert cfg.to_dict() == loaded.config.to_dict()
    assert clip.to_dict() == loaded.model.model.vision_tower.clip_config.to_dict()
    assert tokens_per_frame(clip, cfg.mm_spatial_pool_stride) == loaded.model.tokens_per_frame


def test_full_random_configs_are_the_released_shapes():
    cfg, clip = model_configs("full-random")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim) == (3584, 28, 4, 128)
    assert tokens_per_frame(clip, cfg.mm_spatial_pool_stride) == 144


def test_demo_path_is_inside_the_package():
    assert demo_checkpoint_path().replace("\\", "/").endswith("vxl/data/demo")


def test_unknown_name_lists_the_builtin_names(tmp_path):
    for call in (lambda: model_configs("no-such-model"),
                 lambda: load_model(str(tmp_path), torch.device("cpu"), torch.float32)):
        with pytest.raises(ValueError, match="tiny, demo, full-random"):
            call()


def test_checkpoint_directory(tmp_path):
    cfg = small_config()
    write_checkpoint(tmp_path, cfg, seed=3)
    got, clip = model_configs(str(tmp_path))
    assert clip is None and got.hidden_size == cfg.hidden_size
    assert load_model(str(tmp_path), torch.device("cpu"), torch.float32).config.to_dict() == got.to_dict()
