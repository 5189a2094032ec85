"""MLflow holds what the stages measured, tagged for comparison; ``hmrmamba compare`` reads it back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hmrmamba.layout import Layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _client(root):
    import mlflow

    from hmrmamba.mlflow_runs import local_store_uri

    return mlflow.MlflowClient(tracking_uri=local_store_uri(root))


def _runs(root, flow_run_id: str, extra: str = ""):
    """The runs a flow run made, in any experiment, as a DataFrame."""
    import mlflow

    from hmrmamba.mlflow_runs import local_store_uri

    mlflow.set_tracking_uri(local_store_uri(root))
    return mlflow.search_runs(search_all_experiments=True,
                              filter_string=f"tags.flow_run_id = '{flow_run_id}'" + (f" and {extra}" if extra else ""))


def test_stage_runs_nest_under_the_flow_parent_named_with_their_params(flow_project):
    from flows.pipeline import with_upstream

    root, state = flow_project
    fid = str(state.state_details.flow_run_id)
    runs = _runs(root, fid)
    parent = runs[runs["tags.stage"].isna()]  # the parent is the flow's run, of no stage
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    pid, exp_id = parent["run_id"].iloc[0], parent["experiment_id"].iloc[0]
    assert _client(root).get_experiment(exp_id).name == "flow-pipeline"
    assert parent["tags.mlflow.runName"].iloc[0] == "pipeline:tiny:cpn"
    assert parent["params.experiment.variant"].iloc[0] == "tiny" and parent["params.profile"].iloc[0] == "default"
    git_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=False).stdout.strip()
    for stage in with_upstream("evaluate"):
        mine = runs[runs["tags.stage"] == stage]  # (per-dataset child runs do not carry flow_run_id)
        assert len(mine) == 1, stage
        run = mine.iloc[0]
        assert run["status"] == "FINISHED"
        # nested in the parent's experiment: the MLflow UI shows the flow's stages under its run
        assert run["tags.mlflow.parentRunId"] == pid and run["experiment_id"] == exp_id
        assert run["tags.stage"] == stage and run["tags.flow"] == "pipeline"
        assert run["tags.profile"] == "default" and run["tags.dataset"] == "synthetic"
        assert run["tags.git_sha"] == (git_sha or "unknown")
        assert run["params.profile"] == "default" and run["params.dataset.name"] == "synthetic"
        saved = json.loads(Layout(root).metrics(stage).read_text())
        if stage in ("train_lift", "train_mesh"):  # per-epoch curves share names with the summary; compare the best
            assert run["metrics.best_val_mpjpe"] == pytest.approx(saved["best_val_mpjpe"])
        else:
            assert run["metrics.seconds"] == pytest.approx(saved["seconds"])
        if stage in ("body_model", "prepare", "detect2d", "train_backbone", "features"):
            assert not isinstance(run.get("tags.variant"), str)  # data stages do not depend on the model
            assert run["tags.mlflow.runName"] == stage
        else:
            assert (run["tags.variant"], run["tags.detector2d"]) == ("tiny", "cpn")
            assert run["tags.mlflow.runName"] == f"{stage}:tiny:cpn"
            assert run["params.experiment.variant"] == "tiny" and run["params.experiment.overrides"] == "{}"
    ev = runs[runs["tags.stage"] == "evaluate"].iloc[0]
    saved = json.loads(Layout(root).metrics("evaluate").read_text())
    for key in ("mpjpe", "pa_mpjpe", "mpvpe", "accel"):
        assert ev[f"metrics.synthetic.{key}"] == pytest.approx(saved["synthetic"][key])
    assert ev["metrics.stage1.synthetic.mpjpe"] == pytest.approx(saved["stage1"]["synthetic"]["mpjpe"])
    # every setting the test errors depend on, the upstream training included
    assert ev["params.train_lift.epochs"] == "1" and ev["params.train_mesh.window"] == "8"
    assert ev["params.evaluate.split"] == "test"
    for key in ("mpjpe", "pa_mpjpe", "mpvpe"):  # the parent shows the headline errors of its evaluate run
        assert parent[f"metrics.synthetic.{key}"].iloc[0] == pytest.approx(saved["synthetic"][key])
    lift = runs[runs["tags.stage"] == "train_lift"].iloc[0]
    assert lift["params.train_lift.epochs"] == "1" and lift["params.train_lift.window"] == "8"
    assert "params.train_mesh.epochs" not in lift or not isinstance(lift["params.train_mesh.epochs"], str)


def test_trained_models_are_registered_with_signatures_and_predict_as_the_checkpoints(flow_project):
    import mlflow
    import numpy as np

    from hmrmamba.mlflow_runs import local_store_uri
    from hmrmamba.train.logged_model import predict_arrays
    from hmrmamba.train.trained import load_trained

    root, state = flow_project
    runs = _runs(root, str(state.state_details.flow_run_id))
    client = _client(root)
    mlflow.set_tracking_uri(local_store_uri(root))
    for stage, name, lift_only, ckpt in (("train_lift", "hmrmamba-tiny-lifter", True, "models/lift/best.pt"),
                                         ("train_mesh", "hmrmamba-tiny-mesh", False, "models/mesh/best.pt")):
        run_id = runs[runs["tags.stage"] == stage]["run_id"].iloc[0]
        versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
        assert len(versions) == 1, name
        model = mlflow.pyfunc.load_model(f"models:/{name}/{versions[0].version}")
        inputs = {spec.name: spec.shape for spec in model.metadata.signature.inputs.inputs}
        assert inputs["kp2d"] == (-1, -1, 17, 2) and inputs["conf"] == (-1, -1, 17)
        outputs = [spec.name for spec in model.metadata.signature.outputs.inputs]
        assert outputs == (["pose3d"] if lift_only else ["pose3d", "vertices", "joints"])
        rng = np.random.default_rng(0)
        batch = {k: rng.normal(size=(2, 5, *shape[2:])).astype(np.float32) for k, shape in inputs.items()}
        batch["conf"] = np.abs(batch["conf"]).clip(0, 1)
        got = model.predict(batch)
        net, _ = load_trained(root / ckpt, Layout(root), lift_only=lift_only)
        want = predict_arrays(net, batch, lift_only=lift_only)
        assert got["pose3d"].shape == (2, 5, 17, 3)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_compare_groups_the_ablation_rows_and_their_parent_sums_them_up(flow_project):
    from flows.ablation import ablation
    from hmrmamba.report.compare import comparison_table

    root, _ = flow_project
    state = ablation(root=str(root), rows=["ga", "em+im"], max_parallel=1, return_state=True)
    assert state.is_completed()
    fid = str(state.state_details.flow_run_id)
    table = comparison_table(root=root, by="variant", filter_string=f"tags.flow_run_id = '{fid}'")
    assert list(table["variant"]) == ["em+im", "ga"]
    for label, slug in (("ga", "ga"), ("em+im", "em-im")):
        saved = json.loads((root / f"outputs/flows/ablation/{slug}/metrics/evaluate.json").read_text())
        row = table.set_index("variant").loc[label]
        assert row["synthetic.mpjpe"] == pytest.approx(saved["synthetic"]["mpjpe"], abs=1e-3)
        assert row["run_name"] == f"evaluate:{label}:cpn"
        assert len(_client(root).search_model_versions(f"name = 'hmrmamba-{slug}-mesh'")) >= 1
    assert list(table.columns[:7]) == ["variant", "run_id", "run_name", "start_time", "synthetic.mpjpe",
                                       "synthetic.pa_mpjpe", "synthetic.mpvpe"]
    runs = _runs(root, fid)
    parent = runs[runs["tags.stage"].isna()].iloc[0]
    assert parent["metrics.ga.synthetic.mpjpe"] == pytest.approx(table.set_index("variant").loc["ga", "synthetic.mpjpe"])
    assert parent["metrics.em-im.synthetic.mpvpe"] == pytest.approx(  # (no '+' in MLflow metric names)
        table.set_index("variant").loc["em+im", "synthetic.mpvpe"])

    out = subprocess.run([sys.executable, "-m", "hmrmamba.cli", "compare", "--group-by", "variant",
                          "--baseline", "ga"], cwd=root, capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    everything = comparison_table(root=root, by="variant")  # the pipeline's tiny run too
    assert {"tiny", "ga", "em+im"} <= set(everything["variant"])
    assert len(lines) == 2 + len(everything) + 1  # header, rule, one per variant, "wrote ..."
    assert lines[2].split("|")[1].strip() == "ga"  # the baseline first, its differences 0
    assert (root / "plots/compare_evaluate_by_variant_vs_ga.png").read_bytes()[:4] == b"\x89PNG"
