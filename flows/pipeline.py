"""The whole pipeline as a Prefect flow: the stages of ``dvc.yaml``, run by the same stage functions.

    python flows/pipeline.py                       # params.yaml as is
    python flows/pipeline.py --profile paper-s     # composed from conf/ (params.yaml is not touched)
    python flows/pipeline.py --stages train_lift train_mesh evaluate -- train_lift.epochs=2
    python flows/pipeline.py --target evaluate     # evaluate and its upstream stages, like dvc repro evaluate

In a DVC project with params.yaml as is, a stage runs only when DVC would run it (``dvc status``, asked
again after every stage that ran), and what ran is recorded in ``dvc.lock``: the flow is
``dvc repro`` observed in the Prefect UI, and leaves ``dvc status`` clean for what it ran. Up-to-date stages
end ``Cached`` ("up to date in DVC"). Composed params (``--profile``/overrides) run in a scratch project
``outputs/flows/pipeline/<profile>[-<overrides digest>]/``, so the project's DVC-tracked outputs never hold
results of params that are not its params.yaml (the data stages stay in the project when their params are
unchanged). Without DVC (no ``dvc.yaml`` or no ``.dvc/``) every selected stage runs in the project.

The flow run is named ``pipeline:<variant>:<detector>:<params source>:<stages>`` and tagged; it publishes a
markdown summary and a metrics table as Prefect artifacts, and every stage task a markdown artifact that links
its MLflow run. Every stage is an MLflow run under one parent run of the flow.
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect loads: it reads PREFECT_HOME (and creates it) on import
    from flows import script_environment

    script_environment("flows/pipeline.py")

import argparse
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, tags
from prefect.task_runners import ThreadPoolTaskRunner

from flows import common
from hmrmamba.errors import InputError
from tasks import dvc_state

#: The pipeline graph, stage -> the stages it needs, in run order (dvc.yaml holds the same graph; a test
#: checks they agree). Adding a stage is one line here.
GRAPH: dict[str, tuple[str, ...]] = {
    "body_model": (),
    "prepare": ("body_model",),
    "detect2d": ("prepare",),
    "train_backbone": ("prepare", "detect2d"),
    "features": ("prepare", "detect2d", "train_backbone"),
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


def what_runs(stages: Sequence[str] | None, target: str | None) -> str:
    """The stage selection in a few characters: 'all', 'evaluate+upstream' or 'train_lift,evaluate'."""
    if target:
        return f"{target}+upstream"
    return ",".join(stages) if stages else "all"


def run_name(*, variant: str | None = None, detector: str | None = None, **parameters: Any) -> str:
    """The flow run's name: ``pipeline:<variant>:<detector>:<params source>:<stages>`` (the first two once the
    params are read)."""
    parts = ["pipeline", *(p for p in (variant, detector) if p),
             common.params_source(parameters.get("profile"), parameters.get("overrides")),
             what_runs(parameters.get("stages"), parameters.get("target"))]
    return ":".join(parts)


def _initial_run_name() -> str:
    """``flow_run_name`` of the flow: from its parameters only (the params are not read yet)."""
    from prefect.runtime import flow_run

    try:
        return run_name(**dict(flow_run.parameters))
    except Exception:  # noqa: BLE001 - a name must not stop the run; bad parameters fail it inside
        return "pipeline"


def scratch_label(profile: str | None, overrides: Sequence[str] | None, params: Mapping[str, Any]) -> str:
    """The scratch project's name for composed params: the profile, and a digest of the overrides."""
    name = str(profile or params.get("profile") or "default")
    if overrides:
        name += "-" + hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:8]
    return name


@dataclass(frozen=True)
class RunPlan:
    """Where the selected stages run (:class:`common.Place` each) and a line saying why."""

    places: dict[str, common.Place]
    note: str
    mode: str  # 'dvc', 'scratch' or 'no-dvc' (also a tag of the flow run)


def plan_run(project: Path, params: Mapping[str, Any], selected: Sequence[str], *, composed: bool,
             label: str) -> RunPlan:
    """Decide where each selected stage runs (see the module docstring); creates the scratch project."""
    if not dvc_state.is_dvc_project(project):
        return RunPlan({s: common.Place(project, params) for s in selected},
                       "no DVC project here (dvc.yaml and .dvc/): every selected stage runs", "no-dvc")
    defs = dvc_state.pipeline_stages(project)
    if not composed:
        return RunPlan({s: common.Place(project, params, dvc=s in defs) for s in selected},
                       "DVC project: a stage runs only when `dvc status` reports a change; what ran is "
                       "recorded in dvc.lock", "dvc")
    from hmrmamba.config import load_params

    has_params = (project / "params.yaml").is_file()
    base = common.pin_tracking(load_params(project / "params.yaml") if has_params else {}, str(params["tracking"]["uri"]))
    keys = [k for s in common.DATA_STAGES for k in dvc_state.stage_param_keys(defs.get(s, {}))]
    share = has_params and all(s in defs for s in common.DATA_STAGES) and dvc_state.same_params(params, base, keys)
    scratch = common.scratch_project(project, "pipeline", label, params, share_data=share)
    rel = scratch.relative_to(project)
    places = {s: common.Place(project, base, dvc=True) if share and s in common.DATA_STAGES
              else common.Place(scratch, params, label=label) for s in selected}
    how = ("the data stages' params equal params.yaml: they run in the project under DVC's rules, "
           f"the others in {rel}/ (data linked)") if share else f"every selected stage runs in {rel}/"
    return RunPlan(places, f"params differ from params.yaml: {how}", "scratch")


_RUN_LINK = re.compile(r"MLflow run ([0-9a-f]+) \(experiment ([0-9]+)\)")


def mlflow_cell(message: str, uri: str) -> str:
    """The MLflow run a stage task's message names, as a link for an http tracking server."""
    from tasks.observe import ui_url

    found = _RUN_LINK.search(message or "")
    if not found:
        return ""
    url = ui_url(uri, found.group(2), found.group(1))
    return f"[`{found.group(1)[:8]}`]({url})" if url else f"`{found.group(1)}`"


def summary_markdown(*, root: Path, params: Mapping[str, Any], exp: Mapping[str, Any], uri: str,
                     parent_run_id: str, futures: Mapping[str, Any], plan: RunPlan | None = None) -> str:
    """The run at a glance: settings, where and how each stage ran (or why not), and the evaluation numbers."""
    lines = [f"# hmrmamba pipeline ({params.get('profile', '?')})", "",
             f"- project: `{root}`",
             f"- variant `{exp['variant']}`, 2D detector `{exp['detector']}`, overrides `{dict(exp['overrides'])}`",
             f"- MLflow: `{uri}` (parent run `{parent_run_id}`)"]
    if plan is not None:
        lines.append(f"- {plan.note}")
    lines += ["", "| stage | state | seconds | MLflow run | note |", "|---|---|---|---|---|"]
    results: dict[str, Any] = {}
    for stage, fut in futures.items():
        name, msg = common.state_line(fut)
        metrics = fut.result(raise_on_failure=False) if fut.state.is_completed() else {}
        results[stage] = metrics if isinstance(metrics, dict) else {}
        seconds = "" if name == "Cached" else results[stage].get("seconds", "")
        note = "" if _RUN_LINK.fullmatch(msg) else msg.replace("|", "/")
        lines.append(f"| {stage} | {name} | {seconds} | {mlflow_cell(msg, uri)} | {note} |")
    dataset = str(params.get("dataset", {}).get("name", "synthetic"))
    ev = results.get("evaluate", {})
    if isinstance(ev.get(dataset), dict):
        stage1 = ev.get("stage1", {}).get(dataset, {})
        lines += ["", f"## Test errors on {dataset} (mm)", "", "| metric | mesh | stage 1 (lifted) |", "|---|---|---|"]
        lines += [f"| {k} | {v} | {stage1.get(k, '')} |" for k, v in ev[dataset].items()]
    return "\n".join(lines) + "\n"


@flow(name="hmrmamba-pipeline", flow_run_name=_initial_run_name, task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(root: str | None = None, profile: str | None = None, overrides: list[str] | None = None,
             stages: list[str] | None = None, target: str | None = None) -> dict[str, dict]:
    """Run the hmrmamba pipeline (the stages of dvc.yaml) -> {stage: metrics}; in a DVC project with
    params.yaml as is, only the stages DVC would run, recorded in dvc.lock.

    Everything is checked before the first stage starts (a bad parameter fails the run with a one-line
    error and leaves no MLflow run). Stages run one at a time in graph order (one worker), so no stage shares
    the CPU with another (efficiency's timings stay clean); a failed stage skips only the stages that need it.

    Args:
        root: The project directory (holding params.yaml and conf/); default: the nearest one above the
            working directory.
        profile: Compose the params from conf/ with this profile (e.g. paper-s) instead of using params.yaml;
            the stages then run in a scratch project under outputs/flows/pipeline/.
        overrides: Hydra overrides of the params, e.g. ["train_lift.epochs=2"]; like a profile, they run in a
            scratch project.
        stages: Run only these stages (names from dvc.yaml), in graph order; not with target.
        target: Run this stage and the stages it needs, like `dvc repro TARGET`; not with stages.
    """
    from hmrmamba.config import validate_params

    project = common.resolve_root(root)
    params = common.load_flow_params(project, profile, overrides)
    composed = profile is not None or bool(overrides)
    if composed:
        validate_params(params, file=project / "conf/config.yaml")
    selected = select_stages(stages, target)
    exp = common.check_experiment(params)
    uri = common.tracking_uri(project, params)
    params = common.pin_tracking(params, uri)
    plan = plan_run(project, params, selected, composed=composed,
                    label=scratch_label(profile, overrides, params))
    run_id = common.flow_run_id()
    base = {"flow": "pipeline", "flow_run_id": run_id}
    expt = {"variant": str(exp["variant"]), "detector2d": str(exp["detector"])}
    prefect_tags = ["hmrmamba", "flow:pipeline", f"variant:{exp['variant']}", f"detector:{exp['detector']}",
                    f"profile:{params.get('profile', 'default')}", f"mode:{plan.mode}"]
    common.label_flow_run(run_name(variant=str(exp["variant"]), detector=str(exp["detector"]),
                                   profile=profile or (str(params.get("profile", "default")) if composed else None),
                                   overrides=overrides, stages=stages, target=target), prefect_tags)

    def tags_for(stage: str) -> dict[str, str]:  # the model's tags on the stages that train or test it
        return {**base, **expt} if stage in common.CHAIN else base

    common.ensure_experiments(project, uri, selected)
    with common.parent_run(root=project, uri=uri, flow_name="pipeline", tags={**base, **expt}, params=params) as pid, \
            tags(*prefect_tags):
        futures = common.run_graph(GRAPH, selected, root=project, params=params, tags_for=tags_for,
                                   parent_run_id=pid, places=plan.places)
        md = summary_markdown(root=project, params=params, exp=exp, uri=uri, parent_run_id=pid, futures=futures,
                              plan=plan)
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
