"""The built-in models: the names `vxl.LLM`, the memory planner and the CLI accept besides a checkpoint
directory. Each entry gives its configs without building weights (what the planner needs) and builds or
loads the model on a device in a dtype.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import CLIPVisionConfig

from vxl.config import ModelConfig
from vxl.model.loader import LoadedModel, checkpoint_configs, load_checkpoint

Configs = tuple[ModelConfig, CLIPVisionConfig | None]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str                                                   # one line, for listings
    configs: Callable[[], Configs]                                     # (model config, CLIP config); no weights
    build: Callable[[torch.device, torch.dtype, int], LoadedModel]    # (device, dtype, seed) -> the model


def demo_checkpoint_path() -> str:
    """The directory of the trained demo checkpoint shipped in the package (official Video-XL layout)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"the demo checkpoint is missing from {path} (no config.json): the 'demo' model "
                                f"ships inside the vxl package; reinstall vxl")
    return path


def _tiny_configs() -> Configs:
    from vxl.model.tiny import tiny_configs
    return tiny_configs()


def _tiny(device: torch.device, dtype: torch.dtype, seed: int) -> LoadedModel:
    from vxl.model.tiny import build_tiny
    return build_tiny(device, dtype, seed=seed)


def _demo(device: torch.device, dtype: torch.dtype, seed: int) -> LoadedModel:
    return load_checkpoint(demo_checkpoint_path(), device, dtype)      # trained weights: the seed plays no part


def _full_random_configs() -> Configs:
    from vxl.model.random_full import random_full_configs
    return random_full_configs()


def _full_random(device: torch.device, dtype: torch.dtype, seed: int) -> LoadedModel:
    from vxl.model.random_full import build_random_full
    return build_random_full(device, dtype, seed=seed)


BUILTIN_MODELS: dict[str, BuiltinModel] = {m.name: m for m in (
    BuiltinModel("tiny", "small random Video-XL (tiny CLIP, 3 layers): runs anywhere fast; its answers are "
                 "meaningless", _tiny_configs, _tiny),
    BuiltinModel("demo", "small Video-XL trained on synthetic long videos, shipped with vxl: answers needle, "
                 "ordering and counting questions about them", lambda: checkpoint_configs(demo_checkpoint_path()),
                 _demo),
    BuiltinModel("full-random", "the released Video-XL-7B shapes (Qwen2-7B + CLIP ViT-L/14-336) with random "
                 "weights, for memory and speed measurements", _full_random_configs, _full_random),
)}


def builtin_model_names() -> list[str]:
    return list(BUILTIN_MODELS)


def describe_builtin_models() -> str:
    """One line per built-in model: name and description (what `--help` texts list)."""
    return "\n".join(f"{m.name}: {m.description}" for m in BUILTIN_MODELS.values())


def _unknown(model: str) -> ValueError:
    return ValueError(f"{model!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor a checkpoint "
                      f"directory with a config.json")


def model_configs(model: str) -> Configs:
    """(model config, CLIP config or None) of a built-in name or a checkpoint directory; no weights are read."""
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model].configs()
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise _unknown(model)
    return checkpoint_configs(model)


def load_model(model: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """A built-in name (built with `seed` where its weights are random) or a checkpoint directory."""
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model].build(device, dtype, seed)
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise _unknown(model)
    return load_checkpoint(model, device, dtype)
