"""Forward+backward time of ``selective_scan`` against ``selective_scan_ref`` on the CPU.

Usage: ``python benchmarks/bench_scan.py [--threads 2] [--lengths 16 64 243 486 1024]``

Inputs are shaped like one Mamba block of the lifter (batch 64, d_inner 256, d_state 16) with the
block's own options (D skip, z gate, delta_bias, softplus). Each time is the best of ``--repeats``
runs (the reference, much slower, runs ``--ref-repeats`` times and only up to ``--ref-max-len``).
Prints a markdown table; the per-step column shows that the cost is linear in L. On a shared
machine ``--threads 1 --clock cpu`` (process CPU time) is robust to other jobs taking the cores,
which otherwise stall every multi-threaded op of a step-by-step loop.
``--alternatives`` also times, forward only, two other ways to run the recurrence (a chunked
"segsum" scan and a log-step parallel scan), which is why ``selective_scan`` uses neither.

``--fused`` prints instead the fused C scan (``selective_scan`` on CPU) against the blocked PyTorch
scan (``selective_scan_torch``), forward and forward+backward, at (64, 256, 243, 16) and the tiny
lifter's own scan shapes, the two alternating run by run (best of ``--repeats``); ``--train-step``
adds forward+backward of the ``tiny`` model's lifter on a (16 windows, 16 frames, 17 joints) batch
with ``HMRMAMBA_SCAN=torch`` and with the fused scan, alternating.

``--layout`` times one ``Mamba`` block as it runs (channels last: the fused kernel reads (B, L, D),
the causal conv is shifted multiply-adds) against the same weights run channels first
(:func:`channels_first_mamba`: ``in_proj``, transpose, ``F.conv1d``, the (B, D, L) scan, transpose,
``out_proj``), at the hmrmamba-s spatial-block shape and the tiny lifter's, forward and
forward+backward, alternating.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from hmrmamba.efficiency.benchmark import scan_inputs
from hmrmamba.ssm.backend import cpu_scan_status
from hmrmamba.ssm.scan import selective_scan, selective_scan_ref, selective_scan_torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_fwd_bwd(fn, inputs: dict[str, torch.Tensor], repeats: int,
                 clock: str = "wall") -> tuple[float, float]:
    """Best (forward, forward+backward) time in seconds over ``repeats`` runs."""
    now = CLOCKS[clock]
    best_f, best_fb = float("inf"), float("inf")
    for _ in range(repeats):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        t0 = now()
        out = fn(**leaves, delta_softplus=True)
        t1 = now()
        out.backward(torch.ones_like(out))
        t2 = now()
        best_f, best_fb = min(best_f, t1 - t0), min(best_fb, t2 - t0)
    return best_f, best_fb


def chunked_segsum_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                        C: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Chunked scan: u, delta (b, d, L) -> y (b, d, L) without D/z; intra-chunk exp(S_t - S_s) matrices."""
    b, d, L = u.shape
    n = A.shape[1]
    pad = -L % chunk
    u, delta, B, C = (torch.nn.functional.pad(x, (0, pad)) for x in (u, delta, B, C))
    nc = (L + pad) // chunk
    S = (delta.view(b, d, nc, chunk, 1) * A.view(1, d, 1, 1, n)).cumsum(3)  # (b, d, nc, c, n)
    x = (delta * u).view(b, d, nc, chunk, 1) * B.view(b, 1, n, nc, chunk).permute(0, 1, 3, 4, 2)
    causal = torch.ones(chunk, chunk, dtype=torch.bool).tril().view(1, 1, 1, chunk, chunk, 1)
    seg = (S.unsqueeze(4) - S.unsqueeze(3)).masked_fill(~causal, -float("inf"))  # (b, d, nc, t, s, n)
    inner = (torch.exp(seg) * x.unsqueeze(3)).sum(4)  # states from inputs of the same chunk
    decay = torch.exp(S)
    h = u.new_zeros(b, d, n)
    states = []
    for k in range(nc):
        hk = inner[:, :, k] + decay[:, :, k] * h.unsqueeze(2)
        states.append(hk)
        h = hk[:, :, -1]
    H = torch.stack(states, 2)
    return (H * C.view(b, 1, n, nc, chunk).permute(0, 1, 3, 4, 2)).sum(-1).reshape(b, d, -1)[..., :L]


def parallel_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor) -> torch.Tensor:
    """Hillis-Steele scan of (decay, input) pairs in ceil(log2 L) full passes: u (b, d, L) -> y (b, d, L)."""
    L = u.shape[-1]
    a = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (b, d, L, n)
    x = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)
    k = 1
    while k < L:
        x = torch.cat([x[:, :, :k], a[:, :, k:] * x[:, :, :-k] + x[:, :, k:]], 2)
        a = torch.cat([a[:, :, :k], a[:, :, k:] * a[:, :, :-k]], 2)
        k *= 2
    return (x * C.transpose(1, 2).unsqueeze(1)).sum(-1)


def time_alternatives(inputs: dict[str, torch.Tensor], repeats: int, clock: str = "wall") -> None:
    """Print forward-only times (no D, z) of the scan and the two alternatives, checking they agree."""
    delta = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    args = (inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"])
    candidates = {"selective_scan (blocked loop)": lambda: selective_scan(*args),
                  "chunked segsum, chunk 4": lambda: chunked_segsum_scan(*args, chunk=4),
                  "chunked segsum, chunk 8": lambda: chunked_segsum_scan(*args, chunk=8),
                  "log-step parallel scan": lambda: parallel_scan(*args)}
    print(f"\n| forward only, L={inputs['u'].shape[-1]} | time (ms) | max abs diff |\n|---|---:|---:|")
    with torch.no_grad():
        ref = selective_scan(*args)
        for name, fn in candidates.items():
            best = float("inf")
            for _ in range(repeats):
                t0 = CLOCKS[clock]()
                out = fn()
                best = min(best, CLOCKS[clock]() - t0)
            print(f"| {name} | {best * 1e3:.0f} | {float((out - ref).abs().max()):.1e} |", flush=True)


def check_parity(inputs: dict[str, torch.Tensor]) -> float:
    """Largest |difference| between the two scans' outputs and input gradients (float32)."""
    results = []
    for fn in (selective_scan, selective_scan_ref):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves, delta_softplus=True)
        out.backward(torch.ones_like(out))
        results.append([out.detach()] + [leaves[k].grad for k in sorted(leaves)])
    return max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(*results, strict=True))


#: (batch, d_inner, length, d_state): the issue's large shape, then the tiny lifter's scans on a
#: (16 windows, 16 frames, 17 joints) batch: temporal (16 * 17 rows, L = 16), spatial (16 * 16 rows, L = 17),
#: and a 243-frame window (16 * 17 rows)
FUSED_SHAPES = ((64, 256, 243, 16), (272, 64, 16, 8), (256, 64, 17, 8), (272, 64, 243, 8))


def time_fused_table(shapes, repeats: int, clock: str = "wall") -> None:
    """Print fused vs blocked PyTorch scan, fwd and fwd+bwd (ms, best of ``repeats``, alternating)."""
    print(f"cpu scan: {cpu_scan_status()}\n")
    print("| (B, D, L, N) | torch fwd | fused fwd | speed-up | torch fwd+bwd | fused fwd+bwd | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for batch, dim, length, dstate in shapes:
        inputs = scan_inputs(batch=batch, dim=dim, length=length, dstate=dstate)
        best = {"torch": [float("inf")] * 2, "fused": [float("inf")] * 2}
        for fn in (selective_scan_torch, selective_scan):  # warm-up (and the fused build)
            time_fwd_bwd(fn, inputs, 1, clock)
        for _ in range(repeats):
            for name, fn in (("torch", selective_scan_torch), ("fused", selective_scan)):
                f, fb = time_fwd_bwd(fn, inputs, 1, clock)
                best[name] = [min(best[name][0], f), min(best[name][1], fb)]
        (tf, tfb), (ff, ffb) = best["torch"], best["fused"]
        print(f"| ({batch}, {dim}, {length}, {dstate}) | {tf * 1e3:.1f} | {ff * 1e3:.1f} | {tf / ff:.1f}x "
              f"| {tfb * 1e3:.1f} | {ffb * 1e3:.1f} | {tfb / ffb:.1f}x |", flush=True)


def time_train_step(repeats: int, clock: str = "wall", windows: int = 16, frames: int = 16) -> None:
    """Print forward+backward ms of the ``tiny`` model's lifter with the PyTorch and the fused scan."""
    from hmrmamba.models.registry import build

    torch.manual_seed(0)
    model = build("tiny", lift_only=True).train()
    lifter = model.lifter
    joints, feat_dim = 17, int(model.feat_mean.shape[0])
    kp2d = torch.rand(windows, frames, joints, 2) * 2 - 1
    conf = torch.rand(windows, frames, joints)
    feats = torch.randn(windows, frames, feat_dim)
    map_dim = int(getattr(lifter, "map_dim", 0) or 0)
    spatial = torch.randn(windows, frames, map_dim, 4, 4) if map_dim else None
    now = CLOCKS[clock]

    def step() -> float:
        model.zero_grad(set_to_none=True)
        t0 = now()
        out = model(kp2d, conf, feats, spatial)
        out.pose3d.pow(2).mean().backward()
        return now() - t0

    best = {"torch": float("inf"), "fused": float("inf")}
    previous = os.environ.get("HMRMAMBA_SCAN")
    try:
        for i in range(repeats + 1):
            for name in ("torch", "fused"):
                os.environ["HMRMAMBA_SCAN"] = "torch" if name == "torch" else "auto"
                took = step()
                if i:  # the first round warms up
                    best[name] = min(best[name], took)
    finally:
        if previous is None:
            os.environ.pop("HMRMAMBA_SCAN", None)
        else:
            os.environ["HMRMAMBA_SCAN"] = previous
    n_params = sum(p.numel() for p in lifter.parameters())
    print(f"\ntiny lifter ({n_params / 1e3:.0f} k parameters), batch ({windows} windows, {frames} frames, {joints} joints), "
          f"forward+backward, best of {repeats}:\n")
    print("| scan | step (ms) |\n|---|---:|")
    print(f"| PyTorch (HMRMAMBA_SCAN=torch) | {best['torch'] * 1e3:.1f} |")
    print(f"| fused C | {best['fused'] * 1e3:.1f} |")
    print(f"| speed-up | {best['torch'] / best['fused']:.2f}x |", flush=True)


#: (batch, L, d_model) of one Mamba call: hmrmamba-s's spatial blocks at T=243 (21 scan steps per frame),
#: the tiny lifter's temporal-kinematic and spatial scans on a (16 windows, 16 frames) batch
LAYOUT_SHAPES = [(1, 5103, 256), (16, 336, 32), (256, 21, 32)]


def channels_first_mamba(m, x: torch.Tensor) -> torch.Tensor:
    """``m`` (a :class:`hmrmamba.ssm.Mamba`) run channels first: x (B, L, d_model) -> (B, L, d_model)."""
    import torch.nn.functional as F

    seqlen = x.shape[1]
    xz = m.in_proj(x).transpose(1, 2)  # (B, 2 d_inner, L)
    u, z = xz.chunk(2, dim=1)
    u = m.act(m.conv1d(u)[..., :seqlen])
    dt, Bm, Cm = torch.split(m.x_proj(u.transpose(1, 2)), [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = F.linear(dt, m.dt_proj.weight).transpose(1, 2)
    y = selective_scan(u.contiguous(), dt.contiguous(), m._A(), Bm.transpose(1, 2).contiguous(),
                       Cm.transpose(1, 2).contiguous(), m.D.float(), z=z.contiguous(),
                       delta_bias=m.dt_proj.bias.float(), delta_softplus=True)
    return m.out_proj(y.transpose(1, 2))


def time_layouts(repeats: int, clock: str = "wall") -> None:
    """Print one Mamba block's forward and forward+backward, channels last (as it runs) vs channels first."""
    from hmrmamba.ssm import Mamba

    now = CLOCKS[clock]
    print("| (B, L, d_model) | channels-first fwd (ms) | channels-last fwd (ms) | speed-up "
          "| channels-first fwd+bwd (ms) | channels-last fwd+bwd (ms) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape in LAYOUT_SHAPES:
        torch.manual_seed(0)
        m = Mamba(shape[2])
        x = torch.randn(*shape)
        calls = {"first": lambda xx: channels_first_mamba(m, xx), "last": m}
        with torch.no_grad():
            diff = (calls["first"](x) - calls["last"](x)).abs().max().item()
        best = {(k, mode): float("inf") for k in calls for mode in ("fwd", "fb")}
        for i in range(repeats + 1):
            for k, fn in calls.items():
                with torch.inference_mode():
                    t0 = now()
                    fn(x)
                    fwd = now() - t0
                xx = x.clone().requires_grad_()
                m.zero_grad(set_to_none=True)
                t0 = now()
                fn(xx).square().sum().backward()
                fb = now() - t0
                if i:  # the first round warms up
                    best[k, "fwd"] = min(best[k, "fwd"], fwd)
                    best[k, "fb"] = min(best[k, "fb"], fb)
        f1, f2, b1, b2 = (best[k] * 1e3 for k in (("first", "fwd"), ("last", "fwd"), ("first", "fb"), ("last", "fb")))
        print(f"| {shape} | {f1:.1f} | {f2:.1f} | {f1 / f2:.2f}x | {b1:.1f} | {b2:.1f} | {b1 / b2:.2f}x |", flush=True)
        if diff > 1e-4:
            print(f"(outputs differ by {diff:.1e}: check the layouts)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 243, 486, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=1)
    ap.add_argument("--ref-max-len", type=int, default=243)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (use with --threads 1 on a busy machine)")
    ap.add_argument("--alternatives", action="store_true", help="also time other scan formulations (L=243)")
    ap.add_argument("--fused", action="store_true",
                    help="fused C scan vs blocked PyTorch scan at FUSED_SHAPES (instead of the reference table)")
    ap.add_argument("--train-step", action="store_true", help="with --fused: also time the tiny lifter's step")
    ap.add_argument("--layout", action="store_true",
                    help="one Mamba block channels last (as it runs) vs channels first, at LAYOUT_SHAPES")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.layout:
        cpu = platform.processor() or platform.machine()
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, {os.cpu_count()} CPUs; "
              f"float32; {args.clock} clock, best of {args.repeats}, the two layouts alternating; "
              f"cpu scan: {cpu_scan_status()}\n")
        time_layouts(args.repeats, args.clock)
        return
    if args.fused:
        cpu = platform.processor() or platform.machine()
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, {os.cpu_count()} CPUs; "
              f"float32; {args.clock} clock, best of {args.repeats}, fused and torch alternating\n")
        time_fused_table(FUSED_SHAPES, args.repeats, args.clock)
        if args.train_step:
            time_train_step(args.repeats, args.clock)
        return

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}"
          f"; B={args.batch}, D={args.dim}, N={args.dstate}, float32; {args.clock} clock, "
          f"best of {args.repeats} "
          f"(ref: {args.ref_repeats})\n")
    small = scan_inputs(batch=4, dim=16, length=50, dstate=args.dstate)
    print(f"parity check (B=4, D=16, L=50): max relative difference of out and all gradients "
          f"= {check_parity(small):.1e}\n")
    print("| L | scan fwd (ms) | scan fwd+bwd (ms) | fwd+bwd per step (ms) | ref fwd (ms) | ref fwd+bwd (ms) "
          "| speed-up fwd+bwd |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for seqlen in args.lengths:
        inputs = scan_inputs(batch=args.batch, dim=args.dim, length=seqlen, dstate=args.dstate)
        time_fwd_bwd(selective_scan, inputs, 1)  # warm-up
        f, fb = time_fwd_bwd(selective_scan, inputs, args.repeats, args.clock)
        if seqlen <= args.ref_max_len:
            rf, rfb = time_fwd_bwd(selective_scan_ref, inputs, args.ref_repeats, args.clock)
            ref_cols = f"{rf * 1e3:.0f} | {rfb * 1e3:.0f} | {rfb / fb:.1f}x"
        else:
            ref_cols = "- | - | -"
        print(f"| {seqlen} | {f * 1e3:.1f} | {fb * 1e3:.1f} | {fb * 1e3 / seqlen:.2f} | {ref_cols} |",
              flush=True)
    if args.alternatives:
        time_alternatives(scan_inputs(batch=args.batch, dim=args.dim, length=243, dstate=args.dstate), repeats=2,
                          clock=args.clock)


if __name__ == "__main__":
    main()
