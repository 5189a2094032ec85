"""Load pretrained ResNet-50 backbone weights from torchvision, SPIN or PMCE/VIBE-style checkpoints.

Accepted layouts (always read with ``torch.load(weights_only=True)``):
- torchvision: a plain state dict (``conv1.weight``, ``layer1.0.conv1.weight``, ..., ``fc.weight``);
- SPIN (``data/model_checkpoint.pt``): ``{'model': {...}}`` whose HMR keys include the ResNet
  ones; the regressor keys (``fc1``, ``decpose``, ...) are reported as unexpected and skipped;
- wrapped/prefixed state dicts (``state_dict``/``model``/``backbone`` containers, key prefixes such
  as ``module.``, ``backbone.``, ``encoder.``): the nested dict and the prefix that match the most
  ResNet-50 keys are chosen automatically.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmrmamba.errors import InputError, MissingFileError

HOW_TO_GET = ("torchvision's ImageNet resnet50 weights (e.g. resnet50-11ad3fa6.pth from "
              "https://download.pytorch.org/models/) or SPIN's data/model_checkpoint.pt "
              "(https://github.com/nkolot/SPIN, fetch_data.sh)")
#: keys a checkpoint may lack without making the backbone incomplete.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did. Keys are the model's own names."""

    path: str
    container: str  # where the state dict was found, e.g. "<root>" or "model"
    prefix: str  # stripped from the checkpoint's keys, e.g. "" or "module.backbone."
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys, as stored

    def summary(self) -> str:
        """One line: how many tensors were copied, from where, and what was skipped."""
        return (f"{len(self.loaded)} tensors from {self.container} with prefix '{self.prefix}', "
                f"{len(self.missing)} missing, {len(self.unexpected)} skipped")


def _state_dicts(obj: Any, where: str = "<root>", depth: int = 0) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Yield every (nested) mapping whose values are mostly tensors, with its location."""
    if not isinstance(obj, dict) or depth > 3:
        return
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if tensors:
        yield where, tensors
    for k, v in obj.items():
        if isinstance(v, dict):
            yield from _state_dicts(v, k if where == "<root>" else f"{where}/{k}", depth + 1)


def _best_prefix(keys: list[str], model_keys: set[str]) -> tuple[str, int]:
    """The prefix (ending in '.', or empty) whose removal makes the most ``keys`` model keys."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in model_keys:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    if not counts:
        return "", 0
    prefix, n = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return prefix, n


def load_backbone_weights(model: nn.Module, path: str | Path, *, allow_partial: bool = False) -> LoadReport:
    """Copy a checkpoint's ResNet-50 tensors into ``model`` (in place); returns a :class:`LoadReport`.

    Raises :class:`MissingFileError` if ``path`` does not exist and :class:`InputError` if the file
    is unreadable, no key matches, a shape disagrees, or (unless ``allow_partial``) a backbone key
    other than ``fc.*``/``num_batches_tracked`` is absent. Nothing is copied when it raises.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("backbone weights file not found", file=path, expected=HOW_TO_GET)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read a user file is bad input (weights_only refusals included)
        from hmrmamba.train.checkpoint import torch_load_reason

        raise InputError(f"not a readable torch checkpoint ({torch_load_reason(exc)})",
                         file=path, expected="a file written by torch.save holding a state dict") from None
    target = model.state_dict()
    model_keys = set(target)
    best: tuple[int, str, str, dict[str, torch.Tensor]] | None = None
    for where, sd in _state_dicts(obj):
        prefix, n = _best_prefix(list(sd), model_keys)
        if n and (best is None or n > best[0]):
            best = (n, where, prefix, sd)
    if best is None:
        some = sorted(target)[:4]
        raise InputError("no tensor in the checkpoint matches a ResNet-50 parameter name", file=path,
                         expected=f"keys like {some} (optionally under a prefix such as 'module.')")
    _, where, prefix, sd = best
    report = LoadReport(path=str(path), container=where, prefix=prefix)
    mismatched: list[str] = []
    updates: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is None or name not in model_keys:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(target[name].shape):
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target[name].shape)}")
            continue
        updates[name] = value
    if mismatched:
        raise InputError(f"{len(mismatched)} tensor shape(s) disagree: " + "; ".join(mismatched[:10]),
                         file=path, field=where, expected="torchvision resnet50 shapes")
    report.loaded = sorted(updates)
    report.missing = sorted(k for k in model_keys - set(updates))
    required = [k for k in report.missing if not k.startswith("fc.") and not k.endswith(OPTIONAL_SUFFIXES)]
    if required and not allow_partial:
        raise InputError(f"{len(required)} backbone tensor(s) missing under prefix '{prefix}': "
                         + ", ".join(required[:10]), file=path, field=where,
                         expected="a complete ResNet-50 backbone (pass allow_partial=True to accept)")
    with torch.no_grad():
        for name, value in updates.items():
            target[name].copy_(value)
    return report
