"""MLflow tracking for every stage: one run per stage execution, named ``<stage>:<variant>:<detector>``.

The store defaults to ``sqlite:///<project>/mlflow.db`` with artifacts in ``<project>/mlartifacts``, so runs
launched from DVC experiment temp copies or Prefect workers all land in the same store. ``tracking.uri`` in
params (or ``MLFLOW_TRACKING_URI``) selects another store, e.g. a server started with
``mlflow server --host 127.0.0.1``. An unreachable server is an error unless ``tracking.fallback_local`` is
true, in which case the fallback is announced.

A run started by ``dvc repro`` lives in the experiment named after its stage; a run started by a flow lives
in the flow's experiment (``flow-<name>``), nested under the flow's parent run: MLflow's UI nests a run
under its ``mlflow.parentRunId`` only within one experiment. Every run carries the ``stage`` tag, which is
what ``hmrmamba compare`` selects on.

MLflow stores absolute artifact locations. A project's own sqlite store that was moved or copied with its
checkout is repaired before a run starts (:func:`relocate_artifacts`): locations under another checkout's
``mlartifacts/`` are rewritten to this one's, so a copy never writes into the original.

mlflow is imported lazily so that ``import hmrmamba`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from hmrmamba.config import flatten, home_root
from hmrmamba.errors import InputError

log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError):
    """The configured MLflow tracking server cannot be reached."""


#: Bounds on MLflow's HTTP client (its defaults retry for ~4 minutes per request): a server that is
#: down fails a stage in seconds instead of hanging it. Set in the environment to override.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _server_failures(uri: str) -> Iterator[None]:
    """Turn MLflow client errors against an http store into :class:`TrackingUnavailable`.

    An input error that a failing ``end_run`` buried under a client error is raised instead.
    """
    try:
        yield
    except Exception as exc:
        if not _is_http(uri) or isinstance(exc, TrackingUnavailable):
            raise
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, InputError):
                raise cause
            cause = cause.__context__
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException) or type(exc).__module__.startswith(("requests", "urllib3")):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} stopped answering during the run ({first}). The stage's "
                f"files are written atomically; re-run it when the server is back, or set "
                f"tracking.fallback_local: true.") from exc
        raise


def local_store_uri(root: Path) -> str:
    return f"sqlite:///{home_root(root) / 'mlflow.db'}"


def server_reachable(uri: str, timeout: float = 3.0) -> bool:
    """True when an http(s) MLflow server answers ``/health`` within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_tracking_uri(root: Path, tracking: Mapping[str, Any] | None = None) -> str:
    """Pick the tracking URI: params ``tracking.uri`` > ``MLFLOW_TRACKING_URI`` > local sqlite store."""
    tracking = dict(tracking or {})
    uri = tracking.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(root)
    if uri.startswith(("http://", "https://")) and not server_reachable(uri):
        if tracking.get("fallback_local", False):
            fallback = local_store_uri(root)
            log.warning("MLflow server %s unreachable; falling back to the local store %s", uri, fallback)
            return fallback
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable. Start it with "
            f"`mlflow server --host 127.0.0.1 --port 5000`, unset tracking.uri to use the local "
            f"store, or set tracking.fallback_local: true to fall back explicitly.")
    return uri


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a sqlite store's folder (other stores: no lock).

    MLflow creates and migrates a sqlite store's schema on first use; two processes doing that at
    once (parallel stages or flow rows on a fresh project) corrupt each other's migrations. The
    lock is ``flock`` on the folder itself, so no lock file is left behind.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = db.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
_STORE_EXPECTED = "an MLflow SQLite store (or remove the file)"


def check_sqlite_store(uri: str) -> None:
    """Refuse an existing sqlite store file that is not an SQLite database (a text file, a truncated or
    overwritten ``mlflow.db``) before MLflow opens it: one :class:`InputError` naming the file, instead
    of SQLAlchemy's traceback in every stage. A missing file is fine (it is created)."""
    db = _sqlite_path(uri)
    if db is None or not db.exists():
        return
    try:
        with open(db, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or type(exc).__name__})", file=db, field="tracking.uri",
                         expected=_STORE_EXPECTED) from None
    if head != SQLITE_HEADER:
        what = "an empty file" if not head else "not an SQLite database"
        raise InputError(f"{what} (first bytes {head[:16]!r})", file=db, field="tracking.uri",
                         expected=_STORE_EXPECTED)


@contextlib.contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """A sqlite store that SQLAlchemy cannot open or query (``DatabaseError``: "file is not a database",
    "database disk image is malformed"; ``OperationalError``) is an :class:`InputError` naming the db file.
    MLflow may wrap the SQLAlchemy error in an ``MlflowException``: its causes are searched too."""
    db = _sqlite_path(uri)
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if db is None:
            raise
        try:
            from sqlalchemy.exc import DatabaseError  # OperationalError is a DatabaseError
        except ImportError:  # pragma: no cover - mlflow's sqlite store needs sqlalchemy
            raise exc from None
        import sqlite3

        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, (DatabaseError, sqlite3.DatabaseError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        detail = (str(getattr(cause, "orig", None) or cause).strip().splitlines() or [""])[0][:160]
        raise InputError(f"the MLflow store cannot be opened ({type(cause).__name__}: {detail})", file=db,
                         field="tracking.uri", expected=_STORE_EXPECTED) from None


def _ensure_sqlite_store(uri: str, artifact_root: Path) -> None:
    """Create a missing sqlite store atomically: its schema is built in a temporary file that is then
    renamed into place, so a process killed during MLflow's migrations leaves no half-made store
    (which every later run would fail on with "table ... already exists")."""
    db = _sqlite_path(uri)
    if db is None or db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from hmrmamba.atomic import atomic_path

    with atomic_path(db, suffix=".db") as tmp:
        tmp_uri = f"sqlite:///{tmp}"
        SqlAlchemyStore(tmp_uri, artifact_root.as_uri())
        engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)
        if engine is not None:
            engine.dispose()


#: The experiment tag MLflow 3's UI reads to open an experiment in its model-training view (not GenAI).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
#: MLflow's tag naming a run's parent (``mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID``).
PARENT_TAG = "mlflow.parentRunId"
#: The longest param value MLflow takes (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH`` in mlflow 3).
PARAM_VALUE_LIMIT = 6000
TRUNCATED = "...[truncated: the whole value is in the run's params.json]"


def artifact_root(root: Path) -> Path:
    """Where the project's runs keep their artifacts: ``<project>/mlartifacts``."""
    return home_root(root) / "mlartifacts"


def _experiment_id(mlflow, name: str, artifacts: Path) -> str:
    """The id of experiment ``name``, created with its artifacts in ``artifacts/<name>`` and the model-training
    kind tag when missing."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if not all(exp.tags.get(k) for k in EXPERIMENT_KIND):
            for key, value in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts.as_uri() + f"/{name}",
                                        tags=dict(EXPERIMENT_KIND))
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


#: (table, column) of the sqlite store that hold artifact locations (tracking and model registry).
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "source"),
                     ("model_versions", "storage_location"))


def relocate_artifacts(uri: str, root: Path) -> dict[str, str]:
    """Rewrite the artifact locations of the project's own sqlite store that point into another checkout's
    ``mlartifacts/`` (the store was moved or copied with its project) to this project's -> {old: new} prefixes.

    Only the store :func:`local_store_uri` names for ``root`` is touched (a store the user points several
    projects at keeps its locations). A location is another checkout's when it is a ``file:`` URI whose
    folder ``.../mlartifacts/`` differs from this project's; other locations (a server's, ``s3:``) stay.
    """
    import sqlite3

    db = _sqlite_path(uri)
    if db is None or uri != local_store_uri(root) or not db.exists():
        return {}
    new = artifact_root(root).as_uri()
    con = sqlite3.connect(db, timeout=30)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        if "experiments" not in tables:
            return {}
        olds = set()
        for (loc,) in con.execute("select artifact_location from experiments"):
            head = (loc or "").rsplit("/", 1)[0]
            if head.startswith("file://") and head.endswith("/mlartifacts") and head != new:
                olds.add(head)
        if not olds:
            return {}
        with con:  # one transaction: all locations move, or none
            for old in sorted(olds):
                for table, column in _LOCATION_COLUMNS:
                    if table in tables:
                        con.execute(f"update {table} set {column} = ? || substr({column}, ?) "
                                    f"where substr({column}, 1, ?) = ?",
                                    (new + "/", len(old) + 2, len(old) + 1, old + "/"))
    finally:
        con.close()
    log.warning("MLflow store %s was made for another checkout: artifact locations %s moved to %s",
                db, ", ".join(sorted(olds)), new)
    return {old: new for old in olds}


def open_store(mlflow, uri: str, root: Path) -> None:
    """Make the store at ``uri`` ready for runs of project ``root``: a sqlite file is checked, created with its
    schema when missing, and repaired when it was moved with its checkout (:func:`relocate_artifacts`)."""
    with _store_lock(uri), _store_errors(uri):  # the first use of a fresh sqlite store creates its schema
        check_sqlite_store(uri)
        _ensure_sqlite_store(uri, artifact_root(root))
        relocate_artifacts(uri, root)


def loggable_params(params: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Flatten ``params`` into MLflow params -> (params, the whole values of those cut to the length limit).

    Nested names are dotted; an empty mapping is the value ``{}`` (so ``experiment.overrides`` is there to
    group by). Values longer than :data:`PARAM_VALUE_LIMIT` end in :data:`TRUNCATED`.
    """
    flat: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, name + ".")
            else:
                flat[name] = "{}" if isinstance(value, Mapping) else str(value)

    walk(params, "")
    cut = {k: v for k, v in flat.items() if len(v) > PARAM_VALUE_LIMIT}
    for key, value in cut.items():
        flat[key] = value[:PARAM_VALUE_LIMIT - len(TRUNCATED)] + TRUNCATED
    return flat, cut


def log_params(params: Mapping[str, Any]) -> None:
    """Log ``params`` (nested) to the active run as :func:`loggable_params`; the whole values of cut ones go to
    the run's ``params.json``."""
    import mlflow

    flat, cut = loggable_params(params)
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow's batch limit
        mlflow.log_params(dict(items[i:i + 100]))
    if cut:
        mlflow.log_dict(flatten(params), "params.json")


def _set_tracking_uri(mlflow, uri: str) -> None:
    """``mlflow.set_tracking_uri`` without leaving ``uri`` in the environment (mlflow exports it), so a later
    stage in this process (another project, a Prefect worker) resolves its own store."""
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env


@contextlib.contextmanager
def stage_run(stage: str, *, root: Path, params: Mapping[str, Any], tags: Mapping[str, str] | None = None,
              tracking: Mapping[str, Any] | None = None, run_name: str | None = None,
              parent_run_id: str | None = None) -> Iterator[Any]:
    """Open an MLflow run for ``stage``; log ``params`` (nested, flattened) and the standard tags.

    Yields the active ``mlflow.ActiveRun``. The run lives in the experiment named after the stage, or, under a
    parent (``parent_run_id``, or the ``mlflow.parentRunId`` tag a flow's task passes), in the parent's
    experiment, nested. The parent is named explicitly (safe across Prefect worker threads).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = resolve_tracking_uri(root, tracking)
    if _is_http(uri):
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
    _set_tracking_uri(mlflow, uri)
    all_tags = {"stage": stage, "git_sha": git_sha(root),
                "dvc_exp": os.environ.get("DVC_EXP_NAME", ""), **(tags or {})}
    parent = parent_run_id or all_tags.get(PARENT_TAG)
    with _server_failures(uri):
        open_store(mlflow, uri, root)
        with _store_errors(uri):
            if parent:
                all_tags[PARENT_TAG] = parent
                exp_id = mlflow.MlflowClient().get_run(parent).info.experiment_id
            else:
                exp_id = _experiment_id(mlflow, stage, artifact_root(root))
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags) as run:
            log_params(params)
            yield run


@contextlib.contextmanager
def parent_run(*, root: Path, uri: str, experiment: str, run_name: str, tags: Mapping[str, str],
               params: Mapping[str, Any], record: Mapping[str, Any]) -> Iterator[str]:
    """A run in experiment ``experiment`` that the stage runs of a flow nest under -> its id.

    Created with the client API, so no run is active in any thread: the stage runs name it as their parent
    explicitly. ``params`` (nested) are its params, ``record`` its ``params.yaml`` artifact. When the block
    ends, the headline test errors of its evaluate runs become its metrics (:func:`summarise_children`); it
    ends FINISHED, or FAILED when the block raises.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    _set_tracking_uri(mlflow, uri)
    with _server_failures(uri):
        open_store(mlflow, uri, root)
        exp_id = _experiment_id(mlflow, experiment, artifact_root(root))
        client = MlflowClient(tracking_uri=uri)
        run_id = client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id
    status = "FAILED"
    try:
        with _server_failures(uri):
            flat, _ = loggable_params(params)
            client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in flat.items()])
            client.log_dict(run_id, dict(record), "params.yaml")
        yield run_id
        status = "FINISHED"
    finally:
        try:
            summarise_children(client, run_id)
        except Exception as exc:  # noqa: BLE001 - the run must still end, FAILED or FINISHED
            log.warning("could not log the headline errors to parent run %s: %s", run_id, exc)
        client.set_terminated(run_id, status)


#: The test errors a flow's parent run shows (mm): those of its evaluate runs.
HEADLINE_METRICS = ("mpjpe", "pa_mpjpe", "mpvpe")


def summarise_children(client, run_id: str) -> dict[str, float]:
    """Log the headline errors of the finished evaluate runs nested under ``run_id`` to it -> what was logged.

    One evaluate run: its names as they are (``synthetic.mpjpe``); several (a comparison flow's rows): prefixed
    with each run's ``variant`` tag (``ga.synthetic.mpjpe``), characters MLflow refuses in a metric name made
    dashes (``em+im`` -> ``em-im``).
    """
    import re

    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and tags.stage = 'evaluate' and "
                      "attributes.status = 'FINISHED'")
    out: dict[str, float] = {}
    for child in children:
        label = re.sub(r"[^\w\-. /:]", "-", child.data.tags.get("variant") or child.info.run_id[:8])
        prefix = "" if len(children) == 1 else f"{label}."
        for name, value in child.data.metrics.items():
            if name.rsplit(".", 1)[-1] in HEADLINE_METRICS and not name.startswith("stage1."):
                out[prefix + name] = value
    if out:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in out.items()])
    return out


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run (non-numbers are skipped; no active run: nothing).

    Without an active run (a stage's ``run()`` called directly) nothing is logged, rather than
    MLflow silently creating a run in ``./mlruns`` of the current directory.
    """
    import mlflow

    if mlflow.active_run() is None:
        return
    clean = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file to the active run (no active run: nothing, as :func:`log_metrics`)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def child_run(name: str, *, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A run nested under the active run, in its experiment, inheriting its user tags, named
    ``<parent's name>/<name>``.

    Yields ``None`` (and logs nothing extra) when no run is active, so stage code can call it
    unconditionally. The parent id is passed explicitly rather than relying on MLflow's
    thread-local run stack.
    """
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        yield None
        return
    # the flow tags stay with the stage run, so that flows and `hmrmamba compare` (which pick one run per
    # variant and flow run) never mistake a child for its stage run; `nested_in` marks the child
    parent_tags = mlflow.get_run(parent.info.run_id).data.tags
    inherited = {k: v for k, v in parent_tags.items()
                 if not k.startswith("mlflow.") and k not in ("flow", "flow_run_id")}
    inherited["nested_in"] = parent_tags.get("stage", "")
    parent_name = parent_tags.get("mlflow.runName", "")
    with mlflow.start_run(run_name=f"{parent_name}/{name}" if parent_name else name,
                          experiment_id=parent.info.experiment_id,
                          parent_run_id=parent.info.run_id, nested=True,
                          tags={**inherited, **(tags or {})}) as run:
        yield run
