"""Host cost of one engine step (`python -m bench.step_overhead`): milliseconds per `llm.step()` with 1, 16,
64, 256 decoding sequences and for a step of visual windows, on the tiny model (torch backend, 1 thread by
default), measured twice: (a) the whole step, model included; (b) the host part only (scheduler, embedding,
step preparation `ModelRunner.host_step`, sampling, bookkeeping), the model's forward and logits replaced
by a stub that returns zeros of the right shape. Writes one labelled run ("before", "after", ...) into a
JSON file that keeps the other labels, each with hardware, versions and commit.

On a GPU (`--device cuda`, any model, e.g. `--model full-random --dtype bfloat16 --attention-backend
triton`), `--cuda-graphs` replays decode steps as CUDA graphs (`vxl.engine.cuda_graphs`); running it with
and without the flag under two labels gives the graphs' effect on whole decode steps (each step ends with
the sampled tokens read back, so its time includes the GPU's).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import vxl
from bench.common import RESULTS_DIR, env_info, header_line, log, write_labelled_run
from vxl import LLM, SamplingParams
from vxl.engine.llm import resolve_dtype

QUESTION = "What happens?"


class StubModel:
    """The model with its forward and logits replaced by zeros of the right shape (no layer runs); the
    embedding and everything else come from the real model. Records when the forward was called, so the
    step's host time splits into before the model (scheduler + preparation) and after it (sampling)."""

    def __init__(self, model):
        self.model = model
        self.called_at: float | None = None

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, embeds: torch.Tensor, step, kv_caches, ops) -> torch.Tensor:
        self.called_at = time.perf_counter()
        return embeds.new_zeros(step.positions.shape[0], embeds.shape[1])      # (T, H)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.new_zeros(hidden.shape[0], self.model.config.vocab_size, dtype=torch.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.step_overhead", description=__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256], help="decoding sequences")
    p.add_argument("--window-seqs", type=int, default=16, help="sequences of the window step (0: skip it)")
    p.add_argument("--window-ratio", type=int, default=8, help="compression ratio of the window step")
    p.add_argument("--steps", type=int, default=30, help="measured steps per case (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured decode steps first")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model", default="tiny", help="a built-in model name or checkpoint (loaded once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--attention-backend", default="torch", choices=["torch", "triton"])
    p.add_argument("--kv-cache-bytes", type=int, default=None, help="KV cache of each engine built (default: the engine's)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay decode steps as CUDA graphs (CUDA only)")
    p.add_argument("--label", default="run", help="name of this run in the JSON (e.g. before, after)")
    p.add_argument("--commit", default=None,
                   help="commit string to record instead of the checkout's, when the vxl measured is another tree "
                        "(e.g. HEAD exported with git archive onto PYTHONPATH)")
    p.add_argument("--note", default="", help="free text stored with the run (what the tree holds)")
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "step_overhead_cpu.json"),
                   help="JSON file; other labels already in it are kept")
    return p


_LOADED = {}


def new_llm(args, stub: bool):
    """A fresh engine (empty KV cache and graphs) on the model loaded by the first call."""
    kwargs = dict(device=args.device, dtype=args.dtype, attention_backend=args.attention_backend,
                  kv_cache_bytes=args.kv_cache_bytes, cuda_graphs=args.cuda_graphs)
    key = (args.model, args.device, args.dtype)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = LLM(args.model, **kwargs).loaded
    llm = LLM(_LOADED[key], **kwargs)
    if stub:
        llm.runner.model = StubModel(llm.runner.model)
    return llm


def timed_steps(llm, keep, num_steps: int) -> dict:
    """Run steps until `num_steps` have been kept by `keep(step_output)`; ms per kept step (median, min)
    and, with a stub model, the median ms before its forward."""
    stub = llm.runner.model if isinstance(llm.runner.model, StubModel) else None
    times, before = [], []
    while len(times) < num_steps and llm.has_unfinished_requests():
        t0 = time.perf_counter()
        out = llm.step()
        elapsed = time.perf_counter() - t0
        if keep(out):
            times.append(elapsed * 1e3)
            if stub is not None and stub.called_at is not None:
                before.append((stub.called_at - t0) * 1e3)
    if len(times) < num_steps:
        raise RuntimeError(f"only {len(times)} of {num_steps} steps were of the measured kind")
    res = {"ms_median": statistics.median(times), "ms_min": min(times), "num_steps": len(times)}
    if before:
        res["ms_before_forward_median"] = statistics.median(before)
    return res


class HostReads(torch.Tensor):
    """Logits that count what reads their data (or any result computed from them) back to the host."""
    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__", "cpu"):
            HostReads.reads += 1
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out.as_subclass(torch.Tensor) if name == "cpu" else out


def count_reads(llm) -> list[int]:
    """Make the runner's logits count their host reads; returns the list each step's count is appended to
    (read it after the step: the sampling pass runs after the forward)."""
    run, per_step = llm.runner.run, []

    def counting(chunks):
        logits = run(chunks)
        per_step.append(HostReads.reads)
        return None if logits is None else logits.as_subclass(HostReads)
    llm.runner.run = counting
    return per_step


def decode_reads(num_seqs: int, args) -> dict:
    """Device-to-host reads of the sampled logits per decode step (on any device: every read of a tensor
    computed from the logits is counted)."""
    llm = new_llm(args, stub=False)
    params = SamplingParams(max_tokens=64, ignore_eos=True)
    for i in range(num_seqs):
        llm.add_request({"prompt": f"{QUESTION} {i}"}, params)
    wait_for_decode(llm)
    count_reads(llm)
    counts = []
    for _ in range(5):
        HostReads.reads = 0
        llm.step()
        counts.append(HostReads.reads)
    return {"reads_per_step": statistics.median(counts), "max": max(counts)}


def wait_for_decode(llm) -> None:
    """Step until every request is admitted and decoding."""
    while True:
        running = llm.core.scheduler.running
        if running and not any(s.is_prefilling for s in running) and not llm.core.scheduler.waiting:
            return
        llm.step()


def decode_case(num_seqs: int, args, stub: bool) -> dict:
    llm = new_llm(args, stub)
    params = SamplingParams(max_tokens=args.warmup + args.steps + 64, ignore_eos=True)
    for i in range(num_seqs):
        llm.add_request({"prompt": f"{QUESTION} {i}"}, params)
    wait_for_decode(llm)
    for _ in range(args.warmup):
        llm.step()
    return timed_steps(llm, lambda out: sum(map(len, out.new_tokens.values())) == num_seqs, args.steps)


def window_case(args, stub: bool) -> dict:
    """Steps made of one visual window per sequence (160 raw rows + their VSTs each)."""
    llm = new_llm(args, stub)
    window, hidden = llm.config.beacon_window, llm.config.hidden_size
    num_windows = args.warmup + min(args.steps, 10) + 1
    gen = torch.Generator().manual_seed(0)
    for i in range(args.window_seqs):
        embeds = torch.randn(num_windows * window, hidden, generator=gen)
        llm.add_request({"prompt": f"{QUESTION} {i}", "visual_embeds": embeds,
                         "compression_ratio": args.window_ratio}, SamplingParams(max_tokens=1))
    seen = []

    def keep(out) -> bool:
        seen.append(out.num_windows == args.window_seqs)
        return seen[-1] and seen.count(True) > args.warmup
    res = timed_steps(llm, keep, min(args.steps, 10))
    res["slots_per_step"] = args.window_seqs * (window + window // args.window_ratio)
    return res


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    cases = {}
    for n in args.batch_sizes:
        cases[f"decode_{n}"] = {"num_seqs": n, "whole": decode_case(n, args, stub=False),
                                "host": decode_case(n, args, stub=True), "device_to_host": decode_reads(n, args)}
        log(f"decode x{n}: whole {cases[f'decode_{n}']['whole']['ms_median']:.2f} ms, "
            f"host {cases[f'decode_{n}']['host']['ms_median']:.2f} ms, "
            f"{cases[f'decode_{n}']['device_to_host']['reads_per_step']:g} device-to-host reads per step")
    if args.window_seqs:
        key = f"window_{args.window_seqs}"
        cases[key] = {"num_seqs": args.window_seqs, "ratio": args.window_ratio,
                      "whole": window_case(args, stub=False), "host": window_case(args, stub=True)}
        log(f"window x{args.window_seqs}: whole {cases[key]['whole']['ms_median']:.2f} ms, "
            f"host {cases[key]['host']['ms_median']:.2f} ms")
    for name, case in cases.items():
        case["whole"]["steps_per_s"] = 1e3 / case["whole"]["ms_median"]
        if name.startswith("decode"):
            case["whole"]["tokens_per_s"] = case["num_seqs"] * case["whole"]["steps_per_s"]
        case["model_ms_estimate"] = case["whole"]["ms_median"] - case["host"]["ms_median"]
    env = env_info()
    if args.commit is not None:
        env["commit"], env["checkout_commit"] = args.commit, env["commit"]
    return {"env": env, "note": args.note, "vxl_source": os.path.dirname(vxl.__file__),
            "model": args.model, "device": args.device, "dtype": str(resolve_dtype(args.dtype, torch.device(args.device))),
            "backend": args.attention_backend, "cuda_graphs": args.cuda_graphs, "steps": args.steps, "warmup": args.warmup,
            "cases": cases}


def speedups(runs: dict) -> dict:
    """Per case, before / after of the whole step's and the host part's median ms (where both runs exist)."""
    if "before" not in runs or "after" not in runs:
        return {}
    before, after = runs["before"]["cases"], runs["after"]["cases"]
    return {name: {part: before[name][part]["ms_median"] / after[name][part]["ms_median"] for part in ("whole", "host")}
            for name in before if name in after}


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.warmup < 0 or args.window_seqs < 0 or args.threads < 1:
        raise SystemExit("error: --batch-sizes, --steps and --threads must be >= 1; --warmup, --window-seqs >= 0")
    result = run(args)
    log(header_line(result["env"]))
    log(f"wrote {write_labelled_run(args.out, args.label, result, __doc__.strip(), {'speedup': speedups})}")


if __name__ == "__main__":
    main()
