"""`vxl batch IN.jsonl --out OUT.jsonl`: the batch job's command line, in-process by default or on Ray
Data with `--ray`. Both read the input the same way, skip the ids OUT already holds and append one row per
remaining request to OUT."""
from __future__ import annotations

import argparse
import sys

from vxl import defaults, flags
from vxl.flags import add_engine_flags, int_at_least
from vxl.batch.jobs import JobDefaults, OutputFile, make_units, read_items



def add_batch_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("batch", help="run a JSONL file of requests (one output row per request, resumable)")
    p.add_argument("input", help="JSONL: one request dict per line (prompt, video, num_frames, "
                                 "compression_ratio, request_id, max_tokens, temperature, top_p, top_k, seed)")
    p.add_argument("--out", required=True, help="output JSONL; a rerun skips the request ids it already holds")
    p.add_argument("--model", default=defaults.MODEL, help="a built-in model name or a checkpoint directory")
    add_engine_flags(p.add_argument_group("engine"))
    g = p.add_argument_group("request defaults (a line's own fields win)")
    g.add_argument("--num-frames", type=int_at_least(1), default=None)
    g.add_argument("--compression-ratio", type=int_at_least(1), default=None)
    g.add_argument("--max-tokens", type=int_at_least(1), default=defaults.MAX_TOKENS)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int_at_least(0), default=0)
    g.add_argument("--seed", type=int, default=None, help="sampled requests without a seed get one from their id")
    j = p.add_argument_group("job")
    j.add_argument("--chunk-videos", type=int_at_least(1), default=8,
                   help="videos (or ungrouped requests) in flight at once per engine (with --ray: per actor call)")
    j.add_argument("--no-group", action="store_true", help="encode each question's video anew (no sharing)")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = p.add_argument_group("Ray Data (pip install 'ray[data]')")
    r.add_argument("--ray", action="store_true", help="run on Ray Data, one LLM per actor")
    r.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    r.add_argument("--num-replicas", type=int_at_least(1), default=1, help="actors, one LLM each")
    r.add_argument("--gpus-per-replica", type=float, default=0.0)
    return p


def engine_kwargs(args) -> dict:
    """LLM(**engine_kwargs(args)): the engine flags, as plain values an actor can receive."""
    return {"model": args.model, **flags.engine_kwargs(args)}


def job_defaults(args) -> JobDefaults:
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "top_k": args.top_k, "seed": args.seed}
    return JobDefaults(args.num_frames, args.compression_ratio, sampling)


def batch(args) -> int:
    """Run the job; returns 0 (failed requests are rows of the output, not a failed job)."""
    if args.gpus_per_replica < 0:
        raise ValueError(f"--gpus-per-replica must be >= 0, got {args.gpus_per_replica}")
    if not args.ray and (args.address or args.num_replicas != 1 or args.gpus_per_replica):
        raise ValueError("--address, --num-replicas and --gpus-per-replica need --ray")
    try:
        items = read_items(args.input, job_defaults(args))
    except OSError as e:
        raise ValueError(f"cannot read {args.input}: {e.strerror or e}") from e
    with OutputFile(args.out) as out:
        todo = [item for item in items if item.request_id not in out.done]
        print(f"vxl batch: {len(items)} requests, {len(items) - len(todo)} already in {args.out}, "
              f"{len(todo)} to run", file=sys.stderr)
        if todo and args.ray:
            from vxl.integrations.ray import run_on_ray
            run_on_ray(make_units(todo, not args.no_group), out.write, engine_kwargs(args), args.address,
                       args.num_replicas, args.gpus_per_replica, not args.no_progress, args.chunk_videos)
        elif todo:
            from vxl import LLM
            from vxl.batch.local import run_job
            llm = LLM(**engine_kwargs(args))
            run_job(llm, make_units(todo, not args.no_group), out.write, args.chunk_videos, not args.no_progress)
        num_errors = _count_errors(args.out)
    print(f"vxl batch: done, {args.out} holds {len(out.done)} rows ({num_errors} with errors)", file=sys.stderr)
    return 0


def _count_errors(path: str) -> int:
    import json
    with open(path, encoding="utf-8") as f:
        return sum(json.loads(line).get("finish_reason") == "error" for line in f if line.strip())


def main(argv: list[str] | None = None) -> int:
    """`python -m vxl.batch.cli IN --out OUT ...`: the same as `vxl batch IN --out OUT ...`."""
    parser = argparse.ArgumentParser(prog="vxl")
    add_batch_parser(parser.add_subparsers(dest="command", required=True))
    return batch(parser.parse_args(["batch", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
