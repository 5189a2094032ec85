"""The fused CPU selective scan: ``csrc/selective_scan.c`` through ctypes, as an autograd Function.

One C call runs the whole forward (softplus of delta + bias, the recurrence, the readout, the D skip
and the SiLU gate) and one the whole backward (recomputing each row's states in a per-thread buffer,
so memory is O(threads L N), not O(B D L N)). Rows run in parallel with OpenMP on
``torch.get_num_threads()`` threads.

The library is built lazily (:func:`load_library`, on the first fused scan) by
:mod:`hmrmamba.ssm.build`; a failed build or load logs one warning and :func:`fused_available`
turns False, so callers fall back to the PyTorch scan. ``HMRMAMBA_SCAN=torch`` turns the fused path
off without touching the library.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["NonFiniteScan", "checked", "fused_available", "fused_enabled", "fused_scan", "fused_scan_channels_last",
           "fused_supports", "load_library"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``HMRMAMBA_SCAN`` values: ``auto`` (default: fused C scan on CPU when it builds) or ``torch``
SCAN_ENV = "HMRMAMBA_SCAN"
ABI_VERSION = 3

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_FWD_ARGS = [_P] * 11 + [_I64] * 6 + [_INT] * 3  # ..., softplus, channels_last, threads
_BWD_ARGS = [_P] * 20 + [_I64] * 6 + [_INT] * 3


@functools.lru_cache(maxsize=1)
def load_library() -> tuple[ctypes.CDLL | None, str]:
    """Build (if needed) and load the library once per process: (library or None, reason it is None).
    A failure is logged once, as a single warning line."""
    from hmrmamba.ssm.build import build_library

    result = build_library()
    if result.path is None:
        reason = f"build failed: {result.detail}"
    else:
        try:
            lib = ctypes.CDLL(str(result.path))
            if lib.hm_scan_abi() != ABI_VERSION:
                raise OSError(f"ABI {lib.hm_scan_abi()} != {ABI_VERSION}")
            for suffix in ("f32", "f64"):
                fwd, bwd = getattr(lib, f"hm_scan_fwd_{suffix}"), getattr(lib, f"hm_scan_bwd_{suffix}")
                fwd.argtypes, fwd.restype = _FWD_ARGS, _INT
                bwd.argtypes, bwd.restype = _BWD_ARGS, _INT
            return lib, ""
        except (OSError, AttributeError) as exc:
            reason = f"cannot load {result.path}: {exc}"
    log.warning("fused CPU selective scan unavailable (%s); using the PyTorch scan", reason.replace("\n", " "))
    return None, reason


def fused_enabled() -> bool:
    """False when ``HMRMAMBA_SCAN=torch`` asks for the PyTorch scan."""
    return os.environ.get(SCAN_ENV, "auto").strip().lower() != "torch"


def fused_available() -> bool:
    """True when the fused scan is enabled and its library builds and loads (builds it on first call)."""
    return fused_enabled() and load_library()[0] is not None


def fused_supports(u: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether the fused kernel can take these (already validated) inputs: all on the CPU, no
    tracing / compiling / exporting, ``d_state`` within the kernel's limit (``tensors[0]`` is A)."""
    if u.device.type != "cpu" or any(t is not None and t.device.type != "cpu" for t in tensors):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return tensors[0] is None or tensors[0].shape[-1] <= 256


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class NonFiniteScan(FloatingPointError):
    """The kernel met NaN or Inf in an input or an output (its return code 2); :func:`checked` turns it into
    the reference's named :class:`~hmrmamba.errors.InputError`."""


def checked(run: Callable[[bool], T], validate: Callable[[], None]) -> T:
    """``run(False)``, the fused scan with its in-kernel finite check; when the kernel reports NaN or Inf,
    ``validate()`` (the reference's input check with values) raises the error that names the input, and
    finite inputs whose outputs overflowed run again as ``run(True)``, which accepts them (as the
    reference does). The kernel checks while it computes, so finite inputs cost no extra pass over them."""
    try:
        return run(False)
    except NonFiniteScan:
        validate()
        return run(True)


class _FusedScanFn(torch.autograd.Function):
    """(u, delta, A, B4, C4, D, z, delta_bias, h0) -> (out (B, D, L), last (B, D, N)).

    All inputs are contiguous, in one compute dtype (float32 or float64); B4, C4 are
    (B, G, L, N); D, z, delta_bias, h0 may be None; ``delta`` is the raw delta (bias and softplus
    are applied inside). ``channels_last``: u, delta, z and out are (B, L, D) instead.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B4, C4, D, z, delta_bias, h0, softplus, channels_last=False, allow_nonfinite=False):
        lib = load_library()[0]
        if channels_last:
            batch, seqlen, dim = u.shape
        else:
            batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        out = torch.empty_like(u)
        last = u.new_empty((batch, dim, dstate))
        fn = getattr(lib, f"hm_scan_fwd_{_suffix(u.dtype)}")
        status = fn(u.data_ptr(), delta.data_ptr(), A.data_ptr(), B4.data_ptr(), C4.data_ptr(), _ptr(D), _ptr(z),
                    _ptr(delta_bias), _ptr(h0), out.data_ptr(), last.data_ptr(), batch, dim, seqlen, dstate,
                    B4.shape[1], C4.shape[1], int(softplus), int(channels_last), torch.get_num_threads())
        if status == 2 and not allow_nonfinite:
            raise NonFiniteScan("NaN or Inf in the selective scan's inputs or outputs")
        if status == 1:
            raise MemoryError("fused selective scan forward: cannot allocate its work space")
        ctx.save_for_backward(u, delta, A, B4, C4, D, z, delta_bias, h0)
        ctx.softplus = softplus
        ctx.channels_last = channels_last
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):
        u, delta, A, B4, C4, D, z, delta_bias, h0 = ctx.saved_tensors
        lib = load_library()[0]
        batch, dim, seqlen = (u.shape[0], u.shape[2], u.shape[1]) if ctx.channels_last else u.shape
        dstate = A.shape[1]
        gout, glast = _c(gout), _c(glast)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA, dB, dC = torch.empty_like(A), torch.empty_like(B4), torch.empty_like(C4)
        dD = None if D is None else torch.empty_like(D)
        dz = None if z is None else torch.empty_like(z)
        dbias = None if delta_bias is None else torch.empty_like(delta_bias)
        dh0 = None if h0 is None else torch.empty_like(h0)
        fn = getattr(lib, f"hm_scan_bwd_{_suffix(u.dtype)}")
        status = fn(u.data_ptr(), delta.data_ptr(), A.data_ptr(), B4.data_ptr(), C4.data_ptr(), _ptr(D), _ptr(z),
                    _ptr(delta_bias), _ptr(h0), _ptr(gout), _ptr(glast), du.data_ptr(), ddelta.data_ptr(),
                    dA.data_ptr(), dB.data_ptr(), dC.data_ptr(), _ptr(dD), _ptr(dz), _ptr(dbias), _ptr(dh0),
                    batch, dim, seqlen, dstate, B4.shape[1], C4.shape[1], int(ctx.softplus),
                    int(ctx.channels_last), torch.get_num_threads())
        if status != 0:
            raise MemoryError("fused selective scan backward: cannot allocate its work space")
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None, None, None


def _compute(t: torch.Tensor | None, cdt: torch.dtype) -> torch.Tensor | None:
    """An optional input as the kernel takes it: contiguous, in the compute dtype."""
    return None if t is None else t.to(cdt).contiguous()


def _time_last(t: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """B or C (B, N, L) | (B, G, N, L) -> contiguous (B, G, L, N) in the compute dtype."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.to(cdt).transpose(-1, -2).contiguous()


def fused_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
               delta_softplus: bool, initial_state: torch.Tensor | None, cdt: torch.dtype,
               allow_nonfinite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``selective_scan`` inputs of valid shapes -> (out (B, D, L) in ``cdt``, last state (B, D, N) in ``cdt``).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L) or (B, G, N, L); D, delta_bias: (D,);
    initial_state: (B, D, N). Differentiable in every tensor input. Raises :class:`NonFiniteScan` when an
    input or output holds NaN or Inf, unless ``allow_nonfinite`` (see :func:`checked`).
    """

    return _FusedScanFn.apply(*(_compute(t, cdt) for t in (u, delta, A)), _time_last(B, cdt), _time_last(C, cdt),
                              *(_compute(t, cdt) for t in (D, z, delta_bias, initial_state)), bool(delta_softplus),
                              False, bool(allow_nonfinite))


def fused_scan_channels_last(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
                             delta_bias: torch.Tensor | None, delta_softplus: bool,
                             initial_state: torch.Tensor | None, cdt: torch.dtype,
                             allow_nonfinite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fused_scan` on channels-last tensors, with no transposes: u, delta, z: (B, L, D);
    B, C: (B, L, N) -> (out (B, L, D), last state (B, D, N)), both in ``cdt``.

    The same kernel and arithmetic as :func:`fused_scan` (the tile of 16 channels reads one
    contiguous block per time step instead of 16 strided rows), so outputs match it bit for bit.
    """

    return _FusedScanFn.apply(*(_compute(t, cdt) for t in (u, delta, A)), _compute(B, cdt).unsqueeze(1),
                              _compute(C, cdt).unsqueeze(1), *(_compute(t, cdt) for t in (D, z, delta_bias, initial_state)),
                              bool(delta_softplus), True, bool(allow_nonfinite))
