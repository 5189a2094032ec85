"""Benchmark: which ResNet-50 map (layer, crop size) GA should sample, by what a joint sees in it.

GA (eq. 8) samples the image feature map at each joint's location in the crop. A map is useful
only if different joints land in different cells. For every candidate (map layer, crop size) this
prints, on the project's own data:

- the map's cells (h x w) and channels, and what caching it costs: MB per 1,000 frames (fp16) and
  for the whole default-profile dataset (train + val + test frames);
- how well it resolves the skeleton: the mean number of distinct cells the 17 joints fall in per
  frame (17 = every joint its own cell) and the share of bone endpoints (parent/child pairs of the
  H36M tree) that fall in different cells;
- the backbone's time per frame relative to crop 64 (the fastest of ``--repeats`` fused,
  channels_last forwards of a batch of 32, so the ratio holds on a busy machine).

Joint locations come from the ``cpn`` keypoints of ``data/detections/<split>.h5`` in the crop boxes
of ``data/features/<split>.h5`` (run the pipeline's data stages first). Usage:
``python benchmarks/bench_feature_maps.py [--root .] [--split train] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hmrmamba.data.h5schema import Field, read_table
from hmrmamba.data.loading import normalize_keypoints
from hmrmamba.features import ResNet50, prepare_model
from hmrmamba.features.resnet import MAP_CHANNELS, MAP_STRIDE
from hmrmamba.layout import Layout
from hmrmamba.skeleton import get_joint_set

CANDIDATES = (("layer4", 64), ("layer3", 64), ("layer4", 128), ("layer3", 96), ("layer3", 128), ("layer4", 224))


def cell_index(kp: np.ndarray, cells: int) -> np.ndarray:
    """kp (N, J, 2) crop coordinates in [-1, 1] -> (N, J) flat cell index on a cells x cells map
    (``grid_sample``'s align_corners=False extent; points outside clip to the border cell)."""
    ij = np.clip(np.floor((kp + 1.0) / 2.0 * cells), 0, cells - 1).astype(np.int64)
    return ij[..., 1] * cells + ij[..., 0]


def resolution(kp: np.ndarray, cells: int, parents: np.ndarray) -> tuple[float, float]:
    """(mean distinct cells per frame, share of bones whose two ends are in different cells)."""
    idx = cell_index(kp, cells)
    distinct = np.mean([len(np.unique(row)) for row in idx])
    child = np.arange(kp.shape[1])[parents >= 0]
    split_bones = float(np.mean(idx[:, child] != idx[:, parents[child]]))
    return float(distinct), split_bones


def backbone_seconds(net: torch.nn.Module, crop: int, layer: str, *, repeats: int) -> float:
    x = torch.randn(32, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net.forward_features(x, map_layer=layer)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            net.forward_features(x, map_layer=layer)
            best = min(best, time.perf_counter() - t0)
    return best / 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--split", default="train")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    layout = Layout(args.root)
    frames = 0
    for split in ("train", "val", "test"):
        feats, _ = read_table(layout.features(split), {"boxes": Field((4,), "f")})
        frames += len(feats["boxes"])
    feats, _ = read_table(layout.features(args.split), {"boxes": Field((4,), "f")})
    det, _ = read_table(layout.detections(args.split), {"cpn/keypoints": Field((17, 2), "f")})
    kp = normalize_keypoints(det["cpn/keypoints"], feats["boxes"])
    parents = np.asarray(get_joint_set("h36m17").parents)
    net = prepare_model(ResNet50())
    rows = []
    for layer, crop in CANDIDATES:
        cells = -(-crop // MAP_STRIDE[layer])
        per_frame = MAP_CHANNELS[layer] * cells * cells * 2
        distinct, bones = resolution(kp, cells, parents)
        sec = backbone_seconds(net, crop, layer, repeats=args.repeats)
        rows.append((layer, crop, cells, MAP_CHANNELS[layer], per_frame * 1000 / 2**20, per_frame * frames / 2**20,
                     distinct, bones, sec))
    t64 = min(r[-1] for r in rows if r[1] == 64)
    print(f"{args.split} split, {len(kp)} frames; dataset {frames} frames; torch threads {torch.get_num_threads()}\n")
    print("| map | crop px | cells | channels | MB / 1k frames | MB dataset | distinct joint cells (of 17) "
          "| bones split across cells | backbone time vs crop 64 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layer, crop, cells, ch, mb_k, mb_all, distinct, bones, sec in rows:
        print(f"| {layer} | {crop} | {cells}x{cells} | {ch} | {mb_k:.0f} | {mb_all:.0f} | {distinct:.1f} "
              f"| {100 * bones:.0f} % | {sec / t64:.2f}x |")


if __name__ == "__main__":
    main()
