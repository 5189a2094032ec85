"""AMASS ``.npz`` motions -> SMPL :class:`~hmrmamba.data.synthetic.motion.MotionClip` in a y-up world.

AMASS stores SMPL-H (``poses`` (T, 156)) or SMPL-X (``poses`` (T, 165)) parameters: global
orientation + 21 body joints in the first 66 numbers, then hands (and face). SMPL's 24-joint
pose is the first 66 numbers plus zero rotations for its two hand joints. AMASS's world is z-up;
it is turned to y-up by ``Q`` = -90 deg about x: ``(x, y, z) -> (x, z, -y)``.

SMPL rotates the body about its rest pelvis joint ``J0`` (which depends on the shape), so turning
the world by Q changes the translation as ``trans' = Q trans + (Q - I) J0``. ``rest_pelvis``
supplies J0 (default: the SMPL mean-shape pelvis, about 1 cm accurate for other shapes). The
result keeps SMPL's absolute translation: the floor is at y = 0.

Files are read with ``np.load(allow_pickle=False)``; missing keys, wrong shapes and non-finite
values raise :class:`~hmrmamba.errors.InputError` naming the file and the key.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from hmrmamba.data.synthetic.motion import MotionClip, resample_clip
from hmrmamba.errors import InputError, MissingFileError

#: Approximate rest pelvis joint of the SMPL mean shape (metres, SMPL's own y-up frame).
SMPL_REST_PELVIS = (-0.0018, -0.2233, 0.0282)
#: z-up (AMASS) -> y-up rotation.
Z_UP_TO_Y_UP = Rotation.from_euler("x", -90, degrees=True).as_matrix()
_POSE_WIDTHS = (72, 156, 165)  # SMPL, SMPL-H, SMPL-X


def _get(data, key: str, path: Path, *, alternatives: tuple[str, ...] = ()) -> np.ndarray:
    for k in (key, *alternatives):
        if k in data.files:
            try:
                return data[k]
            except ValueError as e:  # object arrays need pickle, which is refused
                raise InputError(f"cannot be read without pickle ({e})", file=path, field=k,
                                 expected="a plain numeric/string array") from None
    names = " or ".join(repr(k) for k in (key, *alternatives))
    raise InputError(f"missing key {names} (keys: {sorted(data.files)})", file=path, field=key,
                     expected="an AMASS motion file with poses, trans, betas, mocap_framerate")


def _finite(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"dtype {x.dtype}", file=path, field=key, expected="real numbers")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{int((~np.isfinite(x)).sum())} non-finite values", file=path, field=key,
                         expected="finite numbers")
    return x


def read_amass(path: str | Path, *, target_fps: float | None = None,
               rest_pelvis: tuple[float, float, float] | np.ndarray = SMPL_REST_PELVIS) -> MotionClip:
    """Read an AMASS .npz -> MotionClip(pose (T, 72) axis-angle, trans (T, 3) metres y-up, fps,
    kind="amass", betas (first 10 of the file's betas), gender). Resampled (slerp) when
    ``target_fps`` is given."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("AMASS file not found", file=path, expected="an existing .npz file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"not a readable .npz ({e})", file=path,
                         field="file", expected="an AMASS .npz") from None
    with data:
        poses = _finite(_get(data, "poses", path), "poses", path)
        trans = _finite(_get(data, "trans", path), "trans", path)
        betas = _finite(_get(data, "betas", path), "betas", path)
        fps_arr = _finite(_get(data, "mocap_framerate", path, alternatives=("mocap_frame_rate",)),
                          "mocap_framerate", path)
        gender = None
        if "gender" in data.files:
            g = _get(data, "gender", path)
            if g.dtype.kind not in "US" or g.size != 1:
                raise InputError(f"dtype {g.dtype}, shape {g.shape}", file=path, field="gender",
                                 expected="a single string")
            gender = g.reshape(()).item()
            gender = gender.decode("utf-8", "replace") if isinstance(gender, bytes) else str(gender)
    if poses.ndim != 2 or poses.shape[1] not in _POSE_WIDTHS or poses.shape[0] < 1:
        raise InputError(f"shape {poses.shape}", file=path, field="poses",
                         expected=f"(T, {' or '.join(map(str, _POSE_WIDTHS))}) with T >= 1")
    T = poses.shape[0]
    if trans.shape != (T, 3):
        raise InputError(f"shape {trans.shape}", file=path,
                         field="trans", expected=f"({T}, 3) to match poses")
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise InputError(f"shape {betas.shape}", file=path, field="betas", expected="(B,) with B >= 1")
    if fps_arr.size != 1 or not float(fps_arr.reshape(())) > 0:
        raise InputError(f"value {fps_arr!r}", file=path,
                         field="mocap_framerate", expected="one positive number")
    fps = float(fps_arr.reshape(()))

    pose = np.zeros((T, 72))
    pose[:, :66] = poses[:, :66]
    if poses.shape[1] == 72:
        pose[:, 66:] = poses[:, 66:]
    root = Rotation.from_matrix(Z_UP_TO_Y_UP @ Rotation.from_rotvec(pose[:, :3]).as_matrix())
    pose[:, :3] = root.as_rotvec()
    j0 = np.asarray(rest_pelvis, dtype=np.float64)
    trans_y = trans @ Z_UP_TO_Y_UP.T + (Z_UP_TO_Y_UP - np.eye(3)) @ j0
    clip = MotionClip(pose=pose.astype(np.float32), trans=trans_y.astype(np.float32), fps=fps, kind="amass",
                      betas=betas[:10].astype(np.float32), gender=gender)
    return clip if target_fps is None else resample_clip(clip, target_fps)
