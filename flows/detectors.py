"""Table 2 as a Prefect flow: one model trained and tested on each 2D detector's keypoints.

    python flows/detectors.py                                   # sh, detectron, cpn, gt
    python flows/detectors.py --detectors cpn gt -- train_lift.epochs=2

The detect2d stage makes every source in ``detect2d.sources`` at once; each detector is then a
train_lift -> train_mesh -> evaluate chain in its own scratch project (see :mod:`flows.common`), its
tasks each in a worker process of a Dask cluster (as in :mod:`flows.ablation`), ending in a comparison
table (Prefect artifact, ``plots/detectors.csv`` and ``.png``).
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect loads: it reads PREFECT_HOME (and creates it) on import
    from flows import script_environment

    script_environment("flows/detectors.py")

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import common, comparison
from hmrmamba.errors import InputError

#: Table 2's detectors, in the paper's order.
DETECTORS: tuple[str, ...] = ("sh", "detectron", "cpn", "gt")


def plan(params: Mapping[str, Any], detectors: Sequence[str] | None, variant: str | None) -> list[common.Variant]:
    """One variant per detector, each checked against ``detect2d.sources`` and the model registry."""
    detectors = list(DETECTORS if detectors is None else detectors)
    sources = list(params.get("detect2d", {}).get("sources", []))
    bad = [d for d in detectors if d not in sources]
    if bad or not detectors or len(set(detectors)) != len(detectors):
        raise InputError(f"bad detectors {detectors}" + (f" (not made by detect2d: {bad})" if bad else ""),
                         field="detectors", expected=f"distinct names from detect2d.sources {sources}")
    exp = common.check_experiment(params)
    variant = variant or exp["variant"]
    out = []
    for det in detectors:
        experiment = {"variant": variant, "detector": det, "overrides": dict(exp["overrides"])}
        common.check_experiment({**params, "experiment": experiment})
        out.append(common.Variant(det, experiment))
    return out


@flow(name="hmrmamba-detectors", flow_run_name=common.run_name_from_parameters("detectors", "variant", "detectors"),
      task_runner=ThreadPoolTaskRunner(max_workers=8))
def detectors(root: str | None = None, profile: str | None = None, overrides: list[str] | None = None,
              detectors: list[str] | None = None, variant: str | None = None, max_parallel: int | None = None,
              prepare_data: bool = True) -> dict[str, dict]:
    """Train and evaluate ``variant`` (default ``experiment.variant``) on each of ``detectors`` (default
    :data:`DETECTORS`) -> {detector: {stage: metrics}}. Data stages run first when their outputs are missing.

    Args:
        root: The project directory (holding params.yaml and conf/); default: the nearest one above the
            working directory.
        profile: Compose the params from conf/ with this profile instead of using params.yaml.
        overrides: Hydra overrides of the params, e.g. ["train_lift.epochs=2"].
        detectors: 2D sources to compare, e.g. ["gt", "cpn"]; default: all.
        variant: The model variant; default: experiment.variant.
        max_parallel: Rows training at once (worker processes); default: flows.workers, else CPU cores /
            runtime.threads (1 on a GPU).
        prepare_data: Run the data stages first when their outputs are missing (else fail).
    """
    return comparison.run_comparison(
        "detectors", root=root, profile=profile, overrides=overrides, max_parallel=max_parallel,
        prepare_data=prepare_data, make_variants=lambda params: plan(params, detectors, variant),
        by="detector2d")


def build_parser() -> argparse.ArgumentParser:
    parser = common.comparison_parser("flows/detectors.py", __doc__.split("\n\n")[0], what="detectors")
    parser.add_argument("--detectors", nargs="+", help=f"2D sources to compare (default: {' '.join(DETECTORS)})")
    parser.add_argument("--variant", help="model variant (default: experiment.variant)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.cli_call(
        "flows/detectors.py", detectors, root=args.root, profile=args.profile, overrides=args.overrides or None,
        detectors=args.detectors, variant=args.variant, max_parallel=args.max_parallel,
        prepare_data=not args.no_prepare_data)


if __name__ == "__main__":
    raise SystemExit(main())
