"""Named random streams: a stage asks for ``named_rng(seed, "detect2d", split, source)`` and
gets the same numbers on every run, platform and Python version, independent of other streams."""

from __future__ import annotations

import zlib

import numpy as np


def named_rng(*keys: object) -> np.random.Generator:
    """A numpy Generator seeded by the CRC32 of each key's string form."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])
