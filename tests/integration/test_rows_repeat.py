"""Runs that repeat: the same params and seed give bit-identical weights and metrics, whether a row runs
alone or beside another one, through the Dask task runner the comparison flows use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def data_project(tmp_path_factory, make_project, own_mlflow_env):
    """A tiny project (the flow tests' TINY params: 1 epoch per stage) with its data stages run -> (root, params)."""
    from flows.common import DATA_STAGES
    from hmrmamba.config import load_params
    from hmrmamba.stages.common import execute
    from tasks.stages import stage_module

    root = make_project(tmp_path_factory.mktemp("repeat") / "project")
    params = load_params(root / "params.yaml")
    with own_mlflow_env():
        for stage in DATA_STAGES:
            module = stage_module(stage)
            execute(module.STAGE, module.run, root=root, params=params)
    return root, params


def _two_rows_at_once(root: Path, params: dict, uri: str) -> list[Path]:
    """Two identical rows 'a' and 'b', each the whole train_lift -> train_mesh -> evaluate chain in its own
    scratch project, submitted together to a 2-process cluster -> their projects."""
    from prefect import flow

    from flows import common
    from tasks.stages import run_chain

    variants = [common.Variant(label, dict(params["experiment"])) for label in ("a", "b")]

    @flow(name="test-two-identical-rows")
    def together() -> list[str]:
        projects = [common.scratch_project(root, "together", v.label, common.variant_params(params, v, uri))
                    for v in variants]
        runner = common.row_task_runner(params, 2, api_url=common.prefect_api_url())
        with runner:
            futures = [runner.submit(run_chain, parameters={
                "stages": list(common.CHAIN), "root": project, "params": common.variant_params(params, v, uri),
                "label": v.label}) for v, project in zip(variants, projects)]
            outcomes = [common._outcome(f) for f in futures]
        for o in outcomes:
            assert o.state.is_completed(), o.state.message
        return [str(p) for p in projects]

    return [Path(p) for p in together()]


def _alone(root: Path, params: dict, uri: str) -> Path:
    """The same row alone, the way the ablation flow runs it (shared stage 1, then stage 2) on 1 process."""
    from prefect import flow

    from flows import common

    @flow(name="test-one-row-alone")
    def alone() -> None:
        outcomes = common.run_variants([common.Variant("c", dict(params["experiment"]))], root=root,
                                       flow_name="alone", params=params, uri=uri, base_tags={},
                                       parent_run_id="", workers=1)
        assert outcomes["c"].state.is_completed(), outcomes["c"].state.message

    alone()
    return root / "outputs/flows/alone/c"


def _weights(path: Path) -> dict:
    from hmrmamba.train.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def _assert_same_bits(a: dict, b: dict, what: str) -> None:
    import torch

    assert a.keys() == b.keys(), what
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def _overlap(run_names: list[str]) -> float:
    """Seconds during which the named task runs were all running (read back from the Prefect server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=run_names)))
    runs = sorted(runs, key=lambda r: r.expected_start_time)[-len(run_names):]
    assert sorted(r.name for r in runs) == sorted(run_names)
    start = max(r.start_time for r in runs)
    end = min(r.end_time for r in runs)
    return (end - start).total_seconds()


def test_identical_rows_give_identical_bits_alone_or_together(data_project, prefect_server, own_mlflow_env):
    from flows import common

    root, params = data_project
    with own_mlflow_env():
        uri = common.tracking_uri(root, params)
        params = common.pin_tracking(params, uri)
        a, b = _two_rows_at_once(root, params, uri)
        c = _alone(root, params, uri)
    # the two rows really trained at the same time, in two processes
    assert _overlap(["train_lift [a]", "train_lift [b]"]) > 0
    assert _overlap(["train_mesh [a]", "train_mesh [b]"]) > 0
    stage1_c = Path(yaml.safe_load((c / "params.yaml").read_text())["train_lift"]["checkpoint_dir"])
    assert stage1_c.is_relative_to(root / "outputs/flows/alone") and stage1_c.name == "lift"
    for name in ("best.pt", "last.pt"):
        _assert_same_bits(_weights(a / "models/lift" / name), _weights(b / "models/lift" / name), f"lift {name} a/b")
        _assert_same_bits(_weights(a / "models/lift" / name), _weights(stage1_c / name), f"lift {name} a/alone")
        _assert_same_bits(_weights(a / "models/mesh" / name), _weights(b / "models/mesh" / name), f"mesh {name} a/b")
        _assert_same_bits(_weights(a / "models/mesh" / name), _weights(c / "models/mesh" / name), f"mesh {name} a/alone")
    evals = [json.loads((p / "metrics/evaluate.json").read_text()) for p in (a, b, c)]
    for key in ("synthetic", "stage1"):
        assert evals[0][key] == evals[1][key] == evals[2][key], key
    for stage in ("train_lift", "train_mesh"):
        got = [json.loads((p / f"metrics/{stage}.json").read_text()) for p in (a, b, c)]
        for key in ("best_val_mpjpe", "final_train_loss", "final_val_mpjpe", "final_val_pa_mpjpe"):
            assert got[0][key] == got[1][key] == got[2][key], (stage, key)
