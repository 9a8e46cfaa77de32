"""On a GPU: a step (scheduling, the vision stage and its side stream, preparation, the host-to-device copy,
the forward, the logits and the sampling pass) waits for the device once: the sampling pass's one copy of
its results to the host (`vxl.engine.sampler.to_host`). Every `EngineCore.step` of a generate call (video
windows, prefill and decode steps) runs under `torch.cuda.set_sync_debug_mode("error")`, which raises at
any synchronising call, the mode lifted only inside `to_host`; a raise would fail the step's requests, so
every answer must come back whole and equal to the same call without the mode. The triton backend only: the
torch backend is the readable reference, whose boolean row selection (`nonzero`) reads the device. Runs
where CUDA is present (`bench/gpu_check.sh` selects it by the "cuda" in its name)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vxl import LLM, SamplingParams
from vxl.engine import sampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def requests():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (23, 40, 56, 3), dtype=np.uint8)
    return [{"prompt": "What is happening?", "video": video, "num_frames": 23, "compression_ratio": 4},
            {"prompt": "Describe the scene in detail.", "video": video[:11], "num_frames": 11, "compression_ratio": 3},
            {"prompt": "Hello there, how are you?"}]


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_step_path_never_syncs(cuda_graphs, monkeypatch):
    llm = LLM("tiny", device="cuda", dtype="bfloat16", attention_backend="triton", cuda_graphs=cuda_graphs)
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    want = llm.generate(requests(), params, use_tqdm=False)
    step, to_host, calls, reads = llm.core.step, sampler.to_host, [], []

    def strict_step():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            calls.append(1)

    def designed_read(t):
        torch.cuda.set_sync_debug_mode("default")
        try:
            reads.append(1)
            return to_host(t)
        finally:
            torch.cuda.set_sync_debug_mode("error")
    monkeypatch.setattr(llm.core, "step", strict_step)
    monkeypatch.setattr(sampler, "to_host", designed_read)
    got = llm.generate(requests(), params, use_tqdm=False)
    assert [o.error for o in got] == [None] * 3
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert len(calls) >= 12 and len(reads) <= len(calls)
