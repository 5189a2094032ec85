"""Serve the hmrmamba flows as Prefect deployments, so they can be started from the Prefect UI.

    PREFECT_HOME=$PWD/.prefect .venv/bin/prefect server start --host 127.0.0.1 &
    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python flows/serve.py

Open http://127.0.0.1:4200, pick a deployment (``hmrmamba-pipeline/main``, ``hmrmamba-ablation/main``,
``hmrmamba-detectors/main``, ``hmrmamba-results/main``) and press *Run*: its parameters (profile, Hydra
overrides, rows, detectors, ...) are editable there. The deployments run in this process, on this
machine, against this project (``root`` is preset to it). Stop with Ctrl-C. Without ``PREFECT_API_URL`` the
deployments register on a server of this process's own (its URL is printed; it stops with the process, also
after ``kill -9``), so start a server first to keep the runs' history.
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect loads: it reads PREFECT_HOME (and creates it) on import
    from flows import script_environment

    script_environment("flows/serve.py")

import argparse
import inspect
from pathlib import Path

from flows import common


def description(fn) -> str:
    """A deployment's description: the first paragraph of its flow's docstring, on one line. (Prefect takes
    the parameters' descriptions from the docstring's ``Args:`` section itself.)"""
    return " ".join(inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].split())


def deployments(root: Path, *, name: str = "main") -> list:
    """One runner deployment per flow, each with ``root`` preset and described -> [RunnerDeployment]."""
    from flows.ablation import ablation
    from flows.detectors import detectors
    from flows.pipeline import pipeline
    from flows.results import results

    return [f.to_deployment(name=name, parameters={"root": str(root)}, description=description(f),
                            tags=["hmrmamba"])
            for f in (pipeline, ablation, detectors, results)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flows/serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="project root (default: the nearest directory holding params.yaml)")
    parser.add_argument("--name", default="main", help="deployment name (default: main)")
    parser.add_argument("--limit", type=int, help="at most this many flow runs at once")
    args = parser.parse_args(argv)
    from prefect import serve

    from flows import flow_server

    # without PREFECT_API_URL: a server of our own, stopped with this process (kill -9 too), as for the flows
    with flow_server() as url:
        if url:
            print(f"flows/serve.py: no PREFECT_API_URL set; serving on a temporary Prefect server at {url} "
                  "(UI at the same address without /api)", flush=True)
        serve(*deployments(common.resolve_root(args.root), name=args.name), limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
