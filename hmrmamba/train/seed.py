"""Seeding and RNG state for reproducible, resumable training.

Three ideas live here:

* ``seed_everything(seed)`` seeds Python's ``random``, numpy's legacy global RNG and torch (CPU and
  every CUDA device), optionally switching torch to deterministic algorithms.
* ``capture_rng_states()`` / ``restore_rng_states(states)`` snapshot those generators as a flat
  ``dict[str, Tensor]`` that a ``torch.load(weights_only=True)`` checkpoint can hold.
* ``epoch_seed(seed, epoch)`` and ``seed_loader_epoch(loader, seed, epoch)`` make the data order and
  the DataLoader worker seeds of epoch ``e`` a pure function of ``(seed, e)``, so a resumed run sees
  exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrmamba.errors import InputError

log = logging.getLogger(__name__)

_PY_STATE_LEN = 625      # MT19937: 624 words + position
_NP_KEYS_LEN = 624


def set_deterministic(enabled: bool, *, warn_only: bool = False) -> None:
    """Switch torch to deterministic algorithms (and cuDNN to deterministic, non-benchmark mode).
    ``warn_only``: an op without a deterministic form warns instead of raising.

    On CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` for determinism; it is set to ``:4096:8`` only
    if the user has not chosen a value (it must be set before the first cuBLAS call).
    """
    if enabled and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False


def seed_everything(seed: int, *, deterministic: bool | None = None) -> None:
    """Seed ``random``, ``numpy.random`` and torch (CPU + all CUDA devices) with ``seed``.

    ``deterministic`` True/False also calls ``set_deterministic``; None leaves that setting alone.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"bad seed {seed!r}", field="seed", expected="a non-negative integer")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)          # also seeds every CUDA device (lazily if CUDA is not initialised)
    if deterministic is not None:
        set_deterministic(deterministic)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed derived from ``(seed, epoch)``; distinct pairs give unrelated seeds."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def loader_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``, for a DataLoader's ``generator=``."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and numpy in a worker from torch's worker seed.

    torch seeds each worker with ``base_seed + worker_id``, where ``base_seed`` is drawn from the
    loader's generator at the start of every epoch; this extends that seed to the other libraries.
    """
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def seed_loader_epoch(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """Make ``loader``'s order and worker seeds for ``epoch`` depend only on ``(seed, epoch)``.

    Calls ``sampler.set_epoch(epoch)`` where the sampler has it (``DistributedSampler``), and reseeds
    the loader's own generator (if it has one) with ``epoch_seed(seed, epoch)``.
    """
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(epoch_seed(seed, epoch))


def capture_rng_states() -> dict[str, torch.Tensor]:
    """Snapshot the Python, numpy, torch CPU and (if present) CUDA generators as tensors."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    states = {
        "python": torch.tensor([version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": torch.tensor(int(np_pos), dtype=torch.int64),
        "numpy_gauss": torch.tensor([float(np_gauss)] if np_has_gauss else [], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(states: Mapping[str, Any], *, source: str | Path | None = None) -> None:
    """Restore generators from a ``capture_rng_states()`` snapshot; CUDA states are skipped without CUDA."""
    need = ("python", "python_gauss", "numpy_keys", "numpy_pos", "numpy_gauss", "torch")
    missing = [k for k in need if k not in states or not isinstance(states[k], torch.Tensor)]
    if missing:
        raise InputError(f"RNG state lacks tensors {missing}", file=source, field="rng_states",
                         expected="a dict from hmrmamba.train.seed.capture_rng_states()")
    py = states["python"].tolist()
    if len(py) != 1 + _PY_STATE_LEN or states["numpy_keys"].numel() != _NP_KEYS_LEN:
        raise InputError("RNG state has the wrong size", file=source, field="rng_states",
                         expected=f"python state of {1 + _PY_STATE_LEN} and numpy keys of {_NP_KEYS_LEN}")
    gauss = states["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), gauss[0] if gauss else None))
    np_gauss = states["numpy_gauss"].tolist()
    np.random.set_state(("MT19937", states["numpy_keys"].numpy().astype(np.uint32),
                         int(states["numpy_pos"]), int(bool(np_gauss)), np_gauss[0] if np_gauss else 0.0))
    torch.set_rng_state(states["torch"].to(dtype=torch.uint8, device="cpu"))
    cuda = states.get("cuda")
    if isinstance(cuda, torch.Tensor):
        if torch.cuda.is_available():
            n = min(len(cuda), torch.cuda.device_count())
            for i in range(n):
                torch.cuda.set_rng_state(cuda[i].to(dtype=torch.uint8, device="cpu"), device=i)
        else:
            log.debug("checkpoint holds CUDA RNG states but CUDA is absent; they are not restored")
