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


def sample_camera(rng: np.random.Generator, *, target: np.ndarray, image_size: int,
                  distance: tuple[float, float], height: tuple[float, float],
                  yaw_deg: tuple[float, float], person_fraction: tuple[float, float],
                  person_height: float = 1.7) -> Camera:
    """A random camera on a circle around ``target`` (3,), at a random distance, height and yaw.

    The focal length is sampled so that a person of ``person_height`` metres spans a random
    ``person_fraction`` of the image height at that distance; distance and focal are independent
    draws, so apparent size does not give depth away.
    """
    d = rng.uniform(*distance)
    yaw = np.deg2rad(rng.uniform(*yaw_deg))
    eye = target + np.array([d * np.sin(yaw), rng.uniform(*height), d * np.cos(yaw)])
    R, t = look_at(eye, target)
    f = rng.uniform(*person_fraction) * image_size * np.linalg.norm(eye - target) / person_height
    c = image_size / 2.0
    return Camera(R=R, t=t, intrinsics=np.array([f, f, c, c]))


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
