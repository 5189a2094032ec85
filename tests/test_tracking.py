"""MLflow tracking: standard tags, nested per-dataset runs, the store under the project."""

import pytest

from hmrmamba import mlflow_runs
from hmrmamba.stages.common import standard_tags

PARAMS = {"profile": "default", "dataset": {"name": "synthetic"},
          "experiment": {"variant": "tiny", "detector": "cpn"}, "features": {"bbox_source": "sh"}}


@pytest.mark.parametrize("stage", ["train_lift", "train_mesh", "evaluate"])
def test_model_stages_are_tagged_with_variant_and_2d_source(stage):
    tags = standard_tags(stage, PARAMS)
    assert tags == {"profile": "default", "dataset": "synthetic", "variant": "tiny", "detector2d": "cpn"}


def test_data_stages_carry_no_variant_tag():
    assert "variant" not in standard_tags("prepare", PARAMS)
    assert standard_tags("features", PARAMS)["detector2d"] == "sh"


def test_child_run_is_nested_in_the_parent_experiment_and_inherits_tags(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    with mlflow_runs.stage_run("evaluate", root=tmp_path, params={"split": "test"},
                            tags={"variant": "tiny", "dataset": "synthetic", "flow_run_id": "f1"}) as parent:
        with mlflow_runs.child_run("h36m", tags={"dataset": "h36m"}) as child:
            mlflow_runs.log_metrics({"mpjpe": 12.5})
            child_id = child.info.run_id
        parent_id, exp_id = parent.info.run_id, parent.info.experiment_id
    mlflow.set_tracking_uri(mlflow_runs.local_store_uri(tmp_path))
    got = mlflow.get_run(child_id)
    assert got.info.experiment_id == exp_id
    assert got.data.tags["mlflow.parentRunId"] == parent_id
    assert got.data.tags["variant"] == "tiny" and got.data.tags["dataset"] == "h36m"
    assert got.data.tags["nested_in"] == "evaluate" and "flow_run_id" not in got.data.tags
    assert got.data.metrics["mpjpe"] == 12.5
    assert (tmp_path / "mlflow.db").exists()


def test_child_run_without_an_active_run_logs_nothing():
    with mlflow_runs.child_run("x") as run:
        assert run is None
