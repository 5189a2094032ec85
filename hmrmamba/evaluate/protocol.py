"""Evaluation protocol of PMCE/ARTS on a prepared split.

- Stride-1 windows centred on every frame; only the middle frame of each window is scored.
- Joints: H36M-17 regressed from the predicted mesh with the H36M regressor (the lifted pose when
  the model is lift-only), pelvis-centred; MPJPE/PA-MPJPE over the 14 evaluation joints
  (``H36M_EVAL14``), or all 17 for 3DHP.
- MPVPE after aligning both meshes at the SMPL pelvis (joint 0 of the SMPL regressor). The
  ground-truth mesh of a gendered split (3DPW prepared with the male/female SMPL) comes from the
  person's gendered model, the prediction's from the configured (neutral) one: same topology
  (:mod:`hmrmamba.body.gendered`).
- Accel error per sequence on the second differences of the evaluated joints.
- Mesh quality, when the faces are given: mean edge-length error (mm), mean angle between predicted
  and ground-truth face normals (degrees), and the roughness ratio: the prediction's mean
  umbrella-Laplacian magnitude over the ground truth's (1 = as smooth as the ground truth; spiky or
  crumpled meshes score above 1, over-smoothed ones below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hmrmamba.evaluate import metrics as M
from hmrmamba.data.loading import SplitArrays
from hmrmamba.skeleton import H36M_EVAL14


@dataclass
class Predictions:
    """Per-frame predictions of one split: pose3d (N,17,3) m root-relative; vertices (N,V,3) or None."""

    pose3d: np.ndarray
    joints: np.ndarray | None = None
    vertices: np.ndarray | None = None


def run_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, lift_only: bool,
              device: str | torch.device | None = None, decode_frames: torch.Tensor | None = None):
    """``model(kp2d, conf, feats[, spatial])`` on a window batch (B, T, ...) -> HMROutput; the feature
    maps are passed to models whose GA samples them (``map_dim > 0``), when the batch carries them.
    ``decode_frames`` (K,): decode meshes only for these frames (mesh fields (B, K, ...))."""
    move = (lambda x: x) if device is None else (lambda x: x.to(device))
    core = getattr(model, "module", model)  # DDP / compiled wrappers
    spatial = batch.get("spatial") if getattr(core, "map_dim", 0) else None
    extra = {} if decode_frames is None or lift_only else {"decode_frames": decode_frames}
    return model(move(batch["kp2d"]), move(batch["conf"]), move(batch["feats"]),
                 None if spatial is None else move(spatial), lift_only=lift_only, **extra)


@torch.no_grad()
def predict_split(model: torch.nn.Module, data: SplitArrays, *, length: int, batch_size: int = 64,
                  lift_only: bool = False, device: str | torch.device = "cpu", progress: bool = True
                  ) -> Predictions:
    """Run ``model`` on centred stride-1 windows and keep each window's middle frame."""
    ds = data.windows(length=length, stride=1, centred=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    mid = length // 2
    model.eval()
    pose, joints, verts = [], [], []
    only_mid = torch.tensor([mid])  # stage 2 decodes only the kept frame (the context reads them all)
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        out = run_batch(model, batch, lift_only=lift_only, device=device, decode_frames=only_mid)
        pose.append(out.pose3d[:, mid].float().cpu().numpy())
        if not lift_only and out.vertices is not None:
            joints.append(out.joints[:, 0].float().cpu().numpy())
            verts.append(out.vertices[:, 0].float().cpu().numpy())
    return Predictions(pose3d=np.concatenate(pose), joints=np.concatenate(joints) if joints else None,
                       vertices=np.concatenate(verts) if verts else None)


@torch.no_grad()
def smpl_targets(smpl, h36m_regressor: torch.Tensor, pose: np.ndarray, betas: np.ndarray, trans: np.ndarray,
                 *, gender: np.ndarray | None = None, chunk: int = 256
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth meshes from SMPL parameters.

    pose (N,72), betas (N,10), trans (N,3) -> vertices (N,V,3), H36M joints (N,17,3), SMPL pelvis (N,3).
    ``smpl``: the configured body model, or a :class:`hmrmamba.body.gendered.GroundTruthBodies`
    (:func:`hmrmamba.body.gendered.ground_truth_bodies`); with ``gender`` (N,) codes (the split's
    ``smpl_gender``, 3DPW) it poses each frame by its gendered model, the PMCE protocol; without,
    every frame by the configured model. The SMPL pelvis is that of the model that made the frame.
    """
    vs, js, ps = [], [], []
    for s in range(0, len(pose), chunk):
        sl = slice(s, s + chunk)
        kw = {} if gender is None else {"gender": torch.as_tensor(np.asarray(gender[sl], dtype=np.int64))}
        out = smpl(global_orient=torch.as_tensor(pose[sl, :3]), body_pose=torch.as_tensor(pose[sl, 3:]),
                   betas=torch.as_tensor(betas[sl]), transl=torch.as_tensor(trans[sl]), **kw)
        vs.append(out.vertices.numpy())
        js.append(torch.einsum("jv,nvc->njc", h36m_regressor, out.vertices).numpy())
        ps.append(out.joints[:, 0].numpy())
    return np.concatenate(vs), np.concatenate(js), np.concatenate(ps)


def evaluate_predictions(pred: Predictions, data: SplitArrays, *, eval_joints=H36M_EVAL14,
                         gt_mesh: tuple[np.ndarray, np.ndarray] | None = None,
                         pred_pelvis: np.ndarray | None = None, faces: np.ndarray | None = None,
                         chunk: int = 256) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """Score predictions against the split's ground truth.

    gt_mesh: (vertices (N,V,3) root-relative to the SMPL pelvis, None) when MPVPE is wanted;
    pred_pelvis: (N,3) SMPL pelvis of the predicted mesh (regressed by the caller);
    faces: (F,3) the mesh's triangles, for the mesh-quality scores (edge_err, normal_err, roughness).
    Frames whose split field ``valid`` is False (3DPW ``campose_valid``, 3DHP ``valid_frame``) are
    not scored; accelerations whose 3-frame stencil touches one are dropped.
    -> (summary {mpjpe, pa_mpjpe, mpvpe?, accel}, per-sequence table, per-joint MPJPE (J_eval,)).
    """
    n = len(pred.pose3d)
    valid = np.asarray(data.split.frames.get("valid", np.ones(n, bool)), dtype=bool)
    gt = data.arrays["joints3d"]                                   # (N,17,3) pelvis-centred
    joints = pred.joints if pred.joints is not None else pred.pose3d
    joints = joints - joints[:, :1]                                # pelvis-centred
    idx = list(eval_joints)
    p, g = torch.as_tensor(joints[:, idx], dtype=torch.float64), torch.as_tensor(gt[:, idx], dtype=torch.float64)
    per_frame = M.mpjpe(p, g).numpy()
    per_frame_pa = M.pa_mpjpe(p, g).numpy()
    per_joint = (p - g)[torch.as_tensor(valid)].norm(dim=-1).mean(0).numpy() * 1000.0
    per_frame_v = None
    quality: dict[str, np.ndarray] = {}
    if gt_mesh is not None and pred.vertices is not None and pred_pelvis is not None:
        pv = pred.vertices - pred_pelvis[:, None]
        per_frame_v = M.mpvpe(torch.as_tensor(pv, dtype=torch.float64),
                              torch.as_tensor(gt_mesh[0], dtype=torch.float64)).numpy()
        if faces is not None:
            quality = mesh_quality(pv, gt_mesh[0], faces, chunk=chunk)
    rows, accels = [], []
    seqs = data.split.seqs
    for s, (a, n) in enumerate(zip(seqs["seq_start"], seqs["seq_len"])):
        sl = slice(int(a), int(a + n))
        acc = M.accel_error(p[sl], g[sl], valid[sl]).numpy()
        accels.append(acc)
        v = valid[sl]
        row = {"sequence": seqs["seq_name"][s], "frames": int(v.sum()),
               "mpjpe": float(per_frame[sl][v].mean()) if v.any() else np.nan,
               "pa_mpjpe": float(per_frame_pa[sl][v].mean()) if v.any() else np.nan,
               "accel": float(acc.mean()) if acc.size else np.nan}
        if per_frame_v is not None:
            row["mpvpe"] = float(per_frame_v[sl][v].mean()) if v.any() else np.nan
        if quality:
            row.update(_quality_summary({k: q[sl][v] for k, q in quality.items()}) if v.any() else
                       {k: np.nan for k in QUALITY_KEYS})
        rows.append(row)
    all_acc = np.concatenate(accels)
    summary = {"mpjpe": float(per_frame[valid].mean()), "pa_mpjpe": float(per_frame_pa[valid].mean()),
               "accel": float(all_acc.mean()) if all_acc.size else float("nan")}
    if per_frame_v is not None:
        summary["mpvpe"] = float(per_frame_v[valid].mean())
    if quality:
        summary.update(_quality_summary({k: q[valid] for k, q in quality.items()}))
    return summary, pd.DataFrame(rows), per_joint


#: summary keys of the mesh-quality scores
QUALITY_KEYS = ("edge_err", "normal_err", "roughness")


def mesh_quality(pred_vertices: np.ndarray, gt_vertices: np.ndarray, faces: np.ndarray, *, chunk: int = 256
                 ) -> dict[str, np.ndarray]:
    """Per-frame mesh-quality terms: pred/gt vertices (N,V,3) m, faces (F,3) -> {edge_err (N,) mm,
    normal_err (N,) degrees, lap_pred (N,) mm, lap_gt (N,) mm}, in chunks of ``chunk`` frames."""
    edges = M.mesh_edges(faces)
    out: dict[str, list[np.ndarray]] = {"edge_err": [], "normal_err": [], "lap_pred": [], "lap_gt": []}
    for s in range(0, len(pred_vertices), chunk):
        p = torch.as_tensor(pred_vertices[s:s + chunk], dtype=torch.float64)
        g = torch.as_tensor(gt_vertices[s:s + chunk], dtype=torch.float64)
        out["edge_err"].append(M.edge_length_error(p, g, edges).numpy())
        out["normal_err"].append(M.normal_angle_error(p, g, faces).numpy())
        out["lap_pred"].append(M.umbrella_laplacian(p, edges).numpy())
        out["lap_gt"].append(M.umbrella_laplacian(g, edges).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _quality_summary(q: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of the per-frame terms; the roughness ratio is a ratio of means (frames weigh alike)."""
    return {"edge_err": float(q["edge_err"].mean()), "normal_err": float(q["normal_err"].mean()),
            "roughness": float(q["lap_pred"].mean() / max(q["lap_gt"].mean(), 1e-12))}
