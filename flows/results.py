"""docs/results.md as a Prefect flow: train every run of the Table 1-3 analogues, then write the document.

    python flows/results.py                               # the plan in params.yaml's `results` section
    python flows/results.py --max-parallel 2 -- results.seeds=[0]

Each distinct run (see :mod:`hmrmamba.report.results`) is a train_lift -> train_mesh -> evaluate chain in its own
scratch project ``outputs/flows/results/<run>/`` (see :mod:`flows.common`; runs with the same stage 1
share it), each task in a worker process of a Dask cluster (as in :mod:`flows.ablation`); a rerun resumes
finished and half-finished runs from their checkpoints. The flow ends by writing
``results.output`` (default ``docs/results.md``) and ``results.json`` beside it, and publishing the markdown
as a Prefect artifact. ``hmrmamba results`` re-renders the document from the finished runs.
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect loads: it reads PREFECT_HOME (and creates it) on import
    from flows import script_environment

    script_environment("flows/results.py")

import argparse

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import common, comparison
from hmrmamba.report import results as R

FLOW = "results"


def variants(plan: R.Plan) -> list[common.Variant]:
    """Every distinct run of ``plan`` as a flow variant (its label names the scratch project)."""
    return [common.Variant(r.label, r.experiment(), tags={"results_run": r.label}, params=r.params())
            for r in plan.runs()]


@flow(name="hmrmamba-results", flow_run_name=common.run_name_from_parameters("results"),
      task_runner=ThreadPoolTaskRunner(max_workers=8))
def results(root: str | None = None, profile: str | None = None, overrides: list[str] | None = None,
            max_parallel: int | None = None, prepare_data: bool = True) -> str:
    """Train the runs of the ``results`` plan that have not finished, then write the document -> its path.

    Args:
        root: The project directory (holding params.yaml and conf/); default: the nearest one above the
            working directory.
        profile: Compose the params from conf/ with this profile instead of using params.yaml.
        overrides: Hydra overrides of the params, e.g. ["train_lift.epochs=2"].
        max_parallel: Rows training at once (worker processes); default: flows.workers, else CPU cores /
            runtime.threads (1 on a GPU).
        prepare_data: Run the data stages first when their outputs are missing (else fail).
    """
    project = common.resolve_root(root)
    params = common.load_flow_params(project, profile, overrides)
    common.check_experiment(params)
    plan = R.make_plan(params)
    with comparison.flow_session(FLOW, project, params, max_parallel=max_parallel,
                                 prepare_data=prepare_data) as fs:
        futures = common.run_variants(variants(plan), root=project, flow_name=FLOW, params=fs.params, uri=fs.uri,
                                      base_tags=fs.tags, parent_run_id=fs.parent_run_id, workers=fs.workers)
        common.raise_if_failed(futures, "run")
        path = R.write_document(project, fs.params, command="python flows/results.py")
        common.log_parent_artifacts(fs.uri, fs.parent_run_id, [path, path.with_suffix(".json")])
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=path.read_text(), key=common.artifact_key(FLOW, "summary"),
                                 description="hmrmamba results (Tables 1-3 analogues)")
    return str(path)


def build_parser() -> argparse.ArgumentParser:
    return common.comparison_parser("flows/results.py", __doc__.split("\n\n")[0], what="runs")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.cli_call("flows/results.py", results, root=args.root, profile=args.profile,
                           overrides=args.overrides or None, max_parallel=args.max_parallel,
                           prepare_data=not args.no_prepare_data)


if __name__ == "__main__":
    raise SystemExit(main())
