"""VideoMemory: the kept prefix + VST pages of one encoded video, shared by any number of requests.

A video's kept entries depend only on the video, the prompt text before it and the ratio, so one
encoding answers many questions at text-prefill cost. Pages are refcounted: each request sharing a
memory takes a reference to its full pages and copies the last partial page (it will append there).
`save`/`load` store the kept K/V as safetensors with a header naming the model, ratio and frames and a
checksum; a memory made by another model is refused.
"""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vxl.engine.kv_cache import BlockTable, KVCache

FORMAT = "vxl-video-memory/1"


class VideoMemory:
    """Either bound (its entries live in `table` of `kv_cache`: what `LLM.encode_video` returns) or loaded
    (per layer host (k, v) in `kept_kv`: what `load` returns; placed into an engine's KV cache by `bind` at
    its first request)."""

    def __init__(self, model_fingerprint: str, prefix_token_ids: list[int], ratio: int, num_frames: int,
                 num_visual_tokens: int, num_vst: int, num_kept: int, *, kv_cache: KVCache | None = None,
                 table: BlockTable | None = None, kept_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        if (kv_cache is None) != (table is None) or (table is None) == (kept_kv is None):
            raise ValueError("a VideoMemory takes either kv_cache and table (bound) or kept_kv (loaded)")
        if table is not None and table.num_tokens != num_kept:
            raise ValueError(f"the table holds {table.num_tokens} entries, not num_kept={num_kept}")
        self.model_fingerprint = model_fingerprint
        self.prefix_token_ids = list(prefix_token_ids)
        self.ratio, self.num_frames = ratio, num_frames
        self.num_visual_tokens, self.num_vst, self.num_kept = num_visual_tokens, num_vst, num_kept
        self.kv_cache, self.table = kv_cache, table
        self._kv = kept_kv

    # -- binding to an engine's KV cache -----------------------------------------------------------
    @property
    def is_bound(self) -> bool:
        return self.table is not None and not self.table.is_released

    def bind(self, kv_cache: KVCache, model_fingerprint: str) -> None:
        """Place the loaded K/V into `kv_cache` (once); checks the memory was made by the same model."""
        if model_fingerprint != self.model_fingerprint:
            raise ValueError("this video memory was made by another model (fingerprint mismatch)")
        if self.is_bound:
            if self.kv_cache is not kv_cache:
                raise ValueError("this video memory lives in another engine's KV cache")
            return
        if self._kv is None:
            raise ValueError("this video memory was released")
        table = kv_cache.new_table()
        kv_cache.write(table, self._kv)
        self.kv_cache, self.table, self._kv = kv_cache, table, None

    def fork_table(self) -> BlockTable:
        """A new block table for a request continuing after this memory (see `KVCache.fork`)."""
        return self.kv_cache.fork(self.table)

    def release(self) -> None:
        """Return the pages to the pool; the memory cannot be used afterwards."""
        if self.table is not None:
            self.table.release()
        self._kv = None

    # -- persistence -------------------------------------------------------------------------------
    def kept_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v) [num_kept, nkv, hd] of the kept entries (K after RoPE at its position)."""
        if self._kv is not None:
            return self._kv
        if not self.is_bound:
            raise ValueError("this video memory was released")
        return self.kv_cache.read(self.table)

    def save(self, path: str) -> None:
        tensors = {}
        for i, (k, v) in enumerate(self.kept_kv()):
            tensors[f"k.{i}"], tensors[f"v.{i}"] = k.detach().cpu().contiguous(), v.detach().cpu().contiguous()
        header = {"format": FORMAT, "model": self.model_fingerprint, "ratio": self.ratio,
                  "num_frames": self.num_frames, "num_visual_tokens": self.num_visual_tokens,
                  "num_vst": self.num_vst, "num_kept": self.num_kept,
                  "prefix_token_ids": self.prefix_token_ids, "checksum": _checksum(tensors)}
        save_file(tensors, path, metadata={"vxl": json.dumps(header)})

    @classmethod
    def load(cls, path: str) -> "VideoMemory":
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "vxl" not in meta:
            raise ValueError(f"{path} is not a vxl video memory file")
        header = json.loads(meta["vxl"])
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported video memory format {header.get('format')!r}")
        if _checksum(tensors) != header["checksum"]:
            raise ValueError(f"{path}: checksum mismatch (the file is corrupt or was modified)")
        kept_kv = [(tensors[f"k.{i}"], tensors[f"v.{i}"]) for i in range(len(tensors) // 2)]
        return cls(header["model"], header["prefix_token_ids"], header["ratio"], header["num_frames"],
                   header["num_visual_tokens"], header["num_vst"], header["num_kept"], kept_kv=kept_kv)

    def __repr__(self) -> str:
        return (f"VideoMemory(frames={self.num_frames}, ratio={self.ratio}, vst={self.num_vst}, "
                f"kept={self.num_kept}, bound={self.is_bound})")


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model, config) -> str:
    """Identifies the weights: config plus a few bytes of every tensor (cheap, catches any other model)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().flatten()[:16].to(torch.bfloat16).float().cpu().numpy().tobytes())   # dtype-independent
    return h.hexdigest()[:32]
