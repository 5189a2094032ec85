"""``docs/results.md``: the paper's Tables 1-3 re-made on this profile's data.

The plan comes from the ``results`` section of ``params.yaml``:

- **Table 1**: each model of ``results.table1`` (default hmrmamba-tiny, pmce-tiny and a per-frame MLP
  lifter), trained with every seed of ``results.seeds``; mean ± standard deviation. A *mean pose*
  row (the training split's average root-relative pose, predicted for every frame) needs no training.
- **Table 2**: ``experiment.variant`` trained on each 2D source of ``results.table2``, every seed.
- **Table 3**: the GA/EM/IM rows of ``results.table3`` on ``experiment.variant``, every seed.

Every row is the mean ± standard deviation over ``results.seeds``; :func:`findings` says which differences
within a table exceed twice the seed spread, and what removing GA, EM or IM from the full model costs
(per-seed paired differences).

Each distinct (variant, detector, overrides, seed) is one *run*: a train_lift -> train_mesh ->
evaluate chain in a scratch project (``flows/results.py`` runs them as Prefect tasks). Rows shared
between tables (the full model on the default detector is in all three) run once.
:func:`collect` reads the runs' ``metrics/*.json`` and :func:`render` writes the markdown, so
``hmrmamba results`` re-renders the document from finished runs without training anything.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.evaluate.metric_names import METRIC_HEADERS, TABLE_METRICS

FLAGS = ("ga", "em", "im")
METRICS = TABLE_METRICS
HEADERS = METRIC_HEADERS


def ablation_label(flags: Mapping[str, bool]) -> str:
    """{'ga': True, 'em': True, 'im': False} -> 'ga+em'; all three on -> 'full'."""
    on = [k for k in FLAGS if flags[k]]
    return "full" if len(on) == len(FLAGS) else "+".join(on)


def ablation_flags(label: str) -> dict[str, bool]:
    """'ga+em' -> {'ga': True, 'em': True, 'im': False}; 'full' -> all on."""
    if label == "full":
        return {k: True for k in FLAGS}
    parts = label.split("+")
    if not parts or any(p not in FLAGS for p in parts) or len(set(parts)) != len(parts):
        raise InputError(f"bad ablation row {label!r}", field="results.table3",
                         expected="'full' or '+'-joined names from ga, em, im, e.g. 'ga+em'")
    return {k: k in parts for k in FLAGS}


@dataclass(frozen=True)
class Run:
    """One training chain: the ``experiment`` section and the training seed."""

    variant: str
    detector: str
    seed: int
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """Directory-safe, unique per run: 'tiny-cpn-s0', 'tiny-cpn-ga-em-s0'."""
        flags = [k for k, v in self.overrides if v is True]
        off = [k for k, v in self.overrides if v is False]
        parts = [self.variant, self.detector]
        if off:
            parts.append("-".join(flags) or "none")
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def experiment(self) -> dict[str, Any]:
        return {"variant": self.variant, "detector": self.detector, "overrides": dict(self.overrides)}

    def params(self) -> dict[str, Any]:
        """The dotted params the run sets besides ``experiment``."""
        return {"train_lift.seed": self.seed, "train_mesh.seed": self.seed}


@dataclass
class Plan:
    """Which runs fill which cell: ``tables[name][row] = [runs]`` (one run per seed)."""

    tables: dict[str, dict[str, list[Run]]] = field(default_factory=dict)

    def runs(self) -> list[Run]:
        """Every distinct run, in first-use order."""
        seen: dict[Run, None] = {}
        for rows in self.tables.values():
            for runs in rows.values():
                for r in runs:
                    seen.setdefault(r, None)
        return list(seen)


def make_plan(params: Mapping[str, Any]) -> Plan:
    """The runs of ``params['results']`` (see the module docstring), every name checked."""
    from hmrmamba.models.registry import resolve_config, variant_names

    res = params.get("results")
    if not isinstance(res, Mapping):
        raise InputError("missing section", file="params.yaml", field="results",
                         expected="{seeds, table1, table2, table3} (see conf/config.yaml)")
    exp = params.get("experiment", {})
    base, detector = str(exp.get("variant", "tiny")), str(exp.get("detector", "cpn"))
    seeds = [int(s) for s in res.get("seeds", [0])]
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"seeds {seeds}", file="params.yaml", field="results.seeds",
                         expected="a non-empty list of distinct integers")
    known = variant_names()
    sources = list(params.get("detect2d", {}).get("sources", []))
    plan = Plan()
    t1: dict[str, list[Run]] = {}
    for v in res.get("table1", []):
        if v not in known:
            raise InputError(f"unknown variant {v!r}", file="params.yaml", field="results.table1",
                             expected=f"names from {known}")
        t1[v] = [Run(v, detector, s) for s in seeds]
    t2: dict[str, list[Run]] = {}
    for d in res.get("table2", []):
        if d not in sources:
            raise InputError(f"unknown 2D source {d!r}", file="params.yaml", field="results.table2",
                             expected=f"sources the detect2d stage makes: {sources}")
        t2[d] = [Run(base, d, s) for s in seeds]
    t3: dict[str, list[Run]] = {}
    for row in res.get("table3", []):
        flags = ablation_flags(row)
        try:
            resolve_config(base, **flags)
        except InputError as err:
            raise InputError(f"row {row!r} does not apply to {base!r}: {err}", file="params.yaml",
                             field="results.table3", expected="a variant with GA/EM/IM switches") from None
        over = tuple(flags.items()) if not all(flags.values()) else ()
        t3[row] = [Run(base, detector, s, over) for s in seeds]
    plan.tables = {"table1": t1, "table2": t2, "table3": t3}
    return plan


def run_metrics(project: Path) -> dict[str, Any]:
    """The finished run in scratch project ``project`` -> {dataset: {metric}, stage1, params_m, ...}."""
    ev = project / "metrics/evaluate.json"
    if not ev.is_file():
        raise MissingFileError("run has not finished", file=ev, expected="the evaluate stage's metrics")
    out = json.loads(ev.read_text())
    lift = project / "metrics/train_lift.json"
    if lift.is_file():
        meta = json.loads(lift.read_text())
        out["params_m"] = meta.get("params_m")
        out["train_lift_seconds"] = meta.get("seconds")
    mesh = project / "metrics/train_mesh.json"
    if mesh.is_file():
        meta = json.loads(mesh.read_text())
        out["train_mesh_seconds"] = meta.get("seconds")
        out["params_m"] = meta.get("params_m", out.get("params_m"))
    return out


def collect(plan: Plan, projects: Mapping[Run, Path]) -> dict[str, dict[str, Any]]:
    """{run label: metrics} for every run of ``plan``; a missing run is an error naming all missing."""
    missing = [str(projects[r] / "metrics/evaluate.json") for r in plan.runs()
               if not (projects[r] / "metrics/evaluate.json").is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} run(s) have not finished", file=missing[0], field="results",
                               expected="every run of the plan (python flows/results.py), missing: "
                                        + ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                                                    if len(missing) > 5 else ""))
    return {r.label: run_metrics(projects[r]) for r in plan.runs()}


def mean_pose_baseline(layout, *, split: str, detector: str, dataset: str) -> dict[str, float]:
    """Table-1 floor: predict the train split's mean root-relative pose for every test frame."""
    import numpy as np

    from hmrmamba.data.loading import load_split_arrays
    from hmrmamba.evaluate.protocol import Predictions, evaluate_predictions
    from hmrmamba.skeleton import H36M_EVAL14

    train = load_split_arrays(layout, "train", detector=detector)
    test = load_split_arrays(layout, split, detector=detector)
    mean = train.arrays["joints3d"].mean(0)
    pred = Predictions(pose3d=np.broadcast_to(mean, test.arrays["joints3d"].shape).copy())
    joints = tuple(range(17)) if dataset == "3dhp" else H36M_EVAL14
    summary, _, _ = evaluate_predictions(pred, test, eval_joints=joints)
    return summary


# -- rendering ---------------------------------------------------------------------------------------

#: decimals per metric in the tables (ratios and mm-scale edge errors need more than one)
DECIMALS = {"roughness": 3, "edge_err": 2}


def _spread(values: Sequence[float], decimals: int = 1) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{decimals}f}"
    return f"{statistics.mean(vals):.{decimals}f} ± {statistics.stdev(vals):.{decimals}f}"


def _cells(runs: Sequence[Run], results: Mapping[str, Mapping[str, Any]], dataset: str,
           keys: Sequence[str] = METRICS, stage: str | None = None) -> list[str]:
    out = []
    for k in keys:
        vals = []
        for r in runs:
            m = results[r.label].get("stage1", {}) if stage == "stage1" else results[r.label]
            vals.append(m.get(dataset, {}).get(k, float("nan")))
        out.append(_spread(vals, DECIMALS.get(k, 1)))
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def render(plan: Plan, results: Mapping[str, Mapping[str, Any]], *, params: Mapping[str, Any],
           dataset: str, baseline: Mapping[str, float] | None = None,
           detector_errors: Mapping[str, Mapping[str, float]] | None = None, machine: str = "",
           command: str = "python flows/results.py", probe: Mapping[str, float] | None = None) -> str:
    """The markdown of docs/results.md (``probe``: the features stage's ridge probe, floor and score, mm)."""
    exp = params.get("experiment", {})
    seeds = params.get("results", {}).get("seeds", [0])
    lines = [
        "# Results on the embedded default",
        "",
        f"Regenerate with `{command}` (trains every run below, then writes this file) or, from finished",
        "runs, `hmrmamba results`. Numbers are test-split errors in mm (Accel in mm/frame²) under the",
        "PMCE/ARTS protocol (middle frame of stride-1 windows, 14 joints regressed from the mesh,",
        "MPVPE after pelvis alignment). **They are measured on the embedded synthetic data, not on",
        "Human3.6M, 3DPW or MPI-INF-3DHP**; they show that the pipeline learns and how the variants",
        "rank on this data, not the paper's numbers.",
        "",
        (f"- profile `{params.get('profile', '?')}`, dataset `{dataset}`, base variant `{exp.get('variant')}`, "
         f"2D source `{exp.get('detector')}`"),
        (f"- train_lift {params['train_lift']['epochs']} epochs, train_mesh {params['train_mesh']['epochs']} "
         f"epochs; every row trained with seeds {list(seeds)}, shown as mean ± std over them"),
    ]
    if machine:
        lines.append(f"- machine: {machine}")
    t1 = plan.tables.get("table1", {})
    if t1:
        lines += ["", "## Table 1 analogue: models (mean ± std over seeds)", ""]
        rows = []
        for v, runs in t1.items():
            params_m = results[runs[0].label].get("params_m")
            rows.append([f"`{v}`", f"{params_m:.2f}" if params_m else "–",
                         *_cells(runs, results, dataset), _cells(runs, results, dataset, ("mpjpe",), "stage1")[0]])
        if baseline:
            rows.append(["mean pose (no model)", "0", *(_spread([baseline.get(k, float("nan"))], DECIMALS.get(k, 1))
                                                        for k in METRICS), "–"])
        lines += _table(["model", "params (M)", *(HEADERS[k] for k in METRICS), "stage-1 MPJPE ↓"], rows)
    t2 = plan.tables.get("table2", {})
    if t2:
        lines += ["", f"## Table 2 analogue: 2D sources (`{exp.get('variant')}`, mean ± std over seeds)", ""]
        rows = []
        for d, runs in t2.items():
            err = (detector_errors or {}).get(d, {})
            px = err.get("mean_px")
            rows.append([f"`{d}`", f"{px:.2f}" if px is not None else "–", *_cells(runs, results, dataset)])
        lines += _table(["2D source", "2D error (px)", *(HEADERS[k] for k in METRICS)], rows)
    t3 = plan.tables.get("table3", {})
    if t3:
        lines += ["", f"## Table 3 analogue: GA / EM / IM (`{exp.get('variant')}`, mean ± std over seeds)", ""]
        rows = []
        for label, runs in t3.items():
            flags = ablation_flags(label)
            rows.append([label, *("✓" if flags[k] else "✗" for k in FLAGS), *_cells(runs, results, dataset)])
        lines += _table(["row", "GA", "EM", "IM", *(HEADERS[k] for k in METRICS)], rows)
    found = findings(plan, results, dataset=dataset, baseline=baseline)
    if plan.tables.get("table3") and not params.get("features", {}).get("weights"):
        found.append(backbone_note(probe))
    if found:
        lines += ["", "## What the numbers say", "", *(f"- {f}" for f in found)]
    return "\n".join(lines) + "\n"


def _mean(runs: Sequence[Run], results: Mapping[str, Mapping[str, Any]], dataset: str, key: str) -> float:
    vals = list(_per_seed(runs, results, dataset, key).values())
    return statistics.mean(vals) if vals else float("nan")


def backbone_note(probe: Mapping[str, float] | None) -> str:
    """What the image features that GA samples and IM reads are worth, from the features stage's probe."""
    text = ("GA samples the image feature maps and IM is built from the image features, but here they come "
            "from a randomly initialised ResNet-50 (`features.weights: null`; the paper uses SPIN's)")
    if probe and probe.get("probe_mm") is not None and probe.get("floor_mm") is not None:
        text += (f": a ridge probe from the cached global features to root-relative 3D joints scores "
                 f"{probe['probe_mm']:.1f} mm on test against {probe['floor_mm']:.1f} mm for the mean pose, so "
                 "they carry no pose information a linear read-out can find")
    return text + (". What GA adds here comes from its temporal sampling and its learned reference offsets "
                   "around the 2D joints, not from appearance; Table 3 measures that, not the paper's claim.")


def _per_seed(runs: Sequence[Run], results: Mapping[str, Mapping[str, Any]], dataset: str,
              key: str = "mpjpe") -> dict[int, float]:
    out = {}
    for r in runs:
        v = results[r.label].get(dataset, {}).get(key, float("nan"))
        if not math.isnan(v):
            out[r.seed] = v
    return out


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def separated_pairs(rows: Mapping[str, Sequence[Run]], results: Mapping[str, Mapping[str, Any]],
                    dataset: str, key: str = "mpjpe") -> tuple[list[str], float]:
    """Pairs of rows whose mean ``key`` differs by more than twice the larger of their seed stds
    -> (["`a` 80.1 < `b` 85.3 (Δ 5.2 mm)", ...], largest std in the table). With one seed: ([], nan)."""
    stats = {}
    for row, runs in rows.items():
        vals = list(_per_seed(runs, results, dataset, key).values())
        if vals:
            stats[row] = (statistics.mean(vals), _std(vals))
    out = []
    names = sorted(stats, key=lambda r: stats[r][0])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (ma, sa), (mb, sb) = stats[a], stats[b]
            if math.isnan(sa) or math.isnan(sb):
                continue
            if mb - ma > 2 * max(sa, sb):
                out.append(f"`{a}` {ma:.1f} < `{b}` {mb:.1f} (Δ {mb - ma:.1f} mm)")
    stds = [s for _, s in stats.values() if not math.isnan(s)]
    return out, (max(stds) if stds else float("nan"))


def removal_effects(t3: Mapping[str, Sequence[Run]], results: Mapping[str, Mapping[str, Any]],
                    dataset: str, key: str = "mpjpe") -> dict[str, tuple[float, float, int]]:
    """What removing each module from the full model costs: {'GA': (mean, std, n)} of the per-seed paired
    difference (row without the module − full row, so positive = the module helps)."""
    full = _per_seed(t3.get("full", ()), results, dataset, key)
    out = {}
    for module, row in (("GA", "em+im"), ("EM", "ga+im"), ("IM", "ga+em")):
        if row not in t3 or not full:
            continue
        other = _per_seed(t3[row], results, dataset, key)
        diffs = [other[s] - full[s] for s in sorted(full) if s in other]
        if diffs:
            out[module] = (statistics.mean(diffs), _std(diffs), len(diffs))
    return out


def findings(plan: Plan, results: Mapping[str, Mapping[str, Any]], *, dataset: str,
             baseline: Mapping[str, float] | None = None) -> list[str]:
    """Plain statements computed from the tables: ranking, margins against the floor, which differences
    exceed twice the seed spread, and what removing each of GA/EM/IM costs."""
    out = []
    t1 = plan.tables.get("table1", {})
    if t1:
        ranked = sorted(t1, key=lambda v: _mean(t1[v], results, dataset, "mpjpe"))
        best = ranked[0]
        out.append("Table 1 MPJPE ranking: " + " < ".join(
            f"`{v}` {_mean(t1[v], results, dataset, 'mpjpe'):.1f}" for v in ranked) + " mm.")
        if baseline and "mpjpe" in baseline:
            out.append(f"The mean-pose floor is {baseline['mpjpe']:.1f} mm MPJPE; the best model is "
                       f"{baseline['mpjpe'] - _mean(t1[best], results, dataset, 'mpjpe'):.1f} mm below it.")
    for name, title in (("table1", "Table 1"), ("table2", "Table 2"), ("table3", "Table 3")):
        rows = plan.tables.get(name, {})
        if len(rows) < 2:
            continue
        pairs, spread = separated_pairs(rows, results, dataset)
        if math.isnan(spread):
            continue
        stds = [_std(list(_per_seed(runs, results, dataset).values())) for runs in rows.values()]
        stds = [s for s in stds if not math.isnan(s)]
        head = (f"{title}: seed-to-seed std of MPJPE {min(stds):.1f}–{max(stds):.1f} mm. Differences above twice "
                "the larger std of the two rows: ")
        out.append(head + ("; ".join(pairs) + "." if pairs else "none; every other difference in the table is "
                                                                  "within seed noise."))
    t3 = plan.tables.get("table3", {})
    if len(t3) > 1:
        by = {row: _mean(runs, results, dataset, "mpjpe") for row, runs in t3.items()}
        best = min(by, key=by.get)
        if "full" in by:
            out.append(f"Table 3: the full model scores {by['full']:.1f} mm; the best row is `{best}` "
                       f"({by[best]:.1f} mm)" + ("." if best == "full" else
                                                 ", so on this data the full model does not beat every ablation."))
        effects = removal_effects(t3, results, dataset)
        if effects:
            parts = []
            for module, (mean, std, n) in effects.items():
                spread = "" if math.isnan(std) else f" ± {std:.1f}"
                verdict = ("" if math.isnan(std) else " (helps)" if mean > 2 * std else
                           " (hurts)" if mean < -2 * std else " (within noise)")
                parts.append(f"{module} {mean:+.1f}{spread} mm{verdict}")
            out.append(f"Removing one module from the full model changes test MPJPE by (per-seed paired "
                       f"difference, mean ± std over {max(n for _, _, n in effects.values())} seeds; positive = "
                       "the module helps): " + ", ".join(parts) + ".")
        out.append("Rows with GA on share one stage-1 lifter per seed (EM and IM live in the reconstructor), "
                   "and every row trains in its own process with its own seed, so a row's numbers repeat "
                   "bit for bit when it is rerun.")
    return out


def write_results(path: Path, markdown: str, payload: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write the markdown and, beside it, the raw numbers as JSON (``results.json``) -> both paths."""
    from hmrmamba.atomic import atomic_path, write_json

    with atomic_path(path) as tmp:
        Path(tmp).write_text(markdown)
    js = path.with_suffix(".json")
    write_json(js, dict(payload))
    return path, js


#: Where the flow keeps each run's scratch project, relative to the project root.
SCRATCH = "outputs/flows/results"


def run_projects(root: Path, plan: Plan) -> dict[Run, Path]:
    return {r: root / SCRATCH / r.label for r in plan.runs()}


def machine_line(params: Mapping[str, Any]) -> str:
    """This machine and the torch threads each run trained with (``runtime.threads``, not this process's)."""
    import os
    import platform

    import torch

    threads = params.get("runtime", {}).get("threads")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {threads if threads else 'all'} torch thread(s) per run")


def write_document(root: Path, params: Mapping[str, Any], *, command: str = "python flows/results.py") -> Path:
    """Collect the finished runs of the plan in ``params`` under ``root``, render and write -> the .md path."""
    from hmrmamba.config import resolve_path
    from hmrmamba.layout import Layout

    plan = make_plan(params)
    found = collect(plan, run_projects(root, plan))
    layout = Layout(root)
    dataset = str(params.get("dataset", {}).get("name", "synthetic"))
    split = str(params.get("evaluate", {}).get("split", "test"))
    detector = str(params.get("experiment", {}).get("detector", "cpn"))
    baseline = mean_pose_baseline(layout, split=split, detector=detector, dataset=dataset)
    det_json = layout.metrics("detect2d")
    detector_errors = json.loads(det_json.read_text()).get(split, {}) if det_json.is_file() else {}
    feat_json = layout.metrics("features")
    probe = None
    if feat_json.is_file():
        feat = json.loads(feat_json.read_text()).get("probe", {})
        probe = {"probe_mm": feat.get("probe_mm"), "floor_mm": feat.get("floor_mm")} if feat else None
    md = render(plan, found, params=params, dataset=dataset, baseline=baseline,
                detector_errors=detector_errors, machine=machine_line(params), command=command, probe=probe)
    out = resolve_path(root, params.get("results", {}).get("output", "docs/results.md"), field="results.output")
    payload = {"dataset": dataset, "profile": params.get("profile"), "mean_pose": baseline,
               "tables": {t: {row: [r.label for r in runs] for row, runs in rows.items()}
                          for t, rows in plan.tables.items()},
               "runs": found}
    write_results(out, md, payload)
    return out
