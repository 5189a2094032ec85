"""Single-process and DDP training through one code path.

Under ``torchrun --nproc_per_node=N`` the launcher sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``setup_distributed`` then joins the process group (nccl on
CUDA, gloo on CPU). Without those variables every helper here degrades to the single-process case,
so a stage script needs no change to run either way.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from hmrmamba.errors import InputError
from hmrmamba.train.seed import loader_generator, seed_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world size, its device, and who set the group up."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not an integer", field=name,
                         expected="an integer set by torchrun") from None


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) from the live process group, else from torchrun's env, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True on rank 0 (and always in a single process)."""
    return rank_and_world()[0] == 0


def setup_distributed(device: str | torch.device | None = None, *, timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 and pick this process's device.

    ``device`` None means ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU. The backend is nccl
    for CUDA devices and gloo otherwise. An already initialised group is reused (and left alone by
    ``teardown_distributed``).
    """
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=device)
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed", field="WORLD_SIZE",
                         expected="1, or a torch build with distributed support")
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
        here = True
    ctx = DistContext(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                      device=device, backend=str(dist.get_backend()), initialized_here=here)
    if here:
        log.info("joined process group: rank %d/%d on %s (%s)", ctx.rank, ctx.world_size, device, ctx.backend)
    return ctx


def teardown_distributed(ctx: DistContext) -> None:
    """Leave the process group if ``setup_distributed`` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.is_distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_mean(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Average scalar metrics over ranks; every rank must pass the same keys. Returns floats."""
    keys = sorted(values)
    if not ctx.is_distributed or not keys:
        return {k: float(values[k]) for k in keys}
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf /= ctx.world_size
    return dict(zip(keys, buf.tolist()))


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's ``flag``, on every rank."""
    if not ctx.is_distributed:
        return bool(flag)
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    buf = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dev)
    dist.broadcast(buf, src=0)
    return bool(buf.item())


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers (state-dict keys without prefixes)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def wrap_model(model: nn.Module, ctx: DistContext, *, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``ctx.device``) in DDP when running distributed; else return it."""
    if not ctx.is_distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                               find_unused_parameters=find_unused_parameters)


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False, collate_fn: Callable[[list], Any] | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order for epoch ``e`` is a pure function of ``(seed, e)``, single or DDP.

    ``batch_size`` is per process (global batch = ``batch_size * WORLD_SIZE``). Both modes use a
    ``DistributedSampler`` (one replica when not distributed), so rank ``r`` of ``N`` sees every N-th
    sample of the same epoch permutation; call ``seed_loader_epoch(loader, seed, epoch)`` (the
    Trainer does) before each epoch. Workers are seeded through ``seed_worker`` from a generator
    that is reseeded per epoch. When not ``drop_last``, the sampler pads the permutation with
    repeated samples so that every rank gets the same number.
    """
    if isinstance(dataset, IterableDataset):
        raise InputError("make_loader needs a map-style dataset", field="dataset",
                         expected="a torch Dataset with __len__ and __getitem__")
    if batch_size < 1 or num_workers < 0:
        raise InputError(f"batch_size={batch_size}, num_workers={num_workers}", field="batch_size",
                         expected="batch_size >= 1 and num_workers >= 0")
    rank, world = rank_and_world()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=int(seed),
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, collate_fn=collate_fn, pin_memory=pin_memory,
                      worker_init_fn=seed_worker if num_workers > 0 else None,
                      generator=loader_generator(seed))
