"""Write evaluation results: markdown tables (accuracy vs frames, vs compression ratio, the needle grid),
the same numbers as JSON, and the needle-in-a-haystack heatmap PNG (matplotlib, headless)."""
from __future__ import annotations

import json
import os

import numpy as np


def _pct(cell: dict) -> str:
    return f"{100 * cell['accuracy']:.1f} ({cell['n']})"


def table(by_task: dict, column_name: str) -> list[str]:
    """Markdown rows: one per task, one column per key of the inner dicts; cells 'accuracy% (n)'."""
    keys = list(next(iter(by_task.values())))
    lines = [f"| task \\ {column_name} | " + " | ".join(str(k) for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for task, cells in by_task.items():
        lines.append(f"| {task} | " + " | ".join(_pct(cells[k]) for k in keys) + " |")
    return lines


def niah_table(grid: np.ndarray, depths: list[float], frames: list[int]) -> list[str]:
    lines = ["| depth \\ frames | " + " | ".join(str(f) for f in frames) + " |", "|---|" + "---|" * len(frames)]
    for i, d in enumerate(depths):
        lines.append(f"| {int(round(100 * d))}% | " + " | ".join(f"{100 * grid[i, j]:.0f}" for j in range(len(frames))) + " |")
    return lines


def heatmap(grid: np.ndarray, depths: list[float], frames: list[int], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.2 * len(frames) + 2, 0.45 * len(depths) + 1.5))
    im = ax.imshow(100 * grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(frames)), [str(f) for f in frames])
    ax.set_yticks(range(len(depths)), [f"{int(round(100 * d))}%" for d in depths])
    ax.set_xlabel("frames")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(frames)):
            ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results: dict, prefix: str, header: list[str]) -> list[str]:
    """results: {"vs_frames": {...}, "vs_ratio": {frames: {...}}, "niah": {...}, "config": {...}}.
    Writes PREFIX_accuracy.md, PREFIX_accuracy.json and PREFIX_niah.png; returns the paths."""
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    cfg = results["config"]
    lines = header + ["", f"## Accuracy vs frames (compression ratio {cfg['ratio']})", ""]
    lines += table(results["vs_frames"], "frames")
    for frames, by_task in results["vs_ratio"].items():
        lines += ["", f"## Accuracy vs compression ratio ({frames} frames, same videos for every ratio)", ""]
        lines += table(by_task, "ratio")
    niah = results["niah"]
    grid = np.array(niah["grid"])
    lines += ["", f"## Needle in a haystack (retrieval, ratio {cfg['ratio']}, {cfg['niah_videos']} videos x "
              f"2 questions per cell, accuracy %)", ""]
    lines += niah_table(grid, niah["depths"], niah["frames"])
    lines += ["", f"Mean over the grid: {100 * grid.mean():.1f}%. Chance is 25% everywhere.", ""]
    paths = [prefix + "_accuracy.md", prefix + "_accuracy.json", prefix + "_niah.png"]
    with open(paths[0], "w") as f:
        f.write("\n".join(lines))
    with open(paths[1], "w") as f:
        json.dump(results, f, indent=1, default=str)
    heatmap(grid, niah["depths"], niah["frames"], paths[2],
            f"demo model: needle retrieval accuracy (ratio {cfg['ratio']})")
    return paths
