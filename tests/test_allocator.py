"""hmrmamba.allocator: large torch tensors come from the heap, not from mmap, once it is called."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hmrmamba.allocator import _libc

pytestmark = pytest.mark.skipif(_libc() is None, reason="needs glibc's mallopt")

# mallinfo2's hblkhd: bytes in mmapped blocks, measured while a 64 MiB tensor is alive, then the
# heap's arena size after it is freed, in a fresh interpreter (mallopt is process-wide)
_PROBE = """
import ctypes, ctypes.util, json, sys
import torch
from hmrmamba.allocator import keep_freed_memory, allocator_status

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
status = keep_freed_memory() if sys.argv[1] == "keep" else allocator_status()
before = libc.mallinfo2()
x = torch.ones(16 * 2**20)  # 64 MiB
during = libc.mallinfo2()
total = float(x.sum())
del x
after = libc.mallinfo2()
print(json.dumps({"active": status.active, "description": status.description, "total": total,
                  "mmapped_rise": during.hblkhd - before.hblkhd, "arena_after": after.arena,
                  "arena_before": before.arena}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_tensor_is_mmapped_by_default_and_kept_in_heap_after_keep_freed_memory():
    mib = 2**20
    default = _probe("default")
    assert not default["active"] and "not called" in default["description"]
    assert default["mmapped_rise"] >= 64 * mib  # glibc's own behaviour: the block is mmapped (and unmapped on free)

    kept = _probe("keep")
    assert kept["active"] and kept["description"].startswith("glibc ")
    assert kept["total"] == 16 * mib  # the tensor is usable
    assert kept["mmapped_rise"] == 0  # served by the heap
    assert kept["arena_after"] - kept["arena_before"] >= 64 * mib  # and the heap keeps it after the free


def test_keep_freed_memory_is_idempotent():
    from hmrmamba.allocator import allocator_status, keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first == allocator_status()
