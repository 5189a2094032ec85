"""Benchmark: the per-call costs that the small-op changes of issue 19 removed, each against the old way in
the same process, timed in turn (old, new, old, new, ...), median of the rounds after a warm-up:

- **feature dropout**: the tiny lifter's training step (forward, backward, AdamW) with the encoder's
  feature dropout as ``nn.Dropout`` (``bernoulli_``) and as :class:`hmrmamba.models.dual_scan.UniformDropout`
  (``torch.rand(...) >= p``);
- **value checks**: a NaN/Inf pass per scan input before the fused kernel (the old way, emulated by
  running the reference's value check first) and the kernel's own check (now), on a small Mamba
  forward (one frame's 17 joints, the online step's size) and on the tiny lifter's training step.

::

    python benchmarks/bench_small_ops.py               # 2 threads (runtime.threads), 30 rounds
    python benchmarks/bench_small_ops.py --threads 1 --rounds 40

Random inputs of the real shapes (16 windows of 16 frames, 17 joints); the stages' allocator
(``keep_freed_memory``). The two numerics differ only in the dropout masks drawn.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from hmrmamba.allocator import keep_freed_memory


def _tiny_lifter_step(windows: int = 16, frames: int = 16) -> tuple[torch.nn.Module, Callable[[], None]]:
    from hmrmamba.models.registry import build

    torch.manual_seed(0)
    model = build("tiny", lift_only=True).train()
    lifter = model.lifter
    kp2d = torch.rand(windows, frames, 17, 2) * 2 - 1
    conf = torch.rand(windows, frames, 17)
    feats = torch.randn(windows, frames, int(model.feat_mean.shape[0]))
    map_dim = int(getattr(lifter, "map_dim", 0) or 0)
    spatial = torch.randn(windows, frames, map_dim, 4, 4) if map_dim else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(kp2d, conf, feats, spatial).pose3d.pow(2).mean().backward()
        opt.step()
    return model, step


def in_turn(variants: dict[str, Callable[[], None]], prepare: dict[str, Callable[[], None]], *,
            rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each variant's call, the variants timed in turn, ``prepare[name]()`` before each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(warmup + rounds):
        for name, fn in variants.items():
            prepare[name]()
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    import hmrmamba.ssm.fused as fused
    from hmrmamba.models.dual_scan import UniformDropout
    from hmrmamba.ssm import Mamba

    model, step = _tiny_lifter_step()
    encoder = model.lifter.encoder
    uniform = encoder.feat_drop
    assert isinstance(uniform, UniformDropout)
    bernoulli = torch.nn.Dropout(uniform.p)
    in_kernel = fused.checked

    def checks_first(run, validate):  # the old order: the values checked input by input, then the kernel
        validate()
        return run(False)

    def use(drop: torch.nn.Module, check) -> Callable[[], None]:
        def prepare() -> None:
            encoder.feat_drop = drop
            fused.checked = check
        return prepare

    mamba = Mamba(32, d_state=8).eval()
    frame = torch.randn(1, 17, 32)

    def small_forward() -> None:
        with torch.inference_mode():
            for _ in range(20):
                mamba(frame)

    try:
        drop = in_turn({"nn.Dropout": step, "UniformDropout": step},
                       {"nn.Dropout": use(bernoulli, in_kernel), "UniformDropout": use(uniform, in_kernel)},
                       rounds=args.rounds)
        checks = in_turn({"before": step, "in kernel": step},
                         {"before": use(uniform, checks_first), "in kernel": use(uniform, in_kernel)},
                         rounds=args.rounds)
        small = in_turn({"before": small_forward, "in kernel": small_forward},
                        {"before": use(uniform, checks_first), "in kernel": use(uniform, in_kernel)},
                        rounds=args.rounds)
    finally:
        fused.checked = in_kernel
        encoder.feat_drop = uniform
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"median of {args.rounds} rounds in turn\n")
    print("| what | old | new | speed-up |\n|---|---:|---:|---:|")
    rows = [("tiny lifter training step, feature dropout (ms)", drop["nn.Dropout"], drop["UniformDropout"], 1e3),
            ("tiny lifter training step, scan value checks (ms)", checks["before"], checks["in kernel"], 1e3),
            ("Mamba forward (1, 17, 32), scan value checks (us)", small["before"] / 20, small["in kernel"] / 20, 1e6)]
    for what, old, new, unit in rows:
        print(f"| {what} | {old * unit:.1f} | {new * unit:.1f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
