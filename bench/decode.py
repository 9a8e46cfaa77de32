"""Sampled-frame video decoding benchmark (`python -m bench.decode`): frames/s of vxl's decoder
(`vxl.engine.video.open_video`: decord, only the sampled frames, chunk by chunk as the engine reads them)
with 1, 2, 4 parallel readers, at exact uniform indices and snapped to keyframes, against the released
code's way (one decord VideoReader, `get_batch` of every sampled index at once). Runs on a given video or
on a generated H.264 one (720p by default; PyAV). Writes JSON to bench/results/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from bench.common import RESULTS_DIR, env_info, header_line, log, write_json
from bench.e2e import parse_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    p.add_argument("--video", default=None, help="a video file (default: a generated H.264 video)")
    p.add_argument("--size", type=parse_size, default=(720, 1280), help="generated video HxW")
    p.add_argument("--video-frames", type=int, default=600, help="generated video length in frames")
    p.add_argument("--fps", type=int, default=30, help="generated video frame rate")
    p.add_argument("--gop", type=int, default=30, help="generated video keyframe interval (frames)")
    p.add_argument("--num-frames", type=int, default=64, help="frames sampled uniformly from the video")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="parallel decord readers")
    p.add_argument("--chunk-frames", type=int, default=10,
                   help="frames per get_batch (the engine reads one window's frames: 10 for Video-XL)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per point (the median is reported)")
    p.add_argument("--out", default=RESULTS_DIR, help="output directory")
    p.add_argument("--name", default=None, help="file stem (default decode_<video name>)")
    return p


def check_args(args) -> None:
    if min(args.workers) < 1 or args.num_frames < 1 or args.chunk_frames < 1 or args.repeats < 1:
        raise SystemExit("error: --workers, --num-frames, --chunk-frames and --repeats must be >= 1")
    if args.video is None and (args.video_frames < 1 or args.fps < 1 or args.gop < 1):
        raise SystemExit("error: --video-frames, --fps and --gop must be >= 1")
    if args.video is not None and not os.path.isfile(args.video):
        raise SystemExit(f"error: --video {args.video!r} is not a file")


def synthetic_frame(t: int, texture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frame t [H, W, 3] uint8: a drifting textured background (real bitrate, not a flat colour) and a
    moving square."""
    frame = np.roll(texture, shift=(2 * t, 3 * t), axis=(0, 1)).copy()
    side = max(2, min(height, width) // 6)
    top, left = (t * 5) % max(1, height - side), (t * 7) % max(1, width - side)
    frame[top:top + side, left:left + side] = (230, (40 * t) % 256, 30)
    return frame


def write_video(path: str, num_frames: int, height: int, width: int, fps: int, gop: int) -> str:
    """An H.264 .mp4 (yuv420p, x264 veryfast) with a keyframe every `gop` frames and no scene-cut ones."""
    import av
    rng = np.random.default_rng(0)
    coarse = rng.integers(40, 215, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]      # (H, W, 3)
    texture = (texture + rng.integers(0, 24, texture.shape, dtype=np.uint8)).astype(np.uint8)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(t, texture, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_info(path: str) -> dict:
    import decord
    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    height, width = reader[0].shape[:2]
    return {"path": path, "bytes": os.path.getsize(path), "total_frames": len(reader), "height": height,
            "width": width, "fps": float(reader.get_avg_fps()), "num_keyframes": len(reader.get_key_indices())}


def time_released(path: str, num_frames: int) -> tuple[float, list[int]]:
    """The released code: open one VideoReader, uniform indices, one get_batch of all of them."""
    import decord
    t0 = time.perf_counter()
    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    total = len(reader)
    indices = np.linspace(0, total - 1, min(num_frames, total), dtype=int).tolist()
    frames = reader.get_batch(indices).asnumpy()                                   # (n, H, W, 3)
    assert frames.shape[0] == len(indices)
    return time.perf_counter() - t0, indices


def time_vxl(path: str, num_frames: int, workers: int, snap: bool, chunk_frames: int) -> tuple[float, list[int]]:
    """vxl's reader as the engine drives it: open (keyframe index when snapping), then every chunk in order."""
    from vxl.engine.video import open_video
    t0 = time.perf_counter()
    with open_video(path, num_frames, num_workers=workers, keyframe_snap=snap) as source:
        decoded = sum(chunk.shape[0] for chunk in source.iter_chunks(chunk_frames))
        indices = source.frame_indices
    assert decoded == len(indices)
    return time.perf_counter() - t0, indices


def measure(run, repeats: int) -> dict:
    seconds, indices = [], None
    for _ in range(repeats):
        s, indices = run()
        seconds.append(s)
    median = statistics.median(seconds)
    return {"num_frames": len(indices), "seconds": median, "seconds_all": seconds,
            "frames_per_s": len(indices) / median, "frame_indices": indices}


def run_points(args, path: str) -> list[dict]:
    """The released baseline, then every (readers, snap) point; speedups against the baseline."""
    released = {"method": "released", "readers": 1, "keyframe_snap": False,
                **measure(lambda: time_released(path, args.num_frames), args.repeats)}
    points = [released]
    log(f"{'method':>9} {'readers':>7} {'snap':>5} {'frames':>6} {'median s':>9} {'frames/s':>9} {'x released':>10}")
    for snap in (False, True):
        for workers in args.workers:
            run = lambda w=workers, s=snap: time_vxl(path, args.num_frames, w, s, args.chunk_frames)  # noqa: E731
            points.append({"method": "vxl", "readers": workers, "keyframe_snap": snap, **measure(run, args.repeats)})
    exact = np.asarray(released["frame_indices"])
    for p in points:
        p["speedup_vs_released"] = p["frames_per_s"] / released["frames_per_s"]
        got = np.asarray(p["frame_indices"])
        p["max_index_shift"] = int(np.abs(got - exact).max()) if got.shape == exact.shape else None
        log(f"{p['method']:>9} {p['readers']:>7} {str(p['keyframe_snap']):>5} {p['num_frames']:>6} "
            f"{p['seconds']:9.3f} {p['frames_per_s']:9.1f} {p['speedup_vs_released']:10.2f}")
    return points


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    info = env_info()
    header = header_line(info)
    log(header)
    with tempfile.TemporaryDirectory(prefix="vxl-decode-") as tmp:
        path, generated = args.video, args.video is None
        if generated:
            height, width = args.size
            t0 = time.perf_counter()
            path = write_video(os.path.join(tmp, f"generated_{height}p.mp4"), args.video_frames, height, width,
                               args.fps, args.gop)
            log(f"generated {path}: {args.video_frames} frames {width}x{height}, keyframe every {args.gop} "
                f"({time.perf_counter() - t0:.1f} s)")
        video = {**video_info(path), "generated": generated}
        if generated:
            video.update(path=None, gop=args.gop, encoder="libx264 veryfast yuv420p")
        points = run_points(args, path)
    notes = [f"{info['num_cpus']} CPUs: readers beyond that share cores; decord decodes each sampled frame's "
             "group of pictures from its keyframe, so snapped samples skip most of that work."]
    stem = args.name or f"decode_{os.path.splitext(os.path.basename(args.video))[0] if args.video else 'generated'}"
    out = {"benchmark": "decode", "env": info, "header": header, "args": vars(args), "video": video,
           "points": points, "load_average_1m_end": os.getloadavg()[0], "notes": notes}
    print("wrote " + write_json(os.path.join(args.out, f"{stem}.json"), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
