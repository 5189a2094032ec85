"""What every real-data reader shares: the in-memory split, its builder, SMPL and camera helpers,
option and file checks.

The readers (:mod:`hmrmamba.data.real.h36m`, :mod:`hmrmamba.data.real.pw3d`, :mod:`hmrmamba.data.real.mpi3dhp`)
import this module only; the registry that picks one (:mod:`hmrmamba.data.real.registry`) and the stage
entry points (:mod:`hmrmamba.data.real.dispatch`) sit above them, so no reader imports its dispatcher.
Conventions of the arrays: see :mod:`hmrmamba.data.real.dispatch` and ``docs/real_data.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.errors import InputError, MissingFileError

__all__ = ["PreparedSplit", "SplitBuilder", "check_options", "project_pinhole", "require_files", "smpl_to_camera",
           "zero_smpl"]


@dataclass
class PreparedSplit:
    """One split held in memory before writing: schema arrays, attrs and a metrics summary."""

    frames: dict[str, np.ndarray]
    seqs: dict[str, np.ndarray]
    attrs: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames["joints3d"].shape[0])


class SplitBuilder:
    """Collects sequences (per-frame arrays + per-sequence values) and concatenates them."""

    def __init__(self) -> None:
        self._frames: list[dict[str, np.ndarray]] = []
        self._seqs: list[dict[str, Any]] = []

    def add(self, frames: Mapping[str, np.ndarray], seq: Mapping[str, Any]) -> None:
        n = int(np.asarray(frames["joints3d"]).shape[0])
        if self._frames and set(frames) != set(self._frames[0]):
            raise ValueError(f"sequence fields {sorted(frames)} differ from {sorted(self._frames[0])}")
        self._frames.append({k: np.asarray(v) for k, v in frames.items()})
        self._seqs.append({**seq, "seq_len": n})

    def __len__(self) -> int:
        return len(self._seqs)

    def build(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if not self._frames:
            raise ValueError("no sequences were added")
        frames = {k: np.concatenate([f[k] for f in self._frames]) for k in self._frames[0]}
        lens = np.array([s["seq_len"] for s in self._seqs], dtype=np.int64)
        seqs: dict[str, np.ndarray] = {
            "seq_start": np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64),
            "seq_len": lens,
        }
        for k in self._seqs[0]:
            if k == "seq_len":
                continue
            seqs[k] = np.array([s[k] for s in self._seqs])
        for k in ("camera", "fps"):
            if k in seqs:
                seqs[k] = seqs[k].astype(np.float32)
        return frames, seqs


def zero_smpl(n: int) -> dict[str, np.ndarray]:
    """Placeholder SMPL fields for ``n`` frames without fits (all zeros, ``smpl_valid`` false)."""
    return {
        "smpl_pose": np.zeros((n, 72), np.float32),
        "smpl_betas": np.zeros((n, 10), np.float32),
        "smpl_trans": np.zeros((n, 3), np.float32),
        "smpl_valid": np.zeros(n, bool),
    }


def smpl_to_camera(
    pose: np.ndarray, trans: np.ndarray, rest_pelvis: np.ndarray, R: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World-frame SMPL -> camera frame (``x_cam = R x + t``), one camera or one per frame.

    pose (N, 72), trans (N, 3), rest_pelvis (N, 3) or (3,), R (3, 3) or (N, 3, 3), t (3,) or
    (N, 3) -> pose (N, 72), trans (N, 3). SMPL rotates about its rest pelvis ``j0``, so
    ``trans_cam = R (trans + j0) + t - j0``.
    """
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    root = Rotation.from_matrix(R) * Rotation.from_rotvec(pose[:, :3])
    out = pose.copy()
    out[:, :3] = root.as_rotvec()
    j0 = np.broadcast_to(np.asarray(rest_pelvis, dtype=np.float64), trans.shape)
    moved = np.einsum("...ij,...j->...i", R, trans + j0) if R.ndim == 3 else (trans + j0) @ R.T
    return out, moved + t - j0


def project_pinhole(points: np.ndarray, intrinsics: Sequence[float]) -> np.ndarray:
    """points: (..., 3) camera metres, intrinsics (fx, fy, cx, cy) -> (..., 2) pixels (z clamped >= 1e-6)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    z = np.maximum(points[..., 2], 1e-6)
    return np.stack([fx * points[..., 0] / z + cx, fy * points[..., 1] / z + cy], axis=-1)


def check_options(p: Mapping[str, Any], known: set[str], *, section: str) -> None:
    """Refuse keys of the ``datasets.<section>`` params that the reader does not know."""
    unknown = sorted(set(p) - known)
    if unknown:
        raise InputError(f"unknown option(s) {unknown}", file="params.yaml", field=f"datasets.{section}",
                         expected=f"options among {sorted(known)}")


def require_files(paths: Sequence[Path], *, dataset: str, how: str) -> None:
    """Raise one :class:`MissingFileError` listing every absent path (before any reading)."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        listing = ", ".join(str(p) for p in missing)
        raise MissingFileError(
            f"{dataset}: {len(missing)} expected file(s) missing: {listing}", file=missing[0], expected=how
        )
