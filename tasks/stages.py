"""Prefect tasks over the pipeline stages.

Each stage task is one call of :func:`hmrmamba.stages.common.execute` with the stage module's ``run``: the
same code ``dvc repro`` runs through ``python -m hmrmamba.stages.<name>``. The task adds a readable name,
retries where a retry can help, the MLflow parent run of the flow, the stage's log lines and progress in
the task run's logs and a markdown artifact linking its MLflow run (:mod:`tasks.observe`). In a DVC project
(``dvc=True``) it runs the stage only when DVC would, and records it in ``dvc.lock`` (:mod:`tasks.dvc_state`):
an up-to-date stage ends in a Completed state named ``Cached`` with the message :data:`UP_TO_DATE`.

Retries: the training stages resume from their last checkpoint (exact resume), so a retry after a crash
(a killed worker, a transient CUDA or file-system error, a busy sqlite store) continues where it stopped.
The other stages are deterministic and fail the same way twice; they are not retried. Bad input
(:class:`~hmrmamba.errors.InputError`) is never retried.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from hmrmamba.errors import InputError

#: Retries per stage (absent: none), see the module docstring.
RETRIES: dict[str, int] = {"train_lift": 1, "train_mesh": 1}
RETRY_DELAY_S = 5

#: MLflow's tag naming a run's parent (``mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID``).
PARENT_RUN_TAG = "mlflow.parentRunId"

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def stage_module(stage: str) -> ModuleType:
    """The module ``hmrmamba.stages.<stage>`` (with ``STAGE`` and ``run``); ``InputError`` for other names."""
    if not isinstance(stage, str) or not _STAGE_NAME.match(stage) or stage == "common":
        raise InputError(f"bad stage name {stage!r}", field="stage", expected="a module of hmrmamba.stages")
    try:
        module = importlib.import_module(f"hmrmamba.stages.{stage}")
    except ModuleNotFoundError as exc:
        if exc.name != f"hmrmamba.stages.{stage}":
            raise
        raise InputError(f"no stage {stage!r}", field="stage", expected="a module of hmrmamba.stages") from None
    if getattr(module, "STAGE", None) != stage or not callable(getattr(module, "run", None)):
        raise InputError(f"hmrmamba.stages.{stage} is not a stage", field="stage",
                         expected="a module with STAGE and run(params, layout)")
    return module


def _retry_unless_bad_input(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry crashes, not bad input (it would fail again)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, InputError)


#: The message of a stage task's final state when DVC says the stage is up to date.
UP_TO_DATE = "up to date in DVC (dvc status), not run"


@task(name="stage", task_run_name="{stage} [{label}]", cache_policy=NO_CACHE,
      retry_condition_fn=_retry_unless_bad_input, retry_delay_seconds=RETRY_DELAY_S)
def run_stage(stage: str, *, root: Path, params: Mapping[str, Any], label: str = "main",
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None, dvc: bool = False,
              dvc_batch: Sequence[str] = ()) -> Any:
    """Run one stage in project ``root`` with ``params`` -> its metrics (also in ``metrics/<stage>.json``).

    ``dvc=True`` (``root`` is a DVC project and ``params`` are its params.yaml): only when ``dvc status STAGE``
    reports a change; the outputs ``dvc repro`` would remove are removed first and the stage is recorded in
    ``dvc.lock`` after it ran. An up-to-date stage returns the metrics it left in ``metrics/<stage>.json``.
    ``dvc_batch``: the flow run's other DVC-gated stages, asked about in the same ``dvc status`` call
    (:func:`tasks.dvc_state.stale_reasons`).
    """
    import json
    import time

    from prefect import get_run_logger
    from prefect.states import Completed

    from hmrmamba.layout import Layout
    from hmrmamba.stages.common import execute
    from tasks import dvc_state, observe

    module = stage_module(stage)
    root = Path(root)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    with observe.forward_logs(stage):
        log = get_run_logger()
        if dvc:
            from prefect.runtime import flow_run

            reasons = dvc_state.stale_reasons(root, stage, batch=dvc_batch, token=str(flow_run.id or ""))
            if not reasons:
                log.info("%s: %s", stage, UP_TO_DATE)
                path = Layout(root).metrics(stage)
                metrics = json.loads(path.read_text()) if path.is_file() else {}
                observe.publish_stage(stage, label, None, metrics, note=f"**{UP_TO_DATE}**")
                return Completed(name="Cached", message=UP_TO_DATE, data=metrics)
            log.info("%s: DVC would run it: %s", stage, "; ".join(reasons)[:1000])
            dvc_state.clear_outputs(root, stage)
        t0 = time.time()
        metrics = execute(module.STAGE, module.run, root=root, params=params, tags=all_tags)
        if dvc:
            dvc_state.record(root, stage)
            log.info("%s: recorded in dvc.lock", stage)
        uri = str((params.get("tracking") or {}).get("uri") or "")
        run = observe.last_stage_run(stage, t0, uri)
        observe.publish_stage(stage, label, run, metrics)
        return Completed(message=f"MLflow run {run.run_id} (experiment {run.experiment_id})" if run else "",
                         data=metrics)


@functools.cache
def stage_task(stage: str) -> Task:
    """The task for ``stage``: :func:`run_stage` named after it, with its retries."""
    stage_module(stage)
    return run_stage.with_options(name=stage, retries=RETRIES.get(stage, 0))


def row_threads(params: Mapping[str, Any]) -> int:
    """torch CPU threads of one row: ``runtime.threads``, or 1 when that is 0 (torch's default would take every
    core in every worker process)."""
    return int((params.get("runtime") or {}).get("threads", 0) or 0) or 1


def start_row(params: Mapping[str, Any]) -> None:
    """What a row does first in whatever worker process it lands in: bound torch's threads (:func:`row_threads`),
    switch torch to deterministic algorithms and seed ``random``, numpy and torch with the top-level ``seed``,
    so nothing an earlier task left in that process (RNG draws, thread settings) reaches the row. The training
    stages seed again from their own seed.

    Deterministic algorithms because with 2 CPU threads stage 2 is not bitwise repeatable even alone (51 of
    225 tensors differed between two runs in one process; none with 1 thread or with this switch). Ops that
    have no deterministic form (some CUDA kernels) warn instead of failing the row.
    """
    import torch

    from hmrmamba.train.seed import seed_everything, set_deterministic

    torch.set_num_threads(row_threads(params))
    set_deterministic(True, warn_only=True)  # also cuDNN's deterministic mode and cuBLAS's workspace on CUDA
    seed_everything(int(params.get("seed", 0) or 0))


#: What a row's project gets from the shared stage-1 project: the stage's metrics and curves.
STAGE1_FILES = ("metrics/train_lift.json", "plots/train_lift_curve.csv", "plots/train_lift_curve.png")


def adopt_stage1(stage1_root: Path, root: Path) -> dict:
    """Copy the stage-1 metrics and curves of ``stage1_root`` into project ``root`` -> the stage-1 metrics.

    The row's ``train_lift.checkpoint_dir`` points at ``stage1_root``'s checkpoints; the copies make the row's
    project read as a whole run (``metrics/*.json`` of every stage), as under DVC.
    """
    import json
    import shutil

    from hmrmamba.atomic import atomic_path
    from hmrmamba.errors import MissingFileError

    source = Path(stage1_root) / STAGE1_FILES[0]
    if not source.is_file():
        raise MissingFileError("the shared stage 1 has not finished", file=source,
                               expected="the train_lift stage of the rows' stage-1 project")
    for name in STAGE1_FILES:
        src, dst = Path(stage1_root) / name, Path(root) / name
        if src.is_file():
            with atomic_path(dst, suffix=dst.suffix) as tmp:
                shutil.copyfile(src, tmp)
    return json.loads(source.read_text())


@task(name="variant", task_run_name="{label}", cache_policy=NO_CACHE)
def run_chain(stages: Sequence[str], *, root: Path, params: Mapping[str, Any], label: str,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
              stage1_root: Path | None = None) -> dict[str, dict]:
    """Run ``stages`` one after another in ``root`` (each its own nested stage task) -> {stage: metrics}.

    The row starts with :func:`start_row`. With ``stage1_root`` (a project whose train_lift has run, which
    ``params``' ``train_lift.checkpoint_dir`` names), its stage-1 metrics and curves are copied in first and
    returned as ``train_lift``. A failing stage fails this task with the stage's error; later stages do not run.
    """
    start_row(params)
    out: dict[str, dict] = {}
    if stage1_root is not None:
        out["train_lift"] = adopt_stage1(Path(stage1_root), Path(root))
    for stage in stages:
        out[stage] = stage_task(stage)(stage, root=root, params=params, label=label, tags=tags,
                                       parent_run_id=parent_run_id)
    return out
