"""One end-to-end benchmark point: one request of N frames at ratio r, measured for seconds per stage,
kept KV, peak memory (device, or process RSS) and FLOPs. `python -m bench.e2e_point SPEC_JSON` runs a
point in a fresh process and prints its result as one JSON line (how CPU sweeps isolate peak RSS)."""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from bench.common import REPO_ROOT, PeakRSS, generate_frames, read_status_bytes
from bench.flops import peak_flops, request_flops
from vxl import LLM, SamplingParams
from vxl.engine.llm import resolve_dtype
from vxl.vst import count_vst

PROMPT = "Describe what happens in this video."
PROMPT_TOKEN_MARGIN = 512      # page-pool room for the prompt's text tokens


@dataclass
class PointSpec:
    model: str = "tiny"                 # "tiny", "full-random" or a checkpoint directory
    num_frames: int = 64
    ratio: int = 16
    device: str | None = None
    dtype: str | None = None
    attention_backend: str | None = None
    video: str | None = None            # a file; None: generated uint8 frames of height x width
    height: int = 120
    width: int = 160
    max_tokens: int = 4
    warmup: bool = True
    repeats: int = 1                    # at most this many measured runs; the median wall time is reported
    min_seconds: float = 0.0            # ... repeating until this much time is measured
    num_threads: int | None = None      # torch CPU threads (None: torch's default)
    seed: int = 0


def load_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A `LoadedModel` for "tiny", "full-random" or a checkpoint directory."""
    if name == "tiny":
        from vxl.model.tiny import build_tiny
        return build_tiny(device, dtype, seed=seed)
    if name == "full-random":
        from vxl.model.random_full import build_random_full
        return build_random_full(device, dtype, seed=seed)
    from vxl.model.loader import load_checkpoint
    return load_checkpoint(name, device, dtype)


def engine_kwargs(spec: PointSpec) -> dict:
    return {"device": spec.device, "dtype": spec.dtype, "attention_backend": spec.attention_backend}


def make_llm(loaded, spec: PointSpec, page_size: int = 16) -> LLM:
    """One built model serves page pools of several sizes: each point's pool holds just what it keeps,
    so peak memory shows the kept KV."""
    cfg = loaded.config
    kept = count_vst(spec.num_frames * loaded.model.tokens_per_frame, cfg.beacon_window, spec.ratio)
    num_pages = -(-(kept + PROMPT_TOKEN_MARGIN + spec.max_tokens) // page_size) + 1
    return LLM(loaded, **engine_kwargs(spec), page_size=page_size, num_pages=num_pages)


def run_request(llm: LLM, video, num_frames: int, ratio: int, max_tokens: int):
    req = {"prompt": PROMPT, "video": video, "num_frames": num_frames, "compression_ratio": ratio}
    out = llm.generate([req], SamplingParams(max_tokens=max_tokens, ignore_eos=True), use_tqdm=False)[0]
    if out.error:
        raise RuntimeError(f"{num_frames} frames at ratio {ratio}: {out.error}")
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(llm: LLM, spec: PointSpec) -> dict:
    """Run the point's request (after an optional one-window warm-up) until `spec.min_seconds` are measured
    or `spec.repeats` runs are done; keep the run with the median wall time and the peak memory of all.
    The input is made before the peak is tracked: its bytes count, its generator's temporaries do not."""
    if spec.warmup:
        warm_frames = max(1, llm.config.beacon_window // llm.model.tokens_per_frame)
        run_request(llm, generate_frames(warm_frames, spec.height, spec.width, spec.seed + 1), warm_frames,
                    spec.ratio, 2)
    gc.collect()
    if llm.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(llm.device)
    rss_before_input = read_status_bytes("VmRSS")
    video = spec.video or generate_frames(spec.num_frames, spec.height, spec.width, spec.seed)
    runs = []
    with PeakRSS() as rss:
        while not runs or (len(runs) < spec.repeats and sum(w for w, _ in runs) < spec.min_seconds):
            _sync(llm.device)
            t0 = time.perf_counter()
            out = run_request(llm, video, spec.num_frames, spec.ratio, spec.max_tokens)
            _sync(llm.device)
            runs.append((time.perf_counter() - t0, out))
    rss.baseline, rss.growth = rss_before_input, rss.peak - rss_before_input
    wall, out = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    input_bytes = 0 if spec.video else int(video.nbytes)
    peak_device = torch.cuda.max_memory_allocated(llm.device) if llm.device.type == "cuda" else None
    return {"out": out, "wall": wall, "walls": [w for w, _ in runs], "rss": rss, "input_bytes": input_bytes,
            "peak_device": peak_device}


def summarise(llm: LLM, spec: PointSpec, m: dict) -> dict:
    """The point's result row (plain JSON types)."""
    met, wall, rss = m["out"].metrics, m["wall"], m["rss"]
    cfg, model = llm.config, llm.model
    clip = model.model.vision_tower.clip_config
    flops = request_flops(cfg, clip, met["num_frames"], model.tokens_per_frame, spec.ratio,
                          met["num_prompt_tokens"] - 1, met["num_generated_tokens"],
                          model.model.vision_tower.num_layers_used)
    pool = llm.kv_cache_usage()["total_bytes"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    on_gpu = m["peak_device"] is not None
    peak = m["peak_device"] if on_gpu else rss.peak
    gpu_name = torch.cuda.get_device_name(llm.device) if llm.device.type == "cuda" else None
    peak_fl = peak_flops(gpu_name, str(llm.dtype))
    secs = met["seconds"]
    return {
        "model": spec.model, "device": str(llm.device), "dtype": str(llm.dtype),
        "attention_backend": llm.engine_config.attention_backend,
        "input": spec.video or f"generated {spec.height}x{spec.width} uint8", "input_bytes": m["input_bytes"],
        "num_frames": met["num_frames"], "compression_ratio": spec.ratio,
        "num_visual_tokens": met["num_visual_tokens"], "num_vst_tokens": met["num_vst_tokens"],
        "num_kept_tokens": met["num_kept_tokens"], "kept_kv_bytes": met["kept_kv_bytes"],
        "num_prompt_tokens": met["num_prompt_tokens"], "num_generated_tokens": met["num_generated_tokens"],
        "seconds": secs, "wall_seconds": wall, "wall_seconds_all": m["walls"],
        "torch_num_threads": torch.get_num_threads(),
        "frames_per_s": met["num_frames"] / wall, "visual_tokens_per_s": met["num_visual_tokens"] / wall,
        "decode_tokens_per_s": (met["num_generated_tokens"] - 1) / secs["decode"] if secs.get("decode") else None,
        "peak_memory_kind": "device (max_memory_allocated)" if on_gpu else "process RSS",
        # the input frames live on the host: they are in a CPU peak, not in a device peak
        "peak_memory_bytes": peak, "peak_excl_kv_input_bytes": peak - pool - (0 if on_gpu else m["input_bytes"]),
        "peak_rss_bytes": rss.peak, "rss_baseline_bytes": rss.baseline, "rss_growth_bytes": rss.growth,
        "rss_method": rss.method, "weights_bytes": weights, "kv_pool_bytes": pool,
        "flops": flops, "tflops_per_s": flops["total"] / wall / 1e12,
        "mfu": flops["total"] / wall / peak_fl if peak_fl else None,
    }


def run_point(spec: PointSpec, loaded=None) -> dict:
    """Measure one point in this process; `loaded` reuses a model built by the caller. The torch thread
    count of `spec.num_threads` holds for the point only."""
    threads = torch.get_num_threads()
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)
    try:
        if loaded is None:
            device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            loaded = load_model(spec.model, device, resolve_dtype(spec.dtype, device), spec.seed)
        llm = make_llm(loaded, spec)
        result = summarise(llm, spec, measure(llm, spec))
        del llm
        return result
    finally:
        torch.set_num_threads(threads)
        gc.collect()


def run_isolated(spec: PointSpec) -> dict:
    """Measure one point in a fresh Python process (its peak RSS is not blurred by earlier points)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "bench.e2e_point", json.dumps(dataclasses.asdict(spec))],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"point {spec.num_frames} frames, ratio {spec.ratio} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.e2e_point SPEC_JSON", file=sys.stderr)
        return 2
    spec = PointSpec(**json.loads(argv[0]))
    print(json.dumps(run_point(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
