"""DVC stage ``prepare``: build the dataset splits as HDF5 (synthetic by default, or a real benchmark)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main

STAGE = "prepare"


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from hmrmamba.data.h5schema import write_split
    from hmrmamba.data.mocap.sources import plan_motion
    from hmrmamba.data.synthetic.maker import SyntheticConfig, SyntheticMaker, subject_ids
    from hmrmamba.settings import section_settings

    name = section_settings(params, "dataset").name
    if name != "synthetic":  # real benchmarks (h36m, 3dpw, 3dhp): hmrmamba.data.real.dispatch
        from hmrmamba.data.real.dispatch import prepare_real

        return prepare_real(params, layout)
    cfg = SyntheticConfig.from_params(params["synthetic"])
    # every motion file is read and checked before anything is rendered or written
    motion = plan_motion(params["synthetic"], layout.root, fps=cfg.fps, min_frames=cfg.frames[0], seed=cfg.seed)
    maker = SyntheticMaker(cfg, layout.body_model)
    subjects = subject_ids(cfg)
    metrics: dict[str, Any] = {"dataset": name}
    for spec in cfg.splits:
        plan = motion[spec.name]
        frames, seqs = maker.build(spec, subjects[spec.name], motion=None if plan.procedural_only else plan)
        write_split(layout.prepared(spec.name), frames, seqs,
                    attrs={"dataset": name, "split": spec.name, "image_size": cfg.image_size,
                           "joint_set": "h36m17"})
        metrics[spec.name] = {"frames": int(frames["joints3d"].shape[0]), "sequences": spec.sequences,
                              "subjects": spec.subjects}
        if not plan.procedural_only:
            metrics[spec.name]["motion"] = plan.summary()
    return metrics


if __name__ == "__main__":
    stage_main(STAGE, run)
