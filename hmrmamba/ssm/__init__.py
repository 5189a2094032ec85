"""Selective state-space models (paper eq. 1-3): the selective scan and the Mamba block in pure
PyTorch, with ``mamba_ssm``'s fused kernel used on CUDA when it is installed."""

from hmrmamba.ssm.backend import (
           BackendUnavailableError,
           mamba_ssm_available,
           resolve_backend,
           scan_with_backend,
)
from hmrmamba.ssm.mamba import BiMamba, Mamba, MambaState
from hmrmamba.ssm.scan import selective_scan, selective_scan_ref

__all__ = [
           "BackendUnavailableError",
           "BiMamba",
           "Mamba",
           "MambaState",
           "mamba_ssm_available",
           "resolve_backend",
           "scan_with_backend",
           "selective_scan",
           "selective_scan_ref",
]
