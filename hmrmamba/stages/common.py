"""The shared frame of a stage: params, threads, MLflow run, metrics JSON, summary line."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hmrmamba.atomic import write_json
from hmrmamba.config import find_project_root, load_params, validate_params
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from hmrmamba.report.headline import headline

StageFn = Callable[[Mapping[str, Any], Layout], dict]

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def apply_offline_env() -> None:
    """Turn off telemetry of the services the pipeline uses (only where the user has not chosen)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def apply_runtime(params: Mapping[str, Any]) -> None:
    """The process-wide ``runtime`` params: torch's CPU threads and the allocator (:mod:`hmrmamba.allocator`)."""
    import torch

    from hmrmamba.allocator import keep_freed_memory

    runtime = params.get("runtime", {})
    n = int(runtime.get("threads", 0) or 0)
    if n > 0:
        torch.set_num_threads(n)
    if runtime.get("keep_freed_memory", True):
        keep_freed_memory()


#: stages whose result depends on the model variant / the 2D source under test (tagged in MLflow)
MODEL_STAGES = ("train_lift", "train_mesh", "evaluate", "report")


def standard_tags(stage: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The tags every run carries: profile, dataset, and for model stages the variant and 2D source."""
    tags = {"profile": str(params.get("profile", "default")),
            "dataset": str(params.get("dataset", {}).get("name", "synthetic"))}
    exp = params.get("experiment", {})
    if stage in MODEL_STAGES:
        tags["variant"] = str(exp.get("variant", ""))
        tags["detector2d"] = str(exp.get("detector", ""))
    elif stage == "features":
        tags["detector2d"] = str(params.get("features", {}).get("bbox_source", ""))
    return tags


#: Params sections a stage's result depends on besides its own section (upstream training included), logged
#: with it so that runs compare on every setting that changed their numbers. Every stage also logs
#: :data:`COMMON_SECTIONS`; model stages the ``experiment`` section.
UPSTREAM_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("synthetic", "datasets"), "detect2d": ("synthetic",), "features": ("synthetic",),
    "train_mesh": ("train_lift",), "evaluate": ("train_lift", "train_mesh"),
    "report": ("train_lift", "train_mesh", "evaluate")}
COMMON_SECTIONS = ("profile", "seed", "runtime", "dataset")


def run_params(stage: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The params logged with a stage's MLflow run: {section: value} of :data:`COMMON_SECTIONS`, the
    ``experiment`` section (model stages), the stage's upstream sections and its own, as in params.yaml."""
    names = [*COMMON_SECTIONS, *(("experiment",) if stage in MODEL_STAGES else ()),
             *UPSTREAM_SECTIONS.get(stage, ()), stage]
    return {name: params[name] for name in dict.fromkeys(names) if name in params}


def run_name(stage: str, tags: Mapping[str, str]) -> str:
    """``<stage>:<variant>:<detector>`` for model stages (the tags a flow row sets win), else ``<stage>``; a DVC
    experiment's name is appended as ``@<name>``."""
    name = f"{stage}:{tags.get('variant', '')}:{tags.get('detector2d', '')}" if stage in MODEL_STAGES else stage
    dvc_exp = os.environ.get("DVC_EXP_NAME", "")
    return f"{name}@{dvc_exp}" if dvc_exp else name


def execute(stage: str, fn: StageFn, *, root: Path | None = None, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
            log_to_mlflow: bool = True) -> dict:
    """Run ``fn(params, layout)``; write ``metrics/<stage>.json`` and log it all to MLflow.

    ``parent_run_id`` nests the stage run under a flow's run (explicit, so it is safe in Prefect's
    worker threads where MLflow's active-run stack is not shared).
    """
    from hmrmamba import mlflow_runs
    apply_offline_env()
    root = root or find_project_root()
    if params is not None:  # params.yaml is validated by load_params; flows pass theirs in
        validate_params(params, file=root / "params.yaml")
    params = params if params is not None else load_params(root / "params.yaml")
    apply_runtime(params)
    layout = Layout(root)
    stage_tags = {**standard_tags(stage, params), **(tags or {})}
    t0 = time.perf_counter()
    if log_to_mlflow:
        with mlflow_runs.stage_run(stage, root=root, params=run_params(stage, params), tags=stage_tags,
                                   tracking=params.get("tracking"), run_name=run_name(stage, stage_tags),
                                   parent_run_id=parent_run_id):
            metrics = fn(params, layout)
            metrics["seconds"] = round(time.perf_counter() - t0, 2)
            mlflow_runs.log_metrics(metrics)
    else:
        metrics = fn(params, layout)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(layout.metrics(stage), metrics)
    write_json(layout.summary(stage), headline(stage, metrics))
    logging.getLogger("hmrmamba").info("%s done in %.1f s", stage, metrics["seconds"])
    return metrics


def main(stage: str, fn: StageFn) -> None:
    """Console entry for ``python -m hmrmamba.stages.<stage>``: clear one-line errors on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from hmrmamba.atomic import WriteFailed
    from hmrmamba.mlflow_runs import TrackingUnavailable

    try:
        metrics = execute(stage, fn)
    except InputError as exc:
        print(f"hmrmamba {stage}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (TrackingUnavailable, WriteFailed) as exc:
        print(f"hmrmamba {stage}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    summary = ", ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, (dict, list)))
    print(f"[{stage}] {summary}")
