"""Frame prefetcher: at most `max_chunks_ahead` chunks queued, all on the host; only the chunk being
encoded reaches the device. The "meta" device stands in for an accelerator on a CPU-only machine."""
from __future__ import annotations

import time

import pytest
import torch

from vxl.engine.preprocess import ImageProcessorConfig, preprocess_frames
from vxl.engine.visual import FramePrefetcher

PROCESSOR = ImageProcessorConfig(shortest_edge=24, crop_size=24)


class CountingSource:
    """`num_chunks` chunks of random uint8 frames [n, 20, 30, 3]; counts the chunks the thread has taken."""

    def __init__(self, num_chunks: int):
        self.num_chunks, self.num_made = num_chunks, 0

    def chunk(self, i: int, n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 20, 30, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))

    def iter_chunks(self, n: int):
        for i in range(self.num_chunks):
            self.num_made += 1
            yield self.chunk(i, n)


def wait_until_idle(fetcher: FramePrefetcher, timeout: float = 20.0) -> list:
    """Wait until the thread can go no further (queue full, or it has finished); return what is queued."""
    deadline = time.monotonic() + timeout
    while not fetcher.queue.full() and fetcher.thread.is_alive():
        assert time.monotonic() < deadline, "the prefetch thread made no progress"
        time.sleep(0.01)
    with fetcher.queue.mutex:
        return list(fetcher.queue.queue)


@pytest.mark.parametrize("device", ["meta", "cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("ahead", [1, 2])
def test_prefetch_queue_is_bounded_and_on_the_host(device, ahead):
    num_chunks, frames_per_chunk = 6, 3
    source = CountingSource(num_chunks)
    fetcher = FramePrefetcher(source, frames_per_chunk, PROCESSOR, torch.device(device), max_chunks_ahead=ahead)
    try:
        for consumed in range(num_chunks):
            held = [x for x in wait_until_idle(fetcher) if isinstance(x, torch.Tensor)]
            assert len(held) == min(ahead, num_chunks - consumed)         # it does read ahead, that far only
            # decoded ahead: the queued chunks plus at most the one waiting for a free slot
            assert consumed + len(held) <= source.num_made <= min(num_chunks, consumed + ahead + 1)
            for x in held:
                assert x.device.type == "cpu" and x.is_pinned() == (device == "cuda")
                assert x.dtype == (torch.float32 if device == "cpu" else torch.uint8)   # cpu: preprocessed there
            chunk = fetcher.get()
            assert chunk.device.type == "cpu"
            pixels = fetcher.to_device(chunk)
            assert pixels.device.type == device and pixels.shape == (frames_per_chunk, 3, 24, 24)
            if device == "cpu":
                expected = preprocess_frames(source.chunk(consumed, frames_per_chunk), PROCESSOR)
                torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
        with pytest.raises(ValueError, match="ended"):
            fetcher.get()
    finally:
        fetcher.close()
    assert not fetcher.thread.is_alive()
