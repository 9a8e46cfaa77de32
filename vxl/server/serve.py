"""`vxl serve MODEL`: load the model, then serve the OpenAI-compatible API with uvicorn."""
from __future__ import annotations

import argparse
import os

from vxl.flags import add_engine_flags, engine_kwargs
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
    add_engine_flags(p.add_argument_group("engine"))
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $VXL_API_KEY)")
    p.add_argument("--allowed-hosts", nargs="+", default=None,
                   help="Host names served (default: the --host address and the loopback names; any when bound to "
                        "0.0.0.0 or ::)")
    p.add_argument("--allowed-origins", nargs="+", default=[],
                   help="other sites (scheme://host[:port]) whose pages may call the server; default none")
    p.add_argument("--max-streams", type=int, default=16, help="live streams open at once")
    p.add_argument("--max-connections", type=int, default=512,
                   help="open connections before new ones get 503 (uvicorn's limit_concurrency)")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection is kept")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds SIGTERM waits for running requests before closing what is left")
    p.add_argument("--stream-idle-timeout", type=float, default=300.0,
                   help="seconds after which a live stream nobody posts to or asks about is closed")
    p.add_argument("--no-video-cache", action="store_true",
                   help="encode every request's video anew instead of sharing encoded videos between requests")
    return p


def serve(args) -> int:
    import uvicorn

    from vxl import LLM
    from vxl.server.app import build_app
    from vxl.server.guard import Guard, default_hosts
    for name in ("max_frames", "max_video_bytes", "max_images", "max_image_pixels", "max_queued", "max_prompt_tokens",
                 "max_streams", "max_connections"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from vxl.engine.sampler import MAX_LOGPROBS
    llm = LLM(args.model, **engine_kwargs(args), max_logprobs=MAX_LOGPROBS, max_frames=args.max_frames,
              max_images=args.max_images, max_prompt_tokens=args.max_prompt_tokens,
              max_image_pixels=args.max_image_pixels)
    limits = MediaLimits(args.allowed_local_media_path, args.max_frames, args.max_video_bytes, args.max_images,
                         args.max_image_pixels)
    guard = Guard(api_key=args.api_key or os.environ.get("VXL_API_KEY") or None,
                  allowed_hosts=set(args.allowed_hosts) if args.allowed_hosts else default_hosts(args.host),
                  allowed_origins=set(args.allowed_origins))
    app = build_app(llm, args.served_model_name or args.model, limits, args.max_queued,
                    video_cache=not args.no_video_cache, stream_idle_timeout_s=args.stream_idle_timeout, guard=guard,
                    max_streams=args.max_streams)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            limit_concurrency=args.max_connections, timeout_keep_alive=args.keep_alive_timeout,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    graceful_server(config, app.state.vxl.closing.set).run()
    return 0


def graceful_server(config, on_exit):
    """uvicorn's server whose exit signal (SIGTERM, Ctrl-C) first tells the app it is closing (`on_exit`), so
    watchers of live streams get their last event and [DONE] instead of holding the shutdown open; running
    requests have `--shutdown-timeout` seconds to finish, then uvicorn closes what is left."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            on_exit()
            super().handle_exit(sig, frame)
    return GracefulServer(config)


def main(argv: list[str] | None = None) -> int:
    """`python -m vxl.server.serve MODEL ...`: the same as `vxl serve MODEL ...`."""
    import sys
    parser = argparse.ArgumentParser(prog="vxl")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return serve(parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
