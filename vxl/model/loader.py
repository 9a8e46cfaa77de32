"""Load a checkpoint directory in the official Video-XL layout (config.json, safetensors shard(s),
optional tokenizer files, optional CLIP directory) into a `VideoXLForCausalLM`.

Safetensors only: nothing is ever unpickled. No code from a checkpoint ever runs: transformers is called
with `trust_remote_code=False` and `local_files_only=True` (it never prompts on stdin), a tokenizer naming
its own Python classes (`auto_map`) is refused, and config.json is read as plain JSON. Missing beacon
weights are initialised the way the released code does (from the ordinary q/k/v/o, and the beacon
embedding from the EOS embedding); any other missing, unexpected or wrongly shaped tensor is an error
that names the key.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open
from transformers import CLIPVisionConfig

from vxl.config import ModelConfig
from vxl.model.clip_configs import resolve_vision_tower
from vxl.model.video_llm import VideoXLForCausalLM

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# keys that official checkpoints may carry but the computation never reads
IGNORED_KEY_PATTERNS = (r"\.rotary_emb\.inv_freq$", r"^model\.image_newline$")


@dataclass
class LoadedModel:
    model: VideoXLForCausalLM
    config: ModelConfig
    tokenizer: object | None
    image_processor: object | None      # vxl.model.clip_configs.ImageProcessorConfig when the model has vision
    eos_token_ids: list[int]
    name: str


def checkpoint_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path} (pickled .bin checkpoints are not loaded)")
    return files


def read_tensors(files: list[str], device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the shards, each moved to `device` / cast to `dtype` (floating ones) as it is read,
    so the host never holds the whole checkpoint in another dtype."""
    tensors = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                tensors[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    return tensors


def clip_dir_weights(clip_dir: str | None, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A CLIP directory's own vision weights, renamed to the checkpoint's vision keys."""
    if clip_dir is None or not glob.glob(os.path.join(clip_dir, "*.safetensors")):
        return {}
    out = {}
    for key, t in read_tensors(checkpoint_files(clip_dir), device, dtype).items():
        m = re.match(r"^(?:vision_model\.)?(embeddings|pre_layrnorm|encoder|post_layernorm)\.(.*)$", key)
        if m:
            out[f"{VISION_PREFIX}{m.group(1)}.{m.group(2)}"] = t
    return out


def fill_missing_beacon(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Initialise absent beacon weights as the released code does; returns the keys it filled."""
    filled = []
    for i in range(cfg.num_hidden_layers):
        base = f"model.layers.{i}.self_attn."
        for p in cfg.beacon_param:
            for suffix in ("weight", "bias"):
                src, dst = f"{base}{p}_proj.{suffix}", f"{base}beacon_{p}_proj.{suffix}"
                if dst not in tensors and src in tensors:
                    tensors[dst] = tensors[src].clone()
                    filled.append(dst)
    key = "model.beacon_embed_tokens.weight"
    if key not in tensors:
        if cfg.beacon_embed_init != "eos" or not cfg.eos_token_ids:
            raise ValueError(f"{key} is missing and cannot be initialised (beacon_embed_init="
                             f"{cfg.beacon_embed_init!r}, eos_token_id={cfg.eos_token_id})")
        tensors[key] = tensors["model.embed_tokens.weight"][cfg.eos_token_ids[0]][None].clone()
        filled.append(key)
    return filled


def check_keys(model: torch.nn.Module, tensors: dict[str, torch.Tensor], num_clip_layers_used: int | None) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for key in list(tensors):
        if key in expected:
            continue
        m = re.match(re.escape(VISION_PREFIX) + r"encoder\.layers\.(\d+)\.", key)
        unused_clip_layer = m is not None and num_clip_layers_used is not None and int(m.group(1)) >= num_clip_layers_used
        if unused_clip_layer or any(re.search(p, key) for p in IGNORED_KEY_PATTERNS):
            del tensors[key]
            continue
        raise ValueError(f"unexpected tensor {key!r} {tuple(tensors[key].shape)} in the checkpoint")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise ValueError(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}")


def materialise(model: VideoXLForCausalLM, tensors: dict, device: torch.device) -> None:
    model.load_state_dict(tensors, strict=True, assign=True)
    if model.has_vision:   # the only non-persistent buffer: CLIP's position ids
        emb = model.model.vision_tower.vision_tower.vision_model.embeddings
        emb.position_ids = torch.arange(emb.num_positions, device=device).expand((1, -1))


def read_json(path: str, what: str) -> dict:
    """A JSON object file of the checkpoint; anything else is a ValueError naming the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:    # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: cannot read the {what} as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the {what} must be a JSON object, not {type(data).__name__}")
    return data


def refuse_remote_code(tokenizer_config_path: str) -> None:
    """A tokenizer_config.json with `auto_map` names Python classes shipped in the checkpoint; transformers
    would import them (after asking on stdin). vxl never runs checkpoint code, so such a tokenizer is refused."""
    if not os.path.exists(tokenizer_config_path):
        return
    if "auto_map" in read_json(tokenizer_config_path, "tokenizer config"):
        raise ValueError(f"{tokenizer_config_path}: field 'auto_map' names custom tokenizer code in the checkpoint; "
                         "vxl never runs code from a checkpoint (remove auto_map to use a built-in tokenizer class)")


def load_tokenizer(path: str):
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        return None
    refuse_remote_code(os.path.join(path, "tokenizer_config.json"))
    from transformers import AutoTokenizer, PretrainedConfig
    # an empty config: transformers cannot parse llava_qwen's config.json and would only warn about it;
    # the tokenizer class comes from tokenizer_config.json. trust_remote_code=False: never import checkpoint
    # code nor ask about it on stdin; local_files_only: never reach the network.
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                         config=PretrainedConfig())


def eos_ids(cfg: ModelConfig, path: str, tokenizer) -> list[int]:
    ids = list(cfg.eos_token_ids)
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        with open(gen) as f:
            e = json.load(f).get("eos_token_id")
        ids += e if isinstance(e, list) else ([e] if e is not None else [])
    if tokenizer is not None:
        for tok in (tokenizer.eos_token, "<|im_end|>"):
            tid = tokenizer.convert_tokens_to_ids(tok) if tok else None
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                ids.append(tid)
    return sorted(set(ids))


def read_model_config(path: str) -> ModelConfig:
    """A checkpoint directory's config.json, checked to be a Video-XL (`llava_qwen`) config."""
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise ValueError(f"{path} is not a checkpoint directory: no config.json")
    # read as data only (never through transformers' AutoConfig): an `auto_map` here runs nothing
    raw = read_json(config_file, "model config")
    if raw.get("model_type") != "llava_qwen":
        raise ValueError(f"{config_file}: model_type {raw.get('model_type')!r} is not 'llava_qwen'")
    return ModelConfig.from_dict(raw)


def checkpoint_configs(path: str) -> tuple[ModelConfig, CLIPVisionConfig | None]:
    """(model config, CLIP config or None) of a checkpoint directory; no weights are read."""
    cfg = read_model_config(path)
    clip = resolve_vision_tower(cfg.mm_vision_tower, path)[0] if cfg.mm_vision_tower else None
    return cfg, clip


def load_checkpoint(path: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    cfg = read_model_config(path)
    tokenizer = load_tokenizer(path)        # first: a refused tokenizer costs no weight reading
    clip_cfg = proc = clip_dir = None
    if cfg.mm_vision_tower:
        clip_cfg, proc, clip_dir = resolve_vision_tower(cfg.mm_vision_tower, path)
    with torch.device("meta"):
        model = VideoXLForCausalLM(cfg, clip_cfg)
    tensors = read_tensors(checkpoint_files(path), device, dtype)
    if cfg.mm_vision_tower and not any(k.startswith(VISION_PREFIX) for k in tensors):
        tensors.update(clip_dir_weights(clip_dir, device, dtype))
    fill_missing_beacon(cfg, tensors)
    used = model.model.vision_tower.num_layers_used if model.has_vision else None
    check_keys(model, tensors, used)
    materialise(model, tensors, device)
    model.prepare()
    model.eval()
    return LoadedModel(model, cfg, tokenizer, proc, eos_ids(cfg, path, tokenizer), os.path.abspath(path))
