"""Table 3 as a Prefect flow: the GA/EM/IM ablation rows, the vanilla bi-scan and the PMCE-like baseline.

    python flows/ablation.py                              # all rows, base variant from params
    python flows/ablation.py --rows ga full vanilla --max-parallel 2 -- train_lift.epochs=2

Each row is a train_lift -> train_mesh -> evaluate chain in its own scratch project (see
:mod:`flows.common`); rows with GA on train the same lifter, so their stage 1 runs once and their stage 2
starts from it. Each task runs in its own worker process of a Dask cluster (``--max-parallel`` processes;
default: ``flows.workers``, else CPU cores / runtime.threads, 1 on a GPU; ``flows.scheduler`` names an
existing cluster), so a row gives the same bits alone or beside others. The flow ends with a comparison
table (Prefect artifact, ``plots/ablation.csv``, ``plots/ablation.png``) built from the rows' MLflow runs.
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect loads: it reads PREFECT_HOME (and creates it) on import
    from flows import script_environment

    script_environment("flows/ablation.py")

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import common, comparison
from hmrmamba.errors import InputError
from hmrmamba.models.registry import TABLE3_ABLATIONS, resolve_config, variant_names

FLAGS = ("ga", "em", "im")


def row_label(flags: Mapping[str, bool]) -> str:
    """{'ga': True, 'em': True, 'im': False} -> 'ga+em'; all three on -> 'full'."""
    on = [k for k in FLAGS if flags[k]]
    return "full" if len(on) == len(FLAGS) else "+".join(on)


#: Table 3 rows: label -> GA/EM/IM flags (overrides of the base variant).
TABLE3: dict[str, dict[str, bool]] = {row_label(f): dict(f) for f in TABLE3_ABLATIONS}
BASELINES = ("vanilla", "pmce")
ROWS: tuple[str, ...] = (*TABLE3, *BASELINES)

def row_experiment(label: str, *, base: str, detector: str) -> dict[str, Any]:
    """The ``experiment`` section of one row.

    Table-3 rows switch GA/EM/IM on ``base``. ``vanilla`` is ``<base>-vanilla`` where registered, else ``base``
    with the bidirectional (non dual-scan) scan. ``pmce`` is the registry's ``pmce`` next to a paper-size base
    (hmrmamba-*), else the registry's ``pmce-tiny``.
    """
    if label in TABLE3:
        return {"variant": base, "detector": detector, "overrides": dict(TABLE3[label])}
    if label == "vanilla":
        if f"{base}-vanilla" in variant_names():
            return {"variant": f"{base}-vanilla", "detector": detector, "overrides": {}}
        return {"variant": base, "detector": detector, "overrides": {"scan": "bi"}}
    if label == "pmce":
        paper = base.startswith("hmrmamba-")
        return {"variant": "pmce" if paper else "pmce-tiny", "detector": detector, "overrides": {}}
    raise InputError(f"unknown ablation row {label!r}", field="rows", expected=f"names from {list(ROWS)}")


def plan(params: Mapping[str, Any], rows: Sequence[str] | None, base: str | None) -> list[common.Variant]:
    """The rows as variants, every one checked (row name, base variant, its overrides, detector)."""
    rows = list(ROWS if rows is None else rows)
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows or len(set(rows)) != len(rows):
        raise InputError(f"bad rows {rows}" + (f" (unknown: {unknown})" if unknown else ""), field="rows",
                         expected=f"distinct names from {list(ROWS)}")
    exp = common.check_experiment(params)
    base = base or exp["variant"]
    if base not in variant_names():
        raise InputError(f"unknown base variant {base!r}", field="base", expected=f"one of {variant_names()}")
    variants = []
    for label in rows:
        e = row_experiment(label, base=base, detector=exp["detector"])
        try:
            resolve_config(e["variant"], **e["overrides"])
        except InputError as err:
            raise InputError(f"row {label!r} does not apply to base {base!r}: {err}", field="base",
                             expected="a variant with a sta-mamba lifter and a motion-guided reconstructor") from None
        flags = {k: str(v) for k, v in TABLE3.get(label, {}).items()}
        variants.append(common.Variant(label, e, tags={"variant": label, **flags}))
    return variants


@flow(name="hmrmamba-ablation", flow_run_name=common.run_name_from_parameters("ablation", "base", "rows"),
      task_runner=ThreadPoolTaskRunner(max_workers=8))
def ablation(root: str | None = None, profile: str | None = None, overrides: list[str] | None = None,
             rows: list[str] | None = None, base: str | None = None, max_parallel: int | None = None,
             prepare_data: bool = True) -> dict[str, dict]:
    """Train and evaluate the Table-3 ``rows`` (default all of :data:`ROWS`) -> {row: {stage: metrics}}.

    ``base`` defaults to ``experiment.variant``. With ``prepare_data`` the data stages run first when their
    outputs are missing (run ``dvc repro features`` to bring stale data up to date).

    Args:
        root: The project directory (holding params.yaml and conf/); default: the nearest one above the
            working directory.
        profile: Compose the params from conf/ with this profile instead of using params.yaml.
        overrides: Hydra overrides of the params, e.g. ["train_lift.epochs=2"].
        rows: Table-3 rows to run, e.g. ["ga", "ga+em", "full"]; default: all.
        base: The variant the rows switch GA/EM/IM on; default: experiment.variant.
        max_parallel: Rows training at once (worker processes); default: flows.workers, else CPU cores /
            runtime.threads (1 on a GPU).
        prepare_data: Run the data stages first when their outputs are missing (else fail).
    """
    return comparison.run_comparison(
        "ablation", root=root, profile=profile, overrides=overrides, max_parallel=max_parallel,
        prepare_data=prepare_data, make_variants=lambda params: plan(params, rows, base), by="variant",
        columns={"GA": "ga", "EM": "em", "IM": "im"})


def build_parser() -> argparse.ArgumentParser:
    parser = common.comparison_parser("flows/ablation.py", __doc__.split("\n\n")[0], what="rows")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help=f"rows to run (default: {' '.join(ROWS)})")
    parser.add_argument("--base", help="variant the rows modify (default: experiment.variant)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.cli_call(
        "flows/ablation.py", ablation, root=args.root, profile=args.profile, overrides=args.overrides or None,
        rows=args.rows, base=args.base, max_parallel=args.max_parallel, prepare_data=not args.no_prepare_data)


if __name__ == "__main__":
    raise SystemExit(main())
