"""The body of the comparison flows (ablation, detectors): check, make data if missing, run the variants,
compare their MLflow runs, publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import common
from flows.pipeline import GRAPH
from hmrmamba.report.compare import comparison_table, markdown_table, write_comparison
from hmrmamba.errors import InputError, MissingFileError

MARKS = {"True": "✓", "False": "✗"}


def _flag_columns(table, variants: Sequence[common.Variant], columns: Mapping[str, str]):
    """Insert a ✓/✗ column per tag in ``columns`` (column name -> variant tag) after the label column."""
    tags = {v.label: v.tags for v in variants}
    for pos, (col, tag) in enumerate(columns.items(), start=1):
        table.insert(pos, col, [MARKS.get(tags.get(label, {}).get(tag, ""), "") for label in table.iloc[:, 0]])
    return table


def summary_markdown(flow_name: str, *, params: Mapping[str, Any], uri: str, parent_run_id: str,
                     futures: Mapping[str, Any], table, plots: Sequence[Any]) -> str:
    lines = [f"# hmrmamba {flow_name} ({params.get('profile', '?')})", "",
             f"- MLflow: `{uri}` (parent run `{parent_run_id}` in experiment `flow-{flow_name}`, the rows' "
             "stage runs nested under it)",
             f"- plots: {', '.join(f'`{p}`' for p in plots) or '(none)'}", "",
             "| variant | state | note |", "|---|---|---|"]
    for label, fut in futures.items():
        name, msg = common.state_line(fut)
        lines.append(f"| {label} | {name} | {msg.replace('|', '/')} |")
    if table is not None:
        lines += ["", "## Test errors (mm; the latest finished run of each)", "", markdown_table(table)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FlowSession:
    """What a flow over variants has once its checks passed and its data exist: the params (tracking URI
    pinned), the store, the base tags, the MLflow parent run and the local worker processes asked for
    (None: ``flows.workers`` or the default, see :func:`common.row_task_runner`)."""

    params: dict[str, Any]
    uri: str
    tags: dict[str, str]
    parent_run_id: str
    workers: int | None


@contextlib.contextmanager
def flow_session(flow_name: str, project: Path, params: Mapping[str, Any], *, max_parallel: int | None,
                 prepare_data: bool) -> Iterator[FlowSession]:
    """Check ``max_parallel`` and the data, open the flow's MLflow parent run and run the data stages when
    their outputs are missing (``prepare_data``) -> the session, inside the parent run."""
    if max_parallel is not None and max_parallel < 1:
        raise InputError(f"max_parallel={max_parallel}", field="max_parallel", expected="an integer >= 1")
    uri = common.tracking_uri(project, params)
    params = common.pin_tracking(params, uri)
    need_data = not common.data_ready(project)
    if need_data and not prepare_data:
        raise MissingFileError("the data stages have not run", file=project / "data", field="prepare_data",
                               expected="`dvc repro features` first, or prepare_data=True")
    base_tags = {"flow": flow_name, "flow_run_id": common.flow_run_id()}
    common.ensure_experiments(project, uri, [*(common.DATA_STAGES if need_data else ()), *common.CHAIN])
    with common.parent_run(root=project, uri=uri, flow_name=flow_name, tags=base_tags, params=params) as pid:
        if need_data:
            data = common.run_graph(GRAPH, common.DATA_STAGES, root=project, params=params,
                                    tags_for=lambda stage: base_tags, parent_run_id=pid)
            common.raise_if_failed(data, "data stage")
        yield FlowSession(params=params, uri=uri, tags=base_tags, parent_run_id=pid,
                          workers=max_parallel)


def run_comparison(flow_name: str, *, root: str | None, profile: str | None, overrides: list[str] | None,
                   max_parallel: int | None, prepare_data: bool,
                   make_variants: Callable[[Mapping[str, Any]], list[common.Variant]], by: str,
                   columns: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Run inside a flow: every variant's :data:`common.CHAIN`, then the comparison -> {label: {stage: metrics}}.

    The comparison has one row per value of the MLflow tag ``by`` (whose values are the variants' labels)
    and a ✓/✗ column per entry of ``columns`` (column name -> variant tag).

    Everything is checked before work starts; a failed variant fails the flow after the others finish and
    the comparison of the finished ones is published.
    """
    project = common.resolve_root(root)
    params = common.load_flow_params(project, profile, overrides)
    variants = make_variants(params)
    with flow_session(flow_name, project, params, max_parallel=max_parallel, prepare_data=prepare_data) as fs:
        params, uri, base_tags, pid = fs.params, fs.uri, fs.tags, fs.parent_run_id
        futures = common.run_variants(variants, root=project, flow_name=flow_name, params=params, uri=uri,
                                      base_tags=base_tags, parent_run_id=pid, workers=fs.workers)
        results = {k: f.result() for k, f in futures.items() if f.state.is_completed()}
        table, plots = None, []
        if results:
            table = comparison_table(root=project, stage="evaluate", by=by, tracking={"uri": uri},
                                     filter_string=f"tags.flow_run_id = '{base_tags['flow_run_id']}'")
            order = {v.label: i for i, v in enumerate(variants)}
            table = table.sort_values(by, key=lambda s: s.map(order)).reset_index(drop=True)
            table = _flag_columns(table, variants, columns or {})
            plots = list(write_comparison(table,
                                          csv_path=project / f"plots/{flow_name}.csv",
                                          png_path=project / f"plots/{flow_name}.png",
                                          title=f"{flow_name}: test errors per variant"))
            common.log_parent_artifacts(uri, pid, plots)
        md = summary_markdown(flow_name, params=params, uri=uri, parent_run_id=pid, futures=futures,
                              table=table, plots=plots)
        rows = common.table_records(table.drop(columns=["start_time"])) if table is not None else []
        common.publish(flow_name, markdown=md, table=rows, table_name="comparison")
        common.raise_if_failed(futures, "variant")
    return results
