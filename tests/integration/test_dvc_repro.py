"""``dvc repro`` of the data stages with the real DVC CLI in a temporary git repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DATA_STAGES = ["body_model", "prepare", "detect2d", "features"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture
def repo(tmp_path, make_project) -> tuple[Path, dict[str, str]]:
    """A git + DVC repository with dvc.yaml, conf/, a tiny params.yaml and the package sources (DVC hashes
    them as stage dependencies; the stages import the installed package, PYTHONSAFEPATH keeps the copy off
    sys.path)."""
    repo = make_project(tmp_path / "repo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "hmrmamba", repo / "hmrmamba", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONSAFEPATH": "1",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
           "GIT_CONFIG_NOSYSTEM": "1"}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "hmrmamba test"],
                ["git", "config", "user.email", "test@example.invalid"], ["dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-q", "-m", "tiny project"]):
        _run(cmd, repo, env)
    return repo, env


def test_dvc_repro_runs_the_data_stages_once_and_reruns_only_downstream_of_a_change(repo):
    from hmrmamba.layout import Layout

    root, env = repo
    first = _run(["dvc", "repro", "features"], root, env)
    assert _ran(first) == DATA_STAGES
    lay = Layout(root)
    splits = ("train", "val", "test")
    outputs = [lay.body_model, lay.downsampling, *(lay.prepared(s) for s in splits),
               *(lay.detections(s) for s in splits), *(lay.features(s) for s in splits),
               *(lay.metrics(s) for s in DATA_STAGES)]
    assert all(p.is_file() and p.stat().st_size > 0 for p in outputs), [p for p in outputs if not p.is_file()]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(DATA_STAGES)
    assert lock["detect2d"]["params"]["params.yaml"]["detect2d"]["noise_scale"] == 2.0

    second = _run(["dvc", "repro", "features"], root, env)
    assert _ran(second) == [] and "Data and pipelines are up to date" in second

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["detect2d"]["noise_scale"] = 1.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = {s: lay.metrics(s).stat().st_mtime_ns for s in DATA_STAGES}
    third = _run(["dvc", "repro", "features"], root, env)
    assert _ran(third) == ["detect2d", "features"]
    assert all(lay.metrics(s).stat().st_mtime_ns == before[s] for s in ("body_model", "prepare"))
    assert all(lay.metrics(s).stat().st_mtime_ns > before[s] for s in ("detect2d", "features"))
    status = _run(["dvc", "status", "features"], root, env)
    assert "up to date" in status

    import mlflow

    from hmrmamba.tracking import local_store_uri

    mlflow.set_tracking_uri(local_store_uri(root))
    sha = _run(["git", "rev-parse", "HEAD"], root, env).strip()
    runs = mlflow.search_runs(experiment_names=["detect2d"], order_by=["attributes.start_time ASC"])
    assert list(runs["params.noise_scale"]) == ["2.0", "1.5"]
    assert set(runs["tags.git_sha"]) == {sha}
