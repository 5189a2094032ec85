"""Model outputs as small dataclasses that also allow dict access (like smplx's ``SMPLOutput``).

``out.vertices`` and ``out["vertices"]`` are the same tensor; ``keys()``/``items()`` list only the
fields that are set (not ``None``), so ``{k: v for k, v in out.items()}`` is a plain dict of tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["HMROutput", "ModelOutput", "ReconOutput"]


@dataclass
class ModelOutput:
    """Base class: attribute and mapping access to the tensor fields."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}; fields: {[f.name for f in fields(self)]}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and getattr(self, key, None) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None)
        return default if value is None else value

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]


@dataclass
class ReconOutput(ModelOutput):
    """Stage-2 output, per frame. vertices (B, T, V, 3); joints (B, T, J, 3) regressed from the
    vertices; coarse (B, T, Vc, 3) the co-evolved coarse mesh; coevo_joints (B, T, J, 3) the
    decoder's joint stream; context (B, T, F) the motion-aware feature."""

    vertices: torch.Tensor
    joints: torch.Tensor
    coarse: torch.Tensor
    coevo_joints: torch.Tensor | None = None
    context: torch.Tensor | None = None


@dataclass
class HMROutput(ModelOutput):
    """Full model output: pose3d (B, T, J, 3) from the lifter; the mesh fields are ``None`` in
    lift-only mode, otherwise vertices (B, T, V, 3), joints (B, T, J, 3), coarse (B, T, Vc, 3),
    coevo_joints (B, T, J, 3). Units are those of the training targets (metres)."""

    pose3d: torch.Tensor
    vertices: torch.Tensor | None = None
    joints: torch.Tensor | None = None
    coarse: torch.Tensor | None = None
    coevo_joints: torch.Tensor | None = None
