"""What the flows share: params, checks before work, scratch projects per variant, the MLflow parent run,
running stage graphs and variant chains, and Prefect artifacts.

Variants (ablation rows, 2D detectors) each run in a scratch project ``<root>/outputs/flows/<flow>/<row>/``
that holds their own ``params.yaml``, ``models/``, ``metrics/`` and ``plots/``, with ``data`` a symlink
to ``<root>/data``. The stages then write exactly the files they write under DVC, and a rerun resumes each
variant's checkpoints. Rows whose stage 1 would be identical (Table-3 rows that differ in EM/IM only) share
one stage-1 run in ``<root>/outputs/flows/<flow>/stage1-<key>/``: besides the read-only data, that is all
they share. Every row task runs in its own process (Prefect's Dask task runner, :func:`row_task_runner`) and
seeds itself first, so the same params give the same bits alone or beside other rows. All runs log to the
project's MLflow store (``tracking.uri`` is made absolute for the scratch projects).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, wait

from hmrmamba.atomic import atomic_path
from hmrmamba.config import find_project_root, flatten, load_params
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from tasks.stages import row_threads, run_chain, stage_task

#: The stages that make the data every variant shares, in order.
DATA_STAGES: tuple[str, ...] = ("body_model", "prepare", "detect2d", "train_backbone", "features")
#: The stages each variant runs on that data, in order: those that read the ``experiment`` section.
CHAIN: tuple[str, ...] = ("train_lift", "train_mesh", "evaluate")
SCRATCH = "outputs/flows"


def comparison_parser(prog: str, description: str, *, what: str) -> argparse.ArgumentParser:
    """The options every comparison flow shares; the flow adds its own selection options."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--root", help="project root (default: the nearest directory holding params.yaml)")
    parser.add_argument("--profile", help="compose params from conf/ with this profile")
    parser.add_argument("--max-parallel", type=int,
                        help=f"{what} training at once: worker processes of the local Dask cluster (default: "
                             "flows.workers, else CPU cores / runtime.threads; 1 on a GPU). Set flows.scheduler="
                             "ADDRESS as an override to run on an existing Dask cluster instead")
    parser.add_argument("--no-prepare-data", action="store_true", help="fail instead of making missing data")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train_lift.epochs=2")
    return parser


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The project root: ``root`` (must hold params.yaml or conf/) or the nearest one above the cwd."""
    if root is None:
        return find_project_root()
    path = Path(root).expanduser().resolve()
    if not ((path / "params.yaml").is_file() or (path / "conf/config.yaml").is_file()):
        raise InputError("not an hmrmamba project", file=path, field="root",
                         expected="a directory holding params.yaml (or conf/config.yaml)")
    return path


def load_flow_params(root: Path, profile: str | None = None, overrides: Sequence[str] | None = None) -> dict:
    """params.yaml of ``root`` as is, or, given a profile or overrides, composed from ``root/conf`` with Hydra."""
    from hmrmamba.profiles import compose

    if profile is None and not overrides:
        return load_params(root / "params.yaml")
    if profile is None:
        profile = load_params(root / "params.yaml").get("profile", "default") if (root / "params.yaml").is_file() \
            else "default"
    return compose(root, profile, list(overrides or ()))


def check_experiment(params: Mapping[str, Any], *, file: str = "params.yaml") -> dict[str, Any]:
    """The experiment section, checked as training will use it (variant, detector, overrides) -> settings."""
    from hmrmamba.models.registry import resolve_config
    from hmrmamba.train.experiment import experiment_settings

    exp = experiment_settings(params)
    try:
        resolve_config(exp["variant"], **exp["overrides"])
    except InputError as exc:
        raise InputError(str(exc), file=file, field="experiment.overrides",
                         expected=f"overrides that variant {exp['variant']!r} takes") from None
    return exp


def tracking_uri(root: Path, params: Mapping[str, Any]) -> str:
    """The MLflow store every run of the flow logs to (checked now: an unreachable server fails early)."""
    from hmrmamba.mlflow_runs import resolve_tracking_uri

    return resolve_tracking_uri(root, params.get("tracking"))


def pin_tracking(params: Mapping[str, Any], uri: str) -> dict[str, Any]:
    """``params`` with ``tracking.uri`` set to ``uri``: every stage run of the flow lands in the store resolved
    when the flow started (``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``, which would
    otherwise steer later resolutions in the same process)."""
    out = copy.deepcopy(dict(params))
    out["tracking"] = {**dict(out.get("tracking") or {}), "uri": uri}
    return out


def flow_run_id() -> str:
    """The id of the Prefect flow run in progress ('' outside one)."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def params_source(profile: str | None, overrides: Sequence[str] | None) -> str:
    """Where a flow's params come from, in a few characters: 'params.yaml', or the profile they are composed
    with ('conf' when not named) and '+N overrides' when there are some."""
    if profile is None and not overrides:
        return "params.yaml"
    base = profile or "conf"
    return f"{base}+{len(overrides)} override{'s' if len(overrides) > 1 else ''}" if overrides else base


def run_name_from_parameters(flow_name: str, *keys: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<flow>:<params source>[:<value of each key given>]``, from the flow run's
    parameters (lists joined with commas), e.g. 'ablation:params.yaml:ga,full'."""

    def name() -> str:
        from prefect.runtime import flow_run

        try:
            given = dict(flow_run.parameters)
            parts = [flow_name, params_source(given.get("profile"), given.get("overrides"))]
            for key in keys:
                value = given.get(key)
                if value:
                    parts.append(",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
            return ":".join(parts)
        except Exception:  # noqa: BLE001 - a name must not stop the run; bad parameters fail it inside
            return flow_name

    return name


def label_flow_run(name: str, tags: Sequence[str]) -> None:
    """Rename the flow run in progress and add ``tags`` to it (they keep the tags it has, e.g. a deployment's):
    names made from the parsed params (variant, detector) once they are known. Nothing outside a flow run."""
    from prefect.client.orchestration import get_client

    run_id = flow_run_id()
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        have = client.read_flow_run(run_id).tags or []
        client.update_flow_run(run_id, name=name, tags=[*have, *(t for t in tags if t not in have)])


def default_parallel(params: Mapping[str, Any]) -> int:
    """How many variants may train at once: CPU cores / the threads of one row (``runtime.threads``, or 1 when
    that is 0: :func:`tasks.stages.row_threads`); 1 on a GPU."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, (os.cpu_count() or 1) // row_threads(params))


def oversubscription(params: Mapping[str, Any], workers: int, *, cores: int | None = None) -> str | None:
    """A one-line warning when ``workers`` rows of :func:`tasks.stages.row_threads` torch threads each ask
    for more threads than the machine has cores (they would stall each other), else None."""
    cores = int(cores or os.cpu_count() or 1)
    threads = row_threads(params)
    if workers * threads <= cores:
        return None
    return (f"{workers} rows at once x runtime.threads={threads} = {workers * threads} torch threads on {cores} "
            f"CPU cores: the rows will stall each other (use --max-parallel {max(1, cores // threads)} or "
            f"runtime.threads={max(1, cores // workers)})")


def _warn(message: str) -> None:
    """A warning in the flow run's log (the Prefect UI), or on stderr outside a flow run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning(message)
    except MissingContextError:
        print(f"warning: {message}", file=sys.stderr)


def data_ready(root: Path) -> bool:
    """True when the data stages have run in ``root`` (their metrics and the test features exist)."""
    layout = Layout(root)
    return all(layout.metrics(s).is_file() for s in DATA_STAGES) and layout.features("test").is_file()


# -- MLflow parent run ------------------------------------------------------------------------------

def ensure_experiments(root: Path, uri: str, names: Sequence[str]) -> None:
    """Create the stage experiments up front, so their artifacts live in ``<root>/mlartifacts`` (not in a
    scratch project, which would otherwise create them); a store moved with its checkout is repaired first."""
    import mlflow

    from hmrmamba import mlflow_runs
    mlflow.set_tracking_uri(uri)
    mlflow_runs.open_store(mlflow, uri, root)
    for name in names:
        mlflow_runs._experiment_id(mlflow, name, mlflow_runs.artifact_root(root))


@contextlib.contextmanager
def parent_run(*, root: Path, uri: str, flow_name: str, tags: Mapping[str, str],
               params: Mapping[str, Any]) -> Iterator[str]:
    """An MLflow run in experiment ``flow-<flow_name>`` for the whole flow -> its id; the flow's stage runs nest
    under it in that experiment (:func:`hmrmamba.mlflow_runs.stage_run`).

    Named ``<flow>:<variant>:<detector>`` (as far as ``tags`` say), its params are the profile, seed and
    experiment section (variant, detector, overrides), the composed params its ``params.yaml`` artifact and,
    at the end, the test errors of its evaluate runs its metrics. It ends FINISHED, or FAILED when the block
    raises (:func:`hmrmamba.mlflow_runs.parent_run`).
    """
    from hmrmamba import mlflow_runs

    name = ":".join([flow_name, *(tags[k] for k in ("variant", "detector2d") if tags.get(k))])
    shown = {k: params[k] for k in ("profile", "seed", "experiment") if k in params}
    with mlflow_runs.parent_run(root=root, uri=uri, experiment=f"flow-{flow_name}", run_name=name,
                                tags={"flow": flow_name, **tags}, params=shown, record=params) as run_id:
        yield run_id


def log_parent_artifacts(uri: str, run_id: str, paths: Sequence[Path]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for path in paths:
        client.log_artifact(run_id, str(path))


# -- running stages and variants ---------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """Where and how :func:`run_graph` runs one stage: project, params, task label, under DVC's rules or not."""

    root: Path
    params: Mapping[str, Any]
    label: str = "main"
    dvc: bool = False


def run_graph(graph: Mapping[str, Sequence[str]], stages: Sequence[str], *, root: Path,
              params: Mapping[str, Any], tags_for: Callable[[str], Mapping[str, str]], parent_run_id: str,
              label: str = "main", places: Mapping[str, Place] | None = None) -> dict[str, PrefectFuture]:
    """Submit ``stages`` (a subset of ``graph``: stage -> upstream stages, in topological order), each after
    its upstream stages; wait for all -> {stage: future}. A stage after a failed one does not run.

    Each stage runs in ``root`` with ``params`` as ``label``, unless ``places`` names another place for it
    (another project, other params, DVC's rules: :func:`tasks.stages.run_stage`)."""
    futures: dict[str, PrefectFuture] = {}
    gated = [s for s in stages if (places or {}).get(s) and places[s].dvc]
    for stage, upstream in graph.items():
        if stage not in stages:
            continue
        at = (places or {}).get(stage) or Place(root, params, label)
        futures[stage] = stage_task(stage).submit(
            stage, root=at.root, params=at.params, label=at.label, tags=tags_for(stage),
            parent_run_id=parent_run_id, dvc=at.dvc, dvc_batch=[s for s in gated if places[s].root == at.root],
            wait_for=[futures[u] for u in upstream if u in futures])
    wait(list(futures.values()))
    return futures


@dataclass(frozen=True)
class Variant:
    """One row of a comparison: its label, its ``experiment`` section and its MLflow tags.

    Every stage run of the row is tagged ``model`` (the registry variant), ``detector2d``, ``variant`` (the
    registry variant unless ``tags`` says otherwise, e.g. an ablation row's label) and ``tags``.
    """

    label: str
    experiment: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)
    #: other params of the row as dotted keys, e.g. {"train_lift.seed": 1}
    params: Mapping[str, Any] = field(default_factory=dict)


def slug(label: str) -> str:
    """A label as a directory name: 'ga+em' -> 'ga-em'."""
    return re.sub(r"[^a-z0-9_.]+", "-", label.lower()).strip("-.") or "variant"


def variant_params(params: Mapping[str, Any], variant: Variant, uri: str) -> dict[str, Any]:
    """``params`` with the variant's experiment section, its other params and an absolute tracking URI."""
    out = pin_tracking(params, uri)
    out["experiment"] = {"variant": variant.experiment["variant"], "detector": variant.experiment["detector"],
                         "overrides": dict(variant.experiment.get("overrides") or {})}
    for dotted, value in variant.params.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise InputError(f"variant {variant.label!r} sets {dotted!r}", field=dotted,
                                 expected=f"an existing params section {key!r}")
            node[key] = dict(node[key])
            node = node[key]
        if leaf not in node:
            raise InputError(f"variant {variant.label!r} sets unknown param {dotted!r}", field=dotted,
                             expected=f"one of {sorted(node)}")
        node[leaf] = value
    return out


def scratch_project(root: Path, flow_name: str, label: str, params: Mapping[str, Any], *,
                    share_data: bool = True) -> Path:
    """``<root>/outputs/flows/<flow>/<slug>/`` with ``data`` -> ``<root>/data`` and the variant's params.yaml.

    ``share_data=False``: ``data`` is a directory of the scratch project's own (an earlier link is removed),
    for params under which the data stages make other data."""
    from hmrmamba.profiles import HEADER

    path = root / SCRATCH / flow_name / slug(label)
    path.mkdir(parents=True, exist_ok=True)
    link, target = path / "data", (root / "data").resolve()
    if not share_data:
        if link.is_symlink():
            link.unlink()
        link.mkdir(exist_ok=True)
    elif link.is_symlink():
        if link.resolve() != target:
            link.unlink()
    elif link.exists():
        raise InputError("a real directory is in the way of the data link", file=link,
                         expected=f"nothing, or a symlink to {target}")
    if share_data and not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    with atomic_path(path / "params.yaml", suffix=".yaml") as tmp:
        tmp.write_text(HEADER.format(profile=params.get("profile", "?")).replace(
            "Generated from conf/", f"Written by flow '{flow_name}' for variant '{label}' from conf/")
            + yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=None, width=100))
    return path


def row_task_runner(params: Mapping[str, Any], workers: int | None = None, *, api_url: str | None = None):
    """The Prefect task runner the rows run on: a ``DaskTaskRunner`` -> not started.

    ``flows.scheduler`` set: the scheduler at that address (an existing cluster, which decides how many rows
    run at once; its workers need this project installed and a Prefect API they can reach). Otherwise a
    ``distributed.LocalCluster`` of ``workers`` (else ``flows.workers``, else :func:`default_parallel`) worker
    processes with one thread each, listening on loopback only, started when the runner is entered and closed
    with it; ``api_url`` is exported to them as ``PREFECT_API_URL``, so they report to the flow's Prefect
    server (an ephemeral one too) instead of starting their own. Each row is one task, alone in its process.
    """
    from prefect_dask import DaskTaskRunner

    settings = dict(params.get("flows") or {})
    if settings.get("scheduler"):
        return DaskTaskRunner(address=str(settings["scheduler"]))
    n = int(workers or settings.get("workers") or default_parallel(params))
    import torch

    if not torch.cuda.is_available() and (warning := oversubscription(params, n)):
        _warn(warning)
    kwargs: dict[str, Any] = {"n_workers": n, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
                              "dashboard_address": None}
    if api_url:
        kwargs["env"] = {"PREFECT_API_URL": api_url}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def prefect_api_url() -> str:
    """The URL of the Prefect API this process talks to (the ephemeral server's, when that is what runs)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


def stage1_experiment(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """``experiment`` without the overrides that only change the reconstructor (stage 2): the canonical
    experiment of the row's stage 1, so rows that differ in EM/IM only name the same stage-1 run."""
    from hmrmamba.models.registry import resolve_config

    def lifter_part(overrides: Mapping[str, Any]) -> dict[str, Any]:
        cfg = resolve_config(experiment["variant"], **overrides)
        return {k: v for k, v in cfg.items() if k != "reconstructor"}

    overrides = dict(experiment.get("overrides") or {})
    full = lifter_part(overrides)
    keep = {}
    for key, value in overrides.items():
        try:
            same = lifter_part({k: v for k, v in overrides.items() if k != key}) == full
        except InputError:
            same = False
        if not same:
            keep[key] = value
    return {"variant": experiment["variant"], "detector": experiment["detector"], "overrides": keep}


def stage1_key(params: Mapping[str, Any]) -> str:
    """A digest of everything the train_lift stage of a row depends on besides the shared data: the stage-1
    experiment and lifter config, the ``train_lift`` section (less where it writes), the seed and the threads.
    Rows with equal keys would train bit-identical lifters, so they share one."""
    import hashlib
    import json

    from hmrmamba.models.registry import resolve_config

    exp = stage1_experiment(params["experiment"])
    cfg = resolve_config(exp["variant"], **exp["overrides"])
    train = {k: v for k, v in dict(params["train_lift"]).items() if k not in ("checkpoint_dir", "log_checkpoint")}
    what = {"experiment": exp, "lifter": {k: v for k, v in cfg.items() if k != "reconstructor"}, "train_lift": train,
            "seed": params.get("seed", 0), "runtime": params.get("runtime")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RowPlan:
    """How the variants of a flow run: one stage-1 run per distinct :func:`stage1_key`, then every row's
    stage 2 from it. ``stage1``: key -> (label, params, row labels); ``rows``: label -> (key, params)."""

    stage1: dict[str, tuple[str, dict[str, Any], list[str]]]
    rows: dict[str, tuple[str, dict[str, Any]]]


def plan_rows(variants: Sequence[Variant], *, root: Path, flow_name: str, params: Mapping[str, Any],
              uri: str) -> RowPlan:
    """Group ``variants`` by stage-1 key. A stage-1 run lives in ``<root>/outputs/flows/<flow>/stage1-<key>/``
    (a rerun, whichever rows it selects, finds it there); each row's ``train_lift.checkpoint_dir`` is that
    project's absolute ``models/lift``. Nothing is written."""
    stage1: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for v in variants:
        p = variant_params(params, v, uri)
        key = stage1_key(p)
        if key not in stage1:
            p1 = copy.deepcopy(p)
            p1["experiment"] = stage1_experiment(p["experiment"])
            stage1[key] = (f"stage1-{key}", p1, [])
        stage1[key][2].append(v.label)
        lift_dir = (root / SCRATCH / flow_name / stage1[key][0] / "models/lift").resolve()
        p["train_lift"] = {**p["train_lift"], "checkpoint_dir": str(lift_dir)}
        rows[v.label] = (key, p)
    return RowPlan(stage1=stage1, rows=rows)


@dataclass(frozen=True)
class Outcome:
    """A finished task of the rows' runner: its final Prefect state (kept after the Dask cluster is gone)."""

    state: Any

    def result(self) -> Any:
        return self.state.result()


def _outcome(fut: PrefectFuture) -> Outcome:
    """Wait for a Dask-backed future -> its final state; a lost worker is a Crashed state naming the error."""
    from prefect.states import Completed, Crashed, State

    try:
        got = fut.wrapped_future.result()
    except Exception as exc:  # noqa: BLE001 - the worker died or the cluster went away: report, do not hang
        return Outcome(Crashed(message=f"{type(exc).__name__}: {exc}"))
    return Outcome(got if isinstance(got, State) else Completed(data=got))


def run_variants(variants: Sequence[Variant], *, root: Path, flow_name: str, params: Mapping[str, Any],
                 uri: str, base_tags: Mapping[str, str], parent_run_id: str, workers: int | None = None
                 ) -> dict[str, Outcome]:
    """Run :data:`CHAIN` for every variant, each task in its own process on :func:`row_task_runner`.

    Stage 1 runs once per distinct stage-1 configuration (:func:`plan_rows`), in its scratch project; each row
    then runs train_mesh -> evaluate in its own scratch project from that checkpoint, after it. Every task
    seeds itself first (:func:`tasks.stages.start_row`), so a row gives the same bits whether it runs alone or
    beside others, on a fresh worker or a used one. The cluster is closed before this returns.

    -> {label: outcome of the row's task}. A failed row does not stop the others; rows after a failed stage 1
    end NotReady.
    """
    plan = plan_rows(variants, root=root, flow_name=flow_name, params=params, uri=uri)
    projects = {key: scratch_project(root, flow_name, label, p1) for key, (label, p1, _) in plan.stage1.items()}
    row_projects = {label: scratch_project(root, flow_name, label, p) for label, (_, p) in plan.rows.items()}
    tags_of = {v.label: v for v in variants}

    def tags(p: Mapping[str, Any], extra: Mapping[str, str]) -> dict[str, str]:
        model, detector = str(p["experiment"]["variant"]), str(p["experiment"]["detector"])
        return {**base_tags, "variant": model, "model": model, "detector2d": detector, **extra}

    runner = row_task_runner(params, workers, api_url=prefect_api_url())
    with runner:
        first = {key: runner.submit(run_chain, parameters={
            "stages": [CHAIN[0]], "root": projects[key], "params": p1,
            "label": f"stage 1 of {', '.join(labels)}", "parent_run_id": parent_run_id,
            "tags": tags(p1, {"stage1_rows": ",".join(labels), "stage1_key": key})})
            for key, (_, p1, labels) in plan.stage1.items()}
        futures = {label: runner.submit(run_chain, parameters={
            "stages": list(CHAIN[1:]), "root": row_projects[label], "params": p, "label": label,
            "tags": tags(p, {**tags_of[label].tags, "stage1_key": key}), "parent_run_id": parent_run_id,
            "stage1_root": projects[key]}, wait_for=[first[key]])
            for label, (key, p) in plan.rows.items()}
        outcomes = {label: _outcome(f) for label, f in futures.items()}
        stage1 = {key: _outcome(f) for key, f in first.items()}
    # a row that did not run because its stage 1 failed reports that failure
    return {label: stage1[key] if not outcomes[label].state.is_completed() and
            (stage1[key].state.is_failed() or stage1[key].state.is_crashed()) else outcomes[label]
            for label, (key, _) in plan.rows.items()}


# -- Prefect artifacts -------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-friendly cell: numpy scalars to Python, NaN to None, long floats rounded."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def table_records(table) -> list[dict[str, Any]]:
    """A DataFrame as a list of JSON-friendly row dicts (for ``create_table_artifact``)."""
    return [{str(k): _plain(v) for k, v in row.items()} for row in table.to_dict(orient="records")]


def metric_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """{stage: metrics} -> [{stage, metric, value}] for every number (nested names dotted)."""
    return [{"stage": stage, "metric": k, "value": _plain(v)}
            for stage, metrics in results.items()
            for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def artifact_key(flow_name: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes: 'hmrmamba-<flow>-<what>'."""
    return slug(f"hmrmamba-{flow_name}-{what}").replace("_", "-").replace(".", "-")


def publish(flow_name: str, *, markdown: str, table: list[dict[str, Any]], table_name: str) -> dict[str, str]:
    """Create the flow's markdown summary and table artifacts -> {what: key}."""
    keys = {"summary": artifact_key(flow_name, "summary"), table_name: artifact_key(flow_name, table_name)}
    create_markdown_artifact(markdown=markdown, key=keys["summary"], description=f"hmrmamba {flow_name} summary")
    create_table_artifact(table=table, key=keys[table_name], description=f"hmrmamba {flow_name} {table_name}")
    return keys


def state_line(fut: PrefectFuture) -> tuple[str, str]:
    """(state name, message shortened to one line) of a finished future."""
    state = fut.state
    msg = (state.message or "").splitlines()[0][:200] if state.message else ""
    return state.name, msg


class FlowFailed(RuntimeError):
    """Some stage or variant of the flow failed; the message names them and their errors."""


def raise_if_failed(futures: Mapping[str, PrefectFuture], what: str) -> None:
    """Raise :class:`FlowFailed` naming each failed ``what`` with its error, and those that did not run."""
    failed = {k: state_line(f)[1] for k, f in futures.items() if f.state.is_failed() or f.state.is_crashed()}
    not_run = [k for k, f in futures.items() if not f.state.is_completed() and k not in failed]
    if failed or not_run:
        parts = [f"{what} {k} failed: {msg}" for k, msg in failed.items()]
        if not_run:
            parts.append(f"not run (an upstream {what} failed): {', '.join(not_run)}")
        raise FlowFailed("; ".join(parts))


def cli_call(prog: str, flow_fn: Callable[..., Any], **kwargs: Any) -> int:
    """Call a flow from a script's ``main``: 0 done, 1 a stage or variant failed (or its Prefect server did
    not start), 2 bad input.

    Without ``PREFECT_API_URL`` the flow runs against a Prefect server of its own (:func:`flows.flow_server`),
    which ends with this process however it ends, ``kill -9`` included, instead of Prefect's temporary one,
    which outlived a killed script.
    """
    import sys

    from flows import ServerStartError, flow_server

    try:
        with flow_server():
            try:
                flow_fn(**kwargs)
            finally:  # the run's last log lines reach the server before it stops
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)
    except ServerStartError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except FlowFailed as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
