"""Test setup: Triton kernels run through the interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

import sys

sys.path.insert(0, os.path.dirname(__file__))   # tests/helpers.py
