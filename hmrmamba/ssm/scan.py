"""Selective scan (Mamba's S6 recurrence, paper eq. 1-3): dispatch to the fused CPU kernel, and the
blocked pure-PyTorch scan that is the fallback on every device.

The recurrence, per batch b, channel d and state n, with zero-order-hold discretisation::

    dA_t   = exp(delta_t * A)                  # (eq. 2)
    h_t    = dA_t * h_{t-1} + delta_t * B_t * u_t
    y_t    = <C_t, h_t> + D * u_t              # (eq. 3)
    out_t  = y_t * silu(z_t)                   # optional gate

``selective_scan`` has the signature, shapes and semantics of ``mamba_ssm``'s
``selective_scan_fn`` (real ``A`` only) plus ``initial_state`` for streaming.

On CPU tensors ``selective_scan`` runs the fused C kernel of :mod:`hmrmamba.ssm.fused` (one pass per
tile, 4-7x faster fwd+bwd on 2-core x86; ``docs/benchmarks.md``) when its library builds; ``HMRMAMBA_SCAN=torch``,
other devices, tracing and export run :func:`selective_scan_torch`, described here.

How the PyTorch scan is computed (chosen by measurement, ``benchmarks/bench_scan.py --alternatives``, 2-core
CPU): batch, channels and states are vectorised; time runs in blocks of ``DEFAULT_BLOCK`` steps
through a reused time-major ``(block, B, D, N)`` buffer, one fused ``addcmul_`` per step. The
backward pass is written by hand: it recomputes each block's states from the state saved at the
block boundary and runs the adjoint recurrence backwards, instead of letting autograd record ``L``
small graphs. Memory is O(B D N (L / block + block)), not O(B D N L).

Rejected after measuring: the chunked "segsum" form (Mamba-2 style) needs a (chunk x chunk) decay
matrix per (b, d, n), because Mamba-1's decay depends on the channel and the state, so it does
``chunk`` times more work and exponentials; a log-step parallel scan does ``log2 L`` full passes.
Forward only at (B=64, D=256, L=243, N=16) they were 25-120x slower than the blocked loop. Plain
log-space prefix products ``exp(-cumsum(delta A))`` overflow in float32 and were not considered
further. With ``delta >= 0`` and ``A <= 0`` every factor here is ``exp(delta A) <= 1``, so nothing
overflows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from hmrmamba.errors import InputError
from hmrmamba.ssm.fused import checked, fused_available, fused_enabled, fused_scan, fused_supports

__all__ = ["check_scan_values", "selective_scan", "selective_scan_ref", "selective_scan_torch", "validate_scan_inputs"]


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def validate_scan_inputs(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None,
                         initial_state: torch.Tensor | None = None, check_finite: bool = True) -> None:
    """Raise ``InputError`` unless the shapes are u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L)
    or (B, G, N, L) with D % G == 0; D, delta_bias: (D,); initial_state: (B, D, N); all finite."""
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(f"must be a torch.Tensor, got {type(t).__name__}", field=name)
    if u.dim() != 3:
        raise InputError(f"has shape {_shape(u)}", field="u", expected="(batch, dim, seqlen)")
    batch, dim, seqlen = u.shape
    if seqlen < 1 or batch < 1 or dim < 1:
        raise InputError(f"has shape {_shape(u)}", field="u", expected="(batch, dim, seqlen) all >= 1")
    if delta.shape != u.shape:
        raise InputError(f"has shape {_shape(delta)}", field="delta",
                         expected=f"(batch, dim, seqlen) = {tuple(u.shape)} like u")
    if A.dim() != 2 or A.shape[0] != dim:
        raise InputError(f"has shape {_shape(A)}", field="A", expected=f"(dim, dstate) with dim={dim}")
    if A.is_complex():
        raise InputError("is complex", field="A", expected="a real (dim, dstate) tensor")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = False
        if t.dim() == 3:
            ok = t.shape == (batch, dstate, seqlen)
        elif t.dim() == 4:
            ok = (t.shape[0] == batch and t.shape[2] == dstate and t.shape[3] == seqlen
                  and t.shape[1] >= 1 and dim % t.shape[1] == 0)
        if not ok:
            raise InputError(f"has shape {_shape(t)}", field=name,
                             expected=f"(batch, dstate, seqlen) = {(batch, dstate, seqlen)} or "
                                      f"(batch, groups, dstate, seqlen) with dim={dim} divisible by groups")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise InputError(f"has shape {_shape(t)}", field=name, expected=f"(dim,) = ({dim},)")
    if z is not None and z.shape != u.shape:
        raise InputError(f"has shape {_shape(z)}", field="z",
                         expected=f"(batch, dim, seqlen) = {tuple(u.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, dstate):
        raise InputError(f"has shape {_shape(initial_state)}", field="initial_state",
                         expected=f"(batch, dim, dstate) = {(batch, dim, dstate)}")
    if check_finite:
        check_scan_values(u, delta, A, B, C, D, z, delta_bias, initial_state)


def check_scan_values(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                      delta_bias: torch.Tensor | None = None, initial_state: torch.Tensor | None = None) -> None:
    """Raise ``InputError`` naming the first input (in argument order) that holds NaN or Inf. Values only:
    any layout (channels first or last) of inputs whose shapes :func:`validate_scan_inputs` accepted."""
    if torch.compiler.is_exporting():  # value checks cannot be traced by torch.export
        return
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
             "initial_state": initial_state}
    for name, t in named.items():
        # a sum is finite unless an element is NaN/Inf (or it overflows): one cheap pass first
        if t is not None and t.numel() and not (bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())):
            raise InputError("contains NaN or Inf", field=name, expected="finite values")


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _rows(t: torch.Tensor) -> torch.Tensor:
    """B or C (B, N, L) | (B, G, N, L) -> contiguous time-major rows (L, B, G, 1, N)."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.permute(3, 0, 1, 2).contiguous().unsqueeze(-2)


#: Time steps per block. Blocks bound the working memory to (block, B, D, N) and keep it in cache;
#: only the state at each block boundary is saved for the backward pass, which recomputes the rest.
DEFAULT_BLOCK = 8


def _run_block(H: torch.Tensor, dA: torch.Tensor, dtu: torch.Tensor, Br: torch.Tensor,
               dt: torch.Tensor, A: torch.Tensor, h_prev: torch.Tensor | None) -> None:
    """Fill H: (T, B, D, N) with the states of one block and dA: (T, B, D, N) with exp(dt A).

    dtu: (T, B, G, 1, Dg) delta*u rows; Br: (T, B, G, 1, N); dt: (T, B, D, 1); h_prev: (B, D, N) or None.
    """
    steps = H.shape[0]
    torch.mul(dt, A, out=dA).exp_()
    torch.mul(dtu.transpose(-1, -2), Br, out=H.view(dtu.shape[:-2] + (dtu.shape[-1], Br.shape[-1])))
    if h_prev is not None:
        H[0].addcmul_(dA[0], h_prev)
    for t in range(1, steps):
        H[t].addcmul_(dA[t], H[t - 1])


class _SelectiveScanCore(torch.autograd.Function):
    """y = C . h with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; returns (y (B,D,L), h_L (B,D,N)).

    Inputs are already in the compute dtype. Time-major buffers of one block are reused; the
    readouts are (1 x D) @ (D x N) style batched products, which BLAS does fastest in this layout.
    The backward pass recomputes each block's states from the saved boundary state and runs the
    adjoint recurrence g_t = C_t gy_t + exp(delta_{t+1} A) g_{t+1} from the last block to the first.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block):
        batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        groups = 1 if B.dim() == 3 else B.shape[1]
        groups_c = 1 if C.dim() == 3 else C.shape[1]
        dgc = dim // groups_c
        block = max(1, min(block, seqlen))
        dt_l = delta.permute(2, 0, 1).contiguous()  # (L, B, D)
        dtu = (dt_l * u.permute(2, 0, 1)).view(seqlen, batch, groups, 1, dim // groups)
        Br, Cr = _rows(B), _rows(C)
        dt4 = dt_l.unsqueeze(-1)
        H = u.new_empty((block, batch, dim, dstate))
        dA = u.new_empty((block, batch, dim, dstate))
        y = u.new_empty((seqlen, batch, dim))
        starts = list(range(0, seqlen, block))
        bounds = u.new_empty((len(starts), batch, dim, dstate))  # state before each block
        if h0 is None:
            bounds[0].zero_()
        else:
            bounds[0].copy_(h0)
        h_prev, last = h0, None
        for k, s in enumerate(starts):
            e = min(s + block, seqlen)
            T = e - s
            Hb = H[:T]
            _run_block(Hb, dA[:T], dtu[s:e], Br[s:e], dt4[s:e], A, h_prev)
            torch.matmul(Cr[s:e], Hb.view(T, batch, groups_c, dgc, dstate).transpose(-1, -2),
                         out=y[s:e].view(T, batch, groups_c, 1, dgc))
            # copy the block's last state out before the buffer H is overwritten
            h_prev = bounds[k + 1].copy_(Hb[-1]) if k + 1 < len(starts) else Hb[-1].clone()
            last = h_prev
        ctx.save_for_backward(u, delta, A, B, C, bounds)
        ctx.block = block
        ctx.has_h0 = h0 is not None
        ctx.set_materialize_grads(False)
        return y.permute(1, 2, 0), last

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glast):
        u, delta, A, B, C, bounds = ctx.saved_tensors
        block = ctx.block
        batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        groups = 1 if B.dim() == 3 else B.shape[1]
        groups_c = 1 if C.dim() == 3 else C.shape[1]
        dg, dgc = dim // groups, dim // groups_c
        if gy is None:
            gy = u.new_zeros(u.shape)
        u_l = u.permute(2, 0, 1)
        dt_l = delta.permute(2, 0, 1).contiguous()
        dtu = (dt_l * u_l).view(seqlen, batch, groups, 1, dg)
        dt4 = dt_l.unsqueeze(-1)
        gy_r = gy.permute(2, 0, 1).contiguous().view(seqlen, batch, groups_c, 1, dgc)
        Br, Cr = _rows(B), _rows(C)
        ones = u.new_ones(dstate)
        H = u.new_empty((block, batch, dim, dstate))
        dA = u.new_empty((block, batch, dim, dstate))
        G = u.new_empty((block, batch, dim, dstate))
        dB = u.new_empty((seqlen, batch, groups, 1, dstate))
        dC = u.new_empty((seqlen, batch, groups_c, 1, dstate))
        gdtu = u.new_empty((seqlen, batch, groups, 1, dg))
        gdt = u.new_empty((seqlen, batch, dim))
        dA_param = torch.zeros_like(A)
        carry = None if glast is None else glast.clone()  # gradient reaching the last state of a block
        starts = list(range(0, seqlen, block))
        for k in range(len(starts) - 1, -1, -1):
            s = starts[k]
            e = min(s + block, seqlen)
            T = e - s
            h_prev = bounds[k] if (k > 0 or ctx.has_h0) else None
            Hb, dAb, Gb = H[:T], dA[:T], G[:T]
            _run_block(Hb, dAb, dtu[s:e], Br[s:e], dt4[s:e], A, h_prev)
            # dL/dh_t from the readout, then the adjoint recurrence inside the block
            Hc = Hb.view(T, batch, groups_c, dgc, dstate)
            torch.mul(gy_r[s:e].transpose(-1, -2), Cr[s:e], out=Gb.view(T, batch, groups_c, dgc, dstate))
            if carry is not None:
                Gb[T - 1].add_(carry)
            for t in range(T - 1, 0, -1):
                Gb[t - 1].addcmul_(dAb[t], Gb[t])
            Gg = Gb.view(T, batch, groups, dg, dstate)
            torch.matmul(gy_r[s:e], Hc, out=dC[s:e])  # dC_t = sum_d gy_t h_t
            torch.matmul(dtu[s:e], Gg, out=dB[s:e])  # dB_t = sum_d g_t delta_t u_t
            torch.matmul(Br[s:e], Gg.transpose(-1, -2), out=gdtu[s:e])  # d(delta u)_t = sum_n g_t B_t
            # decay term: d(delta A)_t = g_t * dA_t * h_{t-1}
            P = Gb.mul_(dAb)
            carry = P[0].clone()  # flows into h_{s-1}: the previous block, or initial_state
            Q = dAb
            torch.mul(P[1:], Hb[:-1], out=Q[1:])
            if h_prev is None:
                Q[0].zero_()
            else:
                torch.mul(P[0], h_prev, out=Q[0])
            dA_param.add_(torch.mul(Q, dt4[s:e], out=Gb).sum(dim=(0, 1)))  # sum_{t,b} delta * Q
            torch.mv(Q.mul_(A).view(-1, dstate), ones, out=gdt[s:e].view(-1))  # sum_n A * Q
        gdtu = gdtu.view(seqlen, batch, dim)
        du = (gdtu * dt_l).permute(1, 2, 0)
        ddelta = gdt.addcmul_(gdtu, u_l).permute(1, 2, 0)
        dB = dB.squeeze(-2).permute(1, 2, 3, 0)  # (B, G, N, L)
        dC = dC.squeeze(-2).permute(1, 2, 3, 0)
        if B.dim() == 3:
            dB = dB.squeeze(1)
        if C.dim() == 3:
            dC = dC.squeeze(1)
        dh0 = carry if ctx.has_h0 else None
        return du, ddelta, dA_param, dB, dC, dh0, None


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, initial_state: torch.Tensor | None = None,
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan. u, delta, z: (B, D, L); A: (D, N) (negative); B, C: (B, N, L) or (B, G, N, L);
    D, delta_bias: (D,); initial_state: (B, D, N) -> out (B, D, L) [, last_state (B, D, N)].

    Matches ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``; unlike it, the gradient
    of ``last_state`` is propagated, and ``initial_state`` (the state before the first step) lets
    a long sequence be scanned in pieces. Computed in float32 (float64 if ``u`` is float64);
    ``out`` has the dtype of ``u`` and ``last_state`` the compute dtype.

    CPU tensors run the fused C scan (:mod:`hmrmamba.ssm.fused`) when its library builds, unless
    ``HMRMAMBA_SCAN=torch``; everything else runs :func:`selective_scan_torch`. Both compute the same.
    """
    validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, check_finite=False)
    if (fused_enabled() and fused_supports(u, A, delta, B, C, D, z, delta_bias, initial_state)
            and fused_available()):  # the kernel checks the values while it computes
        out, last = checked(
            lambda accept: fused_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                      _compute_dtype(u), allow_nonfinite=accept),
            lambda: check_scan_values(u, delta, A, B, C, D, z, delta_bias, initial_state))
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out
    check_scan_values(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False, initial_state: torch.Tensor | None = None,
                         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``selective_scan`` always on the blocked pure-PyTorch path (any device), same contract:
    u, delta: (B, D, L) -> out (B, D, L) [, last_state (B, D, N)]."""
    validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


def _scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state):
    """The blocked PyTorch scan on validated inputs (arguments as ``selective_scan``)."""
    dtype_in = u.dtype
    cdt = _compute_dtype(u)
    uc = u.to(cdt)
    dc = delta.to(cdt)
    if delta_bias is not None:
        dc = dc + delta_bias.to(cdt).unsqueeze(-1)
    if delta_softplus:
        dc = F.softplus(dc)
    h0 = None if initial_state is None else initial_state.to(cdt)
    y, last = _SelectiveScanCore.apply(uc, dc, A.to(cdt), B.to(cdt), C.to(cdt), h0, DEFAULT_BLOCK)
    out = y if D is None else y + uc * D.to(cdt).unsqueeze(-1)
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: torch.Tensor | None = None,
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference scan, same contract as ``selective_scan``: u, delta: (B, D, L) -> out (B, D, L).

    The plain formulation used by mamba_ssm's reference: materialise exp(delta A) and delta B u as
    (B, D, L, N), then step through L with einsum and let autograd record every step. Slow; it is
    the speed baseline of ``benchmarks/bench_scan.py``.
    """
    validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype_in = u.dtype
    cdt = _compute_dtype(u)
    uc, dc = u.to(cdt), delta.to(cdt)
    if delta_bias is not None:
        dc = dc + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dc = F.softplus(dc)
    batch, dim, seqlen = uc.shape
    Bf, Cf = B.to(cdt), C.to(cdt)
    if Bf.dim() == 4:
        Bf = Bf.repeat_interleave(dim // Bf.shape[1], dim=1)  # (B, D, N, L)
    if Cf.dim() == 4:
        Cf = Cf.repeat_interleave(dim // Cf.shape[1], dim=1)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", dc, A.to(cdt)))
    if Bf.dim() == 3:
        deltaBu = torch.einsum("bdl,bnl,bdl->bdln", dc, Bf, uc)
    else:
        deltaBu = torch.einsum("bdl,bdnl,bdl->bdln", dc, Bf, uc)
    h = uc.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(cdt)
    ys = []
    for i in range(seqlen):
        h = deltaA[:, :, i] * h + deltaBu[:, :, i]
        if Cf.dim() == 3:
            ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, :, i]))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", h, Cf[:, :, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + uc * D.to(cdt)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out
