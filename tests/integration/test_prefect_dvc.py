"""The pipeline flow on top of DVC, and what its runs show in Prefect: a real git + DVC repository, a real
(ephemeral) Prefect server, the task runs' logs and artifacts read back from its API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hmrmamba.errors import InputError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DATA = ["body_model", "prepare", "detect2d"]


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _task_runs(flow_run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r for r in runs}


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, f"dvc {' '.join(args)}: {out.stdout}\n{out.stderr}"
    return out.stdout


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"})


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory, make_project, flow_project):
    """A tiny git + DVC project (dvc.yaml and the package sources its stages depend on) whose data stages
    (features included) are up to date -> root. Their outputs are the session's flow project's (same params), recorded with
    ``dvc commit``: cheaper than making them again."""
    root = make_project(tmp_path_factory.mktemp("prefect-dvc") / "project")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "hmrmamba", root / "hmrmamba", ignore=shutil.ignore_patterns("__pycache__"))
    _git(root, "init", "-q")
    _git(root, "config", "user.name", "hmrmamba test")
    _git(root, "config", "user.email", "test@example.invalid")
    _dvc(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "tiny project")
    made, _ = flow_project
    assert (made / "params.yaml").read_text() == (root / "params.yaml").read_text()
    for name in ("data/body_model", "data/prepared", "data/detections", "models/backbone", "data/features", "metrics"):
        shutil.copytree(made / name, root / name)
    _dvc(root, "commit", "--force", "--quiet", *DATA, "train_backbone", "features")
    return root


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for d in ("data", "metrics") for p in (root / d).rglob("*") if p.is_file()}


def _tiny(make_project) -> list[str]:
    """The overrides the tiny projects are composed with (conftest's TINY, make_project's default)."""
    import inspect

    return list(inspect.signature(make_project).parameters["overrides"].default)


def test_overrides_run_in_a_scratch_project_beside_the_projects_up_to_date_data(dvc_project, make_project,
                                                                                own_mlflow_env):
    from flows.pipeline import pipeline

    root = dvc_project
    before, lock = _stamps(root), (root / "dvc.lock").read_text()
    # a stage-1 override: the data stages' params are params.yaml's, so they stay in the project (up to date)
    with own_mlflow_env():
        state = pipeline(root=str(root), target="train_lift", return_state=True,
                         overrides=[*_tiny(make_project), "train_lift.lr=0.002"])
    assert state.is_completed(), state.message
    (scratch,) = (root / "outputs/flows/pipeline").iterdir()
    runs = _task_runs(state.state_details.flow_run_id)
    assert {n: r.state.name for n, r in runs.items()} == {
        **{f"{s} [main]": "Cached" for s in (*DATA, "train_backbone", "features")},
        f"train_lift [{scratch.name}]": "Completed"}
    assert scratch.name.startswith("default-") and (scratch / "data").resolve() == (root / "data").resolve()
    assert yaml.safe_load((scratch / "params.yaml").read_text())["train_lift"]["lr"] == 0.002
    assert (scratch / "models/lift/best.pt").is_file() and not (root / "models/lift").exists()
    assert _stamps(root) == before and (root / "dvc.lock").read_text() == lock
    assert json.loads(_dvc(root, "status", "--json", *DATA, "train_backbone", "features")) == {}


def test_the_flow_runs_only_what_dvc_would_run_and_leaves_dvc_status_clean(dvc_project, own_mlflow_env):
    from flows.pipeline import pipeline
    from tasks.stages import UP_TO_DATE

    root = dvc_project
    assert json.loads(_dvc(root, "status", "--json", *DATA)) == {}
    before = _stamps(root)
    with own_mlflow_env():
        up_to_date = pipeline(root=str(root), target="detect2d", return_state=True)
    assert up_to_date.is_completed(), up_to_date.message
    runs = _task_runs(up_to_date.state_details.flow_run_id)
    assert {n: (r.state.name, r.state.message) for n, r in runs.items()} == {
        f"{s} [main]": ("Cached", UP_TO_DATE) for s in DATA}
    assert _stamps(root) == before  # nothing was rewritten
    assert json.loads(_dvc(root, "status", "--json", *DATA)) == {}
    assert up_to_date.result()["detect2d"] == json.loads((root / "metrics/detect2d.json").read_text())

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["detect2d"]["noise_scale"] = 3.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with own_mlflow_env():
        changed = pipeline(root=str(root), target="detect2d", return_state=True)
    assert changed.is_completed(), changed.message
    runs = _task_runs(changed.state_details.flow_run_id)
    assert {n: r.state.name for n, r in runs.items()} == {
        "body_model [main]": "Cached", "prepare [main]": "Cached", "detect2d [main]": "Completed"}
    after = _stamps(root)
    assert all(after[k] == v for k, v in before.items() if k.startswith(("data/prepared", "data/body_model")))
    assert after["metrics/detect2d.json"] > before["metrics/detect2d.json"]
    assert json.loads(_dvc(root, "status", "--json", *DATA)) == {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["detect2d"]["params"]["params.yaml"]["detect2d"]["noise_scale"] == 3.0


def test_params_that_change_the_data_put_every_stage_in_a_scratch_project(dvc_project, make_project):
    """Where each stage would run (no stage runs here)."""
    from flows import common
    from flows.pipeline import plan_run
    from hmrmamba.profiles import compose

    root = dvc_project
    params = common.pin_tracking(compose(root, "default", [*_tiny(make_project), "detect2d.noise_scale=1.25"]),
                                 "sqlite:///unused.db")
    plan = plan_run(root, params, ["body_model", "prepare", "detect2d", "features"], composed=True, label="noisy")
    scratch = root / "outputs/flows/pipeline/noisy"
    assert plan.mode == "scratch" and {s: (p.root, p.dvc, p.label) for s, p in plan.places.items()} == {
        s: (scratch, False, "noisy") for s in ("body_model", "prepare", "detect2d", "features")}
    assert (scratch / "data").is_dir() and not (scratch / "data").is_symlink()
    noise = yaml.safe_load((root / "params.yaml").read_text())["detect2d"]["noise_scale"]  # as the tests left it
    unchanged = common.pin_tracking(compose(root, "default", [*_tiny(make_project), f"detect2d.noise_scale={noise}",
                                                              "train_mesh.lr=0.01"]), "sqlite:///unused.db")
    plan = plan_run(root, unchanged, ["prepare", "train_lift"], composed=True, label="lr")
    scratch = root / "outputs/flows/pipeline/lr"
    assert {s: (p.root, p.dvc) for s, p in plan.places.items()} == {
        "prepare": (root, True), "train_lift": (scratch, False)}
    assert (scratch / "data").is_symlink() and plan.places["train_lift"].params["train_mesh"]["lr"] == 0.01
    assert plan.places["prepare"].params["train_mesh"]["lr"] == yaml.safe_load(
        (root / "params.yaml").read_text())["train_mesh"]["lr"]  # the project's own params


def test_stage_logs_progress_name_tags_and_mlflow_links_reach_prefect(flow_project):
    """On the session's flow run (a project without DVC: every stage ran)."""
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterTaskRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterTaskRunId,
    )

    from hmrmamba.mlflow_runs import local_store_uri

    root, state = flow_project
    assert state.is_completed(), state.message
    fid = state.state_details.flow_run_id
    with _client() as client:
        flow_run = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fid])))[0]
    assert flow_run.name == "pipeline:tiny:cpn:params.yaml:evaluate+upstream"
    assert {"flow:pipeline", "variant:tiny", "detector:cpn", "profile:default", "mode:no-dvc"} <= set(flow_run.tags)

    runs = _task_runs(fid)
    lift = runs["train_lift [main]"]
    assert "variant:tiny" in lift.tags
    with _client() as client:
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(
            task_run_id=LogFilterTaskRunId(any_=[lift.id])))]
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(
            any_=[lift.id])))
    epochs = [m for m in logs if m.startswith("hmrmamba.train.loop: epoch 1/1")]
    assert len(epochs) == 1 and "val_mpjpe=" in epochs[0]
    assert any(m.startswith("hmrmamba: train_lift done in") for m in logs)
    by_type = {a.type: a for a in arts}
    assert by_type["progress"].data == 100.0
    run_id = lift.state.message.split()[2]
    assert run_id in by_type["markdown"].data
    run = MlflowClient(tracking_uri=local_store_uri(root)).get_run(run_id)
    assert run.data.tags["stage"] == "train_lift" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"]


@pytest.mark.parametrize("kwargs, match", [
    ({"stages": ["nope"]}, r"unknown stages \['nope'\]"),
    ({"overrides": ["train_lift.nope=1"]}, r"Could not override 'train_lift.nope'"),
    ({"overrides": ["+train_lift.nope=1"]}, r"train_lift.nope.*unknown key"),
    ({"stages": ["prepare"], "target": "evaluate"}, r"both stages and target"),
])
def test_bad_parameters_fail_before_any_stage_and_leave_no_mlflow_run(flow_project, kwargs, match):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline
    from hmrmamba.mlflow_runs import local_store_uri

    root, _ = flow_project
    client = MlflowClient(tracking_uri=local_store_uri(root))
    count = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    state = pipeline(root=str(root), return_state=True, **kwargs)
    assert state.is_failed()
    with pytest.raises(InputError, match=match):
        state.result()
    assert len(str(state.message).splitlines()) == 1
    assert _task_runs(state.state_details.flow_run_id) == {}
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == count and all(r.info.status != "RUNNING" for r in runs)


def test_deployments_are_described_with_their_parameters(tmp_path):
    from flows.serve import deployments

    deps = {d.flow_name: d for d in deployments(tmp_path)}
    pipe = deps["hmrmamba-pipeline"]
    assert "only the stages DVC would run" in pipe.description
    props = pipe._parameter_openapi_schema.properties
    assert {k: bool(v.get("description")) for k, v in props.items()} == dict.fromkeys(
        ["root", "profile", "overrides", "stages", "target"], True)
    for dep in deps.values():  # the comparison flows too
        assert dep.description and "hmrmamba" in dep.tags
        assert all(v.get("description") for v in dep._parameter_openapi_schema.properties.values()), dep.flow_name


def test_dvc_is_asked_once_per_flow_run_until_a_stage_changes_the_project(dvc_project, monkeypatch):
    from tasks import dvc_state

    root, calls = dvc_project, []
    real = dvc_state.dvc
    monkeypatch.setattr(dvc_state, "dvc", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert dvc_state.stale_reasons(root, "body_model", batch=DATA, token="run-1") == []
    assert dvc_state.stale_reasons(root, "detect2d", batch=DATA, token="run-1") == []
    assert calls == ["status"]  # one `dvc status` answered both
    saved = (root / "params.yaml").read_text()
    params = yaml.safe_load(saved)
    params["detect2d"]["noise_scale"] = 0.5
    try:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert dvc_state.stale_reasons(root, "detect2d", batch=DATA, token="run-1") == []  # still the answer
        dvc_state.record(root, "body_model")  # a stage ran: answers are forgotten
        reasons = dvc_state.stale_reasons(root, "detect2d", batch=DATA, token="run-1")
        assert calls == ["status", "commit", "status"]
        assert reasons == ["changed deps: params.yaml (detect2d modified)"]
    finally:
        (root / "params.yaml").write_text(saved)
