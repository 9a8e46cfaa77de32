"""`vxl stream VIDEO`: replay a video file as a live feed (at its real speed, or as fast as the engine goes)
into a stream on a local engine and print the answer to a standing question every few seconds of video."""
from __future__ import annotations

import argparse
import sys
import time

from vxl import defaults
from vxl.flags import add_engine_flags, engine_kwargs


def add_stream_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("stream", help="replay a video as a live feed and ask a standing question as it plays")
    p.add_argument("video", help="a video file")
    p.add_argument("--prompt", required=True, help="the standing question")
    p.add_argument("--model", default=defaults.MODEL, help="a built-in model name or a checkpoint directory")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second of video fed to the model")
    p.add_argument("--every", type=float, default=10.0, help="ask every this many seconds of video")
    p.add_argument("--realtime", action="store_true", help="feed at the video's real speed (default: as fast as possible)")
    p.add_argument("--compression-ratio", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=defaults.MAX_TOKENS)
    add_engine_flags(p.add_argument_group("engine"))
    return p


def sampled_frames(path: str, fps: float):
    """(time in seconds, uint8 [H, W, 3]) of the video's frames nearest each 1/fps step, in order."""
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        next_t = 0.0
        for frame in container.decode(stream):
            t = float(frame.time or 0.0)
            if t + 1e-9 >= next_t:
                yield t, frame.to_ndarray(format="rgb24")
                next_t += 1.0 / fps


def replay(args, out=sys.stdout) -> int:
    from vxl import LLM, SamplingParams
    if args.fps <= 0 or args.every <= 0:
        raise ValueError("--fps and --every must be > 0")
    llm = LLM(args.model, **engine_kwargs(args))
    stream = llm.open_stream(compression_ratio=args.compression_ratio)
    params = SamplingParams(max_tokens=args.max_tokens)
    start, next_ask, t = time.monotonic(), args.every, 0.0
    try:
        for t, frame in sampled_frames(args.video, args.fps):
            if args.realtime:
                time.sleep(max(0.0, t - (time.monotonic() - start)))
            stream.append(frame)
            if t + 1e-9 >= next_ask:
                answer = llm.generate([{"prompt": args.prompt, "video_stream": stream}], params, use_tqdm=False)[0]
                print(f"[{t:7.1f} s, {stream.num_frames} frames] {answer.text if answer.error is None else answer.error}",
                      file=out, flush=True)
                next_ask += args.every
        if stream.num_frames == 0:
            raise ValueError(f"no frames could be read from {args.video}")
        answer = llm.generate([{"prompt": args.prompt, "video_stream": stream}], params, use_tqdm=False)[0]
        print(f"[{t:7.1f} s, {stream.num_frames} frames, end] {answer.text if answer.error is None else answer.error}",
              file=out, flush=True)
    finally:
        stream.close()
    return 0
