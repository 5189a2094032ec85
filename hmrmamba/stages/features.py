"""DVC stage ``features``: per-frame ResNet-50 features of person crops, cached as fp16 HDF5.

Where the pixels come from, per split:

* the split's own ``frames/image`` (synthetic data);
* a real dataset's videos / image folders (:mod:`hmrmamba.data.real.frames`), streamed sequence by
  sequence; every expected file is checked before any work starts;
* or, with ``features.import_path``, precomputed features (:mod:`hmrmamba.features.importing`),
  and no backbone at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hmrmamba.config import resolve_path
from hmrmamba.errors import InputError
from hmrmamba.features.backbone import build_backbone, trained_backbone_path
from hmrmamba.layout import Layout
from hmrmamba.settings import section_settings
from hmrmamba.stages.common import main as stage_main
from hmrmamba.stages.detect2d import splits_of

STAGE = "features"
log = logging.getLogger(__name__)


def image_hw(data) -> Any:
    """(S, 2) int (H, W) of each sequence's original images: ``image_wh``, else the square ``image_size``."""
    import numpy as np

    if "image_wh" in data.seqs:
        return np.asarray(data.seqs["image_wh"], np.int64).reshape(-1, 2)[:, ::-1]
    size = int(data.attrs.get("image_size", 0))
    if size <= 0:
        raise InputError("missing attribute", file=data.path, field="image_size",
                         expected="the frame size in pixels (written by the prepare stage)")
    return np.full((data.num_seqs, 2), size, np.int64)


def read_detections(layout: Layout, split: str, source: str, rows: int) -> tuple:
    """(keypoints (N, 17, 2) px, confidence (N, 17)) of ``source`` for ``split``."""
    from hmrmamba.data.h5schema import Field, read_table

    det, _ = read_table(layout.detections(split),
                        {f"{source}/keypoints": Field((17, 2), "f", finite=True),
                         f"{source}/confidence": Field((17,), "f", finite=True)}, rows=rows)
    return det[f"{source}/keypoints"], det[f"{source}/confidence"]


def _stored_images(h5: Any, file: Any) -> Any:
    """The split's ``frames/image`` dataset (None when absent); damaged HDF5 metadata (h5py's errors on
    the lookup) is an :class:`InputError` naming the file (:func:`~hmrmamba.data.h5schema.corrupt_as_input_error`)."""
    import h5py

    from hmrmamba.data.h5schema import corrupt_as_input_error

    with corrupt_as_input_error(file, ["frames/image"], "an HDF5 split written by the pipeline (re-run "
                                                        "the `prepare` stage)"):
        ds = h5.get("frames/image")
        if ds is not None and not isinstance(ds, h5py.Dataset):
            raise InputError(f"is a {type(ds).__name__}", file=file, field="frames/image",
                             expected="(N, H, W, 3) uint8 frames")
        if ds is not None:
            ds.shape  # noqa: B018 - reads the dataspace, which a damaged header fails on
        return ds


def plan_sources(params: Mapping[str, Any], layout: Layout, splits: list[str]) -> dict[str, list | None]:
    """split -> None (frames stored in the split) or its real frame sources; fails early, listing
    every missing video/image of all splits."""
    from hmrmamba.data.real.frames import require_sources
    from hmrmamba.data.h5schema import FRAME_FIELDS, open_h5, read_split
    from hmrmamba.data.real.dispatch import dataset_name, image_root, is_real, real_frame_sources

    plans: dict[str, list | None] = {}
    for split in splits:
        prepared = layout.prepared(split)
        with open_h5(prepared) as h5:
            stored = _stored_images(h5, prepared) is not None
        if stored:
            plans[split] = None
        elif not is_real(params):
            raise InputError("no images to compute features from", file=prepared, field="frames/image",
                             expected=FRAME_FIELDS["image"].describe("N"))
        else:
            plans[split] = real_frame_sources(params, layout, data=read_split(prepared))
    real = {k: v for k, v in plans.items() if v is not None}
    if real:
        require_sources(real, dataset=dataset_name(params), root=image_root(params, layout.root))
    return plans


def run_import(params: Mapping[str, Any], layout: Layout, splits: list[str]) -> dict:
    """``features.import_path``: precomputed features matched to every split's rows."""
    import numpy as np

    from hmrmamba.features.importing import import_path_for, load_feature_file, match_split_rows
    from hmrmamba.data.real.frames import split_frame_index
    from hmrmamba.data.h5schema import read_split, write_table
    from hmrmamba.features.sequences import sequence_boxes

    fs = section_settings(params, STAGE)
    value = fs.import_path
    paths = {}
    for split in splits:
        rel = import_path_for(value, split)
        if rel is None:
            raise InputError(f"no feature file for split '{split}'", file="params.yaml", field="features.import_path",
                             expected=f"a path, or a mapping with a path for each of {splits}")
        paths[split] = resolve_path(layout.root, rel, field=f"features.import_path.{split}")
    loaded = {path: load_feature_file(path) for path in dict.fromkeys(paths.values())}  # all checked up front
    # match every split before writing any, so a missing row leaves no output behind
    data, rows = {}, {}
    for split in splits:
        data[split] = read_split(layout.prepared(split))
        stride = int(data[split].attrs.get("frame_stride", 1))
        frame = split_frame_index(data[split].seqs["seq_len"], stride=stride)
        rows[split] = match_split_rows(loaded[paths[split]], data[split], frame=frame, split=split)
    source = fs.bbox_source
    metrics: dict[str, Any] = {"weights": "imported", "crop_size": fs.crop_size}
    cached: dict[str, Any] = {}
    for split in splits:
        imported, d = loaded[paths[split]], data[split]
        out = {"features": imported.features[rows[split]].astype(np.float16)}
        if imported.bbox is not None:
            out["boxes"] = imported.bbox[rows[split]]
        else:
            kp, conf = read_detections(layout, split, source, d.num_frames)
            out["boxes"] = sequence_boxes(kp, conf, seq_start=d.seqs["seq_start"], seq_len=d.seqs["seq_len"],
                                          image_hw=image_hw(d), scale=fs.bbox_scale)
        write_table(layout.features(split), out,
                    attrs={"backbone": "imported", "weights": f"imported from {paths[split]}",
                           "bbox_source": "file" if imported.bbox is not None else source,
                           "crop_size": fs.crop_size, "image_source": "import"})
        metrics[split] = {"frames": d.num_frames, "rows_in_file": imported.num_rows,
                          "feature_std": float(np.std(out["features"].astype(np.float32))), "source": "import"}
        cached[split] = out["features"]
    probe = probe_metrics(layout, cached)
    if probe is not None:
        metrics["probe"] = probe
    return metrics


def probe_metrics(layout: Layout, features: Mapping[str, Any]) -> dict[str, float] | None:
    """The linear probe (:mod:`hmrmamba.features.probe`) of the cached global features ``features``
    {split: (N, F)} to the splits' root-relative 3D joints; None unless train, val and test exist."""
    from hmrmamba.data.h5schema import read_split
    from hmrmamba.features.probe import feature_probe

    if not {"train", "val", "test"} <= set(features):
        return None
    pairs = {}
    for split in ("train", "val", "test"):
        j3d = read_split(layout.prepared(split)).frames["joints3d"]
        pairs[split] = (features[split], j3d - j3d[:, :1])
    result = feature_probe(pairs["train"], pairs["val"], pairs["test"])
    log.info("probe: ridge from the global features to 3D joints %.1f mm on test, mean pose %.1f mm (x%.2f)",
             result.probe_mm, result.floor_mm, result.ratio)
    return result.as_dict()


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    import numpy as np

    from hmrmamba.data.h5schema import open_h5, read_split, write_table
    from hmrmamba.features.extract import extract_features
    from hmrmamba.features.sequences import extract_from_sources, sequence_boxes

    fs = section_settings(params, STAGE)
    splits = splits_of(params)
    if fs.import_path:
        return run_import(params, layout, splits)
    plans = plan_sources(params, layout, splits)
    trained = trained_backbone_path(section_settings(params, "train_backbone"), layout)
    model, weights_note = build_backbone(fs, layout, trained=trained)
    source = fs.bbox_source
    common = {"model": model, "crop_size": fs.crop_size, "batch_size": fs.batch_size,
              "keep_spatial": fs.keep_spatial, "map_layer": fs.map_layer}
    metrics: dict[str, Any] = {"weights": weights_note, "crop_size": fs.crop_size,
                               "map_layer": fs.map_layer if fs.keep_spatial else None}
    cached: dict[str, Any] = {}
    for split in splits:
        prepared = layout.prepared(split)
        if plans[split] is None:  # pixels stored in the split (synthetic)
            with open_h5(prepared) as h5:
                images = _stored_images(h5, prepared)
                n = images.shape[0]
                kp, conf = read_detections(layout, split, source, n)
                out = extract_features(images, kp, conf, bbox_scale=fs.bbox_scale, **common)
            image_source = "frames/image"
        else:  # a real dataset's videos / images, streamed per sequence
            data = read_split(prepared)
            n = data.num_frames
            kp, conf = read_detections(layout, split, source, n)
            boxes = sequence_boxes(kp, conf, seq_start=data.seqs["seq_start"], seq_len=data.seqs["seq_len"],
                                   image_hw=image_hw(data), scale=fs.bbox_scale)
            out = extract_from_sources(plans[split], boxes, seq_start=data.seqs["seq_start"],
                                       seq_len=data.seqs["seq_len"], **common)
            image_source = plans[split][0].kind if plans[split] else "none"
        maps = {"map_layer": fs.map_layer} if fs.keep_spatial else {}
        write_table(layout.features(split), dict(out),
                    attrs={"backbone": "resnet50", "weights": weights_note, "bbox_source": source,
                           "crop_size": fs.crop_size, "image_source": image_source, **maps})
        metrics[split] = {"frames": int(n), "feature_std": float(np.std(out["features"].astype(np.float32))),
                          "source": image_source}
        if fs.keep_spatial:
            metrics[split]["map_shape"] = list(out["spatial"].shape[1:])
            metrics[split]["map_mb"] = round(out["spatial"].nbytes / 2**20, 1)
        cached[split] = out["features"]
    probe = probe_metrics(layout, cached)
    if probe is not None:
        metrics["probe"] = probe
    return metrics


if __name__ == "__main__":
    stage_main(STAGE, run)
