"""Scaling laws of an e2e sweep: per compression ratio, least-squares fit of time = a*N + b*N^2 over the
frame counts N (the N^2 term is every window attending to all VSTs kept so far), the attention share
b*N^2 / time, b against the uncompressed baseline (r = 1), and the growth of peak memory with N."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

# "llm": LLM prefill = visual windows + text; "prefill" is that sum in results recorded before the split
LLM_PREFILL_STAGES = ("windows", "text_prefill", "prefill")
TIMES = {"wall": lambda p: p["wall_seconds"],
         "llm": lambda p: sum(p["seconds"].get(stage, 0.0) for stage in LLM_PREFILL_STAGES)}


def by_ratio(points: list[dict]) -> dict[int, list[dict]]:
    """Successful points grouped by ratio, each group sorted by frames."""
    groups = defaultdict(list)
    for p in points:
        if "error" not in p:
            groups[p["compression_ratio"]].append(p)
    return {r: sorted(g, key=lambda p: p["num_frames"]) for r, g in sorted(groups.items())}


def fit_quadratic(frames, seconds) -> dict:
    """time = a*N + b*N^2 (no intercept), least squares; r2 of the fit; attention share at the largest N."""
    n = np.asarray(frames, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    design = np.stack([n, n * n], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, t, rcond=None)
    pred = design @ np.array([a, b])
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float(((t - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    n_max = float(n.max())
    total = a * n_max + b * n_max * n_max
    # above 100% when the fitted linear term is slightly negative (time is all N^2); None: no N^2 term seen
    share = float(b * n_max * n_max / total) if b >= 0 and total > 0 else None
    return {"a": float(a), "b": float(b), "r2": r2, "n_max": int(n_max), "attention_share_at_n_max": share}


def scaling_fits(points: list[dict]) -> dict:
    """Per ratio (JSON keys are strings): fits of wall and LLM-prefill time, b / b(r=1) measured, 1/r,
    and the attention-FLOP ratio of the FLOP model at the largest common N."""
    groups = by_ratio(points)
    fits = {}
    for r, group in groups.items():
        if len(group) < 2:
            continue
        frames = [p["num_frames"] for p in group]
        fits[r] = {kind: fit_quadratic(frames, [f(p) for p in group]) for kind, f in TIMES.items()}
        fits[r]["frames"] = frames
    base = fits.get(1)
    for r, fit in fits.items():
        fit["inverse_ratio"] = 1.0 / r
        for kind in TIMES:
            fit[kind]["b_over_baseline"] = (fit[kind]["b"] / base[kind]["b"]
                                            if base and base[kind]["b"] > 0 else None)
        fit["attention_flops_over_baseline"] = _flop_ratio(groups, r)
    return {str(r): f for r, f in fits.items()}


def _flop_ratio(groups: dict, r: int) -> float | None:
    if 1 not in groups:
        return None
    base = {p["num_frames"]: p["flops"]["llm_attention"] for p in groups[1]}
    common = [p for p in groups[r] if p["num_frames"] in base]
    if not common:
        return None
    p = common[-1]
    return p["flops"]["llm_attention"] / base[p["num_frames"]]


def memory_growth(points: list[dict]) -> dict:
    """Per ratio: peak memory at the smallest and largest N and its growth, with and without the kept KV
    pool and the input frames (what the compression is supposed to keep flat)."""
    out = {}
    for r, group in by_ratio(points).items():
        lo, hi = group[0], group[-1]
        out[str(r)] = {
            "frames": [lo["num_frames"], hi["num_frames"]], "kind": lo["peak_memory_kind"],
            "peak_bytes": [lo["peak_memory_bytes"], hi["peak_memory_bytes"]],
            "growth": hi["peak_memory_bytes"] / lo["peak_memory_bytes"] - 1.0,
            "peak_excl_kv_input_bytes": [lo["peak_excl_kv_input_bytes"], hi["peak_excl_kv_input_bytes"]],
            "growth_excl_kv_input": hi["peak_excl_kv_input_bytes"] / lo["peak_excl_kv_input_bytes"] - 1.0,
            "kept_kv_bytes": [lo["kept_kv_bytes"], hi["kept_kv_bytes"]]}
    return out


def format_summary(fits: dict, growth: dict) -> list[str]:
    lines = ["scaling fit: time = a*N + b*N^2 per ratio (N = frames); attention share = b*N^2/time at N max",
             (f"{'ratio':>5} {'time':>5} {'a (s/frame)':>12} {'b (s/frame^2)':>14} {'r2':>6} {'attn share':>10} "
              f"{'b/b(r=1)':>9} {'1/r':>6} {'attn FLOPs/(r=1)':>16}")]
    for r, fit in fits.items():
        for kind in TIMES:
            f = fit[kind]
            rel = f"{f['b_over_baseline']:.3f}" if f["b_over_baseline"] is not None else "-"
            share = f"{f['attention_share_at_n_max']:.1%}" if f["attention_share_at_n_max"] is not None else "-"
            flop = fit["attention_flops_over_baseline"]
            lines.append(f"{r:>5} {kind:>5} {f['a']:12.3e} {f['b']:14.3e} {f['r2'] or 0:6.3f} {share:>10} "
                         f"{rel:>9} {fit['inverse_ratio']:6.3f} {flop if flop is None else round(flop, 4)!s:>16}")
    lines.append("peak memory growth from the smallest to the largest N (excl.: minus the KV pool and the input)")
    for r, g in growth.items():
        mib = [b / 2**20 for b in g["peak_bytes"]]
        exc = [b / 2**20 for b in g["peak_excl_kv_input_bytes"]]
        lines.append(f"  ratio {r:>2}: {g['kind']} {mib[0]:.1f} -> {mib[1]:.1f} MiB ({g['growth']:+.1%}); "
                     f"excl. {exc[0]:.1f} -> {exc[1]:.1f} MiB ({g['growth_excl_kv_input']:+.1%}); "
                     f"frames {g['frames'][0]} -> {g['frames'][1]}")
    return lines
