"""Human3.6M in VideoPose3D's npz format -> H36M-17, camera-frame splits.

Files under the dataset root (https://github.com/facebookresearch/VideoPose3D, DATASETS.md):

* ``data_3d_h36m.npz``: ``positions_3d``, a pickled dict in a 0-d object array,
  ``subject -> action -> (N, 32, 3)`` metres in the mocap **world** frame at 50 fps;
* ``data_2d_h36m_<detector>.npz`` (``gt``, ``cpn_ft_h36m_dbb``, ``detectron_ft_h36m``,
  ``sh_pt_mpii``): ``positions_2d`` (``subject -> action -> [4 cameras x (N, J, 2)]`` pixels) and
  ``metadata`` (``layout_name``, ``num_joints``, ``keypoints_symmetry``).

The object arrays are pickles. They are never given to ``np.load(allow_pickle=True)``:
:func:`read_npz_object` parses the ``.npy`` header itself and hands the payload to the
restricted unpickler (:func:`hmrmamba.safe_pickle.safe_load`), so a file that names any callable
outside numpy's array reconstruction is refused before anything runs.

Conversion:

* 32 -> 17 joints with :data:`H36M32_TO_17` (VideoPose3D's kept joints) -- the order of
  :data:`hmrmamba.skeleton.H36M17`;
* world -> camera with the published extrinsics (:mod:`hmrmamba.data.real.h36m_cameras`):
  ``x_cam = R(q)^T (x_world - T / 1000)``, VideoPose3D's ``world_to_camera``;
* 50 -> 25 fps by keeping every ``stride``-th frame (default 2), starting at frame 0; 2D files
  are subsampled identically, so rows stay aligned;
* ``joints2d`` is the ``gt`` 2D file when present (Human3.6M's own projection, with lens
  distortion) and otherwise the projection of ``joints3d`` with the published intrinsics and
  distortion (:func:`project`), which reproduces it.

Some Human3.6M videos have a few more frames than the mocap; as VideoPose3D does, 2D streams
longer than the 3D sequence are cut to its length (counted in the metrics as ``trimmed_2d``).
Shorter ones are an error.

Splits: ``train`` (S1, S5, S6, S7, S8; all four cameras), ``test`` (S9, S11; ``test_cameras``,
default ``[3]``: 0-based camera index 3 = id 60457274, Human3.6M's 1-based "camera 4" that
PMCE/ARTS/Pose2Mesh evaluate on) and ``val`` (default: the same as ``test``, as those protocols
select models on the test subjects; give ``val_subjects: []`` to write none).

Optional SMPL fits (:func:`load_smpl_fits`) add ``smpl_pose/betas/trans`` (camera frame), so
mesh ground truth is available; without them these fields are zeros and ``attrs["has_smpl"]``
is false.
"""

from __future__ import annotations

import itertools
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.data.real.h36m_cameras import CAMERA_IDS, NUM_CAMERAS, SUBJECTS, H36MCamera, h36m_camera
from hmrmamba.data.real.tools import (
    PreparedSplit,
    SplitBuilder,
    check_options,
    require_files,
    smpl_to_camera,
    zero_smpl,
)
from hmrmamba.errors import InputError, MissingFileError

POSITIONS_3D_FILE = "data_3d_h36m.npz"
#: detect2d source -> VideoPose3D 2D file name.
DETECTION_FILES: dict[str, str] = {
    "gt": "data_2d_h36m_gt.npz",
    "cpn": "data_2d_h36m_cpn_ft_h36m_dbb.npz",
    "detectron": "data_2d_h36m_detectron_ft_h36m.npz",
    "sh": "data_2d_h36m_sh_pt_mpii.npz",
}
#: The 17 of Human3.6M's 32 mocap joints that VideoPose3D keeps, in H36M-17 order.
H36M32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
NUM_MOCAP_JOINTS = 32
SOURCE_FPS = 50.0
TRAIN_SUBJECTS: tuple[str, ...] = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS: tuple[str, ...] = ("S9", "S11")
#: The 16 joints of Stacked Hourglass (MPII order), as ``data_2d_h36m_sh_pt_mpii.npz`` stores them:
#: VideoPose3D's ``prepare_data_2d_h36m_sh.py`` copies the detector's poses unpermuted.
SH16_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
    "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
    "left_shoulder", "left_elbow", "left_wrist",
)
#: ``h36m[j] = sh[SH16_TO_H36M17[j]]``; ``None`` (neck/nose) has no Stacked Hourglass joint. This is
#: 3d-pose-baseline's ``SH_TO_GT_PERM`` (6,2,1,0,3,4,5,7,8,9,13,14,15,12,11,10) with the slot for
#: neck/nose added: MPII thorax -> H36M spine, upper neck -> thorax, head top -> head.
SH16_TO_H36M17: tuple[int | None, ...] = (6, 2, 1, 0, 3, 4, 5, 7, 8, None, 9, 13, 14, 15, 12, 11, 10)
#: H36M-17 slot missing from 16-joint detections, filled with the midpoint of these two.
NECK_NOSE = 9
THORAX, HEAD = 8, 10


# --------------------------------------------------------------------------------------------
# reading VideoPose3D npz files
# --------------------------------------------------------------------------------------------


def read_npz_object(path: str | Path, key: str) -> Any:
    """One array of an ``.npz``; object arrays are unpickled through the allow-list.

    A 0-d object array (VideoPose3D's dicts) comes back as its single element.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("file not found", file=path, field=key)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            if key not in names:
                raise InputError(
                    f"missing key (keys: {sorted(names)})",
                    file=path,
                    field=key,
                    expected=f"an array named '{key}'",
                )
            with zf.open(key + ".npy") as fh:
                if _npy_dtype(fh, path, key).hasobject:
                    return _unpickle_member(fh, path, key)
            with zf.open(key + ".npy") as fh:
                return np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(
            f"not a readable .npz ({type(exc).__name__}: {exc})",
            file=path,
            field=key,
            expected="a complete NumPy .npz archive (the file may be truncated)",
        ) from None


def _npy_dtype(fh, path: Path, key: str) -> np.dtype:
    """Read a ``.npy`` member's magic and header (formats 1.0 and 2.0) -> its dtype."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)[2]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)[2]
        raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"bad .npy header ({exc})", file=path, field=key, expected="a .npy member written by numpy"
        ) from None


def _unpickle_member(fh, path: Path, key: str) -> Any:
    """The pickle payload of an object ``.npy`` member, through the restricted unpickler."""
    from hmrmamba.safe_pickle import safe_load

    source = f"{path}[{key}]"
    try:
        obj = safe_load(fh, name=source)
    except InputError as exc:
        what = str(exc).removeprefix(f"{source}: ")
        raise InputError(what, file=path, field=key, expected=exc.expected) from None
    arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj, dtype=object)
    return arr[()] if arr.ndim == 0 else arr


def _float_array(x: Any, *, file: Path, fld: str, tail: tuple[int, ...], what: str) -> np.ndarray:
    """x as a finite float array of shape (N, *tail), else InputError naming file and field."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        arr = np.asarray([], dtype=object)
    expected = f"({', '.join(['N', *map(str, tail)])}) {what}"
    if arr.dtype.kind not in "fiu" or arr.ndim != 1 + len(tail) or arr.shape[1:] != tail:
        joints = (
            f" ({arr.shape[1]} joints)"
            if arr.ndim == 1 + len(tail) and len(tail) >= 2 and arr.shape[1] != tail[0]
            else ""
        )
        raise InputError(
            f"shape {arr.shape} dtype {arr.dtype}{joints}", file=file, field=fld, expected=expected
        )
    if arr.shape[0] < 1:
        raise InputError("no frames", file=file, field=fld, expected=expected)
    arr = arr.astype(np.result_type(arr.dtype, np.float32), copy=False)  # float32 files stay float32
    if not np.isfinite(arr).all():
        raise InputError("non-finite values (NaN/Inf)", file=file, field=fld, expected=expected)
    return arr


def _nested(obj: Any, *, file: Path, fld: str) -> dict:
    if not isinstance(obj, Mapping):
        raise InputError(
            f"{type(obj).__name__}",
            file=file,
            field=fld,
            expected="a dict subject -> action -> array (VideoPose3D layout)",
        )
    return dict(obj)


def load_positions_3d(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``data_3d_h36m.npz`` -> subject -> action -> (N, 32, 3) float metres, world frame."""
    path = Path(path)
    data = _nested(read_npz_object(path, "positions_3d"), file=path, fld="positions_3d")
    out: dict[str, dict[str, np.ndarray]] = {}
    for subject, actions in data.items():
        actions = _nested(actions, file=path, fld=f"positions_3d/{subject}")
        out[str(subject)] = {
            str(a): _float_array(
                v,
                file=path,
                fld=f"positions_3d/{subject}/{a}",
                tail=(NUM_MOCAP_JOINTS, 3),
                what="metres (32 mocap joints)",
            )
            for a, v in actions.items()
        }
    return out


def load_positions_2d(path: str | Path) -> tuple[dict[str, dict[str, list]], dict]:
    """A ``data_2d_h36m_*.npz`` -> (subject -> action -> list of camera arrays, metadata).

    The arrays are left as stored; :func:`camera_keypoints` validates and converts one stream.
    """
    path = Path(path)
    data = _nested(read_npz_object(path, "positions_2d"), file=path, fld="positions_2d")
    meta = read_npz_object(path, "metadata")
    if not isinstance(meta, Mapping) or "num_joints" not in meta:
        raise InputError(
            f"{type(meta).__name__} without 'num_joints'",
            file=path,
            field="metadata",
            expected="a dict with layout_name, num_joints, keypoints_symmetry",
        )
    return {str(s): _nested(a, file=path, fld=f"positions_2d/{s}") for s, a in data.items()}, dict(meta)


def keypoints_to_h36m17(
    kp: np.ndarray, *, metadata: Mapping[str, Any], file: Path, fld: str
) -> tuple[np.ndarray, np.ndarray]:
    """A 2D stream in the file's layout -> H36M-17. kp: (N, J, 2|3) px -> (N, 17, 2), conf (N, 17).

    Layouts: 17 joints ``h36m`` (as is); 17 joints ``coco`` (:func:`coco17_to_h36m17`); 16 joints
    (Stacked Hourglass files, no ``layout_name`` or ``mpii``: MPII order :data:`SH16_NAMES`,
    reordered by :data:`SH16_TO_H36M17`; neck/nose, which MPII lacks, is the midpoint of thorax
    and head). A third channel is a confidence; without one, confidences are 1.
    """
    from hmrmamba.detect.sources import coco17_to_h36m17

    num = int(metadata.get("num_joints", -1))
    layout = str(metadata.get("layout_name", "h36m"))
    arr = np.asarray(kp)
    if arr.dtype.kind not in "fiu" or arr.ndim != 3 or arr.shape[2] not in (2, 3):
        raise InputError(
            f"shape {arr.shape} dtype {arr.dtype}", file=file, field=fld, expected=f"(N, {num}, 2) pixels"
        )
    if arr.shape[1] != num:
        raise InputError(
            f"{arr.shape[1]} joints but metadata.num_joints is {num}",
            file=file,
            field=fld,
            expected=f"(N, {num}, 2) pixels",
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError("non-finite keypoints (NaN/Inf)", file=file, field=fld, expected="finite pixels")
    xy = arr[..., :2]
    conf = arr[..., 2] if arr.shape[2] == 3 else np.ones(arr.shape[:2])
    if num == 17 and layout.startswith("coco"):
        xy, conf = coco17_to_h36m17(xy, conf)
    elif num == 16:
        if "layout_name" in metadata and not layout.lower().startswith("mpii"):
            raise InputError(
                f"layout '{layout}' with 16 joints",
                file=file,
                field="metadata",
                expected="16 joints in Stacked Hourglass (MPII) order: layout_name absent or 'mpii'",
            )
        order = [0 if i is None else i for i in SH16_TO_H36M17]  # neck/nose: set just below
        xy, conf = xy[:, order], conf[:, order]  # fancy indexing: copies
        xy[:, NECK_NOSE] = 0.5 * (xy[:, THORAX] + xy[:, HEAD])
        conf[:, NECK_NOSE] = np.minimum(conf[:, THORAX], conf[:, HEAD])
    elif num != 17:
        raise InputError(
            f"layout '{layout}' with {num} joints",
            file=file,
            field="metadata",
            expected="17 (h36m or coco layout) or 16 (Stacked Hourglass) joints",
        )
    return xy, np.clip(conf, 0.0, 1.0)


def camera_keypoints(
    pos2d: Mapping[str, Mapping[str, Any]],
    *,
    subject: str,
    action: str,
    camera: int,
    num_frames: int,
    metadata: Mapping[str, Any],
    file: Path,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One camera's 2D stream, checked against the 3D sequence's length and cut to it.

    -> kp (num_frames, 17, 2) px, conf (num_frames, 17), trimmed (bool).
    """
    if subject not in pos2d:
        raise InputError(
            f"missing subject (subjects: {sorted(pos2d)})",
            file=file,
            field=f"positions_2d/{subject}",
            expected=f"2D keypoints for {subject}",
        )
    if action not in pos2d[subject]:
        raise InputError(
            f"missing action (actions: {sorted(pos2d[subject])})",
            file=file,
            field=f"positions_2d/{subject}/{action}",
            expected=f"2D keypoints for {action!r}",
        )
    streams = pos2d[subject][action]
    fld = f"positions_2d/{subject}/{action}"
    if not isinstance(streams, (list, tuple, np.ndarray)) or len(streams) != NUM_CAMERAS:
        n = len(streams) if hasattr(streams, "__len__") else type(streams).__name__
        raise InputError(
            f"{n} camera streams",
            file=file,
            field=fld,
            expected=f"a list of {NUM_CAMERAS} arrays, one per camera {list(CAMERA_IDS)}",
        )
    fld = f"{fld}[{camera}]"
    kp, conf = keypoints_to_h36m17(streams[camera], metadata=metadata, file=file, fld=fld)
    if kp.shape[0] < num_frames:
        raise InputError(
            f"{kp.shape[0]} frames but the 3D sequence has {num_frames}",
            file=file,
            field=fld,
            expected=f"at least {num_frames} frames (as many as positions_3d)",
        )
    return kp[:num_frames], conf[:num_frames], kp.shape[0] > num_frames


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def world_to_camera(points: np.ndarray, cam: H36MCamera) -> np.ndarray:
    """points: (..., 3) world metres -> (..., 3) camera metres (x right, y down, z forward)."""
    return (np.asarray(points, dtype=np.float64) - cam.position) @ cam.R.T


def project(points_cam: np.ndarray, cam: H36MCamera, *, distort: bool = True) -> np.ndarray:
    """points_cam: (..., 3) camera metres -> (..., 2) pixels, with the lens distortion model of
    VideoPose3D's ``project_to_2d`` (normalised coordinates clamped to [-1, 1] as it does)."""
    p = np.asarray(points_cam, dtype=np.float64)
    xy = p[..., :2] / np.maximum(p[..., 2:], 1e-6)
    f, c = cam.intrinsics[:2], cam.intrinsics[2:]
    if not distort:
        return f * xy + c
    xy = np.clip(xy, -1.0, 1.0)
    k, tang = cam.distortion[:3], cam.distortion[3:]
    r2 = np.sum(xy**2, axis=-1, keepdims=True)
    radial = 1.0 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3
    tan = np.sum(tang * xy, axis=-1, keepdims=True)
    return f * (xy * (radial + tan) + tang * r2) + c


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def _str_tuple(v: Any, fld: str) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise InputError(f"value {v!r}", file="params.yaml", field=fld, expected="a list of names")
    return tuple(v)


def _camera_tuple(v: Any, fld: str) -> tuple[int, ...]:
    ok = isinstance(v, (list, tuple)) and all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CAMERAS for c in v
    )
    if not ok or len(set(v)) != len(v):
        raise InputError(
            f"value {v!r}",
            file="params.yaml",
            field=fld,
            expected=f"distinct 0-based camera indices in 0..{NUM_CAMERAS - 1} (ids {list(CAMERA_IDS)})",
        )
    return tuple(v)


@dataclass(frozen=True)
class H36MConfig:
    """Reader options (``params["datasets"]["h36m"]``); camera indices are 0-based."""

    train_subjects: tuple[str, ...] = TRAIN_SUBJECTS
    test_subjects: tuple[str, ...] = TEST_SUBJECTS
    val_subjects: tuple[str, ...] | None = None  # None: the same as test
    train_cameras: tuple[int, ...] = (0, 1, 2, 3)
    test_cameras: tuple[int, ...] = (3,)
    stride: int = 2
    actions: tuple[str, ...] | None = None  # None: every action in the 3D file
    positions_3d: str = POSITIONS_3D_FILE
    detections: Mapping[str, str] = field(default_factory=lambda: dict(DETECTION_FILES))

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> H36MConfig:
        known = {
            "root",
            "train_subjects",
            "test_subjects",
            "val_subjects",
            "train_cameras",
            "test_cameras",
            "stride",
            "actions",
            "positions_3d",
            "detections",
            "smpl_fits",
        }
        check_options(p, known, section="h36m")
        kw: dict[str, Any] = {}
        for k in ("train_subjects", "test_subjects"):
            if p.get(k) is not None:
                kw[k] = _str_tuple(p[k], f"datasets.h36m.{k}")
        if p.get("val_subjects") is not None:
            kw["val_subjects"] = _str_tuple(p["val_subjects"], "datasets.h36m.val_subjects")
        for k in ("train_cameras", "test_cameras"):
            if p.get(k) is not None:
                kw[k] = _camera_tuple(p[k], f"datasets.h36m.{k}")
        if p.get("stride") is not None:
            s = p["stride"]
            if not isinstance(s, int) or isinstance(s, bool) or s < 1:
                raise InputError(
                    f"value {s!r}",
                    file="params.yaml",
                    field="datasets.h36m.stride",
                    expected="an integer >= 1 (2: 50 fps -> 25 fps)",
                )
            kw["stride"] = s
        if p.get("actions") not in (None, "all"):
            kw["actions"] = _str_tuple(p["actions"], "datasets.h36m.actions")
        if p.get("positions_3d"):
            kw["positions_3d"] = str(p["positions_3d"])
        if p.get("detections") is not None:
            det = p["detections"]
            if not isinstance(det, Mapping) or not all(isinstance(v, str) for v in det.values()):
                raise InputError(
                    f"value {det!r}",
                    file="params.yaml",
                    field="datasets.h36m.detections",
                    expected="a mapping source -> 2D file name, e.g. {cpn: data_2d_h36m_cpn_ft_h36m_dbb.npz}",
                )
            kw["detections"] = {str(k): v for k, v in det.items()}
        cfg = cls(**kw)
        clash = set(cfg.train_subjects) & set(cfg.test_subjects)
        if clash:
            raise InputError(
                f"subjects {sorted(clash)} are in both train and test",
                file="params.yaml",
                field="datasets.h36m.test_subjects",
                expected="disjoint subject lists",
            )
        return cfg

    def splits(self) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
        """split name -> (subjects, camera indices); splits without subjects are left out."""
        val = self.test_subjects if self.val_subjects is None else self.val_subjects
        out = {
            "train": (self.train_subjects, self.train_cameras),
            "val": (val, self.test_cameras),
            "test": (self.test_subjects, self.test_cameras),
        }
        return {k: v for k, v in out.items() if v[0]}

    def gt_2d_path(self, root: Path) -> Path | None:
        name = self.detections.get("gt")
        return None if not name else root / name


def expected_files(root: Path, cfg: H36MConfig) -> list[Path]:
    """Files the prepare stage needs (the 2D ``gt`` file is optional: 2D is then projected)."""
    return [root / cfg.positions_3d]


# --------------------------------------------------------------------------------------------
# SMPL fits (optional mesh ground truth)
# --------------------------------------------------------------------------------------------

#: Human3.6M action index (as in NeuralAnnot / Moon et al.'s files) of each action's base name.
ACTION_INDEX: dict[str, int] = {
    "Directions": 2,
    "Discussion": 3,
    "Eating": 4,
    "Greeting": 5,
    "Phoning": 6,
    "Posing": 7,
    "Purchases": 8,
    "Sitting": 9,
    "SittingDown": 10,
    "Smoking": 11,
    "Photo": 12,
    "Waiting": 13,
    "Walking": 14,
    "WalkDog": 15,
    "WalkTogether": 16,
}
_ACTION_ALIASES = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog", "WalkingTogether": "WalkTogether"}
NEURALANNOT_FILE = "Human36M_subject{n}_SMPL_NeuralAnnot.json"


def action_base(name: str) -> str:
    """'Directions 1' -> 'Directions'; 'TakingPhoto' -> 'Photo' (the 15 Human3.6M actions)."""
    base = re.sub(r"\s+\d+$", "", name.strip())
    return _ACTION_ALIASES.get(base, base)


@dataclass
class SmplFit:
    """World-frame SMPL parameters of one mocap sequence (rows = the 3D file's 50 fps frames)."""

    pose: np.ndarray  # (N, 72) axis-angle
    betas: np.ndarray  # (N, 10)
    trans: np.ndarray  # (N, 3) metres
    valid: np.ndarray  # (N,) bool: a fit exists for the frame
    note: str = ""


def _fit_from_npz(z, path: Path, subject: str, action: str, n: int) -> SmplFit | None:
    keys = {k: f"{subject}/{action}/{k}" for k in ("pose", "betas", "trans")}
    if not any(k in z.files for k in keys.values()):
        return None
    arrs = {}
    for k, key in keys.items():
        if key not in z.files:
            raise InputError(
                "missing", file=path, field=key, expected="pose, betas and trans for the sequence"
            )
        try:
            arrs[k] = np.asarray(z[key])
        except ValueError as exc:
            raise InputError(f"refused ({exc})", file=path, field=key, expected="a numeric array") from None
    pose = _float_array(arrs["pose"], file=path, fld=keys["pose"], tail=(72,), what="axis-angle")
    trans = _float_array(arrs["trans"], file=path, fld=keys["trans"], tail=(3,), what="metres")
    betas = np.asarray(arrs["betas"], dtype=np.float64)
    if betas.ndim == 1:
        betas = np.broadcast_to(betas, (pose.shape[0], betas.shape[0]))
    if betas.ndim != 2 or betas.shape[1] < 10 or not np.isfinite(betas).all():
        raise InputError(
            f"shape {betas.shape}", file=path, field=keys["betas"], expected="(B,) or (N, B) finite, B >= 10"
        )
    for k, a in (("pose", pose), ("trans", trans), ("betas", betas)):
        if a.shape[0] != n:
            raise InputError(
                f"{a.shape[0]} frames but the 3D sequence has {n}",
                file=path,
                field=keys[k],
                expected=f"{n} rows (the 50 fps frames of positions_3d)",
            )
    return SmplFit(pose=pose, betas=np.array(betas[:, :10]), trans=trans, valid=np.ones(n, bool), note="npz")


def _neuralannot_frames(entry: Mapping[str, Any], n: int, path: Path, fld: str) -> SmplFit:
    pose, betas, trans, valid = np.zeros((n, 72)), np.zeros((n, 10)), np.zeros((n, 3)), np.zeros(n, bool)
    for frame, p in entry.items():
        try:
            f = int(frame)
        except ValueError:
            raise InputError(
                f"frame key {frame!r}", file=path, field=fld, expected="integer frame indices"
            ) from None
        if not 0 <= f < n:
            continue
        try:
            pose[f] = np.asarray(p["pose"], dtype=np.float64).reshape(72)
            betas[f] = np.asarray(p["shape"], dtype=np.float64).reshape(-1)[:10]
            trans[f] = np.asarray(p["trans"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"bad entry ({exc!r})",
                file=path,
                field=f"{fld}/{frame}",
                expected="{'pose': 72 numbers, 'shape': >= 10 numbers, 'trans': 3 numbers}",
            ) from None
        valid[f] = True
    if not (np.isfinite(pose).all() and np.isfinite(betas).all() and np.isfinite(trans).all()):
        raise InputError("non-finite values", file=path, field=fld, expected="finite SMPL parameters")
    return SmplFit(pose=pose, betas=betas, trans=trans, valid=valid)


def _trajectory_error(fit: SmplFit, pelvis: np.ndarray) -> float:
    """RMS distance (m) of the fit's root path to the mocap pelvis path, both centred."""
    v = fit.valid
    if v.sum() < 2:
        return float("inf")
    a = fit.trans[v] - fit.trans[v].mean(0)
    b = pelvis[v] - pelvis[v].mean(0)
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1))))


def _neuralannot_subject(
    path: Path, actions: Mapping[str, np.ndarray], *, max_error: float
) -> tuple[dict[str, SmplFit], dict[str, Any]]:
    """Match a NeuralAnnot subject file's (action, subaction) entries to VideoPose3D action names.

    The action index follows from the name; of its subactions, each sequence takes the one whose
    root trajectory best follows the mocap pelvis (the assignment of least total error).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"not readable as JSON ({exc})",
            file=path,
            expected="NeuralAnnot {action: {subaction: {frame: {pose, shape, trans}}}}",
        ) from None
    if not isinstance(data, Mapping):
        raise InputError(f"top level is {type(data).__name__}", file=path, expected="a JSON object")
    groups: dict[str, list[str]] = {}
    for name in actions:
        groups.setdefault(action_base(name), []).append(name)
    fits: dict[str, SmplFit] = {}
    report: dict[str, Any] = {}
    for base, names in groups.items():
        idx = ACTION_INDEX.get(base)
        subs = data.get(str(idx)) if idx is not None else None
        if not isinstance(subs, Mapping) or not subs:
            continue
        cand = {
            s: {nm: _neuralannot_frames(e, actions[nm].shape[0], path, f"{idx}/{s}") for nm in names}
            for s, e in subs.items()
            if isinstance(e, Mapping)
        }
        cost = {(nm, s): _trajectory_error(cand[s][nm], actions[nm][:, 0]) for s in cand for nm in names}
        best, best_cost = None, float("inf")
        for perm in itertools.permutations(sorted(cand), min(len(names), len(cand))):
            c = sum(cost[(nm, s)] for nm, s in zip(names, perm))
            if c < best_cost:
                best, best_cost = perm, c
        for nm, s in zip(names, best or ()):
            err = cost[(nm, s)]
            report[nm] = {"action": idx, "subaction": int(s), "trajectory_rms_mm": round(1000 * err, 1)}
            if err <= max_error:
                fit = cand[s][nm]
                fit.note = f"neuralannot {idx}/{s}"
                fits[nm] = fit
    return fits, report


def load_smpl_fits(
    path: str | Path,
    positions: Mapping[str, Mapping[str, np.ndarray]],
    *,
    subjects: tuple[str, ...],
    max_error: float = 0.1,
) -> tuple[dict[tuple[str, str], SmplFit], dict[str, Any]]:
    """World-frame SMPL fits for the given subjects' sequences. -> {(subject, action): fit}, report.

    ``path`` is either an ``.npz`` (no pickles) with arrays ``"<subject>/<action>/pose"`` (N, 72),
    ``".../betas"`` (B,) or (N, B), ``".../trans"`` (N, 3) in the mocap world frame, metres, one
    row per 50 fps frame of ``positions_3d``; or a directory of NeuralAnnot files
    ``Human36M_subject<n>_SMPL_NeuralAnnot.json``, matched to sequences as described in
    :func:`_neuralannot_subject` (fits whose root path strays more than ``max_error`` metres RMS
    from the mocap pelvis are dropped and reported).
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(
            "SMPL fits not found",
            file=path,
            field="datasets.h36m.smpl_fits",
            expected="an .npz of per-sequence fits or a directory of NeuralAnnot JSON files",
        )
    fits: dict[tuple[str, str], SmplFit] = {}
    report: dict[str, Any] = {}
    if path.is_dir():
        for subject in subjects:
            f = path / NEURALANNOT_FILE.format(n=subject.lstrip("S"))
            if not f.is_file():
                continue
            sub_fits, sub_report = _neuralannot_subject(f, positions[subject], max_error=max_error)
            fits.update({(subject, a): v for a, v in sub_fits.items()})
            report[subject] = sub_report
        return fits, report
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(
            f"not a readable .npz ({exc})",
            file=path,
            expected="an .npz of '<subject>/<action>/{pose,betas,trans}' arrays",
        ) from None
    with z:
        for subject in subjects:
            for action, pos in positions[subject].items():
                fit = _fit_from_npz(z, path, subject, action, pos.shape[0])
                if fit is not None:
                    fits[(subject, action)] = fit
    return fits, report


def rest_pelvis_fn(body_model: Path):
    """betas (N, B) -> SMPL rest pelvis joints (N, 3) metres, for the body model file."""
    from hmrmamba.body.body_model import load_body_arrays

    arrays = load_body_arrays(body_model)
    reg0 = arrays["J_regressor"][0]
    base = reg0 @ arrays["v_template"]
    dirs = np.einsum("v,vcb->cb", reg0, arrays["shapedirs"])

    def fn(betas: np.ndarray) -> np.ndarray:
        b = min(betas.shape[1], dirs.shape[1])
        return base + betas[:, :b] @ dirs[:, :b].T

    return fn


# --------------------------------------------------------------------------------------------
# building the splits
# --------------------------------------------------------------------------------------------


def _select_actions(
    available: Mapping[str, np.ndarray], wanted: tuple[str, ...] | None, *, file: Path, subject: str
) -> list[str]:
    if wanted is None:
        return sorted(available)
    out = []
    for w in wanted:
        hits = [a for a in sorted(available) if a == w or action_base(a) == action_base(w)]
        if not hits:
            raise InputError(
                f"missing action '{w}' (actions: {sorted(available)})",
                file=file,
                field=f"positions_3d/{subject}/{w}",
                expected="every configured action",
            )
        out += [h for h in hits if h not in out]
    return out


def build_h36m(
    root: str | Path, cfg: H36MConfig, *, smpl_fits: Path | None = None, body_model: Path | None = None
) -> dict[str, PreparedSplit]:
    """Read the VideoPose3D files under ``root`` into the configured splits (nothing written)."""
    root = Path(root)
    require_files(
        expected_files(root, cfg),
        dataset="h36m",
        how="VideoPose3D's data_3d_h36m.npz (see docs/real_data.md)",
    )
    path3d = root / cfg.positions_3d
    positions = load_positions_3d(path3d)
    splits = cfg.splits()
    needed = tuple(dict.fromkeys(s for subjects, _ in splits.values() for s in subjects))
    for s in needed:
        if s not in positions:
            raise InputError(
                f"missing subject (subjects: {sorted(positions)})",
                file=path3d,
                field=f"positions_3d/{s}",
                expected="3D poses for every configured subject",
            )
        if s not in SUBJECTS:
            raise InputError(
                f"no published camera calibration for subject '{s}'",
                file=path3d,
                field=f"positions_3d/{s}",
                expected=f"subjects among {list(SUBJECTS)}",
            )
    actions = {s: _select_actions(positions[s], cfg.actions, file=path3d, subject=s) for s in needed}

    gt_path = cfg.gt_2d_path(root)
    pos2d, meta2d = load_positions_2d(gt_path) if gt_path is not None and gt_path.is_file() else (None, None)
    fits: dict[tuple[str, str], SmplFit] = {}
    fit_report: dict[str, Any] = {}
    pelvis_fn = None
    if smpl_fits is not None:
        if body_model is None or not Path(body_model).is_file():
            raise MissingFileError(
                "SMPL fits need the body model (for the rest pelvis of each shape)",
                file=body_model,
                field="body_model",
                expected="data/body_model/body_model.npz (run the body_model stage)",
            )
        pelvis_fn = rest_pelvis_fn(Path(body_model))
        fits, fit_report = load_smpl_fits(
            smpl_fits, {s: {a: positions[s][a] for a in actions[s]} for s in needed}, subjects=needed
        )

    out: dict[str, PreparedSplit] = {}
    for split, (subjects, cameras) in splits.items():
        b = SplitBuilder()
        trimmed = 0
        for s in subjects:
            for a in actions[s]:
                full = positions[s][a]
                n_full = full.shape[0]
                rows = np.arange(0, n_full, cfg.stride)
                world17 = full[rows][:, list(H36M32_TO_17)]
                fit = fits.get((s, a))
                for c in cameras:
                    cam = h36m_camera(s, c, file=path3d)
                    j3d = world_to_camera(world17, cam)
                    if pos2d is not None:
                        kp, _, cut = camera_keypoints(
                            pos2d,
                            subject=s,
                            action=a,
                            camera=c,
                            num_frames=n_full,
                            metadata=meta2d,
                            file=gt_path,
                        )
                        j2d = kp[rows]
                        trimmed += int(cut)
                    else:
                        j2d = project(j3d, cam)
                    frames = {
                        "joints3d": j3d.astype(np.float32),
                        "joints2d": j2d.astype(np.float32),
                        "valid": np.ones(len(rows), bool),
                        **zero_smpl(len(rows)),
                    }
                    if fit is not None and pelvis_fn is not None:
                        betas = fit.betas[rows]
                        pose_c, trans_c = smpl_to_camera(
                            fit.pose[rows], fit.trans[rows], pelvis_fn(betas), cam.R, cam.t
                        )
                        ok = fit.valid[rows]
                        frames.update(
                            smpl_pose=np.where(ok[:, None], pose_c, 0).astype(np.float32),
                            smpl_betas=np.where(ok[:, None], betas, 0).astype(np.float32),
                            smpl_trans=np.where(ok[:, None], trans_c, 0).astype(np.float32),
                            smpl_valid=ok.copy(),
                        )
                    b.add(
                        frames,
                        {
                            "seq_name": f"{s}/{a}/{cam.camera_id}",
                            "subject": s,
                            "motion": a,
                            "camera": cam.intrinsics,
                            "fps": SOURCE_FPS / cfg.stride,
                            "camera_index": c,
                            "source_frames": n_full,
                            "image_wh": np.asarray(cam.resolution, np.int64),
                            "distortion": cam.distortion,
                        },
                    )
        if not len(b):
            raise InputError(
                f"split '{split}' has no sequences",
                file=path3d,
                field="positions_3d",
                expected="at least one action for its subjects",
            )
        frames, seqs = b.build()
        has_smpl = bool(frames["smpl_valid"].any())
        attrs = {
            "dataset": "h36m",
            "split": split,
            "joint_set": "h36m17",
            "image_size": int(seqs["image_wh"].max()),
            "frame_stride": cfg.stride,
            "source_fps": SOURCE_FPS,
            "camera_indexing": "0-based, ids " + ",".join(CAMERA_IDS),
            "joints3d_source": "mocap (VideoPose3D positions_3d, 32 -> 17 joints)",
            "joints2d_source": gt_path.name
            if pos2d is not None
            else "projected (published intrinsics + distortion)",
            "has_smpl": has_smpl,
            "has_mesh_gt": has_smpl,
            "mesh_gt_note": ("SMPL fits from " + str(smpl_fits))
            if has_smpl
            else "no SMPL fits given (datasets.h36m.smpl_fits): MPVPE unavailable",
        }
        metrics = {
            "subjects": list(subjects),
            "cameras": list(cameras),
            "trimmed_2d": trimmed,
            "smpl_frames": int(frames["smpl_valid"].sum()),
        }
        matching = {s: fit_report[s] for s in subjects if s in fit_report}
        if matching:  # NeuralAnnot: which (action, subaction) each sequence took, and how well it fits
            metrics["smpl_fit_matching"] = matching
        out[split] = PreparedSplit(frames=frames, seqs=seqs, attrs=attrs, metrics=metrics)
    return out


# --------------------------------------------------------------------------------------------
# 2D detections aligned with a written split
# --------------------------------------------------------------------------------------------


def h36m_detections(root: str | Path, cfg: H36MConfig, *, data, source: str):
    """VideoPose3D's 2D detections of ``source`` for the rows of a written split.

    ``data``: the split (:class:`hmrmamba.data.h5schema.Split`) -> :class:`Detections` with
    kp (N, 17, 2) px and conf (N, 17) (1 where the file has no confidences).
    """
    from hmrmamba.detect.sources import Detections

    root = Path(root)
    if source not in cfg.detections:
        raise InputError(
            f"no 2D file configured for source '{source}'",
            file="params.yaml",
            field="datasets.h36m.detections",
            expected=f"one of {sorted(cfg.detections)}",
        )
    path = root / cfg.detections[source]
    require_files(
        [path],
        dataset="h36m",
        how=f"VideoPose3D's 2D detections for source '{source}' (see docs/real_data.md)",
    )
    pos2d, meta = load_positions_2d(path)
    seqs = data.seqs
    for k in ("subject", "motion", "camera_index", "source_frames"):
        if k not in seqs:
            raise InputError(
                "missing sequence field",
                file=data.path,
                field=f"sequences/{k}",
                expected="a split written by the h36m reader (re-run prepare)",
            )
    stride = int(data.attrs.get("frame_stride", cfg.stride))
    kps, confs = [], []
    for i in range(len(seqs["seq_len"])):
        s, a, c = str(seqs["subject"][i]), str(seqs["motion"][i]), int(seqs["camera_index"][i])
        n_full = int(seqs["source_frames"][i])
        kp, conf, _ = camera_keypoints(
            pos2d, subject=s, action=a, camera=c, num_frames=n_full, metadata=meta, file=path
        )
        kp, conf = kp[::stride], conf[::stride]
        if kp.shape[0] != int(seqs["seq_len"][i]):
            raise InputError(
                f"{kp.shape[0]} rows after subsampling, the split has {int(seqs['seq_len'][i])}",
                file=path,
                field=f"positions_2d/{s}/{a}[{c}]",
                expected="the split's frame count (re-run prepare with the same stride)",
            )
        kps.append(kp)
        confs.append(conf)
    return Detections(
        kp=np.concatenate(kps).astype(np.float32),
        conf=np.concatenate(confs).astype(np.float32),
        source=source,
        meta={
            "file": str(path),
            "layout": str(meta.get("layout_name", "mpii" if int(meta["num_joints"]) == 16 else "h36m")),
            "num_joints": int(meta["num_joints"]),
        },
    )
