"""Compile every Triton kernel for sm_80 and sm_90 with no GPU (`vxl.kernels.static_check`) and write the registers,
spills, shared memory and tensor-core use of each launcher configuration to bench/results/kernels_static.json.

Exits 1 when any configuration fails (compile error, spills, shared memory over the limit, 16-bit tl.dot without
tensor cores). Needs TRITON_INTERPRET unset.
Usage: python -m bench.kernels_static [--arch 80 90] [--dtype bfloat16 float16 float32] [--shape videoxl-7b small]
       [--kernel NAME ...] [--jobs N] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    from vxl.kernels.static_check import ARCHS, SHAPES
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=list(ARCHS),
                   help="compute capabilities x 10 (default: all)")
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float16", "float32"],
                   choices=["bfloat16", "float16", "float32"])
    p.add_argument("--shape", nargs="+", default=[s.name for s in SHAPES], choices=[s.name for s in SHAPES])
    p.add_argument("--kernel", nargs="+", default=None, help="kernel names as in the report (default: all)")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="compile processes")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/kernels_static.json)")
    return p.parse_args(argv)


def format_row(r: dict) -> str:
    cfg = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in r["config"].items())
    status = "ok" if not r["violations"] else "FAIL: " + "; ".join(r["violations"])
    shared = "-" if r["shared_bytes"] is None else f"{r['shared_bytes'] / 1024:.1f}K"
    return (f"{r['kernel']:27s} {r['arch']} {r['dtype']:8s} {r['shape']:10s} {cfg:48s} regs={r['registers']} "
            f"spill={r['spill_bytes']} smem={shared} tc={'y' if r['tensor_cores'] else 'n'}  {status}")


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print("kernels_static: TRITON_INTERPRET is set; the kernels must compile, not run in the interpreter: "
              "run it with TRITON_INTERPRET unset (env -u TRITON_INTERPRET ...)", file=sys.stderr)
        return 2
    import warnings

    import torch

    from bench.common import RESULTS_DIR, env_info, write_json
    from vxl.kernels import static_check
    args = parse_args(argv)
    # triton 3.9 warns once per process that fp fusion defaults to on; the launches compile with that default too.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    shapes = [s for s in static_check.SHAPES if s.name in args.shape]
    start = time.perf_counter()
    rows = static_check.check_all(args.arch, [getattr(torch, d) for d in args.dtype], shapes,
                                  set(args.kernel) if args.kernel else None, jobs=args.jobs)
    elapsed = time.perf_counter() - start
    for r in rows:
        print(format_row(r))
    failed = [r for r in rows if r["violations"]]
    print(f"{len(rows)} configurations, {len(failed)} failed, {elapsed:.0f} s ({args.jobs} processes)")
    out = args.out or os.path.join(RESULTS_DIR, "kernels_static.json")
    write_json(out, {"env": env_info(), "max_shared_bytes": {f"sm_{a}": b for a, b in
                                                             static_check.MAX_SHARED_BYTES.items()},
                     "shapes": [vars(s) for s in shapes], "specialisation": static_check.SPECIALISATION, "seconds": round(elapsed, 1), "rows": rows})
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
