"""Fast checks of the orchestration layer without services: the flow graph against dvc.yaml, the ablation
and detector plans, scratch projects, Prefect home, and the comparison table helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hmrmamba.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def _dvc_upstream() -> dict[str, set[str]]:
    """stage -> the stages whose outputs it depends on, read from dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {name: [next(iter(o)) if isinstance(o, dict) else o
                   for o in (*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", []))]
            for name, spec in stages.items()}

    def produced_by(dep: str) -> set[str]:
        return {s for s, paths in outs.items() for p in paths if dep == p or dep.startswith(p.rstrip("/") + "/")}

    return {name: set().union(*(produced_by(d) for d in spec.get("deps", []))) - {name}
            for name, spec in stages.items()}


def test_flow_graph_matches_dvc_yaml():
    from flows.pipeline import GRAPH, with_upstream

    dvc = _dvc_upstream()
    assert set(GRAPH) == set(dvc), "add the stage to flows/pipeline.py GRAPH (one line)"
    order = list(GRAPH)
    for stage, upstream in GRAPH.items():
        assert all(order.index(u) < order.index(stage) for u in upstream), stage  # topological
        closure = set(with_upstream(stage)) - {stage}
        assert set(upstream) <= dvc[stage] <= closure, stage


def test_stage_selection():
    from flows.pipeline import select_stages, with_upstream

    assert with_upstream("train_mesh") == ["body_model", "prepare", "detect2d", "train_backbone", "features",
                                           "train_lift", "train_mesh"]
    assert select_stages(["evaluate", "train_lift"]) == ["train_lift", "evaluate"]
    with pytest.raises(InputError, match=r"stages.*unknown stages \['train'\]"):
        select_stages(["train"])
    with pytest.raises(InputError, match="both stages and target"):
        select_stages(["evaluate"], "evaluate")
    with pytest.raises(InputError, match="target"):
        with_upstream("report-nope")


def test_task_names_only_stage_modules():
    from tasks.stages import RETRIES, stage_module, stage_task

    assert stage_module("train_lift").STAGE == "train_lift"
    for bad in ("common", "../x", "os", "Train_lift", "no_such_stage"):
        with pytest.raises(InputError, match="stage"):
            stage_module(bad)
    assert stage_task("train_lift").retries == RETRIES["train_lift"] == 1
    assert stage_task("prepare").retries == 0 and stage_task("prepare").name == "prepare"


def test_table3_rows_follow_the_registry():
    from flows.ablation import ROWS, TABLE3, row_experiment
    from hmrmamba.models.registry import TABLE3_ABLATIONS, resolve_config

    assert list(TABLE3) == ["ga", "ga+em", "ga+im", "em+im", "full"]
    assert list(TABLE3.values()) == [dict(f) for f in TABLE3_ABLATIONS]
    assert ROWS[-2:] == ("vanilla", "pmce")
    for base in ("tiny", "hmrmamba-s"):
        for label in ROWS:
            e = row_experiment(label, base=base, detector="cpn")
            cfg = resolve_config(e["variant"], **e["overrides"])
            if label in TABLE3:
                assert (cfg["lifter"]["ga"], cfg["reconstructor"]["em"], cfg["reconstructor"]["im"]) == \
                    tuple(TABLE3[label].values())
            if label == "vanilla":
                assert cfg["lifter"]["scan"] == "bi"
    assert row_experiment("vanilla", base="hmrmamba-s", detector="cpn")["variant"] == "hmrmamba-s-vanilla"
    paper, small = (resolve_config(e["variant"], **e["overrides"])
                    for e in (row_experiment("pmce", base=b, detector="gt") for b in ("hmrmamba-s", "tiny")))
    assert row_experiment("pmce", base="tiny", detector="gt")["variant"] == "pmce-tiny"
    assert paper["lifter"]["dim"] == 256 and small["lifter"]["dim"] == 32
    assert small["lifter"]["kind"] == "transformer" and small["reconstructor"]["context"] == "gru"


def test_plans_refuse_bad_rows_bases_and_detectors(tiny_params):
    from flows import ablation, detectors

    with pytest.raises(InputError, match=r"unknown: \['nope'\]"):
        ablation.plan(tiny_params, ["full", "nope"], None)
    with pytest.raises(InputError, match="distinct"):
        ablation.plan(tiny_params, ["full", "full"], None)
    with pytest.raises(InputError, match="row 'ga' does not apply to base 'mlp'"):
        ablation.plan(tiny_params, ["ga"], "mlp")
    with pytest.raises(InputError, match="unknown base variant 'big'"):
        ablation.plan(tiny_params, ["ga"], "big")
    got = ablation.plan(tiny_params, ["em+im", "vanilla"], None)
    assert [(v.label, v.tags) for v in got] == [("em+im", {"variant": "em+im", "ga": "False", "em": "True",
                                                           "im": "True"}), ("vanilla", {"variant": "vanilla"})]
    with pytest.raises(InputError, match=r"not made by detect2d: \['openpose'\]"):
        detectors.plan(tiny_params, ["gt", "openpose"], None)
    with pytest.raises(InputError, match="unknown variant 'big'"):
        detectors.plan(tiny_params, ["gt"], "big")
    assert [v.experiment["detector"] for v in detectors.plan(tiny_params, None, None)] == \
        ["sh", "detectron", "cpn", "gt"]


def test_scratch_project_links_data_and_holds_its_params(tmp_path, tiny_params):
    from flows.common import Variant, scratch_project, slug, variant_params
    from hmrmamba.config import load_params

    (tmp_path / "data").mkdir()
    v = Variant("ga+em", {"variant": "tiny", "detector": "sh", "overrides": {"ga": True, "em": True, "im": False}})
    p = variant_params(tiny_params, v, "sqlite:////x/mlflow.db")
    path = scratch_project(tmp_path, "ablation", v.label, p)
    assert path == tmp_path / "outputs/flows/ablation/ga-em" and slug("GA+IM") == "ga-im"
    assert (path / "data").is_symlink() and (path / "data").resolve() == (tmp_path / "data").resolve()
    saved = load_params(path / "params.yaml")
    assert saved["experiment"] == {"variant": "tiny", "detector": "sh", "overrides": {"ga": True, "em": True,
                                                                                      "im": False}}
    assert saved["tracking"]["uri"] == "sqlite:////x/mlflow.db" and saved["synthetic"] == tiny_params["synthetic"]
    assert scratch_project(tmp_path, "ablation", v.label, p) == path  # idempotent
    (path / "data").unlink()
    (path / "data").mkdir()
    with pytest.raises(InputError, match="in the way"):
        scratch_project(tmp_path, "ablation", v.label, p)


def test_prefect_home_defaults_under_the_project(tmp_path, monkeypatch):
    from flows import prepare_environment

    (tmp_path / "params.yaml").write_text("profile: default\n")
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    assert prepare_environment(["--root", str(tmp_path), "--rows", "ga"]) == tmp_path.resolve()
    assert os.environ["PREFECT_HOME"] == str(tmp_path.resolve() / ".prefect")
    monkeypatch.setenv("PREFECT_HOME", "/somewhere/else")
    prepare_environment(["--root", str(tmp_path)])
    assert os.environ["PREFECT_HOME"] == "/somewhere/else"
    monkeypatch.setenv("PREFECT_HOME", "relative/home")
    with pytest.raises(InputError, match="PREFECT_HOME.*absolute"):
        prepare_environment(["--root", str(tmp_path)])


def test_flow_scripts_run_from_the_repo_root(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    for script in ("pipeline", "ablation", "detectors"):
        out = subprocess.run([sys.executable, f"flows/{script}.py", "--help"], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=False, timeout=120)
        assert out.returncode == 0 and f"flows/{script}.py" in out.stdout, out.stderr
    env.pop("PREFECT_HOME")
    out = subprocess.run([sys.executable, str(ROOT / "flows/pipeline.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 2 and "no params.yaml found" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".prefect").exists()


def test_markdown_table_and_comparison_files(tmp_path):
    from hmrmamba.report.compare import _headline_columns, markdown_table, write_comparison

    assert _headline_columns(["frames", "stage1.d.mpjpe", "d.accel", "d.mpjpe", "d.pa_mpjpe"]) == \
        ["d.mpjpe", "d.pa_mpjpe", "d.accel"]
    table = pd.DataFrame({"variant": ["ga", "full"], "run_id": ["0123456789abcdef", "fedcba9876543210"],
                          "start_time": [pd.Timestamp(0), pd.Timestamp(1)],
                          "d.mpjpe": [50.126, 45.0], "frames": [34.0, np.nan]})
    assert markdown_table(table) == (
        "| variant | run_id   | d.mpjpe | frames |\n"
        "|---------|----------|---------|--------|\n"
        "| ga      | 01234567 | 50.13   | 34.00  |\n"
        "| full    | fedcba98 | 45.00   |        |")
    csv, png = write_comparison(table, csv_path=tmp_path / "c.csv", png_path=tmp_path / "c.png", title="t")
    back = pd.read_csv(csv)
    assert list(back["variant"]) == ["ga", "full"] and back["d.mpjpe"].tolist() == [50.126, 45.0]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.png"]  # no temporaries left


def test_serve_builds_one_deployment_per_flow_rooted_in_the_project(tmp_path):
    from flows.serve import deployments

    deps = deployments(ROOT, name="ci")
    assert sorted(d.flow_name for d in deps) == ["hmrmamba-ablation", "hmrmamba-detectors", "hmrmamba-pipeline",
                                                 "hmrmamba-results"]
    assert {d.name for d in deps} == {"ci"}
    assert all(d.parameters == {"root": str(ROOT)} for d in deps)


def test_parallel_rows_that_ask_for_more_threads_than_cores_are_named(capsys):
    from flows import common

    two = {"runtime": {"threads": 2}}
    assert common.oversubscription(two, 1, cores=2) is None
    assert common.oversubscription({"runtime": {"threads": 1}}, 2, cores=2) is None
    assert common.oversubscription({"runtime": {"threads": 0}}, 2, cores=2) is None  # 0: one thread per row
    msg = common.oversubscription(two, 2, cores=2)
    assert msg is not None and "4 torch threads on 2 CPU cores" in msg
    assert "--max-parallel 1" in msg and "runtime.threads=1" in msg
    common._warn(msg)  # outside a flow run: on stderr
    assert capsys.readouterr().err.strip() == f"warning: {msg}"
