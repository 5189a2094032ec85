"""Random pinhole cameras looking at a person, for the synthetic dataset.

World frame: SMPL's, y up. Camera frame: x right, y down, z forward (metres). A camera is
``R (3,3)``, ``t (3,)`` with ``p_cam = R @ p_world + t``, and intrinsics ``(fx, fy, cx, cy)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    R: np.ndarray          # (3, 3) world -> camera rotation
    t: np.ndarray          # (3,) translation, metres
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy in pixels

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 3) world metres -> (..., 3) camera metres."""
        return points @ self.R.T + self.t

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """points_cam: (..., 3) camera metres -> (..., 2) pixels."""
        fx, fy, cx, cy = self.intrinsics
        z = np.maximum(points_cam[..., 2], 1e-6)
        return np.stack([fx * points_cam[..., 0] / z + cx, fy * points_cam[..., 1] / z + cy], -1)


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation of a camera at ``eye`` looking at ``target`` (y-down camera frame).

    eye, target: (3,) world metres -> R (3,3), t (3,).
    """
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=float))
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ eye


def _draw(rng: np.random.Generator, rng_range: tuple[float, float] | None) -> float:
    """A uniform draw from ``rng_range``; 0 without a draw for None or [0, 0] (the default stream stays)."""
    if rng_range is None or (rng_range[0] == 0 and rng_range[1] == 0):
        return 0.0
    return float(rng.uniform(*rng_range))


def sample_camera(rng: np.random.Generator, *, target: np.ndarray, image_size: int,
                  distance: tuple[float, float], height: tuple[float, float],
                  yaw_deg: tuple[float, float], person_fraction: tuple[float, float],
                  person_height: float = 1.7, pitch_deg: tuple[float, float] | None = None,
                  roll_deg: tuple[float, float] | None = None,
                  focal: tuple[float, float] | None = None) -> Camera:
    """A random camera on a circle around ``target`` (3,), at a random distance, height and yaw.

    The focal length is sampled so that a person of ``person_height`` metres spans a random
    ``person_fraction`` of the image height at that distance; distance and focal are independent
    draws, so apparent size does not give depth away. ``focal`` (in image widths, f_px / image_size)
    draws the focal length directly instead. ``pitch_deg`` tilts the camera about its x axis away
    from the target (positive: looking further down), ``roll_deg`` turns it about its optical axis;
    None or [0, 0] leaves them out (and draws nothing).
    """
    d = rng.uniform(*distance)
    yaw = np.deg2rad(rng.uniform(*yaw_deg))
    eye = target + np.array([d * np.sin(yaw), rng.uniform(*height), d * np.cos(yaw)])
    R, t = look_at(eye, target)
    f = rng.uniform(*person_fraction) * image_size * np.linalg.norm(eye - target) / person_height
    if focal is not None:
        f = float(rng.uniform(*focal)) * image_size
    pitch, roll = np.deg2rad(_draw(rng, pitch_deg)), np.deg2rad(_draw(rng, roll_deg))
    if pitch or roll:
        cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        tilt = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])  # about camera x
        spin = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])  # about the optical axis
        R = spin @ tilt @ R
        t = -R @ eye
    c = image_size / 2.0
    return Camera(R=R, t=t, intrinsics=np.array([f, f, c, c]))


def push_out_of_frame(camera: Camera, points_world: np.ndarray, image_size: int, *, cut: float, side: int
                      ) -> Camera:
    """Shift the principal point so that a fraction ``cut`` of the points' box lies past one image edge.

    points_world: (..., 3); side: 0 left, 1 right, 2 top, 3 bottom. The box is the union over all
    points (a whole sequence), so the person leaves the frame by up to ``cut`` of its width/height.
    """
    uv = camera.project(camera.to_camera(points_world.reshape(-1, 3)))
    fx, fy, cx, cy = camera.intrinsics
    axis = 0 if side < 2 else 1
    lo, hi = uv[:, axis].min(), uv[:, axis].max()
    extent = cut * (hi - lo)
    shift = (-extent - lo) if side in (0, 2) else (image_size + extent - hi)
    cx, cy = (cx + shift, cy) if axis == 0 else (cx, cy + shift)
    return Camera(R=camera.R, t=camera.t, intrinsics=np.array([fx, fy, cx, cy]))


def fit_in_frame(camera: Camera, points_world: np.ndarray, image_size: int, margin: float = 0.04
                 ) -> Camera:
    """Shrink the focal length until every point projects inside the image with a margin.

    points_world: (..., 3) -> a camera with the same pose and a focal length no larger than before.
    """
    cam_pts = camera.to_camera(points_world.reshape(-1, 3))
    fx, fy, cx, cy = camera.intrinsics
    z = np.maximum(cam_pts[:, 2], 1e-3)
    extent = np.max(np.abs(cam_pts[:, :2] / z[:, None]))  # tan of the widest half-angle
    f_max = (0.5 - margin) * image_size / max(extent, 1e-6)
    f = min(fx, f_max)
    return Camera(R=camera.R, t=camera.t, intrinsics=np.array([f, f, cx, cy]))
