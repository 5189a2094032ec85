"""Real benchmark datasets -> the project's HDF5 splits: the dispatcher used by the stages.

``params["dataset"]["name"]`` picks the reader: ``h36m`` (:mod:`hmrmamba.data.h36m`), ``3dpw``
(:mod:`hmrmamba.data.pw3d`) or ``3dhp`` (:mod:`hmrmamba.data.mpi3dhp`). Each reader's options live
in ``params["datasets"][<section>]`` (sections ``h36m``, ``pw3d``, ``mpi3dhp``), its files under
``dataset.root`` (or, when that is null, the section's own ``root``).

Every reader builds all its splits in memory first; only when all of them pass the schema's
validation are they written (atomically), so bad input leaves nothing behind. A dataset whose
files are absent fails before any reading, with the list of files that were expected.

Conventions shared by the readers (see ``docs/real_data.md``):

* ``joints3d`` metres in the camera frame, H36M-17 order; ``joints2d`` pixels in the original
  image; per sequence ``camera`` (fx, fy, cx, cy) and ``fps``;
* ``smpl_pose/smpl_betas/smpl_trans`` are camera-frame SMPL parameters where the dataset has fits,
  zeros otherwise; ``attrs["has_smpl"]`` says which, ``attrs["has_mesh_gt"]`` says whether a mesh
  (and so MPVPE) can be evaluated, ``attrs["mesh_gt_note"]`` says why not; the per-frame
  ``smpl_valid`` (bool) marks frames whose SMPL fit exists;
* ``valid`` (bool) marks frames to score (3DPW ``campose_valid``, 3DHP ``valid_frame``);
* ``attrs["image_size"]`` is the largest image side (an int, as the synthetic splits have); the
  exact per-sequence (width, height) is the extra sequence field ``image_wh``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.errors import InputError, MissingFileError

#: ``dataset.name`` -> the section of ``params["datasets"]`` holding the reader's options.
REAL_DATASETS: dict[str, str] = {"h36m": "h36m", "3dpw": "pw3d", "3dhp": "mpi3dhp"}


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


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------


def dataset_name(params: Mapping[str, Any]) -> str:
    return str((params.get("dataset") or {}).get("name", "synthetic"))


def is_real(params: Mapping[str, Any]) -> bool:
    return dataset_name(params) in REAL_DATASETS


def _check_name(params: Mapping[str, Any]) -> str:
    name = dataset_name(params)
    if name not in REAL_DATASETS:
        raise InputError(
            f"unknown dataset '{name}'",
            file="params.yaml",
            field="dataset.name",
            expected=f"'synthetic' or one of {list(REAL_DATASETS)}",
        )
    return name


def dataset_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's section of ``params["datasets"]`` (empty: the reader's defaults)."""
    section = REAL_DATASETS[_check_name(params)]
    opts = (params.get("datasets") or {}).get(section) or {}
    if not isinstance(opts, Mapping):
        raise InputError(
            f"datasets.{section} is {type(opts).__name__}",
            file="params.yaml",
            field=f"datasets.{section}",
            expected="a mapping of reader options",
        )
    return dict(opts)


def dataset_root(params: Mapping[str, Any], root: Path) -> Path:
    """Where the dataset's files are: ``dataset.root`` or ``datasets.<section>.root``."""
    from hmrmamba.config import resolve_path

    name = _check_name(params)
    section = REAL_DATASETS[name]
    value = (params.get("dataset") or {}).get("root") or dataset_options(params).get("root")
    if not value:
        raise InputError(
            f"no root directory for dataset '{name}'",
            file="params.yaml",
            field="dataset.root",
            expected=f"a path (or datasets.{section}.root); see docs/real_data.md",
        )
    return resolve_path(root, value, field="dataset.root")


def _optional_path(root: Path, value: Any, field_name: str) -> Path | None:
    from hmrmamba.config import resolve_path

    return None if value in (None, "") else resolve_path(root, value, field=field_name)


def real_splits(params: Mapping[str, Any]) -> list[str]:
    """The split names the prepare stage writes for the configured real dataset."""
    name = _check_name(params)
    opts = dataset_options(params)
    if name == "h36m":
        from hmrmamba.data.h36m import H36MConfig

        return list(H36MConfig.from_params(opts).splits())
    if name == "3dpw":
        from hmrmamba.data.pw3d import PW3DConfig

        return list(PW3DConfig.from_params(opts).splits)
    from hmrmamba.data.mpi3dhp import MPI3DHPConfig

    return [MPI3DHPConfig.from_params(opts).split]


def real_sources(params: Mapping[str, Any]) -> tuple[str, ...]:
    """2D sources the dataset provides beyond :data:`hmrmamba.detect.sources.DETECTOR_SOURCES`."""
    return ("openpose",) if dataset_name(params) == "3dpw" else ()


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------


def build_real(
    params: Mapping[str, Any], root: Path, *, body_model: Path | None = None
) -> dict[str, PreparedSplit]:
    """Read the configured dataset into memory, all splits, validated. Writes nothing."""
    from hmrmamba.data.h5schema import validate_split

    name = _check_name(params)
    opts = dataset_options(params)
    data_root = dataset_root(params, root)
    if name == "h36m":
        from hmrmamba.data.h36m import H36MConfig, build_h36m

        cfg = H36MConfig.from_params(opts)
        fits = _optional_path(root, opts.get("smpl_fits"), "datasets.h36m.smpl_fits")
        splits = build_h36m(data_root, cfg, smpl_fits=fits, body_model=body_model)
    elif name == "3dpw":
        from hmrmamba.data.pw3d import PW3DConfig, build_pw3d

        cfg = PW3DConfig.from_params(opts)
        models = {
            g: _optional_path(root, opts.get(f"smpl_{g}"), f"datasets.pw3d.smpl_{g}")
            for g in ("male", "female")
        }
        reg = _optional_path(root, opts.get("h36m_regressor"), "datasets.pw3d.h36m_regressor")
        splits = build_pw3d(
            data_root, cfg, smpl_male=models["male"], smpl_female=models["female"], h36m_regressor=reg
        )
    else:
        from hmrmamba.data.mpi3dhp import MPI3DHPConfig, build_3dhp

        splits = build_3dhp(data_root, MPI3DHPConfig.from_params(opts))
    for split_name, sp in splits.items():
        validate_split(sp.frames, sp.seqs, file=f"<{name} split '{split_name}'>")
    return splits


def prepare_real(params: Mapping[str, Any], layout) -> dict[str, Any]:
    """The ``prepare`` stage for a real dataset: read, validate, then write every split."""
    from hmrmamba.data.h5schema import write_split

    name = _check_name(params)
    splits = build_real(params, layout.root, body_model=layout.body_model)
    metrics: dict[str, Any] = {"dataset": name}
    for split_name, sp in splits.items():
        write_split(layout.prepared(split_name), sp.frames, sp.seqs, sp.attrs)
        metrics[split_name] = {
            "frames": sp.num_frames,
            "sequences": int(sp.seqs["seq_len"].shape[0]),
            **sp.metrics,
        }
    return metrics


def real_detections(params: Mapping[str, Any], layout, *, split: str, source: str, data) -> Any:
    """2D keypoints the dataset ships for ``source`` on ``split``, or ``None`` to let the
    detect2d stage make them (``gt`` copies, ``sh``/``detectron``/``cpn`` simulate).

    ``data`` is the split as read by :func:`hmrmamba.data.h5schema.read_split`; the result's rows
    line up with its frames. Human3.6M: ``sh``/``detectron``/``cpn`` come from VideoPose3D's
    ``data_2d_h36m_*.npz`` (missing files are an error, never silently simulated). 3DPW:
    ``openpose`` comes from the sequence files' ``poses2d``.
    """
    name = _check_name(params)
    opts = dataset_options(params)
    data_root = dataset_root(params, layout.root)
    if name == "h36m":
        from hmrmamba.data.h36m import H36MConfig, h36m_detections

        cfg = H36MConfig.from_params(opts)
        if source == "gt" or source not in cfg.detections:
            return None
        return h36m_detections(data_root, cfg, data=data, source=source)
    if name == "3dpw" and source == "openpose":
        from hmrmamba.data.pw3d import PW3DConfig, pw3d_openpose

        return pw3d_openpose(data_root, PW3DConfig.from_params(opts), data=data)
    return None


def image_root(params: Mapping[str, Any], root: Path) -> Path:
    """Where the dataset's videos/images are: ``features.image_root``, else the dataset's root."""
    from hmrmamba.config import resolve_path

    value = (params.get("features") or {}).get("image_root")
    if value:
        return resolve_path(root, value, field="features.image_root")
    return dataset_root(params, root)


def real_frame_sources(params: Mapping[str, Any], layout, *, data) -> list:
    """The images of every sequence of ``data`` (a read split of the configured real dataset).

    -> one :class:`hmrmamba.data.frames.FrameSource` per sequence, laid out as the dataset ships
    them (see :mod:`hmrmamba.data.frames`); nothing is opened here.
    """
    from hmrmamba.data.frames import frame_sources

    return frame_sources(_check_name(params), image_root(params, layout.root), data)
