"""Training losses: eq. 14 (stage-1 lifting) and eq. 15 (stage-2 mesh).

Every weight is an argument; the training stages pass them from ``params.yaml``. Inputs are in
metres; a ``mask (B, T)`` marks real (not padded) frames and every term averages over them only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hmrmamba.geometry import fit_weak_perspective, perspective_project, weak_perspective_project

#: MixSTE / PoseMamba joint weights for the temporal consistency term (H36M-17 order).
TEMPORAL_JOINT_WEIGHTS = (1, 1, 2.5, 2.5, 1, 2.5, 2.5, 1, 1, 1, 1.5, 1.5, 4, 4, 1.5, 4, 4)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x: (B, T, ...) -> scalar mean over the frames where mask (B, T) is True."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return (x * m).sum() / (m.sum() * x[0, 0].numel()).clamp_min(1)


def mpjpe_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """pred, gt: (B, T, J, 3) m -> scalar mean joint distance (m)."""
    return _masked_mean((pred - gt).norm(dim=-1), mask)


def temporal_consistency_loss(pred: torch.Tensor, mask: torch.Tensor | None = None,
                              joint_weights=TEMPORAL_JOINT_WEIGHTS) -> torch.Tensor:
    """MixSTE's ``loss_diff`` term: joint-weighted mean squared frame difference of the prediction.

    pred: (B, T, J, 3) -> scalar. Pairs that touch a padded frame are ignored.
    """
    diff = (pred[:, 1:] - pred[:, :-1]).square()                       # (B, T-1, J, 3)
    w = torch.as_tensor(joint_weights, dtype=pred.dtype, device=pred.device)[:, None]
    pair_mask = None if mask is None else mask[:, 1:] & mask[:, :-1]
    return _masked_mean(diff * w, pair_mask)


def velocity_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MPJVE as a loss. pred, gt: (B, T, J, 3) -> scalar mean velocity error (m/frame)."""
    v = (pred[:, 1:] - pred[:, :-1]) - (gt[:, 1:] - gt[:, :-1])
    pair_mask = None if mask is None else mask[:, 1:] & mask[:, :-1]
    return _masked_mean(v.norm(dim=-1), pair_mask)


def reprojection_loss(pred: torch.Tensor, kp2d: torch.Tensor, conf: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, *, camera: torch.Tensor | None = None,
                      root: torch.Tensor | None = None, image_size: float | None = None) -> torch.Tensor:
    """2D reprojection of the lifted pose against the 2D input, in normalised image units.

    pred: (B, T, J, 3) root-relative m; kp2d: (B, T, J, 2) px; conf: (B, T, J) weights.
    With ``camera (B, 4)`` and ``root (B, T, 3)`` (camera-frame root position) the pose is
    projected perspectively; otherwise a per-frame weak-perspective (scale, translation) is fitted
    by weighted least squares (no gradient through the fit's target). Errors are divided by
    ``image_size`` (px) when given so the term does not depend on resolution.
    """
    if camera is not None and root is not None:
        proj = perspective_project(pred + root[:, :, None, :], camera[:, None, :].expand(-1, pred.shape[1], -1))
    else:
        s, t = fit_weak_perspective(pred.detach(), kp2d, conf)
        proj = weak_perspective_project(pred, s, t)
    err = (proj - kp2d).norm(dim=-1)
    if conf is not None:
        err = err * conf
    if image_size:
        err = err / float(image_size)
    return _masked_mean(err, mask)


@dataclass(frozen=True)
class LiftLossWeights:
    """Eq. 14 weights: MPJPE + 0.5 L_t + 20 MPJVE + 0.5 L_2D (paper defaults)."""

    mpjpe: float = 1.0
    temporal: float = 0.5
    velocity: float = 20.0
    reprojection: float = 0.5


def lift_loss(pred: torch.Tensor, gt: torch.Tensor, kp2d: torch.Tensor, conf: torch.Tensor | None,
              mask: torch.Tensor | None, weights: LiftLossWeights, **reproj_kwargs) -> dict[str, torch.Tensor]:
    """Eq. 14. pred, gt: (B, T, J, 3) root-relative m -> {'total', 'mpjpe', 'temporal', 'velocity', 'reprojection'}."""
    terms = {
        "mpjpe": mpjpe_loss(pred, gt, mask),
        "temporal": temporal_consistency_loss(pred, mask),
        "velocity": velocity_loss(pred, gt, mask),
        "reprojection": reprojection_loss(pred, kp2d, conf, mask, **reproj_kwargs),
    }
    terms["total"] = sum(getattr(weights, k) * v for k, v in terms.items())
    return terms


def vertex_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 vertex loss. pred, gt: (B, T, V, 3) m -> scalar."""
    return _masked_mean((pred - gt).abs(), mask)


def face_corners(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """verts (..., V, 3), faces (F, 3) -> each face's corners (..., F, 3 corners, 3).

    One ``index_select`` instead of three advanced-indexing gathers: its backward is a single
    ``index_add_`` (the gathers' ``index_put_`` with accumulation costs several times more on a CPU).
    """
    return verts.index_select(-2, faces.reshape(-1)).unflatten(-2, (faces.shape[0], 3))


def edge_length_loss(pred: torch.Tensor, gt: torch.Tensor, faces: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |edge length difference| over the three edges of every face. pred, gt: (B, T, V, 3)."""
    def lengths(v):
        corners = face_corners(v, faces)
        a, b, c = corners.unbind(-2)
        return torch.stack([(a - b).norm(dim=-1), (b - c).norm(dim=-1), (c - a).norm(dim=-1)], -1)
    return _masked_mean((lengths(pred) - lengths(gt)).abs(), mask)


def normal_loss(pred: torch.Tensor, gt: torch.Tensor, faces: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |cos| between predicted face edges and ground-truth face normals (0 when aligned).

    pred, gt: (B, T, V, 3); faces: (F, 3).
    """
    a, b, c = face_corners(gt, faces).unbind(-2)
    n = F.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1)
    pa, pb, pc = face_corners(pred, faces).unbind(-2)
    cos = torch.stack([(F.normalize(e, dim=-1) * n).sum(-1).abs() for e in (pb - pa, pc - pa, pc - pb)], -1)
    return _masked_mean(cos, mask)


@dataclass(frozen=True)
class MeshLossWeights:
    """Eq. 15 weights: vertex 1 + joint 1 + normal 0.1 + edge 20 (paper defaults)."""

    vertex: float = 1.0
    joint: float = 1.0
    normal: float = 0.1
    edge: float = 20.0


def mesh_loss(pred_verts: torch.Tensor, gt_verts: torch.Tensor, pred_joints: torch.Tensor,
              gt_joints: torch.Tensor, faces: torch.Tensor, mask: torch.Tensor | None,
              weights: MeshLossWeights, extra_joints: tuple[torch.Tensor, ...] = ()) -> dict[str, torch.Tensor]:
    """Eq. 15. verts: (B, T, V, 3); joints: (B, T, 17, 3) (regressed from the mesh), all root-relative m.

    ``extra_joints`` are further (B, T, 17, 3) joint predictions supervised by the same joint term
    (the lifted pose, the co-evolution joints).
    """
    joint = sum((mpjpe_loss(j, gt_joints, mask) for j in (pred_joints, *extra_joints)),
                torch.zeros((), dtype=pred_verts.dtype, device=pred_verts.device))
    terms = {
        "vertex": vertex_loss(pred_verts, gt_verts, mask),
        "joint": joint,
        "normal": normal_loss(pred_verts, gt_verts, faces, mask),
        "edge": edge_length_loss(pred_verts, gt_verts, faces, mask),
    }
    terms["total"] = sum(getattr(weights, k) * v for k, v in terms.items())
    return terms
