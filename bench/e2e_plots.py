"""PNG plots of an e2e sweep: memory vs frames and time vs frames, one line per compression ratio
(r = 1 is the uncompressed baseline), the fitted a*N + b*N^2 drawn dotted."""
from __future__ import annotations

import numpy as np

from bench.common import new_figure, save_figure
from bench.scaling import by_ratio


def _label(r: int) -> str:
    return "r=1 (uncompressed)" if r == 1 else f"r={r}"


def _frames_axis(ax, frames: list[int], ylabel: str, log_y: bool = False) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(frames, [str(n) for n in frames])
    ax.minorticks_off()
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("frames")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_memory(points: list[dict], path: str, header: str) -> str:
    fig, (ax_peak, ax_kv) = new_figure(ncols=2)
    kind = "peak memory"
    for r, group in by_ratio(points).items():
        n = [p["num_frames"] for p in group]
        kind = group[0]["peak_memory_kind"]
        line, = ax_peak.plot(n, [p["peak_memory_bytes"] / 2**20 for p in group], "o-", label=_label(r))
        ax_peak.plot(n, [p["peak_excl_kv_input_bytes"] / 2**20 for p in group], "s--", color=line.get_color(),
                     markersize=4)
        ax_kv.plot(n, [p["kept_kv_bytes"] / 2**20 for p in group], "o-", label=_label(r))
    frames = sorted({p["num_frames"] for p in points if "error" not in p})
    _frames_axis(ax_peak, frames, f"peak {kind} (MiB)")
    _frames_axis(ax_kv, frames, "kept KV (MiB)", log_y=True)
    ax_peak.set_title("peak memory during the request (dashed: minus KV pool and input)", fontsize=9)
    ax_kv.set_title("kept KV after prefill (VSTs + text)", fontsize=9)
    return save_figure(fig, path, "vxl end-to-end: memory vs frames", header)


def plot_time(points: list[dict], fits: dict, path: str, header: str) -> str:
    fig, (ax_t, ax_fps) = new_figure(ncols=2)
    for r, group in by_ratio(points).items():
        n = [p["num_frames"] for p in group]
        line, = ax_t.plot(n, [p["wall_seconds"] for p in group], "o-", label=_label(r))
        fit = fits.get(str(r))
        if fit is not None:
            xs = np.geomspace(min(n), max(n), 50)
            ax_t.plot(xs, fit["wall"]["a"] * xs + fit["wall"]["b"] * xs * xs, ":", color=line.get_color())
        ax_fps.plot(n, [p["frames_per_s"] for p in group], "o-", label=_label(r))
    frames = sorted({p["num_frames"] for p in points if "error" not in p})
    _frames_axis(ax_t, frames, "seconds per request (wall)", log_y=True)
    _frames_axis(ax_fps, frames, "frames / s")
    ax_t.set_title("time (dotted: fit a*N + b*N^2)", fontsize=9)
    ax_fps.set_title("throughput", fontsize=9)
    return save_figure(fig, path, "vxl end-to-end: time vs frames", header)
