"""Time the four data stages (body_model, prepare, detect2d, features) on a profile, in a scratch dir.

    .venv/bin/python benchmarks/bench_data_stages.py [--profile default] [--threads 2] [--out DIR]

Runs the real stage functions (MLflow logging included) into a temporary project so the
checkout's own outputs are untouched, and prints a markdown table of wall and CPU seconds per
stage and the frames/s of prepare (render included) and features. On a shared machine, CPU seconds
at ``--threads 1`` are the contention-proof figure: a quiet machine's wall time is no larger.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="scratch project dir (default: a temp dir)")
    args = ap.parse_args()

    from hmrmamba.profiles import compose
    from hmrmamba.stages import body_model, detect2d, features, prepare
    from hmrmamba.stages.common import apply_offline_env, execute

    apply_offline_env()
    repo = Path(__file__).resolve().parents[1]
    params = compose(repo, args.profile, [f"runtime.threads={args.threads}"])
    root = Path(args.out or tempfile.mkdtemp(prefix="hmrmamba-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rows, total, total_cpu = [], 0.0, 0.0
    frames = 0
    for mod in (body_model, prepare, detect2d, features):
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = execute(mod.STAGE, mod.run, root=root, params=params)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        total += dt
        total_cpu += cpu
        if mod is prepare:
            frames = sum(v["frames"] for v in metrics.values() if isinstance(v, dict) and "frames" in v)
        rate = f"{frames / dt:.0f}" if mod in (prepare, features) and frames else ""
        rows.append((mod.STAGE, dt, cpu, rate))
    print(f"\nData stages, profile `{args.profile}`, {cpu_name()}, torch threads {args.threads}, "
          f"{os.cpu_count()} cores, {frames} frames\n")
    print("| stage | wall s | CPU s (all threads) | frames/s (wall) |\n|---|---:|---:|---:|")
    for name, dt, cpu, rate in rows:
        print(f"| {name} | {dt:.1f} | {cpu:.1f} | {rate} |")
    print(f"| **total** | **{total:.1f}** | **{total_cpu:.1f}** | |")


if __name__ == "__main__":
    main()
