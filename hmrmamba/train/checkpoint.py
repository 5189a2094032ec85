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

A stored config is input like any other: :func:`check_stored_config` bounds every size it holds
(:data:`MODEL_CONFIG_BOUNDS`, :data:`TRAIN_CONFIG_BOUNDS`) when the checkpoint is read, and
:func:`model_from_checkpoint` builds the model once on the ``meta`` device (no memory) to count its
parameters against :data:`MAX_PARAMETERS` before building it for real. Optimizer and scheduler
states are loaded through :func:`load_training_state`, which turns torch's ``KeyError``/``ValueError``
into a one-line :class:`~hmrmamba.errors.InputError`. No message passes on torch's advice to load
with ``weights_only=False`` (:func:`torch_load_reason`): that would run whatever the file holds.
"""

from __future__ import annotations

import math
import os
import re
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

#: Parameters a model rebuilt from a stored config may have (the paper's largest, PMCE, has 103M).
MAX_PARAMETERS = 400_000_000

_INT, _NUM = "int", "number"
#: Bounds of the sizes a stored model config (``config.model``) may hold: key -> (type, low, high).
#: Nested keys are dotted; a key listed here must be in range when present (absent keys are the
#: model code's business). The ranges are generous: the paper's models sit far inside them.
MODEL_CONFIG_BOUNDS: dict[str, tuple[str, float, float]] = {
    "num_joints": (_INT, 1, 1000), "feat_dim": (_INT, 1, 16384), "max_frames": (_INT, 1, 100_000),
    **{f"lifter.{k}": v for k, v in {
        "dim": (_INT, 1, 8192), "depth": (_INT, 1, 128), "ga_heads": (_INT, 1, 256),
        "ga_points": (_INT, 1, 256), "num_heads": (_INT, 1, 256), "d_state": (_INT, 1, 4096),
        "d_conv": (_INT, 1, 256), "expand": (_INT, 1, 64), "mlp_ratio": (_NUM, 0, 64),
        "fusion_kernel": (_INT, 1, 255), "drop_path": (_NUM, 0, 1), "feat_dropout": (_NUM, 0, 1),
        "feat_proj": (_INT, 1, 16384)}.items()},
    **{f"reconstructor.{k}": v for k, v in {
        "motion_dim": (_INT, 1, 8192), "motion_heads": (_INT, 1, 256), "gru_hidden": (_INT, 1, 16384),
        "gru_layers": (_INT, 1, 64), "context_dim": (_INT, 1, 16384), "decoder_dim": (_INT, 1, 8192),
        "decoder_depth": (_INT, 1, 128), "joint_heads": (_INT, 1, 256), "vertex_heads": (_INT, 1, 256),
        "decoder_mlp_ratio": (_NUM, 0, 64), "drop_path": (_NUM, 0, 1)}.items()},
}
#: Bounds of the training settings stored with the weights (``config.train``; the demo reads its window).
TRAIN_CONFIG_BOUNDS: dict[str, tuple[str, float, float]] = {
    "window": (_INT, 1, 100_000), "stride": (_INT, 1, 100_000), "batch_size": (_INT, 1, 1 << 20),
    "epochs": (_INT, 0, 1 << 20),
}


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
        raise InputError(f"cannot read checkpoint ({torch_load_reason(exc)})",
                         file=path, expected="a complete file written by hmrmamba.train.save_checkpoint") from None
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
    check_stored_config(ckpt["config"], file=path)
    check_finite_weights(ckpt["model"], file=path)
    return ckpt


def check_finite_weights(state: Mapping[str, torch.Tensor], *, file: Path | str) -> None:
    """Refuse a model state dict holding NaN/Inf in any floating-point tensor (field ``model.<name>``).

    One pass per tensor. Only the model's weights and buffers are checked; optimizer and scheduler
    states are not (their moments may legitimately hold anything a fresh run would overwrite).
    """
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.is_meta or tensor.numel() == 0:
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{bad} of {tensor.numel()} values are NaN/Inf", file=file, field=f"model.{name}",
                             expected="finite weights (a checkpoint of a run that diverged, or a damaged "
                                      "file: use an earlier checkpoint or retrain)")


_WEIGHTS_ONLY_ADVICE = re.compile(r"weights_only|trusted source|arbitrary code|safe_globals|add_safe_globals|"
                                  r"PyTorch 2\.6|documentation of torch\.load", re.IGNORECASE)


def torch_load_reason(exc: BaseException) -> str:
    """One line saying why ``torch.load`` failed, without torch's advice to load with
    ``weights_only=False`` (the one thing that would run a payload): the refused global when it
    names one, else the first line that does not give that advice."""
    text = str(exc)
    glob = re.search(r"unsupported GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if glob:
        return f"{type(exc).__name__}: refused global {glob.group(1)} (not a tensor or plain container)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _WEIGHTS_ONLY_ADVICE.search(ln)]
    if not lines:
        lines = ["the file holds something other than tensors and plain containers"
                 if "weights only" in text.lower() else "no details"]
    return f"{type(exc).__name__}: {lines[0][:200]}"


def _dig(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_bounds(section: Any, bounds: Mapping[str, tuple[str, float, float]], *, file: Path | str,
                  prefix: str) -> None:
    if section is None:
        return
    if not isinstance(section, Mapping):
        raise InputError(f"{type(section).__name__} value", file=file, field=prefix, expected="a mapping")
    for key, (kind, low, high) in bounds.items():
        present, value = _dig(section, key)
        if not present or (value is None and key.endswith("context_dim")):
            continue
        ok = not isinstance(value, bool) and (isinstance(value, int) if kind == _INT else
                                              isinstance(value, (int, float)) and math.isfinite(value))
        if not ok or not low <= value <= high:
            what = "an integer" if kind == _INT else "a finite number"
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise InputError(f"stored value {shown} is refused before the model is built", file=file,
                             field=f"{prefix}.{key}", expected=f"{what} in [{low:g}, {high:g}]")


def check_stored_config(config: Mapping[str, Any], *, file: Path | str) -> None:
    """Bound every size a checkpoint's stored config holds (``model`` and ``train`` sections) before
    anything is built or allocated from it: a config with ``lifter.depth: 20000``, ``dim: -5`` or
    ``window: 1e9`` is an :class:`InputError` naming the file and the field."""
    if not isinstance(config, Mapping):
        return
    _check_bounds(config.get("model"), MODEL_CONFIG_BOUNDS, file=file, prefix="config.model")
    _check_bounds(config.get("train"), TRAIN_CONFIG_BOUNDS, file=file, prefix="config.train")


def _parameter_floor(cfg: Mapping[str, Any]) -> int:
    """A lower bound on the parameters of a model config, from its widths and depths alone: every
    lifter or decoder layer but the first maps ``dim`` to ``dim`` at least once. Refusing on it is
    always right and costs nothing (counting on the meta device takes seconds for a huge model)."""
    def num(section: Any, key: str) -> int:
        v = section.get(key) if isinstance(section, Mapping) else None
        return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

    lifter, recon = cfg.get("lifter"), cfg.get("reconstructor")
    return (max(num(lifter, "depth") - 1, 0) * num(lifter, "dim") ** 2
            + max(num(recon, "decoder_depth") - 1, 0) * num(recon, "decoder_dim") ** 2)


def count_parameters_of(build: Callable[[], nn.Module], *, file: Path | str, field: str) -> int:
    """Build a model on the ``meta`` device (no memory, no initialisation work) and count its parameters;
    a build that fails there is the stored config's fault and becomes an :class:`InputError`."""
    try:
        with torch.device("meta"):
            model = build()
    except InputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError, OverflowError,
            ZeroDivisionError, NotImplementedError) as exc:
        raise InputError(f"cannot build a model from the stored config ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0][:160]})", file=file, field=field,
                         expected="the resolved model config saved by the training stage") from None
    return sum(p.numel() for p in model.parameters())


def load_training_state(target: Any, state: Any, *, source: str | Path, field: str) -> None:
    """``target.load_state_dict(state)`` for an optimizer, scheduler or grad scaler; a state that does
    not fit (torch's ``KeyError``, ``ValueError``, ...) is an :class:`InputError` naming the file."""
    try:
        target.load_state_dict(state)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
        detail = (str(exc).splitlines() or [""])[0][:160]
        raise InputError(f"stored {field} state does not fit this run's {type(target).__name__} "
                         f"({type(exc).__name__}: {detail})", file=source, field=field,
                         expected=f"a {field} state dict saved by the same training setup "
                                  "(or a fresh checkpoint_dir)") from None


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
    if not isinstance(cfg, Mapping):
        raise InputError(f"{type(cfg).__name__} value", file=path, field=f"config.{config_key}",
                         expected="the resolved model config (a mapping)")
    field = "config" if config_key is None else f"config.{config_key}"
    n = _parameter_floor(cfg)
    if n <= MAX_PARAMETERS:
        n = count_parameters_of(lambda: build(dict(cfg)), file=path, field=field)
    if n > MAX_PARAMETERS:
        raise InputError(f"the stored config describes a model of at least {n:,} parameters", file=path, field=field,
                         expected=f"at most {MAX_PARAMETERS:,} (the largest paper model has about 103M)")
    model = build(dict(cfg))
    load_model_state(model, ckpt["model"], source=path)
    model.to(map_location)
    return model.eval(), ckpt
