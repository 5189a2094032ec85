"""DVC stage ``train_mesh``: stage 2, motion-guided reconstruction from stage-1 weights (§3.4, eq. 15)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.errors import MissingFileError
from hmrmamba.layout import Layout
from hmrmamba.settings import TrainMeshSettings
from hmrmamba.stages.common import main as stage_main

STAGE = "train_mesh"


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from dataclasses import asdict

    import torch

    from hmrmamba.body.body_model import load_smpl
    from hmrmamba.body.gendered import ground_truth_bodies, read_split_header
    from hmrmamba.settings import section_settings
    from hmrmamba.train.losses import MeshLossWeights
    from hmrmamba.train.experiment import checkpoint_dir, load_mesh_assets, train_stage
    from hmrmamba.train.objectives import MeshObjective, MeshTargets, faces_tensor, loss_weights

    init = checkpoint_dir(params, layout, "train_lift") / "best.pt"
    if not init.exists():
        raise MissingFileError("stage-1 checkpoint not found", file=init,
                               expected="the output of the train_lift stage (run `dvc repro train_lift`)")
    _, arrays = load_mesh_assets(layout)
    smpl = load_smpl(layout.body_model)
    # a gendered training split (3DPW prepared with the male/female SMPL): its frames' ground-truth
    # meshes come from their gendered models (the windows carry smpl_gender), as in PMCE's protocol
    header = read_split_header(layout.prepared(section_settings(params, STAGE).train_split))
    bodies = ground_truth_bodies(params, layout.root, header, smpl)
    targets = MeshTargets(bodies, torch.as_tensor(arrays["J_regressor_h36m"]))
    faces = faces_tensor(arrays["f"])

    def objective(s: TrainMeshSettings, image_size: float):
        return MeshObjective(weights=loss_weights(MeshLossWeights, asdict(s.loss)), targets=targets, faces=faces,
                             frames=s.loss_frames)

    return train_stage(STAGE, params, layout, objective_factory=objective, lift_only=False, init_from=init)


if __name__ == "__main__":
    stage_main(STAGE, run)
