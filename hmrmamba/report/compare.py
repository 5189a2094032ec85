"""Compare MLflow runs across variants (the paper's Tables 2 and 3): ``hmrmamba compare``.

Every stage run is an MLflow run in the experiment named after its stage, tagged by the flows with
``variant`` (a model or ablation row) and ``detector2d``. :func:`comparison_table` takes the latest finished
run per value of one tag and lays its metrics side by side; :func:`write_comparison` saves the table as CSV
and its headline errors as a grouped bar chart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError
from hmrmamba.evaluate.metric_names import ACCURACY_METRICS

#: Error metrics drawn in the bar chart, in this order (mm; lower is better). The table keeps every
#: metric, the mesh-quality ones (degrees, ratios) included.
HEADLINE = ACCURACY_METRICS
_TAG = "tags."
_METRIC = "metrics."


def _headline_columns(columns: list[str]) -> list[str]:
    """Columns whose last name part is a headline metric, stage-1 numbers excluded, in HEADLINE order."""
    picked = [c for c in columns if c.rsplit(".", 1)[-1] in HEADLINE and not c.startswith("stage1.")]
    return sorted(picked, key=lambda c: (HEADLINE.index(c.rsplit(".", 1)[-1]), c))


def comparison_table(*, root: Path, experiment: str = "evaluate", by: str = "variant", filter_string: str = "",
                     tracking: Mapping[str, Any] | None = None):
    """-> pandas DataFrame: one row per value of tag ``by`` (its latest finished run), one column per metric.

    Columns: ``by``, ``run_id``, ``start_time``, then the headline errors, then the other metrics.
    ``filter_string`` is an MLflow search filter ANDed to ``status = 'FINISHED'``.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd

    from hmrmamba.mlflow_runs import resolve_tracking_uri

    if not by or not all(ch.isalnum() or ch in "_-." for ch in by):
        raise InputError(f"bad tag name {by!r}", field="--by", expected="a tag name such as variant or detector2d")
    mlflow.set_tracking_uri(resolve_tracking_uri(root, tracking))
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in mlflow.search_experiments())
        raise InputError(f"no MLflow experiment {experiment!r} in the store", field="--experiment",
                         expected=f"one of {names}")
    query = " and ".join(f for f in ("attributes.status = 'FINISHED'", filter_string) if f)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], output_format="pandas")
    tag_col = f"{_TAG}{by}"
    if runs.empty or tag_col not in runs or runs[tag_col].replace("", np.nan).isna().all():
        raise InputError(f"no finished runs in experiment {experiment!r} carry the tag {by!r}",
                         field="--by", expected="runs made by the flows (flows/ablation.py, flows/detectors.py), "
                                                "which tag variant and detector2d")
    runs = runs[runs[tag_col].replace("", np.nan).notna()]
    if "tags.nested_in" in runs:  # per-dataset child runs repeat their stage run's numbers
        runs = runs[runs["tags.nested_in"].replace("", np.nan).isna()]
    latest = runs.drop_duplicates(subset=[tag_col], keep="first")
    metric_cols = [c for c in latest.columns if c.startswith(_METRIC) and latest[c].notna().any()]
    names = [c[len(_METRIC):] for c in metric_cols]
    head = _headline_columns(names)
    ordered = head + sorted(n for n in names if n not in head)
    table = pd.DataFrame({by: latest[tag_col].to_numpy(), "run_id": latest["run_id"].to_numpy(),
                          "start_time": latest["start_time"].to_numpy()})
    for name in ordered:
        table[name] = latest[f"{_METRIC}{name}"].to_numpy()
    return table.sort_values(by, kind="stable").reset_index(drop=True)


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


def write_comparison(table, *, csv_path: str | Path, png_path: str | Path, title: str) -> tuple[Path, Path]:
    """Write the table as CSV and its headline errors as grouped bars (one group per row) -> both paths.

    The first column labels the rows; numeric columns other than ``run_id``/``start_time`` are metrics.
    """
    from pandas.api.types import is_numeric_dtype

    from hmrmamba.report.plots import per_joint_bar

    by = table.columns[0]
    csv_path, png_path = Path(csv_path), Path(png_path)
    with atomic_path(csv_path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    metrics = [c for c in table.columns if c not in (by, "run_id", "start_time")
               and is_numeric_dtype(table[c])]
    shown = _headline_columns(metrics) or metrics[:4]
    per_joint_bar(png_path, [str(v) for v in table[by]],
                  {c: table[c].to_numpy(dtype=float) for c in shown}, title=title,
                  ylabel="error (mm; accel mm/frame²)" if _headline_columns(metrics) else "value")
    return csv_path, png_path


def compare(*, root: Path, experiment: str = "evaluate", by: str = "variant", filter_string: str = "",
            out_dir: str | Path = "plots", tracking: Mapping[str, Any] | None = None):
    """:func:`comparison_table` + :func:`write_comparison` to ``<out_dir>/compare_<experiment>_by_<by>.{csv,png}``
    -> (table, csv path, png path). A relative ``out_dir`` is inside ``root``."""
    from hmrmamba.config import resolve_path

    table = comparison_table(root=root, experiment=experiment, by=by, filter_string=filter_string,
                             tracking=tracking)
    out = resolve_path(root, out_dir, field="--output-dir")
    stem = f"compare_{experiment}_by_{by}"
    csv, png = write_comparison(table, csv_path=out / f"{stem}.csv", png_path=out / f"{stem}.png",
                                title=f"{experiment}: latest finished run per {by}")
    return table, csv, png
