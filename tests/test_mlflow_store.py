"""MLflow runs that compare, on a real sqlite store without the pipeline: names, params, nesting under a flow's
parent run, a copied checkout's artifact locations, and ``hmrmamba compare`` (grouping, latest/all, baseline,
filter errors, one unit per chart axis). The stage bodies are stand-ins; everything MLflow sees is real."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hmrmamba import mlflow_runs
from hmrmamba.errors import InputError
from hmrmamba.stages.common import execute, run_name, run_params

mlflow = pytest.importorskip("mlflow")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params() -> dict:
    """The default profile's params (the stand-in stages read none of them; MLflow logs them)."""
    from hmrmamba.profiles import compose

    return compose(ROOT, "default", [])


def _errors(mpjpe: float):
    """A stand-in evaluate stage: fixed test errors, and one artifact file."""

    def run(params, layout):
        out = layout.root / "plots/errors.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"{mpjpe}\n")
        mlflow_runs.log_artifact(out)
        return {"synthetic": {"mpjpe": mpjpe, "pa_mpjpe": mpjpe * 0.7, "mpvpe": mpjpe * 1.1, "accel": 5.0}}

    return run


def _evaluate(root: Path, params: dict, mpjpe: float, *, variant: str, epochs: int = 1, **tags: str) -> str:
    """One finished evaluate run in ``root``'s store -> its run id."""
    p = {**params, "train_mesh": {**params["train_mesh"], "epochs": epochs}}
    execute("evaluate", _errors(mpjpe), root=root, params=p, tags={"variant": variant, **tags})
    return mlflow.last_active_run().info.run_id


def _client(root: Path):
    return mlflow.MlflowClient(tracking_uri=mlflow_runs.local_store_uri(root))


def test_params_are_flattened_and_long_values_cut_with_a_marker():
    flat, cut = mlflow_runs.loggable_params({"experiment": {"variant": "tiny", "overrides": {}},
                                             "train_lift": {"loss": {"mpjpe": 1.0}}, "long": "x" * 7000})
    assert flat["experiment.variant"] == "tiny" and flat["experiment.overrides"] == "{}"
    assert flat["train_lift.loss.mpjpe"] == "1.0"
    assert len(flat["long"]) == mlflow_runs.PARAM_VALUE_LIMIT and flat["long"].endswith(mlflow_runs.TRUNCATED)
    assert cut == {"long": "x" * 7000}


def test_model_runs_log_every_section_their_result_depends_on(params, monkeypatch):
    logged = run_params("evaluate", params)
    assert set(logged) == {"profile", "seed", "runtime", "dataset", "experiment", "train_lift", "train_mesh",
                           "evaluate"}
    assert set(run_params("train_lift", params)) == {"profile", "seed", "runtime", "dataset", "experiment",
                                                          "train_lift"}
    assert "experiment" not in run_params("detect2d", params)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_name("train_mesh", {"variant": "ga", "detector2d": "cpn"}) == "train_mesh:ga:cpn"
    assert run_name("features", {"detector2d": "gt"}) == "features"
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-dune")
    assert run_name("evaluate", {"variant": "tiny", "detector2d": "sh"}) == "evaluate:tiny:sh@lucky-dune"


def test_a_stage_run_is_named_and_holds_its_params(tmp_path, params):
    run_id = _evaluate(tmp_path, params, 50.0, variant="tiny", epochs=3)
    run = _client(tmp_path).get_run(run_id)
    assert run.info.run_name == "evaluate:tiny:cpn" and run.info.status == "FINISHED"
    logged = run.data.params
    assert logged["train_mesh.epochs"] == "3" and logged["experiment.variant"] == "tiny"
    assert logged["train_lift.window"] == str(params["train_lift"]["window"])
    assert logged["profile"] == "default" and logged["dataset.name"] == "synthetic"
    exp = _client(tmp_path).get_experiment(run.info.experiment_id)
    assert exp.name == "evaluate" and exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_flow_stage_runs_nest_under_the_parent_in_its_experiment(tmp_path, params):
    uri = mlflow_runs.local_store_uri(tmp_path)
    shown = {"profile": "default", "experiment": {"variant": "tiny", "detector": "cpn", "overrides": {"ga": False}}}
    with mlflow_runs.parent_run(root=tmp_path, uri=uri, experiment="flow-pipeline", run_name="pipeline:tiny:cpn",
                                tags={"flow": "pipeline"}, params=shown, record=params) as pid:
        child = _evaluate(tmp_path, params, 42.0, variant="tiny", **{mlflow_runs.PARENT_TAG: pid})
    client = _client(tmp_path)
    parent, run = client.get_run(pid), client.get_run(child)
    assert run.info.experiment_id == parent.info.experiment_id  # the UI nests only within one experiment
    assert run.data.tags[mlflow_runs.PARENT_TAG] == pid
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline:tiny:cpn"
    assert parent.data.params["experiment.overrides.ga"] == "False" and parent.data.params["profile"] == "default"
    assert parent.data.metrics["synthetic.mpjpe"] == 42.0
    assert parent.data.metrics["synthetic.pa_mpjpe"] == pytest.approx(42.0 * 0.7)
    assert "synthetic.accel" not in parent.data.metrics

    with pytest.raises(RuntimeError):
        with mlflow_runs.parent_run(root=tmp_path, uri=uri, experiment="flow-pipeline", run_name="pipeline",
                                    tags={}, params=shown, record={}) as failed:
            raise RuntimeError("a stage failed")
    assert client.get_run(failed).info.status == "FAILED"


def test_a_parent_of_several_rows_shows_each_rows_errors(tmp_path, params):
    uri = mlflow_runs.local_store_uri(tmp_path)
    with mlflow_runs.parent_run(root=tmp_path, uri=uri, experiment="flow-ablation", run_name="ablation",
                                tags={"flow": "ablation"}, params={}, record={}) as pid:
        for variant, mpjpe in (("ga", 70.0), ("em+im", 65.0)):
            _evaluate(tmp_path, params, mpjpe, variant=variant, **{mlflow_runs.PARENT_TAG: pid})
    metrics = _client(tmp_path).get_run(pid).data.metrics
    assert metrics["ga.synthetic.mpjpe"] == 70.0 and metrics["em-im.synthetic.mpjpe"] == 65.0
    assert len(metrics) == 6  # MPJPE, PA-MPJPE, MPVPE of each row


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_a_copied_checkout_keeps_its_artifacts_to_itself(tmp_path, params):
    a, b = tmp_path / "A", tmp_path / "B"
    first = _evaluate(a, params, 60.0, variant="tiny")
    shutil.copytree(a, b)
    before = _files(a)
    second = _evaluate(b, params, 55.0, variant="tiny")
    assert _files(a) == before  # nothing written into the original checkout
    client = _client(b)
    new = client.get_run(second)
    assert new.info.artifact_uri.startswith((b / "mlartifacts").as_uri() + "/")
    assert (b / "mlartifacts/evaluate" / second / "artifacts/errors.txt").read_text() == "55.0\n"
    # the copied runs and the experiments now point into the copy, where their files are
    old = client.get_run(first)
    assert old.info.artifact_uri == (b / "mlartifacts/evaluate" / first / "artifacts").as_uri()
    assert client.download_artifacts(first, "errors.txt", str(tmp_path / "dl")).endswith("errors.txt")
    assert all(e.artifact_location.startswith((b / "mlartifacts").as_uri()) for e in client.search_experiments())


@pytest.fixture(scope="module")
def store(tmp_path_factory, params):
    """A store with evaluate runs of two variants, one variant twice with another epochs, one in a DVC experiment."""
    root = tmp_path_factory.mktemp("compare")
    (root / "params.yaml").write_text("profile: default\n")  # find_project_root for the CLI
    saved = os.environ.pop("DVC_EXP_NAME", None)
    ids = {"a1": _evaluate(root, params, 100.0, variant="A", epochs=1),
           "b1": _evaluate(root, params, 80.0, variant="B", epochs=1)}
    os.environ["DVC_EXP_NAME"] = "more-epochs"
    try:
        ids["a2"] = _evaluate(root, params, 90.0, variant="A", epochs=2)
    finally:
        os.environ.pop("DVC_EXP_NAME")
        if saved is not None:
            os.environ["DVC_EXP_NAME"] = saved
    return root, ids


def test_compare_keeps_the_latest_run_per_group_or_all(store):
    from hmrmamba.report.compare import comparison_table

    root, ids = store
    latest = comparison_table(root=root, by="variant").set_index("variant")
    assert list(latest.index) == ["A", "B"]
    assert latest.loc["A", "run_id"] == ids["a2"] and latest.loc["A", "synthetic.mpjpe"] == 90.0
    assert latest.loc["A", "run_name"] == "evaluate:A:cpn@more-epochs"
    every = comparison_table(root=root, by="tags.variant", latest=False)
    assert sorted(every["run_id"]) == sorted(ids.values())
    by_epochs = comparison_table(root=root, by="params.train_mesh.epochs").set_index("params.train_mesh.epochs")
    assert by_epochs.loc["1", "run_id"] == ids["b1"] and by_epochs.loc["2", "run_id"] == ids["a2"]
    # runs outside any DVC experiment (empty dvc_exp) are kept, as a group of their own
    by_exp = comparison_table(root=root, by="dvc_exp", latest=False)
    assert sorted(by_exp["dvc_exp"]) == ["(none)", "(none)", "more-epochs"]
    filtered = comparison_table(root=root, by="variant", filter_string="params.`train_mesh.epochs` = '1'")
    assert set(filtered["run_id"]) == {ids["a1"], ids["b1"]}


def test_compare_against_a_baseline(store):
    from hmrmamba.report.compare import baseline_diff, comparison_table

    root, ids = store
    diff = baseline_diff(comparison_table(root=root, by="variant"), "B")
    assert list(diff["variant"]) == ["B", "A"]
    assert list(diff["synthetic.mpjpe"]) == [0.0, 10.0]
    assert diff["synthetic.mpvpe"].iloc[1] == pytest.approx(11.0)
    by_run = baseline_diff(comparison_table(root=root, by="variant", latest=False), ids["a1"][:10])
    assert by_run["run_id"].iloc[0] == ids["a1"]
    assert sorted(by_run["synthetic.mpjpe"]) == [-20.0, -10.0, 0.0]
    with pytest.raises(InputError, match="--baseline"):
        baseline_diff(comparison_table(root=root, by="variant"), "C")


def test_compare_chart_has_one_unit_per_axis():
    from hmrmamba.report.compare import unit_panels

    panels = unit_panels(["synthetic.accel", "synthetic.mpvpe", "synthetic.mpjpe", "synthetic.pa_mpjpe",
                          "stage1.synthetic.mpjpe", "seconds"])
    assert panels == {"mm": ["synthetic.mpjpe", "synthetic.pa_mpjpe", "synthetic.mpvpe"],
                      "mm/frame²": ["synthetic.accel"]}


def test_compare_command(store, monkeypatch, capsys):
    from hmrmamba.cli import main

    root, ids = store
    monkeypatch.chdir(root)
    assert main(["compare", "--group-by", "params.experiment.variant"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| params.experiment.variant | run_id")
    assert len(out) == 2 + 1 + 1  # header, rule, the registry variant every run logged (tiny), "wrote ..."
    assert main(["compare", "--group-by", "params.experiment.variant", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 3 + 1
    assert main(["compare", "--baseline", "A"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split("|")[1].strip() for ln in out[2:4]] == ["A", "B"]
    png = root / "plots/compare_evaluate_by_variant_vs_A.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.with_suffix(".csv").is_file()

    assert main(["compare", "--filter", "params.lr = "]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--filter" in err and "Traceback" not in err
    assert main(["compare", "--group-by", "no_such_key"]) == 2
    err = capsys.readouterr().err
    assert "no_such_key" in err and "tags.variant" in err
