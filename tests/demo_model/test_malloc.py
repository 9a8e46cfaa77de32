"""demo_model.malloc: training keeps freed memory in the process (glibc), which changes where tensors lie and
not what is computed: a run gives the same weights bit for bit with it and without it."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

import pytest
import torch

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# in a fresh process: train a few steps of videos long enough for tensors of several MB, then report whether
# keep_freed_memory applied and how many bytes a fresh 64 MB tensor added to mmapped memory (glibc's mallinfo2)
SCRIPT = r"""
import ctypes, ctypes.util, json, sys
import torch
from demo_model.loop import TrainConfig, train
from demo_model.malloc import keep_freed_memory
from tests.demo_model.test_loop import ARCH
cfg = TrainConfig.from_dict({"out_dir": sys.argv[1], "seed": 5, "steps": 3, "min_frames": 90, "max_frames": 120,
                             "min_batch": 3, "max_batch": 3, "hold_steps": 0, "cover": 0.0, "cover_steps": 0,
                             "ramp_steps": 0, "log_every": 1, "warmup_steps": 1, "layerwise": True, "arch": ARCH,
                             "pretrain": {"steps": 2, "batch_size": 4, "text_steps": 2, "text_batch_size": 2}})
train(cfg)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblkhd
big = torch.ones(16 << 20)
print(json.dumps({"applied": keep_freed_memory(), "mmapped": libc.mallinfo2().hblkhd - before}))
"""


def run(tmp_path, name: str, keep: bool) -> tuple[dict, dict]:
    env = {**os.environ, "VXL_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = tmp_path / name
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, cwd=root, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(out / "state.pt", weights_only=True)["model"]


@glibc
def test_training_keeps_freed_memory_and_the_same_weights(tmp_path):
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    kept, weights_kept = run(tmp_path, "kept", True)
    plain, weights_plain = run(tmp_path, "plain", False)
    assert kept == {"applied": True, "mmapped": 0}           # the 64 MB tensor came from the heap
    assert plain["applied"] is False and plain["mmapped"] >= 64 << 20
    assert weights_kept.keys() == weights_plain.keys()
    assert all(torch.equal(weights_kept[k], weights_plain[k]) for k in weights_kept)
