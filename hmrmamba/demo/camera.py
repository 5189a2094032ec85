"""Where the predicted mesh sits in front of the camera, from the 2D keypoints.

The model predicts meshes relative to the pelvis, in camera orientation (metres). To draw them
over the frames, each frame's translation ``t`` is the least-squares fit of the perspective
projection of ``joints + t`` to the detected keypoints (weighted by confidence), linearised as in
SPIN/4D-Humans' ``estimate_translation``: for a joint (X, Y, Z) seen at pixel (u, v),
``fx (X + tx) = (u - cx)(Z + tz)`` and ``fy (Y + ty) = (v - cy)(Z + tz)``, linear in ``t``.

The camera is a pinhole with the principal point at the image centre and, unless given, a focal
length of ``max(H, W)`` pixels (a ~53 degree field of view along the longer side): a video does
not say its focal length, and the overlay only needs the projection to land on the keypoints.
"""

from __future__ import annotations

import numpy as np

from hmrmamba.errors import InputError

__all__ = ["MAX_FOCAL_PX", "check_focal", "default_camera", "estimate_translation", "project"]


def default_camera(image_size: tuple[int, int], *, focal: float | None = None) -> np.ndarray:
    """image_size (H, W) px -> camera (4,) fx, fy, cx, cy px (pixel centres at integers)."""
    h, w = (int(s) for s in image_size)
    if h < 1 or w < 1:
        raise InputError(f"image size {image_size}", field="image_size", expected="(H, W) >= 1")
    f = float(max(h, w)) if focal is None else check_focal(focal)
    return np.array([f, f, (w - 1) / 2.0, (h - 1) / 2.0], dtype=np.float64)


#: the largest focal length accepted, px (a 0.03 degree field of view on a 4K frame)
MAX_FOCAL_PX = 1e7


def check_focal(focal) -> float:
    """``--focal`` as a float: finite, positive, at most :data:`MAX_FOCAL_PX` (``inf`` would make every
    translation NaN)."""
    try:
        f = float(focal)
    except (TypeError, ValueError):
        f = float("nan")
    if not (np.isfinite(f) and 0 < f <= MAX_FOCAL_PX):
        raise InputError(f"focal={focal!r}", field="--focal",
                         expected=f"a finite focal length in pixels in (0, {MAX_FOCAL_PX:g}]")
    return f


def project(points: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """points (..., J, 3) camera metres, camera (4,) -> (..., J, 2) px."""
    p = np.asarray(points, dtype=np.float64)
    z = np.maximum(p[..., 2], 1e-6)
    return np.stack([camera[0] * p[..., 0] / z + camera[2], camera[1] * p[..., 1] / z + camera[3]], -1)


def estimate_translation(joints: np.ndarray, keypoints: np.ndarray, confidence: np.ndarray, camera: np.ndarray,
                         *, min_depth: float = 0.5) -> np.ndarray:
    """Per-frame translation (N, 3) metres so that project(joints + t) fits the keypoints.

    joints (N, J, 3) metres (pelvis-relative, camera orientation), keypoints (N, J, 2) px, confidence
    (N, J) >= 0 (weights; non-finite keypoints weigh 0), camera (4,). Frames with fewer than two
    weighted joints, or a degenerate fit, get ``NaN``; depth is kept >= ``min_depth``.
    """
    X = np.asarray(joints, dtype=np.float64)
    uv = np.asarray(keypoints, dtype=np.float64)
    w = np.asarray(confidence, dtype=np.float64).copy()
    if X.ndim != 3 or X.shape[-1] != 3 or uv.shape != X.shape[:-1] + (2,) or w.shape != X.shape[:-1]:
        raise InputError(f"joints {X.shape}, keypoints {uv.shape}, confidence {w.shape}", field="joints",
                         expected="(N, J, 3), (N, J, 2) and (N, J)")
    w[~np.isfinite(w)] = 0.0
    w = np.clip(w, 0.0, None)
    bad = ~np.isfinite(uv).all(-1) | (w <= 0)  # a joint of weight 0 takes no part, whatever its pixel
    w[bad] = 0.0
    uv = np.where(bad[..., None], 0.0, uv)
    fx, fy, cx, cy = (float(c) for c in camera)
    du, dv = uv[..., 0] - cx, uv[..., 1] - cy
    zeros = np.zeros_like(du)
    # rows: [fx, 0, -du] t = du Z - fx X ;  [0, fy, -dv] t = dv Z - fy Y
    a_u = np.stack([np.full_like(du, fx), zeros, -du], -1)
    a_v = np.stack([zeros, np.full_like(dv, fy), -dv], -1)
    A = np.concatenate([a_u, a_v], axis=1)  # (N, 2J, 3)
    b = np.concatenate([du * X[..., 2] - fx * X[..., 0], dv * X[..., 2] - fy * X[..., 1]], axis=1)
    ww = np.concatenate([w, w], axis=1)  # (N, 2J)
    ata = np.einsum("nki,nk,nkj->nij", A, ww, A)
    atb = np.einsum("nki,nk,nk->ni", A, ww, b)
    out = np.full((X.shape[0], 3), np.nan)
    ok = ((w > 0).sum(-1) >= 2) & (np.abs(np.linalg.det(ata)) > 1e-12)
    if ok.any():
        out[ok] = np.linalg.solve(ata[ok], atb[ok][..., None])[..., 0]
        out[ok, 2] = np.maximum(out[ok, 2], min_depth)
    return out.astype(np.float32)
