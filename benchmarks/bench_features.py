"""Benchmark: ResNet-50 feature extraction GFLOP/s against this machine's own fp32 matmul GFLOP/s.

FLOPs are counted analytically: 2 x the multiply-accumulates of all ResNet-50 convolutions at the
crop size (:func:`hmrmamba.features.resnet50_conv_macs`; BN, ReLU, pooling and the unused fc are
not counted). Variants:

- ``eager``: the model as constructed (BN unfused, NCHW), ``forward_features`` only;
- ``fused``: BN folded into the convolutions, channels_last, ``forward_features`` only;
- ``pipeline``: :func:`hmrmamba.features.iter_features` end to end on 320x240 uint8 frames
  (crop + resize + normalise + fused network + fp16 copy-out).

Each row's ratio is taken against a matmul timed alternately with that row's variant (the
fastest of ``--repeats`` for both, after a warm-up), so a machine shared with other jobs still
gives a fair ratio; on a busy machine raise ``--repeats``.

Usage: ``python benchmarks/bench_features.py [--threads 2] [--crop-sizes 64 96 128 224]
[--batch-sizes 16 64] [--repeats 3]``. Prints a markdown table; the target is >= 50% of matmul.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from hmrmamba.features import ResNet50, iter_features, prepare_model, resnet50_conv_macs


def best_time(fn: Callable[[], object], *, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_call(n: int) -> Callable[[], object]:
    """fp32 ``torch.mm`` of two seeded (n, n) matrices: 2 n^3 FLOPs per call."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    return lambda: torch.mm(a, b)


def interleaved_best(fn: Callable[[], object], ref: Callable[[], object], *, repeats: int) -> tuple[float, float]:
    """Fastest seconds of ``fn`` and of ``ref``, timed alternately so both see the same machine load."""
    fn()
    ref()
    best_fn = best_ref = float("inf")
    for _ in range(repeats):
        best_ref = min(best_ref, best_time(ref, repeats=1))
        best_fn = min(best_fn, best_time(fn, repeats=1))
    return best_fn, best_ref


def make_runs(*, eager: ResNet50, fused: ResNet50, size: int, batch: int,
              rng: np.random.Generator) -> dict[str, Callable[[], None]]:
    """The three timed variants for one (crop size, batch size)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    frames = rng.integers(0, 256, size=(batch, 240, 320, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[160.0, 120.0, 200.0, 200.0]], np.float32), (batch, 1))

    def run_eager() -> None:
        with torch.inference_mode():
            eager.forward_features(x)

    def run_fused() -> None:
        with torch.inference_mode():
            fused.forward_features(x_cl)

    def run_pipeline() -> None:
        for _ in iter_features(frames, boxes, model=fused, prepared=True, crop_size=size, batch_size=batch,
                               progress=False):
            pass

    return {"eager": run_eager, "fused": run_fused, "pipeline": run_pipeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crop-sizes", type=int, nargs="+", default=[64, 96, 128, 224])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mm = matmul_call(args.matmul_size)
    mm_flop = 2 * args.matmul_size ** 3 / 1e9
    peak = mm_flop / best_time(mm, repeats=args.repeats)
    eager = ResNet50(init_seed=0).eval()
    fused = prepare_model(eager)
    rng = np.random.default_rng(0)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"mkldnn={torch.backends.mkldnn.is_available()}, cpu capability={torch.backends.cpu.get_cpu_capability()}")
    print(f"\nfp32 matmul ({args.matmul_size}x{args.matmul_size}) at start: **{peak:.1f} GFLOP/s**\n")
    print("| crop | batch | variant | ms/frame | GFLOP/frame | GFLOP/s | matmul GFLOP/s | % of matmul |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for size in args.crop_sizes:
        flop = 2 * resnet50_conv_macs(size) / 1e9
        for batch in args.batch_sizes:
            runs = make_runs(eager=eager, fused=fused, size=size, batch=batch, rng=rng)
            for name, fn in runs.items():
                sec, mm_sec = interleaved_best(fn, mm, repeats=args.repeats)
                sec /= batch
                gflops, ref = flop / sec, mm_flop / mm_sec
                print(f"| {size} | {batch} | {name} | {sec * 1e3:.2f} | {flop:.3f} | {gflops:.1f} | {ref:.1f} | "
                      f"{100 * gflops / ref:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
