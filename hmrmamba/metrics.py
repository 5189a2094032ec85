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
