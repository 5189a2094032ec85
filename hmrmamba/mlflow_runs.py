"""MLflow tracking for every stage: one experiment per stage, one run per stage execution.

The store defaults to ``sqlite:///<project>/mlflow.db`` with artifacts in ``<project>/mlartifacts``,
as absolute URIs, so runs launched from DVC experiment temp copies or Prefect workers all land in
the same store. ``tracking.uri`` in params (or ``MLFLOW_TRACKING_URI``) selects another store, e.g. a
server started with ``mlflow server --host 127.0.0.1``. An unreachable server is an error unless
``tracking.fallback_local`` is true, in which case the fallback is announced.

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


def _experiment_id(mlflow, name: str, artifact_root: Path) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root.as_uri() + f"/{name}")
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def stage_run(stage: str, *, root: Path, params: Mapping[str, Any], tags: Mapping[str, str] | None = None,
              tracking: Mapping[str, Any] | None = None, run_name: str | None = None,
              parent_run_id: str | None = None) -> Iterator[Any]:
    """Open an MLflow run in the experiment named after the stage; log params and standard tags.

    Yields the active ``mlflow.ActiveRun``. Nested runs pass ``parent_run_id`` explicitly (safe
    across Prefect worker threads).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = resolve_tracking_uri(root, tracking)
    if _is_http(uri):
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow also exports the URI to the environment; undo that so a later stage in this process
    # (another project, a Prefect worker) resolves its own store instead of inheriting this one
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    with _server_failures(uri):
        with _store_lock(uri), _store_errors(uri):  # the first use of a fresh sqlite store creates its schema
            check_sqlite_store(uri)
            _ensure_sqlite_store(uri, home_root(root) / "mlartifacts")
            exp_id = _experiment_id(mlflow, stage, home_root(root) / "mlartifacts")
        all_tags = {"stage": stage, "git_sha": git_sha(root),
                    "dvc_exp": os.environ.get("DVC_EXP_NAME", ""), **(tags or {})}
        kwargs: dict[str, Any] = dict(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags)
        if parent_run_id:
            kwargs.update(parent_run_id=parent_run_id, nested=True)
        with mlflow.start_run(**kwargs) as run:
            flat = {k: str(v)[:500] for k, v in flatten(params).items()}
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i:i + 100]))
            yield run


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
    """A run nested under the active run, in its experiment, inheriting its user tags.

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
    with mlflow.start_run(run_name=name, experiment_id=parent.info.experiment_id,
                          parent_run_id=parent.info.run_id, nested=True,
                          tags={**inherited, **(tags or {})}) as run:
        yield run
