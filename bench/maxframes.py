"""Max-frames search (GPU only): the largest frame count one request at ratio r runs with on this device,
found by running it (doubling, then bisection), next to two predictions: the planner's
(`vxl.engine.planner.plan_memory`) and a measured formula (device memory - the first run's peak without
its KV pool) / kept KV per frame."""
from __future__ import annotations

import dataclasses
import gc
import time

import torch

from bench.e2e_point import PointSpec, run_point


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def try_point(loaded, spec: PointSpec) -> dict | None:
    """The point's result, or None when it ran out of device memory (other errors propagate)."""
    try:
        return run_point(spec, loaded)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if _is_oom(exc):
            return None
        raise
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def predict_max_frames(first: dict, tokens_per_frame: int, total_bytes: int) -> int:
    """Frames that fit by formula: the first run's peak minus its KV pool is the fixed part (weights +
    one window of work space); each frame adds tokens_per_frame / r kept tokens of KV."""
    fixed = first["peak_memory_bytes"] - first["kv_pool_bytes"]
    bytes_per_token = first["kept_kv_bytes"] / max(1, first["num_kept_tokens"])
    per_frame = tokens_per_frame / first["compression_ratio"] * bytes_per_token
    return int((total_bytes - fixed) / per_frame)


def bisect_max(runs, start: int, limit: int, tolerance: float, budget_s: float) -> tuple[int, int | None]:
    """(largest n that ran, smallest n that failed or None): `runs(n)` is truthy when n ran. Doubles from
    `start` while n <= `limit`, then bisects until the bracket is within `tolerance` of the good end or
    `budget_s` seconds have passed. (0, start) when `start` itself fails."""
    t0 = time.perf_counter()
    if not runs(start):
        return 0, start
    good, bad = start, None
    while bad is None and good * 2 <= limit and time.perf_counter() - t0 < budget_s:
        if runs(good * 2):
            good *= 2
        else:
            bad = good * 2
    while bad is not None and bad - good > max(1, int(good * tolerance)) and time.perf_counter() - t0 < budget_s:
        mid = (good + bad) // 2
        if runs(mid):
            good = mid
        else:
            bad = mid
    return good, bad


def search_max_frames(loaded, base: PointSpec, ratio: int, start: int, limit: int,
                      tolerance: float = 0.05, budget_s: float = 1800.0) -> dict:
    """The largest frame count one request at `ratio` runs with on this GPU (`bisect_max` over real
    runs), every trial, and the two predictions."""
    if not torch.cuda.is_available():
        raise RuntimeError("the max-frames search needs a CUDA device")
    t0 = time.perf_counter()
    trials: list[dict] = []
    results: list[dict] = []

    def runs(n: int) -> bool:
        res = try_point(loaded, dataclasses.replace(base, num_frames=n, ratio=ratio, warmup=False, repeats=1,
                                                        min_seconds=0.0))
        trials.append({"num_frames": n, "ok": res is not None,
                       "peak_memory_bytes": res["peak_memory_bytes"] if res else None,
                       "wall_seconds": res["wall_seconds"] if res else None})
        results.extend([res] if res else [])
        return res is not None

    good, bad = bisect_max(runs, start, limit, tolerance, budget_s)
    out = {"compression_ratio": ratio, "max_frames": good, "failed_at": bad, "limit": limit,
           "hit_limit": bad is None and good * 2 > limit, "seconds": time.perf_counter() - t0, "trials": trials}
    if results:
        total = torch.cuda.get_device_properties(0).total_memory
        out.update(predicted_max_frames=predict_max_frames(results[0], loaded.model.tokens_per_frame, total),
                   planner_max_frames=planner_max_frames(loaded, results[0], ratio, total),
                   device_memory_bytes=total)
    return out


def planner_max_frames(loaded, first: dict, ratio: int, total_bytes: int) -> int:
    from vxl.engine.planner import plan_memory
    model = loaded.model
    clip = model.model.vision_tower.clip_config if model.has_vision else None
    dtype_bytes = next(model.parameters()).element_size()
    return plan_memory(loaded.config, clip, total_bytes, ratio, dtype_bytes,
                       attention_backend=first["attention_backend"]).max_frames
