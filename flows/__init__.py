"""Prefect flows over the hmrmamba stages: ``pipeline`` (the DVC graph), ``ablation`` (Table 3), ``detectors``
(Table 2). Run one with ``python flows/<name>.py --help``.

This package imports no Prefect at import time; :func:`prepare_environment` is what the flow scripts call
before Prefect loads, because Prefect reads ``PREFECT_HOME`` (and creates that directory) on import.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path


def prefect_home_for(root: Path) -> Path:
    """Where Prefect keeps its database and profiles for this project: ``<root>/.prefect``."""
    return Path(root).resolve() / ".prefect"


def prepare_environment(argv: Sequence[str] | None = None) -> Path:
    """Telemetry off, and ``PREFECT_HOME`` under the project unless the user chose one -> the project root.

    ``--root`` in ``argv`` names the project; otherwise the nearest directory holding params.yaml. Call it
    before anything imports prefect. A user-set ``PREFECT_HOME`` must be absolute (a relative one would
    move with the working directory).
    """
    from hmrmamba.config import find_project_root
    from hmrmamba.errors import InputError
    from hmrmamba.stages.common import apply_offline_env

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root")
    known, _ = parser.parse_known_args(argv)
    root = Path(known.root).resolve() if known.root else find_project_root()
    apply_offline_env()
    if "PREFECT_HOME" in os.environ:
        if not Path(os.environ["PREFECT_HOME"]).expanduser().is_absolute():
            raise InputError(f"PREFECT_HOME={os.environ['PREFECT_HOME']!r} is relative", field="PREFECT_HOME",
                             expected="an absolute path, or unset to use <project>/.prefect")
    else:
        os.environ["PREFECT_HOME"] = str(prefect_home_for(root))
    return root


def script_environment(prog: str, argv: Sequence[str] | None = None) -> Path:
    """:func:`prepare_environment` for a ``__main__`` block: a one-line error and exit 2 on bad input."""
    import sys

    from hmrmamba.errors import InputError

    try:
        return prepare_environment(sys.argv[1:] if argv is None else argv)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
