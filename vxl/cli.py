"""The `vxl` command: `vxl generate VIDEO --prompt ...` answers a question about a video; `vxl demo`
generates a needle-in-a-haystack video, asks the built-in trained model about it and prints the question,
the right answer and the model's answer (no files or downloads needed); `vxl plan` sizes a GPU's memory;
`vxl models` lists the built-in models. A bad model, file or value exits non-zero with one line on stderr
naming it; `--debug` shows the traceback instead."""
from __future__ import annotations

import argparse
import json
import os
import sys

from vxl.batch.cli import add_batch_parser
from vxl import defaults
from vxl.engine.planner import DEFAULT_MODEL, parse_bytes
from vxl.flags import add_engine_flags, engine_kwargs, positive_int
from vxl.model.registry import builtin_model_names, describe_builtin_models
from vxl.replay import add_stream_parser, replay
from vxl.server.serve import add_serve_parser


def format_metrics(m: dict) -> str:
    secs = " ".join(f"{k}={v:.2f}s" for k, v in m.get("seconds", {}).items())
    return (f"[frames={m.get('num_frames', 0)} visual_tokens={m.get('num_visual_tokens', 0)} "
            f"vst_kept={m.get('num_vst_tokens', 0)} kept_tokens={m.get('num_kept_tokens', 0)} "
            f"kept_kv={m.get('kept_kv_bytes', 0) / 2**20:.2f}MiB ratio={m.get('compression_ratio')} {secs}]")


MODEL_HELP = (f"a built-in model ({', '.join(builtin_model_names())}; see `vxl models`) or a checkpoint "
              "directory in the official Video-XL layout")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: `vxl plan: error: argument --x: ... (see vxl plan --help)`;
    `subcommands` maps each subcommand's name to its parser (set by build_parser)."""

    subcommands: dict[str, argparse.ArgumentParser]

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")




def _memory_size(text: str) -> int:
    try:
        value = parse_bytes(text)
    except ValueError:          # parse_bytes' own float() error would not say what was expected
        raise argparse.ArgumentTypeError(f"cannot read a memory size from {text!r} (e.g. 80GiB, 24GB, "
                                         "512MiB)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return value



def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=defaults.MODEL, help=MODEL_HELP)
    p.add_argument("--num-frames", type=positive_int, default=None)
    p.add_argument("--compression-ratio", type=positive_int, default=None)
    p.add_argument("--max-tokens", type=positive_int, default=defaults.MAX_TOKENS)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object per answer")
    add_engine_flags(p.add_argument_group("engine"))


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def build_requests(args, inputs: list[str], prompt: str | None) -> list[dict]:
    """One request per input file (image or video by extension), one for --images, one per JSONL line."""
    reqs = []
    for path in inputs:
        kind = "image" if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS else "video"
        req = {"prompt": prompt, kind: path, "request_id": path, "compression_ratio": args.compression_ratio}
        if kind == "video":
            req["num_frames"] = args.num_frames
        reqs.append(req)
    if getattr(args, "images", None):
        reqs.append({"prompt": prompt, "images": args.images, "request_id": "images",
                     "compression_ratio": args.compression_ratio})
    if getattr(args, "requests", None):
        reqs += read_requests_file(args.requests)
    return [{k: v for k, v in r.items() if v is not None} for r in reqs]


def read_requests_file(path: str) -> list[dict]:
    """The request dicts of a JSONL file, ids "line<n>" unless given; ValueError names the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ValueError(f"cannot read the --requests file {path}: {reason}") from e
    reqs = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--requests {path} line {n} is not valid JSON: {e.msg} (column {e.colno})") from e
        if not isinstance(req, dict):
            raise ValueError(f"--requests {path} line {n} is not a JSON object (a request dict): "
                             f"{type(req).__name__}")
        reqs.append({"request_id": f"line{n}", **req})
    if not reqs:
        raise ValueError(f"the --requests file {path} has no requests (one JSON object per line)")
    return reqs


def _run(args, reqs: list[dict]) -> int:
    from vxl import LLM, SamplingParams
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    llm = LLM(args.model, **engine_kwargs(args))
    if args.model == "tiny":
        print("note: the built-in 'tiny' model has random weights; its answers are meaningless.", file=sys.stderr)
    # bars on stderr: requests (several), windows (a long video, even alone); --no-progress hides both
    outs = llm.generate(reqs, params, use_tqdm=not args.no_progress)
    for out in outs:
        if args.json:
            print(json.dumps(out.to_dict()))
        elif out.error:
            print(f"{out.request_id}: error: {out.error}")
        else:
            prefix = f"{out.request_id}: " if len(outs) > 1 else ""
            print(prefix + out.text.replace("\n", " "))
            print(format_metrics(out.metrics))
    failed = [out for out in outs if out.error is not None]
    if failed:     # each failure is in the output above; stderr ends with one line saying so
        first = f"{failed[0].request_id}: {_first_line(failed[0].error)}"
        print(f"vxl generate: error: {len(failed)} of {len(outs)} requests failed "
              f"({first}{', ...' if len(failed) > 1 else ''})", file=sys.stderr)
    return int(bool(failed))


def _demo(args) -> int:
    from vxl import LLM
    from vxl.demo import describe_demo, run_demo
    llm = LLM(args.model, **engine_kwargs(args))
    if args.model == "tiny":
        print("note: the built-in 'tiny' model has random weights; its answers are meaningless.", file=sys.stderr)
    result = run_demo(llm, seed=args.video_seed, num_frames=args.num_frames or 512,
                      compression_ratio=args.compression_ratio, task=args.task, max_tokens=args.max_tokens)
    print(json.dumps(result, default=str) if args.json else describe_demo(result))
    return 0


def _plan(args) -> int:
    from dataclasses import asdict

    from vxl.engine.planner import configs_for, plan_memory
    cfg, clip = configs_for(args.model)
    dtype_bytes = 4 if args.dtype == "float32" else 2
    plan = plan_memory(cfg, clip, args.gpu_memory, args.compression_ratio, dtype_bytes,
                       attention_backend=args.attention_backend)
    print(json.dumps(asdict(plan)) if args.json else plan.describe())
    return 0


def build_parser() -> _Parser:
    parser = _Parser(prog="vxl", description=__doc__)
    debug_help = "on an error, show the Python traceback instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="answer a question about videos or images (one answer per input)")
    gen.add_argument("inputs", nargs="*", help="video or image file(s); the kind follows the file extension")
    gen.add_argument("--prompt", help="the question (required unless every request comes from --requests)")
    gen.add_argument("--images", nargs="+", help="several images asked about together (one frame each)")
    gen.add_argument("--requests", help="a JSONL file of request dicts (prompt, video/image/images, ...)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bars (requests, video windows)")
    _engine_args(gen)
    demo = sub.add_parser("demo", help="generate a needle video, ask the model about it, show the right answer")
    demo.add_argument("--task", default="retrieval", choices=["retrieval", "ordering", "counting"])
    demo.add_argument("--video-seed", type=int, default=0, help="which synthetic video (any int)")
    _engine_args(demo)
    plan = sub.add_parser("plan", help="memory plan: weights, kept KV per frame, work space, max frames")
    plan.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP + f" (default {DEFAULT_MODEL})")
    plan.add_argument("--gpu-memory", default="80GiB", type=_memory_size)
    plan.add_argument("--compression-ratio", type=positive_int, default=16)
    plan.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    plan.add_argument("--attention-backend", default="triton", choices=["torch", "triton"])
    plan.add_argument("--json", action="store_true")
    models = sub.add_parser("models", help="list the built-in models")
    serve = add_serve_parser(sub)
    batch = add_batch_parser(sub)
    stream = add_stream_parser(sub)
    parser.subcommands = {"generate": gen, "demo": demo, "plan": plan, "models": models, "serve": serve,
                          "batch": batch, "stream": stream}
    for p in parser.subcommands.values():   # --debug after the subcommand too; SUPPRESS keeps the one before
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _command(args, parser: _Parser) -> int:
    if args.command == "serve":
        from vxl.server.serve import serve
        return serve(args)
    if args.command == "stream":
        return replay(args)
    if args.command == "batch":
        from vxl.batch.cli import batch
        return batch(args)
    if args.command == "models":
        print(describe_builtin_models())
        return 0
    if args.command == "plan":
        return _plan(args)
    if args.command == "generate":
        gen = parser.subcommands["generate"]
        if not (args.inputs or args.images or args.requests):
            gen.error("generate needs input files, --images or --requests")
        if (args.inputs or args.images) and not args.prompt:
            gen.error("--prompt is required with input files or --images")
        return _run(args, build_requests(args, args.inputs, args.prompt))
    return _demo(args)


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _describe(exc: BaseException) -> str:
    """One line for an exception: its message, after its type unless that is a plain ValueError/OSError."""
    text = _first_line(str(exc))
    if text and isinstance(exc, (ValueError, OSError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. Errors print one line (a traceback with --debug)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _command(args, parser)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"vxl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:     # one line naming the problem; the traceback is for --debug
        if args.debug:
            raise
        print(f"vxl {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
