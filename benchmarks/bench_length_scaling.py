"""Benchmark: where a lifter's time grows faster than its work when the clip gets longer.

``hmrmamba efficiency`` reports the hmrmamba-s lifter's time at T=486 over T=243 (the MACs double
exactly). This profiles one forward at each length and prints every op's self CPU time, its ratio and
its excess over linear scaling (time at 2T − 2 × time at T), largest excess first, so the ops that
leave the cache (or grow with T²) can be read off one run::

    python benchmarks/bench_length_scaling.py                       # hmrmamba-s lifter, T = 243, 486
    python benchmarks/bench_length_scaling.py --variant pmce --frames 243 486 --threads 1
    python benchmarks/bench_length_scaling.py --system-malloc   # glibc's default: large blocks mmapped anew

Batch 1, random inputs (the efficiency stage's), ``torch.inference_mode``; one warm-up forward per
length, then one profiled forward. ``--full`` profiles the whole model instead of the lifter.
"""

from __future__ import annotations

import argparse
import platform

import torch

from hmrmamba.allocator import allocator_status, keep_freed_memory


def op_times(variant: str, frames: int, *, full: bool = False) -> dict[str, float]:
    """Self CPU ms per op name of one profiled forward of ``variant`` on a clip of ``frames`` frames."""
    from torch.profiler import profile

    from hmrmamba.efficiency.flops import model_clip_inputs
    from hmrmamba.models import build, random_mesh_assets

    model = build(variant, assets=random_mesh_assets() if full else None, lift_only=not full,
                  max_frames=frames).eval()
    inputs = model_clip_inputs(model, batch=1, frames=frames, seed=0, device="cpu")
    with torch.inference_mode():
        model(**inputs)
        with profile() as prof:
            model(**inputs)
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="hmrmamba-s")
    ap.add_argument("--frames", type=int, nargs=2, default=[243, 486], metavar=("T", "T2"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--full", action="store_true", help="the whole model, not the lifter")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc as it is (the stages keep freed memory: runtime.keep_freed_memory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.system_malloc:
        keep_freed_memory()
    short, long_ = args.frames
    a, b = op_times(args.variant, short, full=args.full), op_times(args.variant, long_, full=args.full)
    k = long_ / short
    ta, tb = sum(a.values()), sum(b.values())
    print(f"{args.variant} {'model' if args.full else 'lifter'}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}; self CPU time of one profiled forward; allocator: "
          f"{allocator_status().description}\n")
    print(f"total: T={short} {ta:.0f} ms, T={long_} {tb:.0f} ms, ratio {tb / ta:.2f} (work ratio {k:.2f})\n")
    print(f"| op | T={short} (ms) | T={long_} (ms) | ratio | excess over linear (ms) | share of the excess |")
    print("|---|---:|---:|---:|---:|---:|")
    excess = {op: b[op] - k * a.get(op, 0.0) for op in b}
    total_excess = tb - k * ta
    for op in sorted(excess, key=excess.get, reverse=True)[:args.rows]:
        share = excess[op] / total_excess if total_excess > 0 else float("nan")
        print(f"| `{op}` | {a.get(op, 0.0):.1f} | {b[op]:.1f} | {b[op] / max(a.get(op, 0.0), 1e-9):.2f} "
              f"| {excess[op]:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
