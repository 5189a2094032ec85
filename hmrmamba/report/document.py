"""The run report: ``reports/report.md`` plus its pictures, from the latest metrics and checkpoints.

What it holds (paper analogues): Table 1 for this run (stage-1 lifted pose vs the mesh), the Tables 1-3
of ``docs/results.md`` when that file's numbers exist, Table 4 from ``metrics/efficiency.json``, the
training curves, per-joint errors, ground-truth vs predicted meshes of a few test clips from the camera
and from the side (the paper's Figure 4), and the acceleration error over time. The pictures are
PNGs beside the markdown, so the report reads on GitHub, in an editor preview, or as MLflow artifacts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.atomic import atomic_path
from hmrmamba.evaluate.metric_names import METRIC_HEADERS, TABLE_METRICS

METRICS = TABLE_METRICS
HEADERS = METRIC_HEADERS
SYNTHETIC_NOTE = ("**These numbers come from the embedded synthetic dataset** (procedural body, rendered "
                  "clips, simulated 2D detectors), not from Human3.6M, 3DPW or MPI-INF-3DHP. They show that "
                  "the pipeline trains and how variants rank on this data; they are not comparable with the "
                  "paper's tables.")
REAL_NOTE = "These numbers come from the real `{dataset}` data under the PMCE/ARTS protocol."


@dataclass
class ClipPredictions:
    """Predictions and ground truth of selected test clips, camera frame, metres.

    names (C,); frames per clip (T_c, H, W, 3) uint8 or None; gt/pred vertices (T_c, V, 3);
    gt/pred joints (T_c, 17, 3) root-relative; camera (4,) fx, fy, cx, cy; image size (H, W).
    """

    names: list[str]
    frames: list[np.ndarray | None]
    gt_vertices: list[np.ndarray]
    pred_vertices: list[np.ndarray]
    gt_joints: list[np.ndarray]
    pred_joints: list[np.ndarray]
    stage1_joints: list[np.ndarray]
    cameras: list[np.ndarray]
    image_size: tuple[int, int]


def pick_sequences(seq_len: np.ndarray, *, count: int, min_frames: int) -> list[int]:
    """Indices of up to ``count`` sequences with at least ``min_frames`` frames, spread over the split."""
    ok = [i for i, n in enumerate(seq_len) if int(n) >= min_frames]
    if len(ok) <= count:
        return ok
    return [ok[round(k)] for k in np.linspace(0, len(ok) - 1, count)]


def predict_clips(layout, params: Mapping[str, Any], *, count: int) -> ClipPredictions:
    """Run the trained stage-1 and mesh models on ``count`` test clips (stride-1 middle frames)."""
    import torch

    from hmrmamba.body.body_model import load_body_arrays, load_smpl
    from hmrmamba.body.gendered import ground_truth_bodies
    from hmrmamba.data.h5schema import read_split
    from hmrmamba.data.loading import load_split_arrays, map_shape, select_sequences
    from hmrmamba.evaluate.protocol import predict_split, smpl_targets
    from hmrmamba.train.experiment import checkpoint_dir, experiment_settings
    from hmrmamba.train.trained import load_trained

    from hmrmamba.settings import parse_settings

    s = parse_settings(params)
    exp = experiment_settings(params)
    split, window = s.evaluate.split, s.train_mesh.window
    data = load_split_arrays(layout, split, detector=exp["detector"], with_smpl=True,
                             with_maps=map_shape(layout, split) is not None)
    picked = pick_sequences(data.split.seqs["seq_len"], count=count, min_frames=window)
    sub = select_sequences(data, picked)
    lift, _ = load_trained(checkpoint_dir(params, layout, "train_lift") / "best.pt", layout,
                           lift_only=True)
    mesh, _ = load_trained(checkpoint_dir(params, layout, "train_mesh") / "best.pt", layout,
                           lift_only=False)
    p1 = predict_split(lift, sub, length=window, lift_only=True, progress=False)
    p2 = predict_split(mesh, sub, length=window, lift_only=False, progress=False)
    arrays = load_body_arrays(layout.body_model)
    reg = torch.as_tensor(arrays["J_regressor_h36m"], dtype=torch.float32)
    # 3DPW prepared with the gendered SMPL: each person's ground-truth mesh from their gendered model
    bodies = ground_truth_bodies(params, layout.root, sub.split, load_smpl(layout.body_model))
    gt_v, _, _ = smpl_targets(bodies, reg, sub.arrays["smpl_pose"], sub.arrays["smpl_betas"], sub.arrays["smpl_trans"],
                              gender=sub.arrays.get("smpl_gender"))
    # the model predicts root-relative meshes: place them at the ground-truth pelvis for the pictures
    pred_root = np.einsum("jv,nvc->njc", reg.numpy(), p2.vertices)[:, 0]
    pred_v = p2.vertices - pred_root[:, None] + sub.arrays["root"][:, None]
    # real splits store no frames (None): the pictures then use a plain background
    images = read_split(layout.prepared(split), with_images=True).frames.get("image")
    size = int(data.split.attrs["image_size"])
    out = ClipPredictions([], [], [], [], [], [], [], [],
                          tuple(images.shape[1:3]) if images is not None else (size, size))
    starts, lens = sub.split.seqs["seq_start"], sub.split.seqs["seq_len"]
    orig_starts = data.split.seqs["seq_start"]
    for k, s in enumerate(picked):
        a, n = int(starts[k]), int(lens[k])
        sl = slice(a, a + n)
        o = int(orig_starts[s])
        out.names.append(str(data.split.seqs["seq_name"][s]))
        out.frames.append(None if images is None else np.asarray(images[o:o + n]))
        out.gt_vertices.append(gt_v[sl])
        out.pred_vertices.append(pred_v[sl])
        out.gt_joints.append(sub.arrays["joints3d"][sl])
        out.pred_joints.append(p2.joints[sl] - p2.joints[sl][:, :1])
        out.stage1_joints.append(p1.pose3d[sl])
        out.cameras.append(np.asarray(data.split.seqs["camera"][s], dtype=np.float32))
    return out


def mesh_figure(path: Path, clips: ClipPredictions, faces: np.ndarray, *, frames_per_clip: int = 4,
                side_angle: float = 90.0) -> Path:
    """Figure-4-style grid: per clip, rows frame | GT | prediction | GT side | prediction side."""
    import torch

    from hmrmamba.report.plots import _pyplot
    from hmrmamba.render.raster import render_mesh, side_view

    h, w = clips.image_size
    f = torch.as_tensor(np.asarray(faces, dtype=np.int64))
    rows, titles = [], []
    for c, name in enumerate(clips.names):
        n = len(clips.gt_vertices[c])
        idx = np.linspace(0, n - 1, frames_per_clip).round().astype(int)
        cam = torch.as_tensor(clips.cameras[c])[None].expand(len(idx), 4)
        frames = clips.frames[c]
        bg = (torch.as_tensor(frames[idx]) if frames is not None
              else torch.full((len(idx), h, w, 3), 235, dtype=torch.uint8))
        gt = torch.as_tensor(clips.gt_vertices[c][idx], dtype=torch.float32)
        pr = torch.as_tensor(clips.pred_vertices[c][idx], dtype=torch.float32)
        gt_col = torch.tensor([0.55, 0.75, 0.95])
        pr_col = torch.tensor([0.95, 0.65, 0.45])
        v = gt.shape[1]
        plain = torch.full((len(idx), h, w, 3), 235, dtype=torch.uint8)
        panels = [
            bg.numpy(),
            render_mesh(gt, f, cam, image_size=(h, w), background=bg, vertex_colors=gt_col.expand(v, 3)).image.numpy(),
            render_mesh(pr, f, cam, image_size=(h, w), background=bg, vertex_colors=pr_col.expand(v, 3)).image.numpy(),
            side_view(gt, f, cam, angle_deg=side_angle, image_size=(h, w), background=plain,
                      vertex_colors=gt_col.expand(v, 3)).image.numpy(),
            side_view(pr, f, cam, angle_deg=side_angle, image_size=(h, w), background=plain,
                      vertex_colors=pr_col.expand(v, 3)).image.numpy(),
        ]
        for label, panel in zip(("frame", "ground truth", "prediction", "GT, side", "prediction, side"), panels):
            rows.append(np.concatenate(list(panel), axis=1))
            titles.append(f"{name}: {label}")
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(frames_per_clip * 1.6, len(rows) * 1.7), squeeze=False)
    for ax, img, title in zip(axes[:, 0], rows, titles):
        ax.imshow(img)
        ax.set_title(title, fontsize=7, loc="left")
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def accel_figure(path: Path, clips: ClipPredictions, *, fps: float) -> Path:
    """Per-frame acceleration error (mm/frame²) over time: stage-1 pose vs mesh joints, per clip."""
    import torch

    from hmrmamba.evaluate import metrics as M
    from hmrmamba.report.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(len(clips.names), 1, figsize=(7, 1.8 * len(clips.names)), squeeze=False, sharex=True)
    for ax, c in zip(axes[:, 0], range(len(clips.names))):
        g = torch.as_tensor(clips.gt_joints[c], dtype=torch.float64)
        for label, p in (("stage 1 (lifted pose)", clips.stage1_joints[c]), ("mesh joints", clips.pred_joints[c])):
            err = M.accel_error(torch.as_tensor(p, dtype=torch.float64), g).numpy()
            t = (np.arange(len(err)) + 1) / fps
            ax.plot(t, err, lw=1, label=f"{label} (mean {err.mean():.1f})")
        ax.set_ylabel("mm/frame²", fontsize=7)
        ax.set_title(clips.names[c], fontsize=8, loc="left")
        ax.legend(fontsize=6, loc="upper right")
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("time (s)", fontsize=7)
    fig.tight_layout(pad=0.3)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: Any, key: str = "") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{float(v):.2f}" if key == "roughness" else f"{float(v):.1f}"  # a ratio near 1


def table1_lines(evaluate: Mapping[str, Any], dataset: str) -> list[str]:
    """This run's Table-1 analogue: the stage-1 lifted pose and the mesh, on ``dataset``."""
    lines = ["| output | " + " | ".join(HEADERS[k] for k in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for label, m in (("stage 1 (lifted pose)", evaluate.get("stage1", {}).get(dataset, {})),
                     ("mesh (stage 2)", evaluate.get(dataset, {}))):
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k), k) for k in METRICS) + " |")
    return lines


def results_section(results_md: Path) -> list[str]:
    """The tables of docs/results.md (its '##' sections), when that file exists."""
    if not results_md.is_file():
        return ["No comparison over variants yet: `python flows/results.py` writes `docs/results.md`."]
    text = results_md.read_text()
    body = text[text.find("\n## "):] if "\n## " in text else ""
    return [f"From `{results_md.name}` (regenerate with `python flows/results.py`):", "",
            *body.strip().replace("\n## ", "\n### ").replace("## ", "### ", 1).splitlines()]


def build_report(layout, params: Mapping[str, Any], *, out_dir: Path, clips: int = 3,
                 frames_per_clip: int = 4, results_md: Path | None = None) -> dict[str, Any]:
    """Write ``out_dir/report.md`` and its PNGs -> summary metrics of the report stage."""
    from hmrmamba.body.body_model import load_body_arrays
    from hmrmamba.efficiency.benchmark import efficiency_table
    from hmrmamba.train.experiment import experiment_settings

    from hmrmamba.settings import parse_settings

    s = parse_settings(params)
    exp = experiment_settings(params)
    dataset = s.dataset.name
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluate = _read_json(layout.metrics("evaluate")) or {}
    efficiency = _read_json(layout.metrics("efficiency"))
    pictures: dict[str, str] = {}
    for name in ("train_lift_curve.png", "train_mesh_curve.png", "per_joint_error.png"):
        src = layout.plot(name)
        if src.is_file():
            with atomic_path(out_dir / name, suffix=".png") as tmp:
                shutil.copyfile(src, tmp)
            pictures[name] = name
    cp = predict_clips(layout, params, count=clips)
    faces = load_body_arrays(layout.body_model)["f"]
    mesh_figure(out_dir / "meshes.png", cp, faces, frames_per_clip=frames_per_clip)
    fps = float(s.synthetic.fps) if dataset == "synthetic" else 25.0
    accel_figure(out_dir / "accel_over_time.png", cp, fps=fps)
    lines = [f"# hmrmamba report: `{exp['variant']}` on `{dataset}` ({exp['detector']} 2D)", "",
             SYNTHETIC_NOTE if dataset == "synthetic" else REAL_NOTE.format(dataset=dataset), "",
             f"Profile `{s.profile}`. Errors in mm (Accel in mm/frame²), PMCE/ARTS protocol.",
             "", "## Table 1 analogue: this run", ""]
    lines += table1_lines(evaluate, dataset) if evaluate else ["(no `metrics/evaluate.json` yet)"]
    lines += ["", "## Tables 1–3 analogues over variants", ""]
    lines += results_section(results_md or layout.root / "docs/results.md")
    lines += ["", "## Table 4 analogue: efficiency", ""]
    lines += [efficiency_table(efficiency)] if efficiency else ["(run `dvc repro efficiency`)"]
    lines += ["", "## Training", ""]
    lines += [f"![{n}]({n})" for n in ("train_lift_curve.png", "train_mesh_curve.png") if n in pictures]
    lines += ["", "## Per-joint error", ""]
    lines += ["![per-joint MPJPE](per_joint_error.png)"] if "per_joint_error.png" in pictures else []
    lines += ["", "## Meshes: ground truth vs prediction (cf. the paper's Figure 4)", "",
              ("Rows per clip: the frame, the ground-truth mesh, the predicted mesh, then both turned 90° "
               "about the vertical axis. The model predicts root-relative meshes; they are drawn at the "
               "ground-truth pelvis."), "", "![meshes](meshes.png)", "",
              "## Acceleration error over time", "", "![acceleration error](accel_over_time.png)", ""]
    with atomic_path(out_dir / "report.md") as tmp:
        Path(tmp).write_text("\n".join(lines))
    return {"clips": len(cp.names), "pictures": len(pictures) + 2, "report": str(out_dir / "report.md")}
