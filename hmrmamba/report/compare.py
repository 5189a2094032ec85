"""Compare finished MLflow runs (the paper's Tables 2 and 3): ``hmrmamba compare``.

Every stage run carries the tag ``stage``, wherever it lives (the stage's experiment under ``dvc repro``,
the flow's experiment under a flow), and its settings as params (``experiment.variant``,
``train_mesh.epochs``, ...). :func:`select_runs` finds the finished runs of one stage in every experiment;
:func:`comparison_table` groups them by any tag or param and keeps the latest run of each group, or every
run; :func:`baseline_diff` gives each run's metrics minus a baseline's; :func:`write_comparison` saves the
table as CSV and its headline errors as bars, one unit per axis (mm apart from mm/frame²).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError
from hmrmamba.evaluate.metric_names import ACCURACY_METRICS

#: Error metrics drawn in the bar chart, in this order (lower is better). The table keeps every metric, the
#: mesh-quality ones (degrees, ratios) included.
HEADLINE = ACCURACY_METRICS
#: The unit of each headline metric: one axis per unit in the chart.
UNITS = {"mpjpe": "mm", "pa_mpjpe": "mm", "mpvpe": "mm", "accel": "mm/frame²"}
_TAG = "tags."
_PARAM = "params."
_METRIC = "metrics."
#: Columns of a comparison table that are not metrics.
INFO_COLUMNS = ("run_id", "run_name", "start_time")


def _headline_columns(columns: Sequence[str]) -> list[str]:
    """Columns whose last name part is a headline metric, stage-1 numbers excluded, in HEADLINE order."""
    picked = [c for c in columns if c.rsplit(".", 1)[-1] in HEADLINE and not c.startswith("stage1.")]
    return sorted(picked, key=lambda c: (HEADLINE.index(c.rsplit(".", 1)[-1]), c))


def _check_name(value: str, option: str, expected: str) -> None:
    if not value or not all(ch.isalnum() or ch in "_-.+:" for ch in value):
        raise InputError(f"bad name {value!r}", field=option, expected=expected)


def select_runs(*, root: Path, stage: str = "evaluate", experiment: str | None = None, filter_string: str = "",
                tracking: Mapping[str, Any] | None = None):
    """-> pandas DataFrame (``mlflow.search_runs`` columns) of the finished runs of ``stage``, newest first.

    All experiments are searched unless ``experiment`` names one. ``filter_string`` is an MLflow search filter
    ANDed to the stage and status; a syntax error in it is an :class:`InputError`. A stage run's own nested
    runs (per-dataset children, tagged ``nested_in``) are left out: they repeat its numbers.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    from hmrmamba.mlflow_runs import _set_tracking_uri, resolve_tracking_uri

    _check_name(stage, "--stage", "a stage name such as evaluate or train_mesh")
    _set_tracking_uri(mlflow, resolve_tracking_uri(root, tracking))
    if experiment is not None:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in mlflow.search_experiments())
            raise InputError(f"no MLflow experiment {experiment!r} in the store", field="--experiment",
                             expected=f"one of {names}")
        where: dict[str, Any] = {"experiment_ids": [exp.experiment_id]}
    else:
        where = {"search_all_experiments": True}
    query = " and ".join(f for f in ("attributes.status = 'FINISHED'", f"tags.stage = '{stage}'",
                                     filter_string.strip()) if f)
    try:
        runs = mlflow.search_runs(**where, filter_string=query, order_by=["attributes.start_time DESC"],
                                  output_format="pandas")
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or ["invalid filter"])[0][:200]
        raise InputError(f"MLflow cannot parse the filter {filter_string!r} ({first})", field="--filter",
                         expected="an MLflow search filter, e.g. \"params.train_mesh.epochs = '1'\" or "
                                  "\"tags.flow = 'ablation'\"") from None
    if "tags.nested_in" in runs:
        runs = runs[runs["tags.nested_in"].replace("", np.nan).isna()]
    return runs.reset_index(drop=True)


def group_column(runs, by: str) -> str:
    """The column of ``runs`` that ``by`` names: ``tags.X`` / ``params.X`` as written, a bare ``X`` the tag ``X``
    when runs carry it, else the param ``X``. No such column: an :class:`InputError` listing some that exist."""
    _check_name(by, "--group-by", "a tag or param such as tags.variant or params.experiment.variant")
    if by.startswith((_TAG, _PARAM)):
        candidates = [by]
    else:
        candidates = [_TAG + by, _PARAM + by]
    for col in candidates:
        if col in runs and runs[col].replace("", np.nan).notna().any():
            return col
    tags = sorted(c for c in runs.columns if c.startswith(_TAG) and not c.startswith("tags.mlflow."))
    params = sorted(c for c in runs.columns if c.startswith(_PARAM))
    raise InputError(f"no finished run carries {by!r}", field="--group-by",
                     expected=f"a tag or param of the runs, e.g. {', '.join((tags + params)[:12]) or 'tags.variant'}")


def comparison_table(*, root: Path, stage: str = "evaluate", by: str = "variant", latest: bool = True,
                     filter_string: str = "", experiment: str | None = None,
                     tracking: Mapping[str, Any] | None = None):
    """-> pandas DataFrame: one row per group of ``by`` (its latest finished run) or, ``latest=False``, per run.

    Columns: ``by``, ``run_id``, ``run_name``, ``start_time``, then the headline errors, then the other
    metrics. Rows are sorted by group, newest run first within a group. Runs without a value for ``by``
    form the group ``(none)``; nothing else is dropped (an empty ``dvc_exp`` tag is a value like any other).
    """
    import pandas as pd

    runs = select_runs(root=root, stage=stage, experiment=experiment, filter_string=filter_string,
                       tracking=tracking)
    if runs.empty:
        raise InputError(f"no finished {stage!r} runs match", field="--filter" if filter_string else "--stage",
                         expected="runs made by `dvc repro`, `dvc exp run` or the flows (see `mlflow ui`)")
    col = group_column(runs, by)
    groups = runs[col].replace("", np.nan).fillna("(none)").astype(str)
    runs = runs.assign(_group=groups)
    if latest:
        runs = runs.drop_duplicates(subset=["_group"], keep="first")
    metric_cols = [c for c in runs.columns if c.startswith(_METRIC) and runs[c].notna().any()]
    names = [c[len(_METRIC):] for c in metric_cols]
    head = _headline_columns(names)
    ordered = head + sorted(n for n in names if n not in head)
    table = pd.DataFrame({by: runs["_group"].to_numpy(), "run_id": runs["run_id"].to_numpy(),
                          "run_name": runs.get("tags.mlflow.runName", pd.Series([""] * len(runs))).to_numpy(),
                          "start_time": runs["start_time"].to_numpy()})
    for name in ordered:
        table[name] = runs[f"{_METRIC}{name}"].to_numpy()
    return table.sort_values(by, kind="stable").reset_index(drop=True)


def baseline_row(table, baseline: str) -> int:
    """The row of ``table`` that ``baseline`` names: a group value (its first, i.e. newest, row) or a run id
    (or a unique prefix of one)."""
    by = table.columns[0]
    hits = np.flatnonzero(table[by].astype(str).to_numpy() == baseline)
    if len(hits) == 0:
        hits = np.flatnonzero(table["run_id"].astype(str).str.startswith(baseline).to_numpy()) if baseline else hits
        if len(hits) > 1:
            raise InputError(f"run id prefix {baseline!r} matches {len(hits)} runs", field="--baseline",
                             expected="a longer run id prefix")
    if len(hits) == 0:
        raise InputError(f"{baseline!r} is neither a {by} nor a run id of the table", field="--baseline",
                         expected=f"one of {sorted(set(table[by].astype(str)))[:12]} or a run id")
    return int(hits[0])


def baseline_diff(table, baseline: str):
    """-> ``table`` with every metric replaced by its difference to the baseline row (:func:`baseline_row`):
    negative is lower (better, for the errors) than the baseline. The baseline row comes first."""
    from pandas.api.types import is_numeric_dtype

    i = baseline_row(table, baseline)
    metrics = [c for c in table.columns[1:] if c not in INFO_COLUMNS and is_numeric_dtype(table[c])]
    out = table.copy()
    for col in metrics:
        out[col] = table[col] - table[col].iloc[i]
    order = [i, *(j for j in range(len(out)) if j != i)]
    return out.iloc[order].reset_index(drop=True)


def markdown_table(table, *, digits: int = 2, drop: tuple[str, ...] = ("start_time",)) -> str:
    """A DataFrame as a Markdown table (numbers rounded to ``digits``; run ids shortened to 8 characters)."""
    cols = [c for c in table.columns if c not in drop]

    def cell(col: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if col == "run_id":
            return str(value)[:8]
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}f}"
        return str(value)

    rows = [[cell(c, v) for c, v in zip(cols, rec)] for rec in table[cols].itertuples(index=False)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _row_labels(table) -> list[str]:
    """Bar labels: the group, with the short run id where a group has several rows."""
    by = table.columns[0]
    groups = table[by].astype(str)
    repeated = groups.duplicated(keep=False)
    return [f"{g} ({str(r)[:8]})" if rep else g for g, r, rep in zip(groups, table["run_id"], repeated)]


def unit_panels(metrics: Sequence[str]) -> dict[str, list[str]]:
    """The chart's panels: {axis label: metric columns}, one per unit of the headline errors (:data:`UNITS`); without
    headline errors, the first four metrics, one panel each (their units are not known)."""
    head = _headline_columns(metrics)
    panels: dict[str, list[str]] = {}
    for col in head or list(metrics)[:4]:
        panels.setdefault(UNITS[col.rsplit(".", 1)[-1]] if head else col, []).append(col)
    return panels


def write_comparison(table, *, csv_path: str | Path, png_path: str | Path, title: str) -> tuple[Path, Path]:
    """Write the table as CSV and its headline errors as grouped bars (one group per row), one panel per unit
    (:data:`UNITS`: mm errors together, acceleration error apart) -> both paths.

    The first column labels the rows; numeric columns other than :data:`INFO_COLUMNS` are metrics (without
    headline errors, the first four are drawn, each in a panel of its own).
    """
    from pandas.api.types import is_numeric_dtype

    from hmrmamba.report.plots import _pyplot, save_png

    csv_path, png_path = Path(csv_path), Path(png_path)
    with atomic_path(csv_path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    metrics = [c for c in table.columns[1:] if c not in INFO_COLUMNS and is_numeric_dtype(table[c])]
    head = _headline_columns(metrics)
    panels = unit_panels(metrics)
    plt = _pyplot()
    labels = _row_labels(table)
    x = np.arange(len(labels))
    ratios = [max(len(cols), 1) for cols in panels.values()] or [1]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 + 2.2 * sum(ratios), 4), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    for ax, (unit, cols) in zip(axes[0], panels.items()):
        width = 0.8 / len(cols)
        for i, col in enumerate(cols):
            ax.bar(x + (i - (len(cols) - 1) / 2) * width, table[col].to_numpy(dtype=float), width, label=col)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(unit if head else "value")  # (no headline errors: one metric per panel, named in its legend)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return csv_path, save_png(fig, png_path)


def compare(*, root: Path, stage: str = "evaluate", by: str = "variant", latest: bool = True,
            baseline: str | None = None, filter_string: str = "", experiment: str | None = None,
            out_dir: str | Path = "plots", tracking: Mapping[str, Any] | None = None):
    """:func:`comparison_table` (and :func:`baseline_diff` given ``baseline``) + :func:`write_comparison` to
    ``<out_dir>/compare_<stage>_by_<by>[_all][_vs_<baseline>].{csv,png}`` -> (table, csv path, png path).
    A relative ``out_dir`` is inside ``root``."""
    import re

    from hmrmamba.config import resolve_path

    table = comparison_table(root=root, stage=stage, by=by, latest=latest, filter_string=filter_string,
                             experiment=experiment, tracking=tracking)
    what = f"latest finished run per {by}" if latest else f"every finished run, by {by}"
    stem = f"compare_{stage}_by_{by}" + ("" if latest else "_all")
    if baseline is not None:
        table = baseline_diff(table, baseline)
        what += f", minus {baseline}"
        stem += f"_vs_{baseline}"
    out = resolve_path(root, out_dir, field="--output-dir")
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", stem)
    csv, png = write_comparison(table, csv_path=out / f"{stem}.csv", png_path=out / f"{stem}.png",
                                title=f"{stage}: {what}")
    return table, csv, png
