"""DVC stage ``evaluate``: Table-1 metrics of the trained model on the test split (PMCE/ARTS protocol)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main
from hmrmamba.train.trained import load_trained  # noqa: F401  (the library's; re-exported for callers)

STAGE = "evaluate"


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    import torch

    from hmrmamba.atomic import atomic_path
    from hmrmamba.body.body_model import load_body_arrays, load_smpl
    from hmrmamba.body.gendered import ground_truth_bodies
    from hmrmamba.data.loading import load_split_arrays, map_shape
    from hmrmamba.evaluate.protocol import evaluate_predictions, predict_split, smpl_targets
    from hmrmamba.report.plots import per_joint_bar
    from hmrmamba.skeleton import H36M17, H36M_EVAL14
    from hmrmamba.mlflow_runs import child_run, log_artifact, log_metrics
    from hmrmamba.settings import section_settings
    from hmrmamba.train.experiment import checkpoint_dir, experiment_settings

    s = section_settings(params, STAGE)  # split, batch_size: typed, checked, defaults from hmrmamba.settings
    exp = experiment_settings(params)
    dataset = section_settings(params, "dataset").name
    window = section_settings(params, "train_mesh").window
    split = s.split
    data = load_split_arrays(layout, split, detector=exp["detector"], with_smpl=True,
                             with_maps=map_shape(layout, split) is not None)
    arrays = load_body_arrays(layout.body_model)
    smpl = load_smpl(layout.body_model)
    reg = torch.as_tensor(arrays["J_regressor_h36m"], dtype=torch.float32)
    # PMCE/ARTS protocol: 14 joints and MPVPE for H36M/3DPW/synthetic; all 17 joints, no mesh, for 3DHP
    eval_joints = tuple(range(17)) if dataset == "3dhp" else H36M_EVAL14
    has_mesh = bool(data.split.attrs.get("has_mesh_gt", True)) and dataset != "3dhp"
    gt_mesh = None
    if has_mesh:
        # 3DPW prepared with the gendered SMPL: each person's GT mesh from their gendered model (PMCE)
        bodies = ground_truth_bodies(params, layout.root, data.split, smpl)
        gt_v, _, gt_pelvis = smpl_targets(bodies, reg, data.arrays["smpl_pose"], data.arrays["smpl_betas"],
                                          data.arrays["smpl_trans"], gender=data.arrays.get("smpl_gender"))
        gt_mesh = (gt_v - gt_pelvis[:, None], None)
    results: dict[str, Any] = {}
    tables = {}
    for name, stage, lift_only in (("stage1", "train_lift", True), ("mesh", "train_mesh", False)):
        model, _ = load_trained(checkpoint_dir(params, layout, stage) / "best.pt", layout, lift_only=lift_only)
        pred = predict_split(model, data, length=window, batch_size=s.batch_size,
                             lift_only=lift_only)
        pelvis = None
        if pred.vertices is not None:
            smpl_reg = torch.as_tensor(arrays["J_regressor"][:1], dtype=torch.float32)
            pelvis = torch.einsum("jv,nvc->njc", smpl_reg, torch.as_tensor(pred.vertices))[:, 0].numpy()
        summary, per_seq, per_joint = evaluate_predictions(
            pred, data, eval_joints=eval_joints, gt_mesh=gt_mesh, pred_pelvis=pelvis, faces=arrays["f"])
        results[name] = {k: round(v, 3) for k, v in summary.items()}
        tables[name] = (per_seq, per_joint)
    per_seq, per_joint = tables["mesh"]
    seq_csv = layout.root / "metrics/eval_sequences.csv"
    with atomic_path(seq_csv) as tmp:
        per_seq.to_csv(tmp, index=False)
    names = [H36M17.names[i] for i in eval_joints]
    joint_png = layout.plot("per_joint_error.png")
    per_joint_bar(joint_png, names, {"stage 1 (lifted pose)": tables["stage1"][1], "mesh": per_joint},
                  title=f"Per-joint MPJPE on {dataset} test ({exp['variant']}, {exp['detector']} 2D)")
    with atomic_path(layout.root / "plots/per_joint_error.csv") as tmp:
        tmp.write_text("joint,stage1_mm,mesh_mm\n" + "".join(
            f"{n},{a:.3f},{b:.3f}\n" for n, a, b in zip(names, tables["stage1"][1], per_joint)))
    from hmrmamba.atomic import write_json

    write_json(layout.root / "metrics/eval.json", {dataset: results["mesh"]})
    for path in (seq_csv, joint_png):
        log_artifact(path)
    # one nested run per evaluated dataset, so runs over several datasets compare side by side
    with child_run(dataset, tags={"dataset": dataset}):
        log_metrics({**results["mesh"], **{f"stage1_{k}": v for k, v in results["stage1"].items()}})
    return {dataset: results["mesh"], "stage1": {dataset: results["stage1"]}, "variant": exp["variant"],
            "detector": exp["detector"], "frames": len(data.arrays["kp2d"])}


if __name__ == "__main__":
    stage_main(STAGE, run)
