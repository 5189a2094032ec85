"""Per-joint rotation limits for SMPL poses, as Euler-angle boxes.

Each non-root SMPL joint has an intrinsic Euler order (``"XYZ"`` means ``R = Rx(a) @ Ry(b) @
Rz(c)``) and a box of allowed angles. Angles are always stored *by axis* — ``eul[..., 0]`` is the
angle about x, ``[..., 1]`` about y, ``[..., 2]`` about z — whatever the order; the order only
says how the three rotations compose. The middle axis of every order has a range inside
``(-pi/2, pi/2)`` and the outer ones inside ``(-pi, pi)``, so the decomposition of an in-range
rotation is unique and ``euler -> matrix -> euler`` round-trips exactly.

SMPL conventions (rest T-pose, y up, facing +z, the body's left on +x; local axes are parallel
to the world in the rest pose):

- hip flexion (thigh forward) is a *negative* x rotation, knee flexion a positive x rotation,
  ankle plantar flexion positive x, spine/neck forward flexion positive x;
- the left shoulder lowers the arm with a negative z rotation, the right one with a positive z;
- the left elbow flexes with a negative y rotation, the right one with a positive y.

Limits are written for the left side; right-side limits are their mirror image. Mirroring the
body in x maps Euler angles ``(x, y, z) -> (x, -y, -z)`` for every order.
The root (global orientation) is unlimited.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.transform import Rotation

from hmrmamba.errors import InputError
from hmrmamba.skeleton import SMPL24

NUM_JOINTS = 24

#: Left-side / central limits: joint -> (order, (lo_x, lo_y, lo_z), (hi_x, hi_y, hi_z)), radians.
_LEFT_LIMITS: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float]]] = {
    "left_hip": ("XYZ", (-2.5, -0.9, -0.6), (0.75, 0.9, 1.4)),
    "spine1": ("XYZ", (-0.6, -0.6, -0.5), (1.0, 0.6, 0.5)),
    "left_knee": ("XYZ", (-0.1, -0.35, -0.2), (2.7, 0.35, 0.2)),
    "spine2": ("XYZ", (-0.5, -0.6, -0.45), (0.8, 0.6, 0.45)),
    "left_ankle": ("XYZ", (-0.85, -0.5, -0.45), (1.0, 0.5, 0.45)),
    "spine3": ("XYZ", (-0.5, -0.6, -0.45), (0.7, 0.6, 0.45)),
    "left_foot": ("XYZ", (-1.0, -0.25, -0.25), (0.5, 0.25, 0.25)),
    "neck": ("XYZ", (-0.9, -0.9, -0.6), (0.9, 0.9, 0.6)),
    "left_collar": ("XYZ", (-0.5, -0.6, -0.5), (0.5, 0.4, 0.7)),
    "head": ("XYZ", (-0.6, -0.9, -0.5), (0.7, 0.9, 0.5)),
    "left_shoulder": ("XYZ", (-3.0, -1.45, -1.75), (1.8, 1.2, 1.7)),
    # elbow: flexion (y) first, carrying angle (z) in the middle, forearm twist (x) last
    "left_elbow": ("YZX", (-1.5, -2.8, -0.6), (1.5, 0.1, 0.6)),
    "left_wrist": ("XYZ", (-1.2, -0.7, -1.3), (1.2, 0.7, 1.2)),
    "left_hand": ("XYZ", (-0.5, -0.6, -1.4), (0.5, 0.6, 0.6)),
}


def _build_tables() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    orders = ["XYZ"] * NUM_JOINTS
    lo = np.full((NUM_JOINTS, 3), -np.inf)
    hi = np.full((NUM_JOINTS, 3), np.inf)
    orders[0] = "YXZ"  # root: heading (y), then pitch (x), then roll (z); never limited
    for name, (order, low, high) in _LEFT_LIMITS.items():
        j = SMPL24.index(name)
        orders[j] = order
        lo[j], hi[j] = low, high
        if name.startswith("left_"):
            r = SMPL24.index("right_" + name[len("left_"):])
            orders[r] = order
            lo[r] = (low[0], -high[1], -high[2])
            hi[r] = (high[0], -low[1], -low[2])
    return tuple(orders), lo, hi


#: Euler order per joint (24,), lower and upper bounds (24, 3) indexed by axis (root: +-inf).
EULER_ORDERS, LIMITS_LOW, LIMITS_HIGH = _build_tables()
LIMITS_LOW.flags.writeable = False
LIMITS_HIGH.flags.writeable = False


def _check_pose(pose: np.ndarray) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape[-1:] != (NUM_JOINTS * 3,):
        raise InputError(f"pose has shape {pose.shape}", field="pose", expected="(..., 72) axis-angle")
    return pose


def euler_to_matrix(eul: np.ndarray) -> np.ndarray:
    """eul: (..., 24, 3) per-joint Euler angles by axis, radians -> (..., 24, 3, 3)."""
    eul = np.asarray(eul, dtype=np.float64)
    lead = eul.shape[:-2]
    flat = eul.reshape(-1, NUM_JOINTS, 3)
    out = np.empty(flat.shape + (3,))
    for order in set(EULER_ORDERS):
        js = [j for j, o in enumerate(EULER_ORDERS) if o == order]
        perm = ["XYZ".index(a) for a in order]
        angles = flat[:, js][..., perm].reshape(-1, 3)
        out[:, js] = Rotation.from_euler(order, angles).as_matrix().reshape(len(flat), len(js), 3, 3)
    return out.reshape(lead + (NUM_JOINTS, 3, 3))


def matrix_to_euler(rotmat: np.ndarray) -> np.ndarray:
    """rotmat: (..., 24, 3, 3) -> (..., 24, 3) Euler angles by axis in each joint's order."""
    rotmat = np.asarray(rotmat, dtype=np.float64)
    lead = rotmat.shape[:-3]
    flat = rotmat.reshape(-1, NUM_JOINTS, 3, 3)
    out = np.empty(flat.shape[:2] + (3,))
    for order in set(EULER_ORDERS):
        js = [j for j, o in enumerate(EULER_ORDERS) if o == order]
        rot = Rotation.from_matrix(flat[:, js].reshape(-1, 3, 3))
        with warnings.catch_warnings():  # gimbal lock only occurs outside the limit boxes
            warnings.simplefilter("ignore", UserWarning)
            angles = rot.as_euler(order)
        by_axis = np.empty_like(angles)
        by_axis[:, ["XYZ".index(a) for a in order]] = angles
        out[:, js] = by_axis.reshape(len(flat), len(js), 3)
    return out.reshape(lead + (NUM_JOINTS, 3))


def pose_to_euler(pose: np.ndarray) -> np.ndarray:
    """pose: (..., 72) axis-angle -> (..., 24, 3) Euler angles by axis (see module doc)."""
    pose = _check_pose(pose)
    mats = Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix()
    return matrix_to_euler(mats.reshape(pose.shape[:-1] + (NUM_JOINTS, 3, 3)))


def euler_to_pose(eul: np.ndarray) -> np.ndarray:
    """eul: (..., 24, 3) Euler angles by axis -> (..., 72) axis-angle."""
    mats = euler_to_matrix(eul)
    rv = Rotation.from_matrix(mats.reshape(-1, 3, 3)).as_rotvec()
    return rv.reshape(mats.shape[:-3] + (NUM_JOINTS * 3,))


def clamp_euler(eul: np.ndarray) -> np.ndarray:
    """eul: (..., 24, 3) -> (..., 24, 3) clipped into the limit boxes (root untouched)."""
    return np.clip(eul, LIMITS_LOW, LIMITS_HIGH)


def clamp_to_limits(pose: np.ndarray) -> np.ndarray:
    """pose: (..., 72) axis-angle -> (..., 72) with every non-root joint clipped into its box.

    In-range joints come back unchanged (up to float rounding); the root is never changed. The
    result has the input's dtype when it is floating point, else float64.
    """
    pose = np.asarray(pose)
    p64 = _check_pose(pose)
    eul = pose_to_euler(p64)
    out = euler_to_pose(clamp_euler(eul))
    out[..., :3] = p64[..., :3]
    keep = np.all((eul >= LIMITS_LOW) & (eul <= LIMITS_HIGH), axis=-1)  # (..., 24)
    out = np.where(np.repeat(keep, 3, axis=-1), p64, out)
    return out.astype(pose.dtype if np.issubdtype(pose.dtype, np.floating) else np.float64)


def within_limits(pose: np.ndarray, *, tol: float = 1e-3) -> np.ndarray:
    """pose: (..., 72) axis-angle -> (..., 24) bool, True where the joint is inside its box.

    ``tol`` (radians) absorbs float32 rounding. The root is always True.
    """
    eul = pose_to_euler(pose)
    return np.all((eul >= LIMITS_LOW - tol) & (eul <= LIMITS_HIGH + tol), axis=-1)
