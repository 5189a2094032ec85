"""What a stage task shows in Prefect: the stage's own log lines, its training progress, its MLflow run.

* :func:`forward_logs`: while a stage runs in a task, the records of the ``hmrmamba`` loggers (warnings,
  per-epoch summaries, "done in ..." lines) and Python warnings go to the task run's logger, so they are
  in the task run's logs in the Prefect UI (and on the flow's console, once). The training loop's
  "epoch i/n" lines also drive a progress artifact of the task run.
* :func:`mlflow_link`: the MLflow run a stage has just logged, as a markdown artifact of the task run and as
  the one-line message of its final state (the flow's summary table shows it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Loggers whose records a stage task forwards to its Prefect task-run logger.
FORWARDED = ("hmrmamba", "py.warnings")
#: The training loop's per-epoch line (``hmrmamba.train.loop``): its args are (epoch, epochs, ...).
EPOCH_FORMAT = "epoch %d/%d"


class _ToRunLogger(logging.Handler):
    """Hands each record to the task run's logger (captured in the task's thread); epoch lines from that
    thread also update the task's progress artifact."""

    def __init__(self, run_logger: logging.LoggerAdapter, stage: str) -> None:
        super().__init__(level=logging.INFO)
        self.run_logger, self.stage = run_logger, stage
        self.thread = threading.get_ident()
        self.progress_id: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.log(record.levelno, "%s: %s", record.name, record.getMessage())
            if record.thread == self.thread and isinstance(record.msg, str) \
                    and record.msg.startswith(EPOCH_FORMAT) and len(record.args or ()) >= 2:
                self._progress(int(record.args[0]), int(record.args[1]))
        except Exception:  # noqa: BLE001 - logging must never fail the stage
            self.handleError(record)

    def _progress(self, epoch: int, epochs: int) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        pct = round(100.0 * min(epoch, epochs) / max(epochs, 1), 1)
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(progress=pct, description=f"{self.stage}: epochs done (%)")
        else:
            update_progress_artifact(self.progress_id, progress=pct)


_LOCK = threading.Lock()


@contextlib.contextmanager
def forward_logs(stage: str) -> Iterator[None]:
    """Inside a task run: forward the :data:`FORWARDED` loggers' records (INFO and up) to it.

    For the duration, the ``hmrmamba`` logger is set to INFO (if it was quieter) and does not propagate to
    the root logger: its lines reach the console once, through Prefect's task-run logger, instead of twice.
    Warnings are captured into logging (``logging.captureWarnings``). Everything is restored afterwards.
    The stage tasks of this project run one at a time per process (one worker thread; one Dask worker thread),
    so these process-wide switches are not contended; a lock keeps them consistent anyway.
    """
    from prefect import get_run_logger

    handler = _ToRunLogger(get_run_logger(), stage)
    hm = logging.getLogger("hmrmamba")
    with _LOCK:
        saved = (hm.level, hm.propagate, logging.getLogger("py.warnings").propagate)
        capturing = logging._warnings_showwarning is not None  # type: ignore[attr-defined]
        if hm.getEffectiveLevel() > logging.INFO:
            hm.setLevel(logging.INFO)
        hm.propagate = False
        logging.getLogger("py.warnings").propagate = False
        logging.captureWarnings(True)
        for name in FORWARDED:
            logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        with _LOCK:
            for name in FORWARDED:
                logging.getLogger(name).removeHandler(handler)
            hm.setLevel(saved[0])
            hm.propagate = saved[1]
            logging.getLogger("py.warnings").propagate = saved[2]
            if not capturing:
                logging.captureWarnings(False)


@dataclass(frozen=True)
class MlflowRun:
    """A stage's MLflow run: ids and, for an http tracking server, its page in the MLflow UI."""

    run_id: str
    experiment_id: str
    experiment: str
    url: str | None

    def markdown(self) -> str:
        text = f"`{self.run_id}` in experiment `{self.experiment}`"
        return f"[{text}]({self.url})" if self.url else text


def ui_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page for an http(s) tracking URI (the MLflow UI is served by the same server), else None."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def last_stage_run(stage: str, since: float, uri: str) -> MlflowRun | None:
    """The MLflow run ``stage`` started in this thread at or after ``since`` (``time.time()``), or None.

    MLflow remembers the last run each thread ended (``mlflow.last_active_run``); its ``stage`` tag and start
    time make sure it is this stage's run and not an earlier one of the same thread.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        run = mlflow.last_active_run()
    except Exception:  # noqa: BLE001 - a link is a convenience: a store hiccup must not fail the stage
        return None
    if run is None or run.data.tags.get("stage") != stage or run.info.start_time < int(since * 1000) - 1000:
        return None
    try:
        name = MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name
    except Exception:  # noqa: BLE001
        name = stage
    return MlflowRun(run.info.run_id, run.info.experiment_id, name, ui_url(uri, run.info.experiment_id, run.info.run_id))


def stage_markdown(stage: str, label: str, run: MlflowRun | None, metrics: Mapping[str, Any],
                   note: str = "") -> str:
    """The task's summary: where it ran, its MLflow run, its top-level numbers."""
    lines = [f"# {stage} [{label}]", ""]
    if note:
        lines += [note, ""]
    lines.append(f"- MLflow run: {run.markdown() if run else 'none'}")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scalars.items()]
    return "\n".join(lines) + "\n"


def publish_stage(stage: str, label: str, run: MlflowRun | None, metrics: Mapping[str, Any], note: str = "") -> None:
    """The stage's markdown artifact on its task run (key ``hmrmamba-stage-<stage>``)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=stage_markdown(stage, label, run, metrics, note),
                             key=f"hmrmamba-stage-{stage}".replace("_", "-"),
                             description=f"hmrmamba stage {stage} [{label}]: its MLflow run and numbers")
