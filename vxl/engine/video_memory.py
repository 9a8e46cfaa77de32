"""VideoMemory: the kept prefix + VST pages of one encoded video, shared by any number of requests.

A video's kept entries depend only on the video, the prompt text before it and the ratio, so one
encoding answers many questions at text-prefill cost. Pages are refcounted: each request sharing a
memory takes a reference to its full pages and copies the last partial page (it will append there).
`save`/`load` store the kept K/V as safetensors with a header naming the model, ratio and frames and a
checksum; a memory made by another model is refused. `load` type-checks every header field against the
tensors, and `bind` checks the tensors fit the engine's KV cache: a mismatch is a ValueError naming the
file and the field. The checksum detects corruption, not tampering (anyone can recompute it): only load
memories you made.
"""
from __future__ import annotations

import hashlib
import json

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vxl.checks import is_int
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
        self.path: str | None = None        # the file a loaded memory came from (named in errors)

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
        self._check_fits(kv_cache)
        table = kv_cache.new_table()
        kv_cache.write(table, self._kv)
        self.kv_cache, self.table, self._kv = kv_cache, table, None

    def _check_fits(self, kv_cache: KVCache) -> None:
        """Layers, KV heads and head dim of the loaded K/V must be the engine's: fewer layers would leave
        the others reading stale pages."""
        where = f"{self.path}: " if self.path else ""
        k_cache = kv_cache.layers[0][0]                           # (pages, page_size, nkv, hd)
        k = self._kv[0][0]                                        # (num_kept, nkv, hd)
        for field, got, want in (("num_layers", len(self._kv), len(kv_cache.layers)),
                                 ("num_kv_heads", k.shape[1], k_cache.shape[2]),
                                 ("head_dim", k.shape[2], k_cache.shape[3])):
            if got != want:
                raise ValueError(f"{where}video memory {field} is {got} but this engine's KV cache has {want}")

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
        """A saved memory, its header and tensors checked to agree (see `read_memory_file`); ValueError
        naming the file and the field otherwise. The checksum detects corruption, not tampering: only load
        memories you made."""
        header, kept_kv = read_memory_file(path)
        mem = cls(header["model"], header["prefix_token_ids"], header["ratio"], header["num_frames"],
                  header["num_visual_tokens"], header["num_vst"], header["num_kept"], kept_kv=kept_kv)
        mem.path = str(path)
        return mem

    def __repr__(self) -> str:
        return (f"VideoMemory(frames={self.num_frames}, ratio={self.ratio}, vst={self.num_vst}, "
                f"kept={self.num_kept}, bound={self.is_bound})")


# header fields of a saved memory: the type each must have (ints with their least value)
HEADER_INTS = {"ratio": 1, "num_frames": 0, "num_visual_tokens": 1, "num_vst": 0, "num_kept": 1}
HEADER_STRS = ("format", "model", "checksum")



def _read_raw(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header dict, tensors) of a file; anything unreadable is a ValueError naming the file."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"{path}: cannot read a video memory file: {exc}") from None
    if "vxl" not in meta:
        raise ValueError(f"{path} is not a vxl video memory file")
    try:
        header = json.loads(meta["vxl"])
    except ValueError:
        raise ValueError(f"{path}: the video memory header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the video memory header must be a JSON object, not {type(header).__name__}")
    return header, tensors


def _check_header_types(path: str, header: dict) -> None:
    for field in HEADER_STRS:
        if not isinstance(header.get(field), str):
            raise ValueError(f"{path}: header field {field!r} must be a str, got {header.get(field)!r}")
    if header["format"] != FORMAT:
        raise ValueError(f"{path}: unsupported video memory format {header['format']!r} (field 'format')")
    for field, low in HEADER_INTS.items():
        value = header.get(field)
        if not is_int(value) or value < low:
            raise ValueError(f"{path}: header field {field!r} must be an int >= {low}, got {value!r}")
    ids = header.get("prefix_token_ids")
    if not isinstance(ids, list) or not all(is_int(t) and t >= 0 for t in ids):
        raise ValueError(f"{path}: header field 'prefix_token_ids' must be a list of ints >= 0")


def _layer_kv(path: str, tensors: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (k, v): names k.0..k.{L-1}, v.0..v.{L-1}; every tensor float [num_kept, nkv, hd] of one
    shape, finite."""
    num_layers = len(tensors) // 2
    names = {f"{kv}.{i}" for kv in "kv" for i in range(num_layers)}
    if num_layers == 0 or set(tensors) != names:
        raise ValueError(f"{path}: field 'num_layers': the tensors must be k.0..k.L-1 and v.0..v.L-1 for L >= 1, "
                         f"got {sorted(tensors)[:6]}")
    shape = tensors["k.0"].shape
    for name in sorted(names):
        t = tensors[name]
        if not t.is_floating_point() or t.dim() != 3 or t.shape != shape:
            raise ValueError(f"{path}: tensor {name!r} is {t.dtype} {tuple(t.shape)}; every K/V tensor must be a "
                             f"float [num_kept, num_kv_heads, head_dim] of the shape of 'k.0' {tuple(shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{path}: tensor {name!r} has NaN or infinite values")
    return [(tensors[f"k.{i}"], tensors[f"v.{i}"]) for i in range(num_layers)]


def read_memory_file(path: str) -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(header, per layer (k, v)) of a saved memory. Every header field is type-checked and must agree
    with the tensors and with the others (num_kept = tensors' length = len(prefix) + num_vst; num_vst =
    num_visual_tokens // ratio, the VSTs any window keeps); ValueError naming the file and the field."""
    header, tensors = _read_raw(path)
    _check_header_types(path, header)
    if _checksum(tensors) != header["checksum"]:   # corruption; a deliberate edit recomputes it
        raise ValueError(f"{path}: checksum mismatch (the file is corrupt or was modified)")
    kept_kv = _layer_kv(path, tensors)
    num_entries = kept_kv[0][0].shape[0]
    if header["num_kept"] != num_entries:
        raise ValueError(f"{path}: header field 'num_kept' is {header['num_kept']} but the tensors hold "
                         f"{num_entries} entries")
    if header["num_kept"] != len(header["prefix_token_ids"]) + header["num_vst"]:
        raise ValueError(f"{path}: header field 'num_kept' ({header['num_kept']}) is not len(prefix_token_ids) "
                         f"+ num_vst ({len(header['prefix_token_ids'])} + {header['num_vst']})")
    if header["num_vst"] != header["num_visual_tokens"] // header["ratio"]:
        raise ValueError(f"{path}: header field 'num_vst' ({header['num_vst']}) disagrees with num_visual_tokens "
                         f"// ratio ({header['num_visual_tokens']} // {header['ratio']})")
    return header, kept_kv


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
