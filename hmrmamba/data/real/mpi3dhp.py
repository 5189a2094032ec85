"""MPI-INF-3DHP test set (Mehta et al. 2017) -> an H36M-17, camera-frame ``test`` split.

Files under the dataset root: ``mpi_inf_3dhp_test_set/TS1..TS6/annot_data.mat``. The files are
MATLAB v7.3, i.e. HDF5, read with h5py (older v5 ``.mat`` files are read with
``scipy.io.loadmat``). Fields:

* ``annot2``: 2D joints, pixels; ``annot3``: 3D joints in the camera frame, millimetres;
  ``univ_annot3``: the same, rescaled to a universal skeleton; all 17 joints in the
  MPI-INF-3DHP-17 order (:data:`hmrmamba.skeleton.MPI_INF_3DHP17`);
* ``valid_frame`` (N,): frames to score; ``activity_annotation`` (N,): activity class (optional).

``joints3d`` comes from ``univ_annot3`` by default (:data:`DEFAULT_JOINTS3D`: the key PMCE/ARTS and
VIBE score against) or ``annot3``; both are millimetres, and a file already in metres is refused.

MATLAB stores arrays column-major, so h5py sees their axes reversed: a MATLAB ``2 x 17 x 1 x N``
``annot2`` reads as ``(N, 1, 17, 2)`` through h5py, while ``scipy.io.loadmat`` keeps MATLAB's
order. :func:`joints_from_mat` accepts both (and 3-axis forms without the singleton person
axis), recognising the layout from where the 17-joint axis is.

Joints go to H36M-17 with :data:`hmrmamba.skeleton.MPI_TO_H36M`. Frames whose ``valid_frame`` is 0
keep their (finite) numbers with ``valid = False``; non-finite values are allowed only there
(and replaced by zeros). The test set has no SMPL ground truth: ``smpl_*`` are zeros and MPVPE is
unavailable (``attrs["has_mesh_gt"]`` false); PMCE/ARTS report MPJPE/PCK/AUC on all 17 joints.

Cameras (pinhole, as commonly used for this test set: the chest-height studio camera for
TS1-TS4 and the outdoor camera for TS5-TS6, the values in :data:`CAMERAS`) and frame rates
(TS1-TS4 25 fps, TS5-TS6 50 fps) are data of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.data.h5schema import check_units
from hmrmamba.data.real.tools import PreparedSplit, SplitBuilder, check_options, require_files, zero_smpl
from hmrmamba.errors import InputError
from hmrmamba.skeleton import MPI_TO_H36M

TEST_DIR = "mpi_inf_3dhp_test_set"
ANNOT_FILE = "annot_data.mat"
TEST_SEQUENCES: tuple[str, ...] = ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")
NUM_JOINTS = 17

_STUDIO = (1500.172, 1500.837, 1017.387, 1043.032)  # 2048 x 2048
_OUTDOOR = (1683.98345952, 1672.59370772, 939.85754016, 560.140743168)  # 1920 x 1080
#: sequence -> (fx, fy, cx, cy) pixels.
CAMERAS: dict[str, tuple[float, float, float, float]] = {
    "TS1": _STUDIO,
    "TS2": _STUDIO,
    "TS3": _STUDIO,
    "TS4": _STUDIO,
    "TS5": _OUTDOOR,
    "TS6": _OUTDOOR,
}
#: sequence -> (width, height) pixels.
IMAGE_WH: dict[str, tuple[int, int]] = {
    "TS1": (2048, 2048),
    "TS2": (2048, 2048),
    "TS3": (2048, 2048),
    "TS4": (2048, 2048),
    "TS5": (1920, 1080),
    "TS6": (1920, 1080),
}
#: sequence -> frames per second.
FPS: dict[str, float] = {"TS1": 25.0, "TS2": 25.0, "TS3": 25.0, "TS4": 25.0, "TS5": 50.0, "TS6": 50.0}

JOINTS3D_KEYS = ("annot3", "univ_annot3")
#: What VIBE's ``mpii3d_utils.read_test_data`` reads, and so what VIBE/TCMR/PMCE/ARTS score 3DHP
#: against (their test data come from it): the skeleton rescaled to the universal (Human3.6M)
#: height, the only 3D field the test set's README describes.
DEFAULT_JOINTS3D = "univ_annot3"


@dataclass(frozen=True)
class MPI3DHPConfig:
    """Reader options (``params["datasets"]["mpi3dhp"]``)."""

    sequences: tuple[str, ...] = TEST_SEQUENCES
    joints3d: str = DEFAULT_JOINTS3D  # or "annot3"
    split: str = "test"

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> MPI3DHPConfig:
        known = {"root", "sequences", "joints3d", "split"}
        check_options(p, known, section="mpi3dhp")
        kw: dict[str, Any] = {}
        seqs = p.get("sequences")
        if seqs is not None:
            if not isinstance(seqs, (list, tuple)) or not seqs or any(s not in TEST_SEQUENCES for s in seqs):
                raise InputError(
                    f"value {seqs!r}",
                    file="params.yaml",
                    field="datasets.mpi3dhp.sequences",
                    expected=f"a non-empty list from {list(TEST_SEQUENCES)}",
                )
            kw["sequences"] = tuple(seqs)
        if p.get("joints3d") is not None:
            if p["joints3d"] not in JOINTS3D_KEYS:
                raise InputError(
                    f"value {p['joints3d']!r}",
                    file="params.yaml",
                    field="datasets.mpi3dhp.joints3d",
                    expected=f"one of {list(JOINTS3D_KEYS)}",
                )
            kw["joints3d"] = p["joints3d"]
        if p.get("split"):
            kw["split"] = str(p["split"])
        return cls(**kw)


def annot_path(root: Path, sequence: str) -> Path:
    return Path(root) / TEST_DIR / sequence / ANNOT_FILE


def expected_files(root: Path, cfg: MPI3DHPConfig) -> list[Path]:
    return [annot_path(root, s) for s in cfg.sequences]


def read_mat(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named top-level arrays of a ``.mat`` (v7.3 via h5py, older via scipy); absent keys are skipped."""
    import h5py

    path = Path(path)
    out: dict[str, np.ndarray] = {}
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as h5:
                for k in keys:
                    if k in h5 and isinstance(h5[k], h5py.Dataset):
                        out[k] = np.asarray(h5[k][()])
        except OSError as exc:
            raise InputError(
                f"unreadable MATLAB v7.3 file ({exc})", file=path, expected="a complete annot_data.mat"
            ) from None
        return out
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        data = loadmat(path, variable_names=list(keys))
    except (ValueError, OSError, NotImplementedError, TypeError, IndexError, MatReadError) as exc:
        raise InputError(
            f"not a readable .mat file ({exc})", file=path, expected="MPI-INF-3DHP's annot_data.mat"
        ) from None
    return {k: np.asarray(data[k]) for k in keys if k in data}


def joints_from_mat(a: np.ndarray, *, coords: int, file: Path, fld: str) -> np.ndarray:
    """A MATLAB joint array in either axis order -> (N, 17, coords) float64.

    Accepted: ``(N, 1, 17, c)`` / ``(N, 17, c)`` (h5py's view of MATLAB data) and
    ``(c, 17, 1, N)`` / ``(c, 17, N)`` (MATLAB's own order, as scipy.io.loadmat returns it).
    """
    a = np.asarray(a)
    expected = (
        f"(N, 1, {NUM_JOINTS}, {coords}) as h5py reads it, or ({coords}, {NUM_JOINTS}, 1, N) MATLAB order"
    )
    if a.dtype.kind not in "fiu":
        raise InputError(f"dtype {a.dtype}", file=file, field=fld, expected=expected)
    if a.ndim == 4 and a.shape[1] == 1 and a.shape[2:] == (NUM_JOINTS, coords):
        return a[:, 0].astype(np.float64)
    if a.ndim == 3 and a.shape[1:] == (NUM_JOINTS, coords):
        return a.astype(np.float64)
    if a.ndim == 4 and a.shape[:3] == (coords, NUM_JOINTS, 1):
        return a[:, :, 0, :].transpose(2, 1, 0).astype(np.float64)
    if a.ndim == 3 and a.shape[:2] == (coords, NUM_JOINTS):
        return a.transpose(2, 1, 0).astype(np.float64)
    joint_axes = [d for d in a.shape if d not in (1, coords)]
    what = f"shape {a.shape}"
    if a.ndim in (3, 4) and coords in a.shape and len(joint_axes) >= 1:
        what += f" (no axis of {NUM_JOINTS} joints)" if NUM_JOINTS not in a.shape else ""
    raise InputError(what, file=file, field=fld, expected=expected)


def _flags(a: np.ndarray | None, n: int, *, file: Path, fld: str) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    if a.size != n or a.dtype.kind not in "fiub":
        raise InputError(
            f"shape {a.shape} dtype {a.dtype}", file=file, field=fld, expected=f"{n} numbers (one per frame)"
        )
    return a.reshape(n)


@dataclass
class Sequence3DHP:
    """One test sequence in H36M-17 order. joints3d (N, 17, 3) camera metres, joints2d (N, 17, 2) px."""

    name: str
    joints3d: np.ndarray
    joints2d: np.ndarray
    valid: np.ndarray
    activity: np.ndarray


def read_sequence(path: str | Path, *, name: str, joints3d_key: str = DEFAULT_JOINTS3D) -> Sequence3DHP:
    """One ``annot_data.mat`` -> :class:`Sequence3DHP` (see the module doc). The 3D joints must be
    millimetres, as released: values already in metres are refused (:func:`check_units`)."""
    path = Path(path)
    m = read_mat(path, ("annot2", "annot3", "univ_annot3", "valid_frame", "activity_annotation"))
    for k in ("annot2", joints3d_key, "valid_frame"):
        if k not in m:
            raise InputError(
                f"missing field (fields: {sorted(m)})",
                file=path,
                field=k,
                expected="MPI-INF-3DHP test annotations: annot2, annot3, univ_annot3, valid_frame",
            )
    j3 = joints_from_mat(m[joints3d_key], coords=3, file=path, fld=joints3d_key)  # mm
    j2 = joints_from_mat(m["annot2"], coords=2, file=path, fld="annot2")
    n = j3.shape[0]
    if j2.shape[0] != n:
        raise InputError(
            f"{j2.shape[0]} frames but {joints3d_key} has {n}",
            file=path,
            field="annot2",
            expected=f"{n} frames",
        )
    valid = _flags(m["valid_frame"], n, file=path, fld="valid_frame") != 0
    activity = _flags(m.get("activity_annotation"), n, file=path, fld="activity_annotation")
    finite = np.isfinite(j3).all((1, 2)) & np.isfinite(j2).all((1, 2))
    if (valid & ~finite).any():
        f = int(np.nonzero(valid & ~finite)[0][0])
        raise InputError(
            f"non-finite joints at valid frame {f}",
            file=path,
            field=joints3d_key,
            expected="finite values wherever valid_frame is set",
        )
    j3 = np.where(finite[:, None, None], j3, 0.0)[:, list(MPI_TO_H36M)]
    check_units(j3, file=path, field=joints3d_key, unit="mm", valid=valid & finite)
    j3 = j3 / 1000.0
    j2 = np.where(finite[:, None, None], j2, 0.0)[:, list(MPI_TO_H36M)]
    act = np.zeros(n, np.int64) if activity is None else np.nan_to_num(activity).astype(np.int64)
    return Sequence3DHP(name=name, joints3d=j3, joints2d=j2, valid=valid & finite, activity=act)


def build_3dhp(root: str | Path, cfg: MPI3DHPConfig) -> dict[str, PreparedSplit]:
    """Read the test sequences under ``root`` into one split (nothing written)."""
    root = Path(root)
    require_files(
        expected_files(root, cfg),
        dataset="3dhp",
        how="MPI-INF-3DHP's mpi_inf_3dhp_test_set/TS*/annot_data.mat (see docs/real_data.md)",
    )
    b = SplitBuilder()
    for name in cfg.sequences:
        seq = read_sequence(annot_path(root, name), name=name, joints3d_key=cfg.joints3d)
        n = seq.joints3d.shape[0]
        b.add(
            {
                "joints3d": seq.joints3d.astype(np.float32),
                "joints2d": seq.joints2d.astype(np.float32),
                "valid": seq.valid,
                "activity": seq.activity,
                **zero_smpl(n),
            },
            {
                "seq_name": name,
                "subject": name,
                "motion": "test",
                "camera": np.asarray(CAMERAS[name]),
                "fps": FPS[name],
                "image_wh": np.asarray(IMAGE_WH[name], np.int64),
            },
        )
    frames, seqs = b.build()
    attrs = {
        "dataset": "3dhp",
        "split": cfg.split,
        "joint_set": "h36m17",
        "image_size": int(seqs["image_wh"].max()),
        "joints3d_source": f"{cfg.joints3d} (mm -> m), MPI_TO_H36M",
        "joints2d_source": "annot2",
        "has_smpl": False,
        "has_mesh_gt": False,
        "mesh_gt_note": "MPI-INF-3DHP has no SMPL ground truth: MPVPE unavailable; evaluate all 17 joints",
    }
    metrics = {"sequences": list(cfg.sequences), "valid_frames": int(frames["valid"].sum())}
    return {cfg.split: PreparedSplit(frames=frames, seqs=seqs, attrs=attrs, metrics=metrics)}
