"""Training-time augmentation of stage-1 window batches: the horizontal flip of VideoPose3D/PoseMamba.

A window is mirrored as if the camera had filmed the mirror image of the scene: the camera-frame
x axis changes sign and left and right joints swap. Every input and target of stage 1 moves
consistently, so the reprojection term (eq. 14) still holds exactly:

- ``kp2d`` (crop coordinates in [-1, 1]): x -> -x, joints swapped (the crop is mirrored about its centre);
- ``kp2d_px`` (pixels): u -> 2 c_x - u, the mirror of a pinhole projection about the principal point;
- ``joints3d`` (root-relative) and ``root`` (camera frame): X -> -X, joints swapped;
- ``conf``: joints swapped;
- ``spatial`` (feature maps, B, T, C, h, w): mirrored along w, so GA still finds a joint's cell where
  the mirrored keypoint lands. The maps' channels are those of the unmirrored image: an
  approximation (a CNN is not mirror-equivariant) that the global ``feats``, left as they are, share.

Stage 2 is not flipped: mirroring SMPL pose parameters is another operation, and its batches refuse here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hmrmamba.errors import InputError

#: batch keys a stage-1 flip knows how to mirror, or leaves unchanged on purpose
UNCHANGED = ("feats", "mask", "camera", "seq_index", "valid", "frame_index")


def flip_windows(batch: Mapping[str, torch.Tensor], which: torch.Tensor,
                 joint_flip: Sequence[int]) -> dict[str, torch.Tensor]:
    """Mirror the windows ``which`` (B,) bool of a stage-1 batch; returns a new dict (inputs untouched).

    batch: ``kp2d (B, T, J, 2)``, ``kp2d_px (B, T, J, 2)``, ``conf (B, T, J)``, ``joints3d (B, T, J, 3)``,
    ``root (B, T, 3)``, ``camera (B, 4)`` fx, fy, cx, cy, optional ``spatial (B, T, C, h, w)``;
    ``joint_flip``: the joint set's left/right permutation (``H36M17.flip``).
    """
    unknown = sorted(k for k in batch if k not in UNCHANGED and k not in _MIRROR)
    if unknown:
        raise InputError(f"cannot mirror batch keys {unknown}", field="train_lift.flip",
                         expected=f"a stage-1 batch (keys among {sorted(_MIRROR) + list(UNCHANGED)})")
    which = which.to(torch.bool)
    if not bool(which.any()):
        return dict(batch)
    perm = torch.as_tensor(list(joint_flip), dtype=torch.long)
    picked = {"camera": batch["camera"][which]} if "camera" in batch else {}
    out = dict(batch)
    for key, mirror in _MIRROR.items():
        if key in batch:
            value = batch[key].clone()
            value[which] = mirror(batch[key][which], perm, picked)  # only the mirrored windows are computed
            out[key] = value
    return out


def _negate_x(x: torch.Tensor) -> torch.Tensor:
    sign = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    sign[0] = -1
    return x * sign


def _mirror_pixels(kp: torch.Tensor, perm: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    cx = batch["camera"][:, 2].to(kp.dtype).reshape(-1, 1, 1)
    mirrored = kp[..., perm, :].clone()
    mirrored[..., 0] = 2 * cx - mirrored[..., 0]
    return mirrored


_MIRROR = {
    "kp2d": lambda x, perm, b: _negate_x(x[..., perm, :]),
    "kp2d_px": _mirror_pixels,
    "conf": lambda x, perm, b: x[..., perm],
    "joints3d": lambda x, perm, b: _negate_x(x[..., perm, :]),
    "root": lambda x, perm, b: _negate_x(x),
    "spatial": lambda x, perm, b: x.flip(-1),
}
