"""DVC stage ``features``: per-frame ResNet-50 features of person crops, cached as fp16 HDF5."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from hmrmamba.config import resolve_path
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main
from hmrmamba.stages.detect2d import splits_of

STAGE = "features"
log = logging.getLogger(__name__)


def build_backbone(p: Mapping[str, Any], layout: Layout):
    """The configured backbone and a note on where its weights came from."""
    from hmrmamba.features.resnet import ResNet50
    from hmrmamba.features.weights import load_backbone_weights

    if p.get("backbone", "resnet50") != "resnet50":
        raise InputError(f"unknown backbone '{p.get('backbone')}'", file="params.yaml",
                         field="features.backbone", expected="'resnet50'")
    model = ResNet50(init_seed=int(p.get("init_seed", 0)))
    if p.get("weights"):
        path = resolve_path(layout.root, p["weights"], field="features.weights")
        report = load_backbone_weights(model, path)
        return model, f"loaded {path} ({report})"
    note = f"seeded random init (init_seed={int(p.get('init_seed', 0))}); set features.weights for pretrained"
    log.warning("features: %s", note)
    return model, note


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    import numpy as np

    from hmrmamba.data.h5schema import FRAME_FIELDS, Field, open_h5, read_table
    from hmrmamba.data.h5schema import write_table
    from hmrmamba.features.extract import extract_features

    p = params[STAGE]
    model, weights_note = build_backbone(p, layout)
    source = p.get("bbox_source", "cpn")
    metrics: dict[str, Any] = {"weights": weights_note, "crop_size": int(p["crop_size"])}
    for split in splits_of(params):
        prepared = layout.prepared(split)
        with open_h5(prepared) as h5:
            if "frames/image" not in h5:
                raise InputError("no images to compute features from", file=prepared, field="frames/image",
                                 expected=FRAME_FIELDS["image"].describe("N"))
            images = h5["frames/image"]
            n = images.shape[0]
            det, _ = read_table(layout.detections(split),
                                {f"{source}/keypoints": Field((17, 2), "f", finite=True),
                                 f"{source}/confidence": Field((17,), "f", finite=True)}, rows=n)
            out = extract_features(images, det[f"{source}/keypoints"], det[f"{source}/confidence"],
                                   model=model, crop_size=int(p["crop_size"]),
                                   batch_size=int(p["batch_size"]), keep_spatial=bool(p.get("keep_spatial")),
                                   bbox_scale=float(p.get("bbox_scale", 1.2)))
        write_table(layout.features(split), {k: v for k, v in out.items()},
                    attrs={"backbone": "resnet50", "weights": weights_note, "bbox_source": source,
                           "crop_size": int(p["crop_size"])})
        metrics[split] = {"frames": int(n), "feature_std": float(np.std(out["features"].astype(np.float32)))}
    return metrics


if __name__ == "__main__":
    stage_main(STAGE, run)
