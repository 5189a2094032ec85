"""Keep freed memory in the process: glibc's malloc without ``mmap`` for large blocks.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it with ``munmap`` on free. A torch CPU forward allocates and frees the same large activations
again and again, so each one is page-faulted and zeroed by the kernel anew: at the hmrmamba-s lifter's
T=486 (MLP activations of 42 MB) ``gelu`` took 6.8x its T=243 time for 2x the elements, and the
lifter's time ratio T=486 / T=243 was 2.16 for exactly 2x the work (``benchmarks/bench_length_scaling.py``,
docs/benchmarks.md). With ``mmap`` off and no trimming, freed blocks stay in the heap and are reused,
as jemalloc or tcmalloc would do; the price is that the process keeps its peak heap until it exits.

:func:`keep_freed_memory` sets this through ``mallopt`` for the calling process (the stages call it
through ``runtime.keep_freed_memory``). It changes where memory comes from, never a computed value. On a
C library without ``mallopt`` (macOS, musl) it does nothing and says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

__all__ = ["AllocatorStatus", "keep_freed_memory", "allocator_status"]

# mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: bytes the heap keeps when it could give memory back (a trim threshold no heap reaches)
_NO_TRIM = 2**31 - 1
#: extra bytes asked of the kernel each time the heap grows (fewer, larger ``brk`` calls)
_TOP_PAD = 64 * 2**20


@dataclass(frozen=True)
class AllocatorStatus:
    """What :func:`keep_freed_memory` did: ``active`` and a one-line ``description``."""

    active: bool
    description: str


_STATUS = AllocatorStatus(False, "system default (keep_freed_memory not called)")


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    return lib if hasattr(lib, "mallopt") and hasattr(lib, "gnu_get_libc_version") else None


def keep_freed_memory() -> AllocatorStatus:
    """Make glibc's malloc serve large blocks from the heap and keep freed memory (idempotent).

    Returns the status, also kept for :func:`allocator_status`. Not glibc: nothing changes.
    """
    global _STATUS
    lib = _libc()
    if lib is None:
        _STATUS = AllocatorStatus(False, "system default (not glibc: mallopt unavailable)")
        return _STATUS
    ok = all(lib.mallopt(param, value) == 1 for param, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NO_TRIM), (_M_TOP_PAD, _TOP_PAD)))
    lib.gnu_get_libc_version.restype = ctypes.c_char_p
    version = lib.gnu_get_libc_version().decode()
    _STATUS = (AllocatorStatus(True, f"glibc {version} heap: no mmap for large blocks, freed memory kept")
               if ok else AllocatorStatus(False, f"system default (glibc {version} refused mallopt)"))
    return _STATUS


def allocator_status() -> AllocatorStatus:
    """What the last :func:`keep_freed_memory` call in this process did (or that it was not called)."""
    return _STATUS
