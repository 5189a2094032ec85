"""MLflow holds what the stages measured, tagged for comparison; ``hmrmamba compare`` reads it back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hmrmamba.layout import Layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _runs(root, experiment: str, flow_run_id: str):
    import mlflow

    from hmrmamba.mlflow_runs import local_store_uri

    mlflow.set_tracking_uri(local_store_uri(root))
    return mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.flow_run_id = '{flow_run_id}'")


def test_stage_runs_hold_the_metrics_and_tags_under_one_parent(flow_project):
    from flows.pipeline import with_upstream

    root, state = flow_project
    fid = str(state.state_details.flow_run_id)
    parent = _runs(root, "flow-pipeline", fid)
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    pid = parent["run_id"].iloc[0]
    git_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False).stdout.strip()
    for stage in with_upstream("evaluate"):
        runs = _runs(root, stage, fid)
        assert len(runs) == 1, stage
        run = runs.iloc[0]
        assert run["status"] == "FINISHED"
        assert run["tags.mlflow.parentRunId"] == pid
        assert run["tags.stage"] == stage and run["tags.flow"] == "pipeline"
        assert run["tags.profile"] == "default" and run["tags.dataset"] == "synthetic"
        assert run["tags.git_sha"] == (git_sha or "unknown")
        saved = json.loads(Layout(root).metrics(stage).read_text())
        if stage.startswith("train_"):  # per-epoch curves share names with the summary; compare the best
            assert run["metrics.best_val_mpjpe"] == pytest.approx(saved["best_val_mpjpe"])
        else:
            assert run["metrics.seconds"] == pytest.approx(saved["seconds"])
        if stage in ("body_model", "prepare", "detect2d", "features"):
            assert not isinstance(run.get("tags.variant"), str)  # data stages do not depend on the model
        else:
            assert (run["tags.variant"], run["tags.detector2d"]) == ("tiny", "cpn")
    ev = _runs(root, "evaluate", fid).iloc[0]
    saved = json.loads(Layout(root).metrics("evaluate").read_text())
    for key in ("mpjpe", "pa_mpjpe", "mpvpe", "accel"):
        assert ev[f"metrics.synthetic.{key}"] == pytest.approx(saved["synthetic"][key])
    assert ev["metrics.stage1.synthetic.mpjpe"] == pytest.approx(saved["stage1"]["synthetic"]["mpjpe"])
    lift = _runs(root, "train_lift", fid).iloc[0]
    assert lift["params.epochs"] == "1" and lift["params.window"] == "8"


def test_compare_gives_one_row_per_variant(flow_project):
    from flows.ablation import ablation
    from hmrmamba.report.compare import comparison_table

    root, _ = flow_project
    for rows in (["ga"], ["ga"], ["em+im"]):  # ga twice: compare keeps its latest run
        assert ablation(root=str(root), rows=rows, max_parallel=1, return_state=True).is_completed()
    table = comparison_table(root=root, by="variant", filter_string="tags.flow = 'ablation'")
    assert table["variant"].is_unique
    assert {"ga", "em+im"} <= set(table["variant"])
    latest_ga = json.loads((root / "outputs/flows/ablation/ga/metrics/evaluate.json").read_text())
    row = table.set_index("variant").loc["ga"]
    assert row["synthetic.mpjpe"] == pytest.approx(latest_ga["synthetic"]["mpjpe"], abs=1e-3)
    ga_runs = _all_evaluate_runs(root, "ga")
    assert len(ga_runs) == 2 and row["run_id"] == ga_runs.sort_values("start_time")["run_id"].iloc[-1]
    assert list(table.columns[:7]) == ["variant", "run_id", "start_time", "synthetic.mpjpe",
                                       "synthetic.pa_mpjpe", "synthetic.mpvpe", "synthetic.accel"]

    out = subprocess.run([sys.executable, "-m", "hmrmamba.cli", "compare", "--by", "variant"], cwd=root,
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| variant") and "synthetic.mpjpe" in lines[0]
    everything = comparison_table(root=root, by="variant")
    assert len(lines) == 2 + len(everything) + 1  # header, rule, one per variant, "wrote ..."
    assert {ln.split("|")[1].strip() for ln in lines[2:-1]} == set(everything["variant"])
    csv = (root / "plots/compare_evaluate_by_variant.csv").read_text().splitlines()
    assert len(csv) == 1 + len(everything)
    assert (root / "plots/compare_evaluate_by_variant.png").read_bytes()[:4] == b"\x89PNG"

    bad = subprocess.run([sys.executable, "-m", "hmrmamba.cli", "compare", "--by", "no_such_tag"], cwd=root,
                         capture_output=True, text=True, check=False, timeout=300)
    assert bad.returncode == 2 and "no_such_tag" in bad.stderr and "Traceback" not in bad.stderr


def _all_evaluate_runs(root, variant: str):
    import mlflow

    from hmrmamba.mlflow_runs import local_store_uri

    mlflow.set_tracking_uri(local_store_uri(root))
    return mlflow.search_runs(experiment_names=["evaluate"],
                              filter_string=f"tags.variant = '{variant}' and tags.flow = 'ablation'")
