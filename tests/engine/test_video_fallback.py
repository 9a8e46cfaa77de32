"""Video files decord cannot read fall back to PyAV: the sizes decord 0.6 fails on (2x2, 16x16, 24x24, 48x32)
give PyAV's own frames at the same sampled indices, a file decord cannot open or fails on mid-stream is
read with PyAV, videos decord reads stay on decord, and a file neither reads fails alone, naming the file.
Test videos are written here with PyAV (lossless x264, frame i mostly grey level 10 + 5 i).
"""
import av
import decord
import numpy as np
import pytest
import torch

from helpers import write_mp4
from vxl import LLM, SamplingParams
from vxl.engine.video import open_video, sample_indices, snap_to_keyframes

NUM_FRAMES, GOP = 20, 5
SMALL_SIZES = [(2, 2), (16, 16), (24, 24), (48, 32)]          # (width, height) decord fails to convert


def write_video(path, width: int, height: int) -> str:
    frames = np.empty((NUM_FRAMES, height, width, 3), np.uint8)
    for i, img in enumerate(frames):
        img[...] = 10 + 5 * i
        img[: height // 2, : width // 2] = (250 - 5 * i, 90, 30)               # some spatial content
    return write_mp4(path, frames, options={"g": str(GOP), "preset": "ultrafast"})


def write_audio_only(path) -> str:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            samples = np.random.default_rng(i).uniform(-0.5, 0.5, (1, 1024)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("fallback")
    paths = {size: write_video(d / f"v{size[0]}x{size[1]}.mp4", *size) for size in SMALL_SIZES + [(64, 64)]}
    paths["junk"] = str(d / "junk.mp4")
    with open(paths["junk"], "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths["audio"] = write_audio_only(d / "speech.m4a")
    return paths


def pyav_frames(path) -> torch.Tensor:
    """Every frame, decoded by PyAV directly: [T, H, W, 3] uint8 RGB."""
    with av.open(path) as container:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))


def read_all(source, chunk_frames: int) -> torch.Tensor:
    return torch.cat(list(source.iter_chunks(chunk_frames)))


@pytest.mark.parametrize("size", SMALL_SIZES)
def test_decord_fails_on_the_small_sizes(videos, size):
    reader = decord.VideoReader(videos[size], ctx=decord.cpu(0))        # opens, then cannot convert frames
    with pytest.raises(Exception, match="size must exactly match"):
        reader.get_batch([0])


@pytest.mark.parametrize("size", SMALL_SIZES)
@pytest.mark.parametrize("num_frames,chunk", [(7, 3), (20, 6), (64, 64)])
def test_small_videos_decode_with_pyav(videos, size, num_frames, chunk):
    source = open_video(videos[size], num_frames)
    assert source.decoder == "pyav" and source.total_frames == NUM_FRAMES
    assert source.frame_indices == np.linspace(0, NUM_FRAMES - 1, min(num_frames, NUM_FRAMES), dtype=int).tolist()
    frames = read_all(source, chunk)
    assert frames.dtype == torch.uint8 and frames.shape == (source.num_frames, size[1], size[0], 3)
    assert torch.equal(frames, pyav_frames(videos[size])[source.frame_indices])
    assert torch.equal(read_all(source, 4), frames)                          # re-iterable: the reader restarts
    grey = frames[:, -1, -1].double().mean(-1)                              # the content tells the index
    assert [round((g - 10) / 5) for g in grey.tolist()] == source.frame_indices


def test_pyav_with_workers_and_keyframe_snap(videos):
    path = videos[(48, 32)]
    assert torch.equal(read_all(open_video(path, 9, num_workers=3), 2), read_all(open_video(path, 9), 4))
    source = open_video(path, 6, keyframe_snap=True)
    assert source.frame_indices == snap_to_keyframes(sample_indices(NUM_FRAMES, 6), [0, 5, 10, 15])
    assert torch.equal(read_all(source, 4), pyav_frames(path)[source.frame_indices])


def test_videos_decord_reads_stay_on_decord(videos):
    path = videos[(64, 64)]
    source = open_video(path, 7)
    assert source.decoder == "decord"
    want = decord.VideoReader(path, ctx=decord.cpu(0)).get_batch(source.frame_indices).asnumpy()
    assert torch.equal(read_all(source, 3), torch.from_numpy(want))
    assert open_video(np.zeros((3, 4, 4, 3), np.uint8)).decoder is None


def test_file_decord_cannot_open_uses_pyav(videos, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("[10:00:00] src/video/video_reader.cc:83: ERROR opening: unsupported container")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    path = videos[(64, 64)]
    source = open_video(path, 7)
    assert source.decoder == "pyav" and source.frame_indices == sample_indices(NUM_FRAMES, 7)
    assert torch.equal(read_all(source, 3), pyav_frames(path)[source.frame_indices])


@pytest.mark.parametrize("num_workers", [1, 2])
def test_decord_failing_mid_stream_switches_to_pyav(videos, monkeypatch, num_workers):
    real = decord.VideoReader

    class FailsAfterFrame10:                    # decodes frames <= 10, then fails like a corrupt packet
        def __init__(self, *args, **kwargs):
            self.reader = real(*args, **kwargs)

        def __len__(self):
            return len(self.reader)

        def get_batch(self, indices):
            if max(indices) > 10:
                raise RuntimeError("ERROR cannot decode packet")
            return self.reader.get_batch(indices)

    monkeypatch.setattr(decord, "VideoReader", FailsAfterFrame10)
    path = videos[(64, 64)]
    source = open_video(path, 7, num_workers=num_workers)                     # indices 0 3 6 9 12 15 19
    assert source.decoder == "decord"
    chunks = list(source.iter_chunks(4))
    assert source.decoder == "pyav"
    assert torch.equal(chunks[0], torch.from_numpy(real(path).get_batch([0, 3, 6, 9]).asnumpy()))
    assert torch.equal(chunks[1], pyav_frames(path)[[12, 15, 19]])


def test_unreadable_files_name_the_file(videos):
    with pytest.raises(ValueError, match="junk.mp4 is not a video file"):      # by its first bytes
        open_video(videos["junk"], 4)
    with pytest.raises(ValueError, match="cannot read .*speech.m4a.*PyAV"):    # a container with no video
        open_video(videos["audio"], 4)


def test_requests_on_small_videos_succeed(videos):
    llm = LLM("tiny", device="cpu")
    reqs = [{"prompt": "Q", "video": videos[size], "num_frames": 7} for size in SMALL_SIZES]
    reqs += [{"prompt": "Q", "video": videos[(64, 64)], "num_frames": 7},
             {"prompt": "Q", "video": videos["junk"]}, {"prompt": "Q", "video": videos["audio"]}]
    outs = llm.generate(reqs, SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    for out in outs[:5]:
        assert out.error is None and out.metrics["num_frames"] == 7 and len(out.token_ids) == 3
    for out, name, words in zip(outs[5:], ("junk.mp4", "speech.m4a"), ("not a video file", "cannot read")):
        assert out.finish_reason == "error" and name in out.error and words in out.error
    # the same frames as an array give the same answer: the fallback's frames are what the model saw
    frames = pyav_frames(videos[(48, 32)])[sample_indices(NUM_FRAMES, 7)]
    again = llm.generate([{"prompt": "Q", "video": frames}], SamplingParams(max_tokens=3, ignore_eos=True),
                         use_tqdm=False)[0]
    assert again.token_ids == outs[3].token_ids
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_metrics_name_the_decoder(videos):
    llm = LLM("tiny", device="cpu")
    reqs = [{"prompt": "Q", "video": videos[(16, 16)], "num_frames": 4},
            {"prompt": "Q", "video": videos[(64, 64)], "num_frames": 4},
            {"prompt": "Q", "video": np.zeros((4, 8, 8, 3), np.uint8)}]
    outs = llm.generate(reqs, SamplingParams(max_tokens=2), use_tqdm=False)
    assert [o.metrics["video_decoder"] for o in outs] == ["pyav", "decord", None]
