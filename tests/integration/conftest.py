"""Fixtures for the integration tests: real DVC, a real ephemeral Prefect server, real sqlite MLflow stores.

Prefect reads ``PREFECT_HOME`` when it is first imported (and creates that directory), so it is pointed
into the temp directory here, before any test module imports prefect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / f"hmrmamba-test-prefect-{os.getpid()}"))
for _k, _v in {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
               "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_k, _v)

#: The default profile shrunk to seconds per stage: 3/1/2 short sequences at 64 px, one epoch of 8-frame windows.
TINY = ["synthetic.splits.train.sequences=3", "synthetic.splits.train.subjects=2",
        "synthetic.splits.val.sequences=1", "synthetic.splits.val.subjects=1",
        "synthetic.splits.test.sequences=2", "synthetic.splits.test.subjects=1",
        "synthetic.frames=[16,20]", "synthetic.image_size=64",
        "features.batch_size=16", "features.crop_size=32",
        "experiment.variant=tiny", "experiment.detector=cpn",
        "train_lift.epochs=1", "train_lift.window=8", "train_lift.stride=8",
        "train_mesh.epochs=1", "train_mesh.window=8", "train_mesh.stride=8"]


@contextlib.contextmanager
def own_mlflow_env():
    """Unset ``MLFLOW_TRACKING_URI`` inside, restore it after: ``mlflow.set_tracking_uri`` exports the URI to
    the environment, where the next project's stages would otherwise pick up the previous project's store."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(autouse=True)
def _own_mlflow_env():
    with own_mlflow_env():
        yield


def make_project(path: Path, overrides: list[str] = TINY, extra: tuple[str, ...] = ()) -> Path:
    """A project directory: conf/ copied from the checkout and params.yaml composed with ``overrides`` + ``extra``."""
    from hmrmamba.profiles import compose, write_params

    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "conf", path / "conf")
    write_params(path, compose(path, "default", [*overrides, *extra]))
    return path


@pytest.fixture(scope="session", name="own_mlflow_env")
def own_mlflow_env_fixture():
    """:func:`own_mlflow_env` for fixtures in the test modules."""
    return own_mlflow_env


@pytest.fixture(scope="session", name="make_project")
def make_project_fixture():
    """:func:`make_project` for tests that build their own project."""
    return make_project


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (subprocess, temporary sqlite database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture(scope="session")
def flow_project(tmp_path_factory, prefect_server):
    """A tiny project on which the pipeline flow has run up to evaluate -> (root, final flow state).

    (``efficiency`` measures paper-size models on random inputs, independent of the data: not run here.)
    """
    from flows.pipeline import pipeline

    root = make_project(tmp_path_factory.mktemp("flows") / "project")
    with own_mlflow_env():
        state = pipeline(root=str(root), target="evaluate", return_state=True)
    return root, state


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@pytest.fixture(scope="session")
def task_runs(prefect_server):
    """flow_run_id -> {task run name: (state name, state message)}, read back from the Prefect server."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read(flow_run_id) -> dict[str, tuple[str, str]]:
        with _client() as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {r.name: (r.state.name, r.state.message or "") for r in runs}

    return read


@pytest.fixture(scope="session")
def artifact(prefect_server):
    """(key, flow_run_id) -> the artifact with that key created by that flow run, read from the server."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    def read(key: str, flow_run_id):
        with _client() as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        assert len(found) == 1, f"{len(found)} artifacts with key {key} in flow run {flow_run_id}"
        return found[0]

    return read
