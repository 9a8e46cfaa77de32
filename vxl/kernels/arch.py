"""The GPU architecture a launcher picks its tiles for: compute capability x 10 (80, 90), None for the interpreter."""
from __future__ import annotations

import torch


def device_arch(device: torch.device) -> int | None:
    """Compute capability of a CUDA device as major * 10 + minor (A100: 80, H100: 90); None off CUDA, where the
    kernels run through Triton's interpreter. torch caches the device properties, so this is a host lookup."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor
