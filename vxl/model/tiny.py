"""The built-in "tiny" Video-XL: a small random model (tiny CLIP, 3-layer Qwen2 with VSTs, a byte-level
tokenizer with Qwen chat special tokens) built in code from a fixed seed. Its weights are random, so its
answers are meaningless; it exists to run the whole pipeline fast on a CPU. `save_checkpoint` writes any
loaded model in the official layout (used by tests and to hand the tiny model to other tools).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, PreTrainedTokenizerFast

from vxl.config import ModelConfig
from vxl.model.clip_configs import ImageProcessorConfig
from vxl.model.loader import LoadedModel
from vxl.model.video_llm import VideoXLForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 image_size=112, patch_size=14, projection_dim=64, hidden_act="quick_gelu")
TINY_PROCESSOR = {"crop_size": {"height": 112, "width": 112}, "size": {"shortest_edge": 112},
                  "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                  "rescale_factor": 1 / 255, "resample": 3,
                  "image_mean": [0.48145466, 0.4578275, 0.40821073],
                  "image_std": [0.26862954, 0.26130258, 0.27577711]}


def tiny_model_config(vocab_size: int) -> ModelConfig:
    # 112 px / 14 = 8x8 patches -> 16 tokens per frame; a window of 160 tokens is 10 frames, as in the
    # real model (1440 = 10 x 144)
    return ModelConfig.from_dict(dict(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=256, rope_theta=1e6, rms_norm_eps=1e-6, eos_token_id=vocab_size - 1,
        beacon_window=160, beacon_stride=160, beacon_ratio=[2, 4, 8, 12, 16], beacon_param=["q", "k", "v"],
        mm_vision_tower="clip", mm_hidden_size=64, mm_vision_select_layer=-2, mm_spatial_pool_stride=2,
        image_aspect_ratio="anyres", mm_patch_merge_type="unires",
        image_grid_pinpoints=[[112 * a, 112 * b] for a in range(1, 4) for b in range(1, 4) if a * b >= 2],
        torch_dtype="float32"))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per byte (256) + the Qwen chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return fast


def tiny_configs(tokenizer: PreTrainedTokenizerFast | None = None) -> tuple[ModelConfig, CLIPVisionConfig]:
    """(model config, CLIP config) of the tiny model: the vocabulary and EOS follow its tokenizer."""
    tokenizer = tokenizer or build_tokenizer()
    cfg = tiny_model_config(vocab_size=len(tokenizer))
    cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return cfg, CLIPVisionConfig(**TINY_CLIP)


def build_tiny(device: torch.device, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    tokenizer = build_tokenizer()
    cfg, clip_cfg = tiny_configs(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    model = VideoXLForCausalLM(cfg, clip_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "embed" in name else 0.08))
    model.to(device=device, dtype=dtype).prepare()
    model.eval()
    proc = ImageProcessorConfig.from_dict(TINY_PROCESSOR)
    eos = sorted({cfg.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")})
    return LoadedModel(model, cfg, tokenizer, proc, eos, "tiny")


def save_checkpoint(loaded: LoadedModel, path: str, num_shards: int = 1, drop: tuple[str, ...] = ()) -> None:
    """Write `loaded` in the official layout: config.json, safetensors shard(s) (+ index when sharded),
    tokenizer files, and the CLIP directory `clip/` that config.json's mm_vision_tower points to.
    Keys listed in `drop` are left out (tests use it to exercise the loader's initialisation)."""
    os.makedirs(path, exist_ok=True)
    model, cfg = loaded.model, loaded.config
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items() if k not in drop}
    d = cfg.to_dict()
    if model.has_vision:
        clip = model.model.vision_tower.clip_config
        os.makedirs(os.path.join(path, "clip"), exist_ok=True)
        with open(os.path.join(path, "clip", "config.json"), "w") as f:
            json.dump({**clip.to_dict(), "model_type": "clip_vision_model"}, f, indent=1)
        with open(os.path.join(path, "clip", "preprocessor_config.json"), "w") as f:
            json.dump(loaded.image_processor.to_dict(), f, indent=1)
        d["mm_vision_tower"] = "clip"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(d, f, indent=1)
    keys = sorted(state)
    shards = [keys[i::num_shards] for i in range(num_shards)]
    if num_shards == 1:
        save_file(state, os.path.join(path, "model.safetensors"))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
            save_file({k: state[k] for k in shard}, os.path.join(path, name))
            weight_map.update({k: name for k in shard})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(path)
