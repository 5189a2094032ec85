"""Prefect tasks over the pipeline stages.

Each stage task is one call of :func:`hmrmamba.stages.common.execute` with the stage module's ``run``: the
same code ``dvc repro`` runs through ``python -m hmrmamba.stages.<name>``. The task adds only a readable
name, retries where a retry can help, and the MLflow parent run of the flow.

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


@task(name="stage", task_run_name="{stage} [{label}]", cache_policy=NO_CACHE,
      retry_condition_fn=_retry_unless_bad_input, retry_delay_seconds=RETRY_DELAY_S)
def run_stage(stage: str, *, root: Path, params: Mapping[str, Any], label: str = "main",
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> dict:
    """Run one stage in project ``root`` with ``params`` -> its metrics (also in ``metrics/<stage>.json``)."""
    from hmrmamba.stages.common import execute

    module = stage_module(stage)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    return execute(module.STAGE, module.run, root=Path(root), params=params, tags=all_tags)


@functools.cache
def stage_task(stage: str) -> Task:
    """The task for ``stage``: :func:`run_stage` named after it, with its retries."""
    stage_module(stage)
    return run_stage.with_options(name=stage, retries=RETRIES.get(stage, 0))


@task(name="variant", task_run_name="{label}", cache_policy=NO_CACHE)
def run_chain(stages: Sequence[str], *, root: Path, params: Mapping[str, Any], label: str,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> dict[str, dict]:
    """Run ``stages`` one after another in ``root`` (each its own nested stage task) -> {stage: metrics}.

    A failing stage fails this task with the stage's error; later stages do not run.
    """
    out: dict[str, dict] = {}
    for stage in stages:
        out[stage] = stage_task(stage)(stage, root=root, params=params, label=label, tags=tags,
                                       parent_run_id=parent_run_id)
    return out
