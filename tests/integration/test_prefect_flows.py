"""The Prefect flows on a real (ephemeral, subprocess) Prefect server with real MLflow stores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hmrmamba.errors import InputError
from hmrmamba.layout import Layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _rows(art) -> list[dict]:
    return json.loads(art.data) if isinstance(art.data, str) else art.data


@pytest.fixture(scope="module")
def ablation_run(flow_project, own_mlflow_env):
    """Two Table-3 rows in parallel on the flow project's data -> (root, state)."""
    from flows.ablation import ablation

    root, _ = flow_project
    with own_mlflow_env():
        state = ablation(root=str(root), rows=["ga+em", "full"], max_parallel=2, return_state=True)
    return root, state


def test_pipeline_flow_completes_every_stage_and_publishes_artifacts(flow_project, task_runs, artifact):
    from flows.pipeline import with_upstream

    root, state = flow_project
    assert state.is_completed(), state.message
    fid = state.state_details.flow_run_id
    runs = task_runs(fid)
    assert {n: state for n, (state, _) in runs.items()} == {f"{s} [main]": "Completed" for s in with_upstream("evaluate")}
    assert all(re.fullmatch(r"MLflow run [0-9a-f]{32} \(experiment \d+\)", msg) for _, msg in runs.values())
    summary = artifact("hmrmamba-pipeline-summary", fid)
    assert summary.type == "markdown"
    for stage in with_upstream("evaluate"):
        assert f"| {stage} | Completed |" in summary.data
    table = _rows(artifact("hmrmamba-pipeline-metrics", fid))
    got = {(r["stage"], r["metric"]): r["value"] for r in table}
    evaluate = json.loads(Layout(root).metrics("evaluate").read_text())
    assert got[("evaluate", "synthetic.mpjpe")] == pytest.approx(evaluate["synthetic"]["mpjpe"])
    assert got[("prepare", "test.sequences")] == 2
    assert {s for s, _ in got} == set(with_upstream("evaluate"))


def test_ablation_rows_run_in_their_own_projects_and_are_compared(ablation_run, task_runs, artifact):
    root, state = ablation_run
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    # both rows have GA, so their stage 1 is the same lifter: trained once, in a task of its own
    shared = "stage 1 of ga+em, full"
    expected = {"ga+em", "full", shared, f"train_lift [{shared}]"} | {
        f"{s} [{r}]" for s in ("train_mesh", "evaluate") for r in ("ga+em", "full")}
    assert {n: state for n, (state, _) in runs.items()} == dict.fromkeys(expected, "Completed")
    metrics, lift_dirs = {}, set()
    for row, slug in (("ga+em", "ga-em"), ("full", "full")):
        project = root / "outputs/flows/ablation" / slug
        assert (project / "data").resolve() == (root / "data").resolve()
        lift_dir = Path(yaml.safe_load((project / "params.yaml").read_text())["train_lift"]["checkpoint_dir"])
        lift_dirs.add(lift_dir)
        assert lift_dir.parent.parent.name.startswith("stage1-") and (lift_dir / "best.pt").is_file()
        assert (project / "models/mesh/best.pt").is_file()
        assert (project / "metrics/train_lift.json").is_file()  # the shared stage 1's metrics, copied in
        exp = yaml.safe_load((project / "params.yaml").read_text())["experiment"]
        assert exp["overrides"] == {"ga": True, "em": True, "im": row == "full"}
        metrics[row] = json.loads((project / "metrics/evaluate.json").read_text())["synthetic"]
    table = _rows(artifact("hmrmamba-ablation-comparison", state.state_details.flow_run_id))
    assert [r["variant"] for r in table] == ["ga+em", "full"]
    assert [(r["GA"], r["EM"], r["IM"]) for r in table] == [("✓", "✓", "✗"), ("✓", "✓", "✓")]
    for r in table:
        assert r["synthetic.mpjpe"] == pytest.approx(metrics[r["variant"]]["mpjpe"], abs=1e-3)
    csv = (root / "plots/ablation.csv").read_text().splitlines()
    assert csv[0].startswith("variant,GA,EM,IM,run_id") and len(csv) == 3
    assert (root / "plots/ablation.png").read_bytes()[:4] == b"\x89PNG"
    summary = artifact("hmrmamba-ablation-summary", state.state_details.flow_run_id).data
    assert "| ga+em | Completed |" in summary and "synthetic.mpjpe" in summary


def test_detector_flow_compares_by_detector(flow_project, task_runs, artifact):
    from flows.detectors import detectors

    root, _ = flow_project
    state = detectors(root=str(root), detectors=["gt", "sh"], max_parallel=1, return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    # gt and sh lifters differ: one stage-1 task each, then each row's stage 2
    assert all(state == "Completed" for state, _ in runs.values()) and len(runs) == 10
    assert {f"train_lift [stage 1 of {d}]" for d in ("gt", "sh")} <= set(runs)
    table = _rows(artifact("hmrmamba-detectors-comparison", state.state_details.flow_run_id))
    assert [r["detector2d"] for r in table] == ["gt", "sh"]
    for r in table:
        ev = json.loads((root / "outputs/flows/detectors" / r["detector2d"] / "metrics/evaluate.json").read_text())
        assert ev["detector"] == r["detector2d"]
        assert r["synthetic.mpjpe"] == pytest.approx(ev["synthetic"]["mpjpe"], abs=1e-3)


@pytest.mark.parametrize("call, match", [
    ("ablation", r"rows.*unknown: \['nope'\]"),
    ("detectors", r"detectors.*openpose"),
    ("pipeline", r"experiment.variant.*unknown variant 'nope'"),
    ("ablation-base", r"base.*'mlp'"),
])
def test_unknown_variant_or_detector_fails_before_any_work(flow_project, task_runs, call, match):
    from flows.ablation import ablation
    from flows.detectors import detectors
    from flows.pipeline import pipeline

    root, _ = flow_project
    before = sorted(p.name for p in (root / "outputs/flows").glob("*/*")) if (root / "outputs").exists() else []
    stamp = Layout(root).metrics("evaluate").stat().st_mtime_ns
    fn, kwargs = {"ablation": (ablation, {"rows": ["full", "nope"]}),
                  "detectors": (detectors, {"detectors": ["gt", "openpose"]}),
                  "pipeline": (pipeline, {"overrides": ["experiment.variant=nope"]}),
                  "ablation-base": (ablation, {"rows": ["ga"], "base": "mlp"})}[call]
    state = fn(root=str(root), return_state=True, **kwargs)
    assert state.is_failed()
    with pytest.raises(InputError, match=match):
        state.result()
    assert task_runs(state.state_details.flow_run_id) == {}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # named after what it was asked to run
        assert client.read_flow_run(state.state_details.flow_run_id).name == {
            "ablation": "ablation:params.yaml:full,nope", "detectors": "detectors:params.yaml:gt,openpose",
            "pipeline": "pipeline:conf+1 override:all", "ablation-base": "ablation:params.yaml:mlp:ga"}[call]
    after = sorted(p.name for p in (root / "outputs/flows").glob("*/*")) if (root / "outputs").exists() else []
    assert after == before
    assert Layout(root).metrics("evaluate").stat().st_mtime_ns == stamp


def test_a_failing_stage_is_a_failed_task_and_fails_the_flow(flow_project, task_runs, artifact):
    from flows.pipeline import pipeline

    root, _ = flow_project
    state = pipeline(root=str(root), stages=["train_mesh", "evaluate"], return_state=True,
                     overrides=["train_lift.checkpoint_dir=models/absent"])
    assert state.is_failed()
    assert "train_mesh failed" in state.message and "stage-1 checkpoint not found" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["train_mesh [main]"][0] == "Failed"
    assert "MissingFileError" in runs["train_mesh [main]"][1] and "models/absent/best.pt" in runs["train_mesh [main]"][1]
    assert runs["evaluate [main]"][0] == "NotReady"  # never ran
    summary = artifact("hmrmamba-pipeline-summary", state.state_details.flow_run_id).data
    assert "| train_mesh | Failed |" in summary


def test_results_flow_writes_the_document_from_its_runs(flow_project, task_runs, artifact):
    from flows.results import results

    root, _ = flow_project
    out = "outputs/results_test.md"
    state = results(root=str(root), max_parallel=1, return_state=True,
                    overrides=["results.seeds=[0]", "results.table1=[tiny]", "results.table2=[gt]",
                               "results.table3=[full]", f"results.output={out}"])
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert set(runs) == {f"{s} [{r}]" for s in ("train_mesh", "evaluate") for r in ("tiny-cpn-s0", "tiny-gt-s0")} | {
        "tiny-cpn-s0", "tiny-gt-s0", "stage 1 of tiny-cpn-s0", "stage 1 of tiny-gt-s0",
        "train_lift [stage 1 of tiny-cpn-s0]", "train_lift [stage 1 of tiny-gt-s0]"}  # 'full' on cpn with seed 0 is Table 1's run: trained once
    md = (root / out).read_text()
    ev = json.loads((root / "outputs/flows/results/tiny-cpn-s0/metrics/evaluate.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| `tiny` |"))
    assert f"{ev['synthetic']['mpjpe']:.1f}" in row and "mean pose (no model)" in md
    assert "| full | ✓ | ✓ | ✓ |" in md and "| `gt` | 0.00 |" in md
    saved = json.loads((root / out).with_suffix(".json").read_text())
    assert saved["runs"]["tiny-cpn-s0"]["synthetic"]["mpjpe"] == pytest.approx(ev["synthetic"]["mpjpe"])
    summary = artifact("hmrmamba-results-summary", state.state_details.flow_run_id)
    assert "Table 1 analogue" in summary.data
