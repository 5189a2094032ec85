"""What each training stage optimises: batch -> loss terms (eq. 14, eq. 15) and validation.

The generic :class:`hmrmamba.train.loop.Trainer` calls these; the DVC stages only wire params in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hmrmamba.body.gendered import GroundTruthBodies
from hmrmamba.data.augment import flip_windows
from hmrmamba.data.loading import SplitArrays
from hmrmamba.errors import InputError
from hmrmamba.evaluate.protocol import evaluate_predictions, predict_split, run_batch
from hmrmamba.skeleton import H36M17
from hmrmamba.train.losses import LiftLossWeights, MeshLossWeights, lift_loss, mesh_loss


@dataclass
class LiftObjective:
    """Stage 1: lifted pose vs ground truth (eq. 14), on windows mirrored with probability ``flip``
    while the model trains (:func:`hmrmamba.data.augment.flip_windows`; torch's RNG, so seeded)."""

    weights: LiftLossWeights
    image_size: float
    flip: float = 0.0

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.flip > 0 and model.training:
            which = torch.rand(batch["kp2d"].shape[0]) < self.flip
            batch = flip_windows(batch, which, H36M17.flip)
        out = run_batch(model, batch, lift_only=True)
        return lift_loss(out.pose3d, batch["joints3d"], batch["kp2d_px"], batch["conf"], batch["mask"],
                         self.weights, camera=batch["camera"], root=batch["root"], image_size=self.image_size)


class MeshTargets(nn.Module):
    """Ground-truth meshes on the fly from SMPL parameters, root-relative at the H36M pelvis.

    (B, T, 72), (B, T, 10), (B, T, 3)[, gender (B, T) int codes] -> vertices (B, T, V, 3),
    H36M joints (B, T, 17, 3). ``smpl``: the configured body model, or a
    :class:`hmrmamba.body.gendered.GroundTruthBodies` (from
    :func:`hmrmamba.body.gendered.ground_truth_bodies`) that also holds the male/female models
    of a gendered split (3DPW): frames with a ``gender`` code are then posed by their gendered
    model, as in PMCE's protocol. Without ``gender`` every frame uses the configured model,
    exactly as before.
    """

    def __init__(self, smpl: nn.Module, h36m_regressor: torch.Tensor):
        super().__init__()
        self.bodies = smpl if isinstance(smpl, GroundTruthBodies) else GroundTruthBodies(smpl)
        self.register_buffer("regressor", h36m_regressor.float())

    @property
    def smpl(self) -> nn.Module:
        """The configured body model."""
        return self.bodies.configured

    @torch.no_grad()
    def forward(self, pose: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor,
                gender: torch.Tensor | None = None):
        b, t = pose.shape[:2]
        flat = lambda x: x.reshape(b * t, -1)
        out = self.bodies(global_orient=flat(pose)[:, :3], body_pose=flat(pose)[:, 3:], betas=flat(betas),
                          transl=flat(trans), gender=None if gender is None else gender.reshape(b * t))
        verts = out.vertices
        joints = torch.einsum("jv,nvc->njc", self.regressor, verts)
        root = joints[:, :1]
        return (verts - root).reshape(b, t, -1, 3), (joints - root).reshape(b, t, -1, 3)


@dataclass
class MeshObjective:
    """Stage 2: mesh, regressed joints, lifted pose and co-evolution joints vs ground truth (eq. 15)."""

    weights: MeshLossWeights
    targets: MeshTargets
    faces: torch.Tensor
    #: supervise this many evenly spaced frames of each window (None: all). The mesh terms cost
    #: O(frames x 6,890 vertices) per window; the CPU demo profile uses 4 of 16.
    frames: int | None = None

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = batch["kp2d"].shape[1]
        idx = supervised_frames(t, self.frames, device=batch["kp2d"].device)
        # only the supervised frames are decoded: the mesh fields come back (B, K, ...), pose3d (B, T, ...)
        out = run_batch(model, batch, lift_only=False, decode_frames=idx)
        if self.targets.regressor.device != out.vertices.device:
            self.targets.to(out.vertices.device)
        pick = (lambda x: x) if idx is None else (lambda x: x[:, idx])
        gender = batch.get("smpl_gender")  # only for gendered splits (3DPW with the gendered SMPL)
        gt_v, gt_j = self.targets(pick(batch["smpl_pose"]), pick(batch["smpl_betas"]),
                                  pick(batch["smpl_trans"]), None if gender is None else pick(gender))
        pred_v = out.vertices - out.joints[:, :, :1]
        pred_j = out.joints - out.joints[:, :, :1]
        coevo = getattr(out, "coevo_joints", None)
        extra = (pick(out.pose3d),) + (() if coevo is None else (coevo,))
        return mesh_loss(pred_v, gt_v, pred_j, gt_j, self.faces.to(pred_v.device), pick(batch["mask"]),
                         self.weights, extra_joints=extra)


def supervised_frames(length: int, frames: int | None, *, device=None) -> torch.Tensor | None:
    """Indices of ``frames`` evenly spaced frames of a ``length``-frame window (ends included); None = all."""
    if frames is None or int(frames) >= length:
        return None
    if int(frames) < 1:
        raise InputError(f"loss_frames={frames}", field="train_mesh.loss_frames",
                         expected="null (all frames) or an integer >= 1")
    return torch.linspace(0, length - 1, int(frames), device=device).round().long()


def validation(data: SplitArrays, *, length: int, lift_only: bool, batch_size: int = 64):
    """A ``val_fn`` for the Trainer: MPJPE / PA-MPJPE (mm) on the middle frames of ``data``."""

    def val_fn(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        pred = predict_split(model, data, length=length, batch_size=batch_size, lift_only=lift_only,
                             device=device, progress=False)
        summary, _, _ = evaluate_predictions(pred, data)
        return {"mpjpe": summary["mpjpe"], "pa_mpjpe": summary["pa_mpjpe"]}

    return val_fn


def loss_weights(cls, values: Mapping[str, Any] | None):
    """Build a weights dataclass from a params mapping, refusing unknown names."""
    values = dict(values or {})
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - fields)
    if unknown:
        from hmrmamba.errors import InputError

        raise InputError(f"unknown loss weight(s) {unknown}", file="params.yaml", field="loss",
                         expected=f"names from {sorted(fields)}")
    return cls(**{k: float(v) for k, v in values.items()})


def faces_tensor(faces: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(faces, dtype=np.int64))
