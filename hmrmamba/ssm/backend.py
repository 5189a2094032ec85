"""Choice between the pure-PyTorch selective scan and ``mamba_ssm``'s fused CUDA kernel.

On the CPU, :func:`hmrmamba.ssm.scan.selective_scan` itself picks the fused C scan
(:mod:`hmrmamba.ssm.fused`) when its library builds; :func:`cpu_scan_status` says which runs.

``backend`` is one of:

- ``"torch"``: always :func:`hmrmamba.ssm.scan.selective_scan`.
- ``"mamba_ssm"``: ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``; raises
  :class:`BackendUnavailableError` when ``mamba_ssm`` cannot be imported or CUDA is absent.
- ``"auto"``: the fused kernel when CUDA is available, the input is on CUDA and ``import mamba_ssm``
  succeeds; the pure-PyTorch scan otherwise.

``mamba_ssm`` is imported lazily, on the first question, never when this module is imported; the
answer is cached. Its kernel has no ``initial_state`` argument, so a call that passes one (streaming
inference) always runs the PyTorch scan; the two compute the same recurrence.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch

from hmrmamba.errors import InputError
from hmrmamba.ssm.scan import check_scan_values, selective_scan, validate_scan_inputs

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "check_backend_name",
    "cpu_scan_status",
    "mamba_ssm_available",
    "resolve_backend",
    "scan_channels_last",
    "scan_with_backend",
]

BACKENDS = ("auto", "torch", "mamba_ssm")


class BackendUnavailableError(RuntimeError):
    """The ``mamba_ssm`` backend was asked for explicitly but cannot run here."""


@functools.lru_cache(maxsize=1)
def _import_mamba_ssm() -> tuple[Callable[..., Any] | None, str]:
    """Import mamba_ssm's ``selective_scan_fn`` once; return (fn or None, reason it failed)."""
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        return module.selective_scan_fn, ""
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError/RuntimeError from a broken CUDA build
        return None, f"{type(exc).__name__}: {exc}"


def mamba_ssm_available() -> bool:
    """True when CUDA is available and ``mamba_ssm``'s selective scan imports (cached)."""
    return torch.cuda.is_available() and _import_mamba_ssm()[0] is not None


def cpu_scan_status() -> str:
    """Which selective scan CPU tensors run: ``"fused C (OpenMP, N threads)"`` or ``"pytorch (reason)"``.
    Builds the fused library on first call if it is not cached yet."""
    from hmrmamba.ssm.fused import SCAN_ENV, fused_enabled, load_library

    if not fused_enabled():
        return f"pytorch ({SCAN_ENV}=torch)"
    lib, reason = load_library()
    if lib is None:
        return f"pytorch ({reason})"
    if lib.hm_scan_openmp():
        n = torch.get_num_threads()
        return f"fused C (OpenMP, {n} thread{'s' if n != 1 else ''})"
    return "fused C (no OpenMP, 1 thread)"


def check_backend_name(backend: str) -> str:
    """Return ``backend`` if it is one of ``BACKENDS``; raise ``InputError`` otherwise."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}", field="backend", expected=" | ".join(BACKENDS))
    return backend


def resolve_backend(backend: str, x: torch.Tensor | None = None) -> str:
    """Resolve ``auto|torch|mamba_ssm`` to ``torch`` or ``mamba_ssm`` for a tensor ``x`` (any shape)."""
    check_backend_name(backend)
    if backend == "torch":
        return "torch"
    if backend == "mamba_ssm":
        if not torch.cuda.is_available():
            raise BackendUnavailableError("backend='mamba_ssm' needs CUDA, but torch.cuda.is_available() "
                                          "is False; use backend='auto' or 'torch'")
        fn, reason = _import_mamba_ssm()
        if fn is None:
            raise BackendUnavailableError(
                f"backend='mamba_ssm' but mamba_ssm cannot be imported ({reason}); install it with "
                "`pip install --no-build-isolation -e .[cuda]` or use backend='auto' or 'torch'")
        if x is not None and not x.is_cuda:
            raise BackendUnavailableError(f"backend='mamba_ssm' needs CUDA tensors, got one on {x.device}")
        return "mamba_ssm"
    on_cuda = x is None or x.is_cuda
    return "mamba_ssm" if on_cuda and mamba_ssm_available() else "torch"


def scan_with_backend(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                      delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                      return_last_state: bool = False, initial_state: torch.Tensor | None = None,
                      backend: str = "auto") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``selective_scan`` on the chosen backend. u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L)
    -> out (B, D, L) [, last_state (B, D, N)]."""
    which = resolve_backend(backend, u)
    if which == "mamba_ssm" and initial_state is None:
        fn = _import_mamba_ssm()[0]
        return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  return_last_state=return_last_state)
    return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_last_state=return_last_state, initial_state=initial_state)


def scan_channels_last(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                       delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: torch.Tensor | None = None,
                       backend: str = "auto") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`scan_with_backend` on channels-last tensors: u, delta, z: (B, L, D); A: (D, N); B, C: (B, L, N)
    -> out (B, L, D) [, last_state (B, D, N)].

    CPU tensors on the fused C scan run without any transpose (the kernel reads the layout as it is);
    every other path scans the transposed views with :func:`scan_with_backend`. Shapes and values are
    checked as there, with the same errors (they name the channels-first shapes).
    """
    from hmrmamba.ssm.fused import checked, fused_available, fused_enabled, fused_scan_channels_last, fused_supports
    from hmrmamba.ssm.scan import _compute_dtype

    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 3):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"has shape {shape}", field=name, expected="a (batch, seqlen, channels) tensor")
    if (resolve_backend(backend, u) == "torch" and fused_enabled()
            and fused_supports(u, A, delta, B, C, D, z, delta_bias, initial_state) and fused_available()):
        # shapes now; values inside the kernel, named by check_scan_values only if one is bad
        channels_first_call(lambda *a, z=None: validate_scan_inputs(*a, z, delta_bias, initial_state,
                                                                    check_finite=False),
                            u, delta, A, B, C, D, z, back=False)
        out, last = checked(
            lambda accept: fused_scan_channels_last(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                    initial_state, _compute_dtype(u), allow_nonfinite=accept),
            lambda: check_scan_values(u, delta, A, B, C, D, z, delta_bias, initial_state))
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out
    return channels_first_call(scan_with_backend, u, delta, A, B, C, D, z, last_state=return_last_state,
                               delta_bias=delta_bias, delta_softplus=delta_softplus,
                               return_last_state=return_last_state, initial_state=initial_state, backend=backend)


def channels_first_call(scan: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                        C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None, *,
                        last_state: bool = False, back: bool = True, **kwargs: Any) -> Any:
    """A channels-first scan function on channels-last tensors: u, delta, z (B, L, D) and B, C (B, L, N)
    are passed as their (B, D, L) / (B, N, L) views, ``scan(u, delta, A, B, C, D, z=z, **kwargs)``.

    With ``back`` its output (B, D, L) comes back as (B, L, D); with ``last_state`` it is
    ``(out, last_state)`` and only ``out`` is transposed. Without ``back`` the result is returned as is.
    """
    def first(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.transpose(1, 2)

    res = scan(first(u), first(delta), A, first(B), first(C), D, z=first(z), **kwargs)
    if not back:
        return res
    return (res[0].transpose(1, 2), res[1]) if last_state else res.transpose(1, 2)
