"""Training checkpoints: atomic writes, ``weights_only`` loads, strict model loading with clear errors.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``::

    {"format": "hmrmamba.checkpoint", "version": 1, "torch": "2.x",
     "model": state_dict, "optimizer": state_dict | None, "scheduler": state_dict | None,
     "epoch": completed epochs, "step": optimizer steps, "best_metric": float | None,
     "rng_states": capture_rng_states() (or a list of them, one per rank),
     "config": the resolved config (the model's under "model"), "extra": anything plain}

The resolved config travels with the weights, so ``model_from_checkpoint(path, build=...)`` rebuilds
the model from the file alone, independent of today's defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.train.distributed import unwrap_model

CHECKPOINT_FORMAT = "hmrmamba.checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("format", "version", "model", "epoch", "step", "config")
_SHOW = 5        # keys listed per kind of mismatch


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as tensors / primitives / lists / tuples / dicts; numpy scalars and paths converted."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise InputError(f"key {k!r} of type {type(k).__name__} cannot be stored", field=where,
                                 expected="str or int keys")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise InputError(f"a {type(obj).__name__} cannot be stored in a weights-only checkpoint", field=where,
                     expected="tensors, numbers, strings, bools, None, and lists/tuples/dicts of them")


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any | None = None, epoch: int, step: int, best_metric: float | None = None,
                    rng_states: Mapping[str, Any] | list | None = None, config: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint: a crash or error leaves the previous file (or none), never a torn one.

    ``model`` may be wrapped in DDP / ``torch.compile``; the plain module's state is stored.
    Everything is validated before any byte is written (bad ``config``/``extra`` raise ``InputError``).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "torch": torch.__version__.split("+")[0],
        "model": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                  for k, v in unwrap_model(model).state_dict().items()},
        "optimizer": None if optimizer is None else _plain(optimizer.state_dict(), "optimizer"),
        "scheduler": None if scheduler is None else _plain(scheduler.state_dict(), "scheduler"),
        "epoch": int(epoch),
        "step": int(step),
        "best_metric": None if best_metric is None else float(best_metric),
        "rng_states": _plain(rng_states, "rng_states"),
        "config": _plain(dict(config or {}), "config"),
        "extra": _plain(dict(extra or {}), "extra"),
    }
    path = Path(path)
    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "wb") as fh:
        out = _RecordingWriter(fh)
        try:
            torch.save(payload, out)
            fh.flush()
        except RuntimeError as exc:  # torch reports a failed write as "unexpected pos"; give the cause
            if out.error is not None:
                raise out.error from exc
            raise
        os.fsync(fh.fileno())
    return path


class _RecordingWriter:
    """A binary file wrapper that remembers the first ``OSError`` of a ``write`` (e.g. ENOSPC)."""

    def __init__(self, fh):
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; bad or foreign files raise ``InputError``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("checkpoint not found", file=path,
                               expected="a .pt file written by hmrmamba training (run the training stage)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle globals, empty file, ...
        first = (str(exc).strip().splitlines() or ["no details"])[0][:200]
        raise InputError(f"cannot read checkpoint ({type(exc).__name__}: {first})",
                         file=path, expected="a complete file written by hmrmamba.train.save_checkpoint") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not an hmrmamba checkpoint", file=path, field="format",
                         expected=f"'{CHECKPOINT_FORMAT}' (a file written by hmrmamba.train.save_checkpoint)")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise InputError(f"checkpoint lacks {missing}", file=path, field=missing[0],
                         expected=f"all of {list(_REQUIRED)}")
    _check_types(ckpt, path)
    if ckpt["version"] > CHECKPOINT_VERSION:
        raise InputError(f"checkpoint version {ckpt['version']} is newer than this hmrmamba understands",
                         file=path, field="version", expected=f"<= {CHECKPOINT_VERSION}")
    return ckpt


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_types(ckpt: Mapping[str, Any], path: Path) -> None:
    """Every field a loader relies on has the type ``save_checkpoint`` writes."""
    def bad(fld: str, expected: str) -> InputError:
        return InputError(f"{type(ckpt[fld]).__name__} value", file=path, field=fld, expected=expected)

    for fld in ("version", "epoch", "step"):
        if not _is_int(ckpt[fld]) or ckpt[fld] < 0:
            raise bad(fld, "a non-negative integer")
    model = ckpt["model"]
    if not isinstance(model, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise bad("model", "a state dict: parameter names -> tensors")
    if not isinstance(ckpt["config"], Mapping):
        raise bad("config", "a mapping (the resolved config)")
    best = ckpt.get("best_metric")
    if best is not None and not isinstance(best, (int, float)):
        raise bad("best_metric", "a number or None")
    for fld in ("optimizer", "scheduler"):
        if ckpt.get(fld) is not None and not isinstance(ckpt[fld], Mapping):
            raise bad(fld, "a state dict (mapping) or None")


def _listing(keys: list[str], what: str) -> str:
    shown = ", ".join(keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")
    return f"{len(keys)} {what} ({shown})"


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str | Path) -> None:
    """Strictly load ``state`` into ``model``; on any mismatch raise ``InputError`` naming ``source``.

    The message counts and lists (first few of each) the keys the checkpoint lacks, the keys the
    model lacks and the keys whose shapes differ, which is what a checkpoint of another variant or
    joint set produces. ``model`` may be wrapped in DDP / ``torch.compile``.
    """
    model = unwrap_model(model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and isinstance(state[k], torch.Tensor)
              and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [p for p in (missing and _listing(missing, "missing keys"),
                             unexpected and _listing(unexpected, "unexpected keys"),
                             shapes and _listing(shapes, "shape mismatches")) if p]
        raise InputError("weights do not fit this model: " + "; ".join(parts), file=source, field="model",
                         expected=f"a checkpoint of the same model variant and joint set as "
                                  f"{type(model).__name__} ({len(own)} tensors)")
    model.load_state_dict(dict(state), strict=True)


def model_from_checkpoint(path: str | Path, *, build: Callable[[dict[str, Any]], nn.Module],
                          config_key: str | None = "model",
                          map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint alone: ``build(config[config_key])``, then a strict weight load.

    Returns ``(model, checkpoint)``; the model is in eval mode on ``map_location``'s device.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = ckpt["config"]
    if config_key is not None:
        if not isinstance(cfg, Mapping) or config_key not in cfg:
            raise InputError(f"checkpoint config has no '{config_key}' section", file=path,
                             field=f"config.{config_key}", expected="the resolved model config saved with the weights")
        cfg = cfg[config_key]
    model = build(dict(cfg))
    load_model_state(model, ckpt["model"], source=path)
    model.to(map_location)
    return model.eval(), ckpt
