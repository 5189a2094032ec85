"""DVC stage ``report``: reports/report.md with the tables, curves and mesh pictures of the latest run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main

STAGE = "report"


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from hmrmamba.atomic import atomic_dir
    from hmrmamba.config import resolve_path
    from hmrmamba.report.document import build_report
    from hmrmamba.settings import section_settings
    from hmrmamba.mlflow_runs import log_artifact

    s = section_settings(params, STAGE)
    out_dir = resolve_path(layout.root, s.dir, field="report.dir")
    with atomic_dir(out_dir, field="report.dir") as tmp:
        summary = build_report(layout, params, out_dir=tmp, clips=s.clips, frames_per_clip=s.frames_per_clip)
    summary["report"] = str(out_dir / "report.md")
    for path in sorted(out_dir.iterdir()):
        if path.suffix in (".md", ".png"):
            log_artifact(path, "report")
    return summary


if __name__ == "__main__":
    stage_main(STAGE, run)
