"""`vxl serve MODEL`: load the model, then serve the OpenAI-compatible API with uvicorn."""
from __future__ import annotations

import argparse

from vxl.server.media import MediaLimits


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API (POST /v1/chat/completions)")
    p.add_argument("model", help="a built-in model name or a checkpoint directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allowed-local-media-path", default=None,
                   help="file:// media URLs are allowed only under this directory (default: none allowed)")
    p.add_argument("--max-frames", type=int, default=MediaLimits.max_frames,
                   help="most frames sampled from one video (also the default num_frames)")
    p.add_argument("--max-video-bytes", type=int, default=MediaLimits.max_video_bytes)
    p.add_argument("--max-images", type=int, default=MediaLimits.max_images)
    p.add_argument("--max-image-pixels", type=int, default=MediaLimits.max_image_pixels,
                   help="most pixels (width x height) in one image, checked before it is decoded")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="most text tokens in one request's prompt")
    p.add_argument("--served-model-name", default=None, help="the model name clients use (default: MODEL)")
    p.add_argument("--max-queued", type=int, default=256, help="requests in flight before new ones get 503")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--attention-backend", default=None, choices=["torch", "triton"])
    p.add_argument("--kv-cache-bytes", type=int, default=None)
    p.add_argument("--cuda-graphs", action="store_true", help="replay decode steps as CUDA graphs (CUDA only; vxl.engine.cuda_graphs)")
    p.add_argument("--max-num-seqs", type=int, default=256, help="sequences the engine runs at once")
    p.add_argument("--max-vision-frames", type=int, default=None,
                   help="frames CLIP encodes per engine step, batched over requests (default: 8 windows' worth)")
    p.add_argument("--stream-idle-timeout", type=float, default=300.0,
                   help="seconds after which a live stream nobody posts to or asks about is closed")
    p.add_argument("--no-video-cache", action="store_true",
                   help="encode every request's video anew instead of sharing encoded videos between requests")
    return p


def serve(args) -> int:
    import uvicorn

    from vxl import LLM
    from vxl.server.app import build_app
    for name in ("max_frames", "max_video_bytes", "max_images", "max_image_pixels", "max_queued", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from vxl.engine.sampler import MAX_LOGPROBS
    llm = LLM(args.model, device=args.device, dtype=args.dtype, attention_backend=args.attention_backend,
              kv_cache_bytes=args.kv_cache_bytes, max_logprobs=MAX_LOGPROBS, max_frames=args.max_frames,
              max_images=args.max_images, max_prompt_tokens=args.max_prompt_tokens,
              max_image_pixels=args.max_image_pixels, cuda_graphs=args.cuda_graphs, max_num_seqs=args.max_num_seqs,
              max_vision_frames=args.max_vision_frames)
    limits = MediaLimits(args.allowed_local_media_path, args.max_frames, args.max_video_bytes, args.max_images,
                         args.max_image_pixels)
    app = build_app(llm, args.served_model_name or args.model, limits, args.max_queued,
                    video_cache=not args.no_video_cache, stream_idle_timeout_s=args.stream_idle_timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0



def main(argv: list[str] | None = None) -> int:
    """`python -m vxl.server.serve MODEL ...`: the same as `vxl serve MODEL ...`."""
    import sys
    parser = argparse.ArgumentParser(prog="vxl")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return serve(parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
