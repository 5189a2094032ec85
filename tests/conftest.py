"""Shared fixtures: a tiny project (params + data stages) built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hmrmamba.profiles import compose

ROOT = Path(__file__).resolve().parents[1]

for _k, _v in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(autouse=True)
def _mlflow_uri_does_not_leak():
    """``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``; a test that leaves it set would send the
    next test's stage runs to its store. Restore the variable (and the URI) after every test."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def tiny_params() -> dict:
    """The default profile shrunk to seconds: 3+2 short sequences at 64 px."""
    return compose(ROOT, "default", [
        "synthetic.splits.train.sequences=3", "synthetic.splits.train.subjects=2",
        "synthetic.splits.test.sequences=2", "synthetic.splits.test.subjects=1",
        "synthetic.frames=[20,28]", "synthetic.image_size=64",
        "features.batch_size=16", "features.crop_size=32",
    ])


@pytest.fixture(name="tiny_params")
def tiny_params_fixture() -> dict:
    return tiny_params()


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A project directory with tiny params and the four data stages run (real MLflow store)."""
    from hmrmamba.stages import body_model, detect2d, features, prepare
    from hmrmamba.stages.common import execute

    root = tmp_path_factory.mktemp("project")
    params = tiny_params()
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for mod in (body_model, prepare, detect2d, features):
        execute(mod.STAGE, mod.run, root=root, params=params)
    return root
