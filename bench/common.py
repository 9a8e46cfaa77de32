"""Shared benchmark helpers: the hardware / versions / commit header every result carries, JSON writing,
peak process memory (VmHWM), generated uint8 videos and matplotlib figures (Agg canvas, no pyplot)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import threading

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")


def git_commit() -> str:
    """Short HEAD commit, with "+dirty" when tracked files differ from it; "unknown" outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict:
    """Hardware, versions and commit: the header of every result file."""
    import transformers
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {"timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "transformers": transformers.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cpu": cpu_name(), "num_cpus": len(os.sched_getaffinity(0)),
            "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "torch_num_threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0], "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda,
                    gpu_capability=f"{props.major}.{props.minor}")
    return info


def header_line(info: dict) -> str:
    """One line for plots and logs: hardware | versions | commit."""
    hw = (f"{info['gpu']} ({info['gpu_memory_bytes'] / 2**30:.0f} GiB)" if info.get("gpu")
          else f"{info['cpu']} x{info['num_cpus']} CPUs, {info['ram_bytes'] / 2**30:.0f} GiB RAM")
    return (f"{hw} | torch {info['torch']}, triton {info['triton']}, transformers {info['transformers']}, "
            f"python {info['python']} | vxl@{info['commit']}")


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    return path


def write_labelled_run(path: str, label: str, result: dict, description: str, comparisons: dict) -> str:
    """Store `result` under runs[label] of the JSON at `path`, keeping its other labels, with the
    benchmark's description and, per key of `comparisons`, that function of all the runs (e.g. after/before)."""
    doc = {}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
    doc.setdefault("runs", {})[label] = result
    doc["description"] = description
    for key, compare in comparisons.items():
        doc[key] = compare(doc["runs"])
    return write_json(path, doc)


def read_status_bytes(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakRSS:
    """Peak resident memory of this process inside a `with` block.

    Resets the kernel's high-water mark (VmHWM, via /proc/self/clear_refs) on entry and reads it on exit,
    so the peak is exact; where the reset is not allowed, a thread samples VmRSS every `interval` s.
    Attributes after the block: `baseline` (VmRSS on entry), `peak`, `growth` = peak - baseline, `method`.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.baseline = self.peak = self.growth = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, read_status_bytes("VmRSS"))

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = read_status_bytes("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled VmRSS"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = read_status_bytes("VmHWM")
        self.peak = max(self.peak, read_status_bytes("VmRSS"))
        self.growth = self.peak - self.baseline


def generate_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic video as uint8 [T, H, W, 3]: a slowly drifting colour gradient with a moving square
    (cheap to make, different in every frame; no decoding involved)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for start in range(0, num_frames, 32):      # float32 temporaries of 32 frames at most
        tt = t[start:start + 32]
        frames[start:start + 32] = 127 + 100 * np.sin(0.05 * tt + 3 * x + 2 * y + phase)
    side = max(1, min(height, width) // 5)
    for i in range(num_frames):
        top, left = (i * 3) % max(1, height - side), (i * 5) % max(1, width - side)
        frames[i, top:top + side, left:left + side] = (230, (40 * i) % 256, 30)
    return frames


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.8):
    """(Figure, axes list) on an Agg canvas, without pyplot's global figure registry."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig, path: str, title: str, header: str) -> str:
    fig.suptitle(f"{title}\n{header}", fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
