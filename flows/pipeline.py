"""The whole pipeline as a Prefect flow: the stages of ``dvc.yaml``, run by the same stage functions.

    python flows/pipeline.py                       # params.yaml as is
    python flows/pipeline.py --profile paper-s     # composed from conf/ (params.yaml is not touched)
    python flows/pipeline.py --stages train_lift train_mesh evaluate -- train_lift.epochs=2
    python flows/pipeline.py --target evaluate     # evaluate and its upstream stages, like dvc repro evaluate

DVC decides what is stale; this flow runs what it is asked to, observable in the Prefect UI, and
publishes a markdown summary and a metrics table as Prefect artifacts. Every stage is an MLflow run
under one parent run of the flow.
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect loads: it reads PREFECT_HOME (and creates it) on import
    from flows import script_environment

    script_environment("flows/pipeline.py")

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import common
from hmrmamba.errors import InputError

#: The pipeline graph, stage -> the stages it needs, in run order (dvc.yaml holds the same graph; a test
#: checks they agree). Adding a stage is one line here.
GRAPH: dict[str, tuple[str, ...]] = {
    "body_model": (),
    "prepare": ("body_model",),
    "detect2d": ("prepare",),
    "features": ("prepare", "detect2d"),
    "train_lift": ("features",),
    "train_mesh": ("body_model", "train_lift"),
    "evaluate": ("train_mesh",),
    "efficiency": (),
    "report": ("evaluate", "efficiency"),
}


def with_upstream(target: str) -> list[str]:
    """``target`` and every stage it needs, in graph order (what ``dvc repro TARGET`` considers)."""
    if target not in GRAPH:
        raise InputError(f"unknown stage {target!r}", field="target", expected=f"one of {list(GRAPH)}")
    need, todo = set(), [target]
    while todo:
        stage = todo.pop()
        if stage not in need:
            need.add(stage)
            todo.extend(GRAPH[stage])
    return [s for s in GRAPH if s in need]


def select_stages(stages: Sequence[str] | None, target: str | None = None) -> list[str]:
    """``stages``, or ``target`` with its upstream stages, or all, in graph order; unknown names are an error."""
    if target is not None:
        if stages is not None:
            raise InputError("both stages and target given", field="stages", expected="one of the two")
        return with_upstream(target)
    if stages is None:
        return list(GRAPH)
    unknown = [s for s in stages if s not in GRAPH]
    if unknown or not stages:
        raise InputError(f"unknown stages {unknown}" if unknown else "no stages given", field="stages",
                         expected=f"names from {list(GRAPH)}")
    return [s for s in GRAPH if s in stages]


def summary_markdown(*, root: Path, params: Mapping[str, Any], exp: Mapping[str, Any], uri: str,
                     parent_run_id: str, futures: Mapping[str, Any]) -> str:
    """The run at a glance: settings, each stage's state and time, and the evaluation numbers."""
    lines = [f"# hmrmamba pipeline ({params.get('profile', '?')})", "",
             f"- project: `{root}`",
             f"- variant `{exp['variant']}`, 2D detector `{exp['detector']}`, overrides `{dict(exp['overrides'])}`",
             f"- MLflow: `{uri}` (parent run `{parent_run_id}`)", "",
             "| stage | state | seconds | note |", "|---|---|---|---|"]
    results: dict[str, Any] = {}
    for stage, fut in futures.items():
        name, msg = common.state_line(fut)
        metrics = fut.result(raise_on_failure=False) if fut.state.is_completed() else {}
        results[stage] = metrics if isinstance(metrics, dict) else {}
        lines.append(f"| {stage} | {name} | {results[stage].get('seconds', '')} | {msg.replace('|', '/')} |")
    dataset = str(params.get("dataset", {}).get("name", "synthetic"))
    ev = results.get("evaluate", {})
    if isinstance(ev.get(dataset), dict):
        stage1 = ev.get("stage1", {}).get(dataset, {})
        lines += ["", f"## Test errors on {dataset} (mm)", "", "| metric | mesh | stage 1 (lifted) |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {stage1.get(k, '')} |" for k, v in ev[dataset].items()]
    return "\n".join(lines) + "\n"


@flow(name="hmrmamba-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(root: str | None = None, profile: str | None = None, overrides: list[str] | None = None,
             stages: list[str] | None = None, target: str | None = None) -> dict[str, dict]:
    """Run ``stages``, or ``target`` and its upstream stages, or all of :data:`GRAPH`, in project ``root``
    -> {stage: metrics}.

    ``profile``/``overrides`` compose the params from ``conf/`` (Hydra syntax, e.g. ``train_lift.epochs=2``);
    without them ``params.yaml`` is used. Everything is checked before the first stage starts. Stages run
    one at a time in graph order (one worker), so no stage shares the CPU with another (efficiency's
    timings stay clean); a failed stage skips only the stages that need it.
    """
    project = common.resolve_root(root)
    params = common.load_flow_params(project, profile, overrides)
    selected = select_stages(stages, target)
    exp = common.check_experiment(params)
    uri = common.tracking_uri(project, params)
    params = common.pin_tracking(params, uri)
    run_id = common.flow_run_id()
    base = {"flow": "pipeline", "flow_run_id": run_id}
    expt = {"variant": str(exp["variant"]), "detector2d": str(exp["detector"])}

    def tags_for(stage: str) -> dict[str, str]:  # the model's tags on the stages that train or test it
        return {**base, **expt} if stage in common.CHAIN else base

    common.ensure_experiments(project, uri, selected)
    with common.parent_run(root=project, uri=uri, flow_name="pipeline", tags={**base, **expt}, params=params) as pid:
        futures = common.run_graph(GRAPH, selected, root=project, params=params, tags_for=tags_for,
                                   parent_run_id=pid)
        md = summary_markdown(root=project, params=params, exp=exp, uri=uri, parent_run_id=pid, futures=futures)
        results = {s: f.result() for s, f in futures.items() if f.state.is_completed()}
        common.publish("pipeline", markdown=md, table=common.metric_rows(results), table_name="metrics")
        common.raise_if_failed(futures, "stage")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flows/pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="project root (default: the nearest directory holding params.yaml)")
    parser.add_argument("--profile", help="compose params from conf/ with this profile")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stages", nargs="+", choices=list(GRAPH), help="run only these (in graph order)")
    which.add_argument("--target", choices=list(GRAPH), help="run this stage and its upstream stages")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train_lift.epochs=2")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.cli_call("flows/pipeline.py", pipeline, root=args.root, profile=args.profile,
                           overrides=args.overrides or None, stages=args.stages, target=args.target)


if __name__ == "__main__":
    raise SystemExit(main())
