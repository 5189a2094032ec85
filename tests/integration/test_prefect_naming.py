"""Fast checks of what the flows show beside their stages: run names, MLflow links, what DVC's answers and
dvc.yaml entries become (no server, no stage runs). Here because importing the flows imports Prefect, which
the integration conftest points at a temporary PREFECT_HOME first."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_run_names_say_what_runs():
    from flows.pipeline import run_name

    assert run_name(variant="tiny", detector="cpn") == "pipeline:tiny:cpn:params.yaml:all"
    assert run_name(profile="paper-s", target="evaluate") == "pipeline:paper-s:evaluate+upstream"
    assert run_name(overrides=["a=1", "b=2"], stages=["train_lift", "evaluate"]) == \
        "pipeline:conf+2 overrides:train_lift,evaluate"


def test_mlflow_links_only_for_http_servers():
    from flows.pipeline import mlflow_cell
    from tasks.observe import ui_url

    run = "0123456789abcdef0123456789abcdef"
    assert ui_url("http://127.0.0.1:5000/", "3", run) == f"http://127.0.0.1:5000/#/experiments/3/runs/{run}"
    assert ui_url("sqlite:////x/mlflow.db", "3", run) is None
    message = f"MLflow run {run} (experiment 3)"
    assert mlflow_cell(message, "http://h:5000") == f"[`01234567`](http://h:5000/#/experiments/3/runs/{run})"
    assert mlflow_cell(message, "sqlite:///m.db") == f"`{run}`"
    assert mlflow_cell("up to date in DVC (dvc status), not run", "http://h:5000") == ""


def test_dvc_yaml_entries_as_the_flow_reads_them():
    from tasks.dvc_state import _describe, _outputs, pipeline_stages, same_params, stage_param_keys

    stages = pipeline_stages(ROOT)
    assert "train_lift" in stages and "features" in stages
    outs = dict(_outputs(stages["train_lift"]))
    assert outs["models/lift"] is True  # persist: kept when the stage reruns, as dvc repro keeps it
    assert "detect2d" in stage_param_keys(stages["detect2d"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = stage_param_keys(stages["detect2d"])
    changed = {**params, "detect2d": {**params["detect2d"], "noise_scale": -1}}
    assert same_params(params, params, keys) and not same_params(params, changed, keys)
    assert same_params(params, {**params, "train_mesh": {}}, keys)  # a section the stage does not list
    assert _describe({"changed deps": {"params.yaml": {"detect2d": "modified"}, "data/prepared": "modified"}}) == \
        "changed deps: params.yaml (detect2d modified); data/prepared (modified)"
    assert _describe("always changed") == "always changed"
