"""A refused training input must never cost the user the checkpoints of an earlier run.

Regression for the stale-checkpoint cleanup that ran before the loss weights and the epoch count
were read: a typo in ``train_lift.loss`` or ``train_mesh.loss`` (or a renamed ``epochs``) was
refused, and ``models/lift`` / ``models/mesh`` were empty afterwards.
"""

from __future__ import annotations

import pytest

from .support import expect_clean_failure, load_yaml_params, snapshot, write_yaml_params
from .test_bad_params import execute_stage, watched


def _typo_in_loss(params: dict, stage: str, good: str, bad: str) -> dict:
    loss = dict(params[stage]["loss"])
    loss[bad] = loss.pop(good, 0.5)
    params[stage]["loss"] = loss
    return params


def _rename_epochs(params: dict, stage: str) -> dict:
    params[stage]["epocs"] = params[stage].pop("epochs")
    return params


@pytest.mark.parametrize(
    "stage, edit, field",
    [
        ("train_lift", lambda p: _typo_in_loss(p, "train_lift", "temporal", "temporl"), "temporl"),
        ("train_mesh", lambda p: _typo_in_loss(p, "train_mesh", "vertex", "vertx"), "vertx"),
        ("train_lift", lambda p: _rename_epochs(p, "train_lift"), "epocs"),
        ("train_mesh", lambda p: _rename_epochs(p, "train_mesh"), "epocs"),
    ],
    ids=["lift-loss-typo", "mesh-loss-typo", "lift-epochs-renamed", "mesh-epochs-renamed"],
)
def test_refused_training_params_keep_the_trained_models(project, reliability, stage, edit, field):
    params = load_yaml_params(project)
    ckpt = project / params[stage]["checkpoint_dir"]
    kept = {name: (ckpt / name).read_bytes() for name in ("best.pt", "last.pt")}
    write_yaml_params(project, edit(params))
    before = snapshot(ckpt)
    expect_clean_failure(execute_stage(project, stage), watch=watched(project), file="params.yaml", field=field)
    assert snapshot(ckpt) == before
    assert {name: (ckpt / name).read_bytes() for name in kept} == kept
    reliability.bad_input(f"stage {stage} (params.yaml)", f"{field}: refused, checkpoints kept")
