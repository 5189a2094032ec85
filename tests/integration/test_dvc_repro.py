"""``dvc repro`` of the whole graph with the real DVC CLI in a temporary git repository."""

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
DATA_STAGES = ["body_model", "prepare", "detect2d", "train_backbone", "features"]
ALL_STAGES = [*DATA_STAGES, "train_lift", "train_mesh", "evaluate", "efficiency", "report"]
#: Table 4 on tiny models and short clips (the paper-size models take minutes on 2 cores).
QUICK_EFFICIENCY = ["efficiency.variants=[tiny,mlp]", "efficiency.frames=8", "efficiency.repeats=1",
                    "efficiency.profile_rows=4", "efficiency.cuda=false",
                    "efficiency.scaling.variants=[tiny,mlp]", "efficiency.scaling.frames=[4,8]",
                    "efficiency.scaling.repeats=1", "efficiency.scaling.profile_frames=8",
                    "efficiency.linear.variant=tiny", "efficiency.linear.frames=[8,16]",
                    "efficiency.scan.batch=4", "efficiency.scan.dim=8", "efficiency.scan.length=12",
                    "efficiency.scan.dstate=4", "efficiency.scan.repeats=1", "efficiency.scan.ref_batch=2",
                    "report.clips=1", "report.frames_per_clip=2"]


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
    repo = make_project(tmp_path / "repo", extra=tuple(QUICK_EFFICIENCY))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    for dep in ("docs/results.md", "docs/results.json"):
        if (ROOT / dep).is_file():
            (repo / dep).parent.mkdir(exist_ok=True)
            shutil.copy(ROOT / dep, repo / dep)
    shutil.copytree(ROOT / "hmrmamba", repo / "hmrmamba", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONSAFEPATH": "1",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
           "GIT_CONFIG_NOSYSTEM": "1"}
    # DVC composes params.yaml with Hydra as in the project (.dvc/config: hydra.enabled): here from a conf/
    # that is the tiny params themselves, so `dvc exp run -S` changes only the value it sets
    for old in (repo / "conf").iterdir():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    (repo / "conf/config.yaml").write_text((repo / "params.yaml").read_text())
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "hmrmamba test"],
                ["git", "config", "user.email", "test@example.invalid"], ["dvc", "init", "-q"],
                ["dvc", "config", "hydra.enabled", "true"],
                ["git", "add", "-A"], ["git", "commit", "-q", "-m", "tiny project"]):
        _run(cmd, repo, env)
    return repo, env


def test_dvc_repro_runs_every_stage_once_and_reruns_only_downstream_of_a_change(repo):
    from hmrmamba.layout import Layout

    root, env = repo
    first = _run(["dvc", "repro"], root, env)
    assert _ran(first) == ALL_STAGES
    lay = Layout(root)
    splits = ("train", "val", "test")
    outputs = [lay.body_model, lay.downsampling, *(lay.prepared(s) for s in splits),
               *(lay.detections(s) for s in splits), *(lay.features(s) for s in splits),
               *(lay.metrics(s) for s in ALL_STAGES), root / "metrics/eval.json", root / "metrics/eval_sequences.csv",
               *(root / "models" / s / f for s in ("lift", "mesh") for f in ("best.pt", "last.pt")),
               *(lay.plot(f) for f in ("train_lift_curve.csv", "train_lift_curve.png", "train_mesh_curve.csv",
                                      "train_mesh_curve.png", "per_joint_error.png", "per_joint_error.csv")),
               *(root / "reports" / f for f in ("report.md", "meshes.png", "accel_over_time.png"))]
    assert all(p.is_file() and p.stat().st_size > 0 for p in outputs), [p for p in outputs if not p.is_file()]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(ALL_STAGES)
    assert lock["detect2d"]["params"]["params.yaml"]["detect2d"]["noise_scale"] == 2.0
    report = (root / "reports/report.md").read_text()
    assert "embedded synthetic dataset" in report and "![meshes](meshes.png)" in report

    second = _run(["dvc", "repro"], root, env)
    assert _ran(second) == [] and "Data and pipelines are up to date" in second

    # an experiment: DVC keeps its metrics and plots, so it compares against the commit it started from
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-q", "-m", "baseline results"], root, env)
    assert _run(["git", "status", "--porcelain"], root, env).strip() == ""  # cached outputs are git-ignored
    tracked = _run(["git", "ls-files", "metrics", "plots"], root, env).split()
    assert sorted(tracked) == sorted([*(f"metrics/summary/{s}.json" for s in ALL_STAGES), "metrics/eval.json",
                                      "metrics/eval_sequences.csv", "metrics/.gitignore", "plots/.gitignore",
                                      *(f"plots/{f}.csv" for f in ("train_lift_curve", "train_mesh_curve",
                                                                  "per_joint_error"))])
    bad = subprocess.run(["dvc", "exp", "run", "-S", "train_mesh.lrr=0.002"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "train_mesh.lrr" in bad.stderr + bad.stdout
    assert _run(["git", "status", "--porcelain"], root, env).strip() == ""  # nothing changed or half-run
    before = {s: lay.summary(s).stat().st_mtime_ns for s in ALL_STAGES}
    third = _run(["dvc", "exp", "run", "-S", "train_mesh.lr=0.002", "-n", "lr2"], root, env)
    changed = ["train_mesh", "evaluate", "report"]
    assert _ran(third) == changed
    assert all(lay.summary(s).stat().st_mtime_ns == before[s] for s in ALL_STAGES if s not in changed)
    assert all(lay.summary(s).stat().st_mtime_ns > before[s] for s in changed)

    import json

    diff = json.loads(_run(["dvc", "metrics", "diff", "HEAD", "lr2", "--json"], root, env))
    mesh = diff["metrics/summary/train_mesh.json"]["best_val_mpjpe"]
    ours = json.loads(lay.summary("train_mesh").read_text())["best_val_mpjpe"]
    assert mesh["new"] == ours and mesh["old"] != mesh["new"]
    assert diff["metrics/eval.json"]["synthetic.mpjpe"]["diff"] != 0
    assert "metrics/summary/efficiency.json" not in diff  # unchanged metrics are not listed
    params_diff = json.loads(_run(["dvc", "params", "diff", "HEAD", "lr2", "--json"], root, env))
    assert set(params_diff["params.yaml"]) == {"train_mesh.lr"}
    assert params_diff["params.yaml"]["train_mesh.lr"]["new"] == 0.002
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], root, env))
    assert [exp["name"] for rev in shown if rev.get("experiments") for exp in rev["experiments"]] == ["lr2"]
    plots = json.loads(_run(["dvc", "plots", "diff", "HEAD", "lr2", "--json"], root, env))["data"]
    for title in ("validation MPJPE by epoch (mm)", "per-joint test MPJPE, mesh (mm)",
                  "per-sequence test MPJPE (mm)"):
        assert plots[title][0]["revisions"] == ["HEAD", "lr2"], title
        rows = plots[title][0]["content"]["data"]["values"]
        assert {row["rev"] for row in rows} == {"HEAD", "lr2"}, title  # both runs overlaid in one figure

    # applying the experiment changes exactly the changed value in params.yaml
    _run(["dvc", "exp", "apply", "lr2"], root, env)
    changed_lines = [line for line in _run(["git", "diff", "-U0", "params.yaml"], root, env).splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed_lines == ["-  lr: 0.001", "+  lr: 0.002"], changed_lines
    status = _run(["dvc", "status"], root, env)
    assert "up to date" in status

    import mlflow

    from hmrmamba.mlflow_runs import local_store_uri

    mlflow.set_tracking_uri(local_store_uri(root))
    runs = mlflow.search_runs(experiment_names=["train_mesh"], order_by=["attributes.start_time ASC"])
    assert list(runs["params.train_mesh.lr"].astype(float)) == [1e-3, 2e-3]
    assert set(runs["tags.variant"]) == {"tiny"} and set(runs["tags.detector2d"]) == {"cpn"}
    evals = mlflow.search_runs(experiment_names=["evaluate"])
    nested = evals[evals["tags.mlflow.parentRunId"].notna()]
    assert len(nested) == 2 and set(nested["tags.dataset"]) == {"synthetic"}
    assert (nested["metrics.mpjpe"] > 0).all()
