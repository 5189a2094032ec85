"""Evaluation metrics (PMCE/ARTS protocol). Inputs in metres, outputs in millimetres.

Every function is pure: arrays or tensors in, a tensor of per-sample errors out (reduce with
``.mean()``). ``(..., J, 3)`` means any leading batch/time dimensions.
"""

from __future__ import annotations

import numpy as np
import torch

from hmrmamba.geometry import similarity_align

M_TO_MM = 1000.0


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _check(pred: torch.Tensor, gt: torch.Tensor, name: str) -> None:
    if pred.shape != gt.shape or pred.shape[-1] != 3:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (..., J, 3)")


def mpjpe(pred, gt) -> torch.Tensor:
    """Mean per-joint position error. pred, gt: (..., J, 3) m -> (...,) mm. No alignment is applied."""
    pred, gt = _t(pred), _t(gt)
    _check(pred, gt, "mpjpe")
    return (pred - gt).norm(dim=-1).mean(-1) * M_TO_MM


def pa_mpjpe(pred, gt) -> torch.Tensor:
    """MPJPE after a per-frame Umeyama similarity (rotation, scale, translation) of pred onto gt.

    pred, gt: (..., J, 3) m -> (...,) mm.
    """
    pred, gt = _t(pred), _t(gt)
    _check(pred, gt, "pa_mpjpe")
    return mpjpe(similarity_align(pred.double(), gt.double()).to(pred.dtype), gt)


def mpvpe(pred_verts, gt_verts) -> torch.Tensor:
    """Mean per-vertex position error. pred_verts, gt_verts: (..., V, 3) m, already aligned -> (...,) mm.

    The PMCE/ARTS protocol aligns both meshes at the SMPL pelvis first (see :func:`align_at`).
    """
    return mpjpe(pred_verts, gt_verts)


def align_at(points, root) -> torch.Tensor:
    """Translate points so ``root`` is at the origin. points: (..., N, 3); root: (..., 3) -> (..., N, 3)."""
    return _t(points) - _t(root)[..., None, :]


def accel_error(pred, gt, valid=None) -> torch.Tensor:
    """Acceleration error of one sequence. pred, gt: (T, J, 3) m -> (T-2,) mm/frame².

    Second differences ``x[t+1] - 2 x[t] + x[t-1]`` of each joint, compared per frame and averaged
    over joints. Sequences shorter than 3 frames give an empty tensor. ``valid`` (T,) bool drops
    every acceleration whose 3-frame stencil touches an invalid frame (as in VIBE/TCMR).
    """
    pred, gt = _t(pred), _t(gt)
    _check(pred, gt, "accel_error")
    if pred.ndim != 3:
        raise ValueError(f"accel_error works on one sequence (T, J, 3), got {tuple(pred.shape)}")
    if pred.shape[0] < 3:
        return pred.new_zeros(0)
    acc_p = pred[2:] - 2 * pred[1:-1] + pred[:-2]
    acc_g = gt[2:] - 2 * gt[1:-1] + gt[:-2]
    err = (acc_p - acc_g).norm(dim=-1).mean(-1) * M_TO_MM
    if valid is not None:
        v = torch.as_tensor(np.asarray(valid), dtype=torch.bool)
        err = err[v[2:] & v[1:-1] & v[:-2]]
    return err


def mpjve(pred, gt) -> torch.Tensor:
    """Mean per-joint velocity error. pred, gt: (T, J, 3) or (B, T, J, 3) m -> (..., T-1) mm/frame."""
    pred, gt = _t(pred), _t(gt)
    _check(pred, gt, "mpjve")
    if pred.ndim < 3:
        raise ValueError(f"mpjve needs a time axis: (..., T, J, 3), got {tuple(pred.shape)}")
    return ((pred[..., 1:, :, :] - pred[..., :-1, :, :]) - (gt[..., 1:, :, :] - gt[..., :-1, :, :])
            ).norm(dim=-1).mean(-1) * M_TO_MM


# ----------------------------------------------------------------------------------------------
# mesh quality (the prediction and the ground truth share one topology)


def mesh_edges(faces) -> torch.Tensor:
    """Unique undirected edges of a triangle mesh: faces (F, 3) int -> (E, 2) int64, i < j."""
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0)


def edge_length_error(pred_verts, gt_verts, edges) -> torch.Tensor:
    """Mean absolute edge-length difference. pred_verts, gt_verts: (..., V, 3) m; edges (E, 2) -> (...,) mm.

    Translation- and rotation-invariant: it measures the surface's local shape, not its placement.
    """
    p, g = _t(pred_verts), _t(gt_verts)
    _check(p, g, "edge_length_error")
    e = torch.as_tensor(edges, dtype=torch.int64)
    lp = (p[..., e[:, 0], :] - p[..., e[:, 1], :]).norm(dim=-1)
    lg = (g[..., e[:, 0], :] - g[..., e[:, 1], :]).norm(dim=-1)
    return (lp - lg).abs().mean(-1) * M_TO_MM


def face_normals(verts, faces) -> torch.Tensor:
    """Unit face normals: verts (..., V, 3), faces (F, 3) -> (..., F, 3) (zero for degenerate faces)."""
    v = _t(verts)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    n = torch.linalg.cross(v[..., f[:, 1], :] - v[..., f[:, 0], :], v[..., f[:, 2], :] - v[..., f[:, 0], :], dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def normal_angle_error(pred_verts, gt_verts, faces) -> torch.Tensor:
    """Mean angle between predicted and ground-truth face normals: (..., V, 3) m, faces (F, 3) -> (...,) degrees.

    Not invariant to a global rotation (a mesh facing the wrong way scores badly, as it should).
    """
    p, g = _t(pred_verts), _t(gt_verts)
    _check(p, g, "normal_angle_error")
    cos = (face_normals(p, faces) * face_normals(g, faces)).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).mean(-1)


def umbrella_laplacian(verts, edges) -> torch.Tensor:
    """Mean umbrella-Laplacian magnitude |v - mean(neighbours of v)|: verts (..., V, 3) m, edges (E, 2)
    -> (...,) mm. Spikes and crumples raise it; the roughness ratio divides it by the ground truth's."""
    v = _t(verts)
    e = torch.as_tensor(edges, dtype=torch.int64)
    n_v = v.shape[-2]
    src = torch.cat([e[:, 0], e[:, 1]])
    dst = torch.cat([e[:, 1], e[:, 0]])
    flat = v.reshape(-1, n_v, 3)
    sums = torch.zeros_like(flat).index_add_(1, src, flat[:, dst])
    degree = torch.zeros(n_v, dtype=v.dtype, device=v.device).index_add_(0, src, torch.ones_like(src, dtype=v.dtype))
    lap = flat - sums / degree.clamp_min(1)[None, :, None]
    return (lap.norm(dim=-1).mean(-1) * M_TO_MM).reshape(v.shape[:-2])
