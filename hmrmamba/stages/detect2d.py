"""DVC stage ``detect2d``: 2D keypoints from every configured source, per split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.config import resolve_path
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main

STAGE = "detect2d"


def splits_of(params: Mapping[str, Any]) -> list[str]:
    """The split names the prepare stage writes for the configured dataset."""
    from hmrmamba.data.real.dispatch import is_real, real_splits

    return real_splits(params) if is_real(params) else list(params["synthetic"]["splits"])


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    import numpy as np

    from hmrmamba.data.h5schema import read_split, write_table
    from hmrmamba.data.real.dispatch import is_real, real_detections, real_sources
    from hmrmamba.detect.sources import DETECTOR_SOURCES, detect, error_report
    from hmrmamba.named_rng import named_rng
    from hmrmamba.settings import section_settings

    p = section_settings(params, STAGE)
    sources = list(p.sources)
    real = is_real(params)
    allowed = list(DETECTOR_SOURCES) + list(real_sources(params) if real else ())
    unknown = [s for s in sources if s not in allowed]
    if unknown or not sources:
        raise InputError(f"unknown or no sources {unknown}", file="params.yaml", field="detect2d.sources",
                         expected=f"a non-empty list from {allowed}")
    metrics: dict[str, Any] = {}
    for split in splits_of(params):
        data = read_split(layout.prepared(split))
        size = int(data.attrs.get("image_size", 0)) or None
        arrays, report = {}, {}
        for source in sources:
            # a real dataset's own 2D files (H36M cpn/detectron/sh, 3DPW openpose) when it has them
            det = real_detections(params, layout, split=split, source=source, data=data) if real else None
            if det is None:
                file = None
                if source == "file":
                    files = p.files
                    if split not in files:
                        raise InputError(f"no keypoint file for split '{split}'", file="params.yaml",
                                         field="detect2d.files", expected=f"{{{split}: path/to/file.npz}}")
                    file = resolve_path(layout.root, files[split], field=f"detect2d.files.{split}")
                det = detect(source, joints2d=data.frames["joints2d"], seq_start=data.seqs["seq_start"],
                             seq_len=data.seqs["seq_len"],
                             rng=named_rng(p.seed, "detect2d", split, source), file=file,
                             image_size=size, noise_scale=float(p.noise_scale))
            arrays[f"{source}/keypoints"] = det.kp.astype(np.float32)
            arrays[f"{source}/confidence"] = det.conf.astype(np.float32)
            rep = error_report(det.kp, data.frames["joints2d"], det.conf)
            report[source] = {k: round(float(v), 4) for k, v in rep.items()
                              if isinstance(v, (int, float, np.number))}
        write_table(layout.detections(split), arrays,
                    attrs={"sources": ",".join(sources), "split": split, "joint_set": "h36m17"})
        metrics[split] = report
    return metrics


if __name__ == "__main__":
    stage_main(STAGE, run)
