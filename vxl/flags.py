"""The engine's command-line flags, declared once for every command that builds an engine (`vxl generate`,
`demo`, `serve`, `batch`, `stream`), and the `LLM(...)` keyword arguments they give; plus the argparse
value types the commands share."""
from __future__ import annotations

import argparse


def int_at_least(minimum: int):
    """An argparse type: an int >= `minimum`, else a usage error naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)


def device(text: str) -> str:
    """A device torch knows and this machine has: the engine would otherwise fail later, less clearly."""
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def add_engine_flags(p) -> None:
    """The engine's flags on parser (or argument group) `p`."""
    p.add_argument("--device", default=None, type=device, help="cuda when available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--attention-backend", default=None, choices=["torch", "triton"],
                   help="triton on CUDA, torch on the CPU")
    p.add_argument("--kv-cache-bytes", type=positive_int, default=None,
                   help="size of the KV page pool (default: free GPU memory less a work space; 256 MiB on the CPU)")
    p.add_argument("--decode-workers", type=positive_int, default=1, help="parallel decord readers per video file")
    p.add_argument("--keyframe-snap", action="store_true", help="sample the nearest keyframes (faster decoding)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay decode steps as CUDA graphs (CUDA only; vxl.engine.cuda_graphs)")
    p.add_argument("--max-num-seqs", type=positive_int, default=256, help="sequences the engine runs at once")
    p.add_argument("--max-vision-frames", type=positive_int, default=None,
                   help="frames CLIP encodes per engine step, batched over requests (default: 8 windows' worth)")


def engine_kwargs(args) -> dict:
    """`LLM(model, **engine_kwargs(args))`: the engine flags as plain values (an actor can receive them)."""
    return {"device": args.device, "dtype": args.dtype, "attention_backend": args.attention_backend,
            "kv_cache_bytes": args.kv_cache_bytes, "video_decode_workers": args.decode_workers,
            "keyframe_snap": args.keyframe_snap, "cuda_graphs": args.cuda_graphs, "max_num_seqs": args.max_num_seqs,
            "max_vision_frames": args.max_vision_frames}
