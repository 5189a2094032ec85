"""Rotations, camera projection and similarity alignment, batched in torch.

Axis-angle <-> matrix conversions use ``roma`` (maintained, batched, stable near 0 and pi). The 6D
representation (Zhou et al. 2019: the first two columns of the matrix) and the projections are a
few lines each and live here so that shapes and conventions are stated in one place.

Conventions: camera frame is x right, y down, z forward, metres; intrinsics are (fx, fy, cx, cy)
in pixels.
"""

from __future__ import annotations

import roma
import torch
import torch.nn.functional as F


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """aa: (..., 3) axis-angle (radians) -> (..., 3, 3) rotation matrices."""
    return roma.rotvec_to_rotmat(aa)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) rotation matrices -> (..., 3) axis-angle with angle in [0, pi]."""
    return roma.rotmat_to_rotvec(R)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """R: (..., 3, 3) -> (..., 6): the first two columns, column-major (a1, a2)."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """x: (..., 6) -> (..., 3, 3) by Gram-Schmidt on the two 3-vectors (columns b1, b2, b1 x b2)."""
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_rot6d(aa: torch.Tensor) -> torch.Tensor:
    """aa: (..., 3) -> (..., 6)."""
    return matrix_to_rot6d(axis_angle_to_matrix(aa))


def rot6d_to_axis_angle(x: torch.Tensor) -> torch.Tensor:
    """x: (..., 6) -> (..., 3)."""
    return matrix_to_axis_angle(rot6d_to_matrix(x))


def intrinsics_matrix(camera: torch.Tensor) -> torch.Tensor:
    """camera: (..., 4) fx, fy, cx, cy -> (..., 3, 3) K."""
    fx, fy, cx, cy = camera.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], dim=-1).unflatten(-1, (3, 3))


def perspective_project(points: torch.Tensor, camera: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """points: (..., J, 3) camera frame metres; camera: (..., 4) fx,fy,cx,cy -> (..., J, 2) pixels.

    Depth is clamped to ``eps`` so points behind the camera do not produce inf.
    """
    z = points[..., 2:3].clamp_min(eps)
    xy = points[..., :2] / z
    f = camera[..., None, :2]
    c = camera[..., None, 2:4]
    return xy * f + c


def weak_perspective_project(points: torch.Tensor, scale: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """points: (..., J, 3); scale: (...,); trans: (..., 2) -> (..., J, 2) = s * xy + t."""
    return scale[..., None, None] * points[..., :2] + trans[..., None, :]


def fit_weak_perspective(points: torch.Tensor, target: torch.Tensor,
                         weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (s, t) with s * points.xy + t ~= target.

    points: (..., J, 3); target: (..., J, 2); weight: (..., J) or None -> scale (...,), trans (..., 2).
    """
    w = torch.ones_like(target[..., 0]) if weight is None else weight
    w = w[..., None]
    wsum = w.sum(-2).clamp_min(1e-8)
    xy = points[..., :2]
    mu_p = (w * xy).sum(-2) / wsum
    mu_t = (w * target).sum(-2) / wsum
    pc, tc = xy - mu_p[..., None, :], target - mu_t[..., None, :]
    scale = (w * pc * tc).sum((-2, -1)) / (w * pc * pc).sum((-2, -1)).clamp_min(1e-8)
    trans = mu_t - scale[..., None] * mu_p
    return scale, trans


def umeyama_similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarity (s, R, t) minimising ||s R src + t - dst||^2 (Umeyama 1991), reflection-safe.

    src, dst: (..., J, 3) -> s (...,), R (..., 3, 3), t (..., 3).
    """
    mu_s, mu_d = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum((-2, -1)) / src.shape[-2]
    cov = xd.transpose(-1, -2) @ xs / src.shape[-2]  # (..., 3, 3)
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.ones_like(S)
    diag[..., -1] = d
    R = U @ torch.diag_embed(diag) @ Vh
    s = (S * diag).sum(-1) / var_s.clamp_min(1e-12)
    t = mu_d.squeeze(-2) - s[..., None] * (R @ mu_s.squeeze(-2)[..., None]).squeeze(-1)
    return s, R, t


def similarity_align(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """src, dst: (..., J, 3) -> src aligned onto dst by the best similarity, (..., J, 3)."""
    s, R, t = umeyama_similarity(src, dst)
    return s[..., None, None] * src @ R.transpose(-1, -2) + t[..., None, :]
