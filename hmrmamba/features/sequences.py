"""Features of a split whose frames are read from videos / image folders, one sequence at a time.

Real splits store no pixels (see :mod:`hmrmamba.data.real.frames`). Boxes are made per sequence from
the chosen 2D detections, in the original image's pixels (they are what the features table
stores, and what :func:`hmrmamba.data.loading.normalize_keypoints` needs); when the frames are a
downscaled copy, the boxes are scaled onto them for cropping only. Frames are decoded as a
stream: memory holds one batch of frames, never a sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hmrmamba.errors import InputError
from hmrmamba.features.crops import bbox_from_keypoints
from hmrmamba.features.extract import iter_features, prepare_model
from hmrmamba.features.resnet import FEATURE_DIM, MAP_CHANNELS, ResNet50


def sequence_boxes(kp2d: np.ndarray, conf: np.ndarray | None, *, seq_start: np.ndarray, seq_len: np.ndarray,
                   image_hw: np.ndarray, scale: float = 1.2, conf_threshold: float = 0.3) -> np.ndarray:
    """kp2d: (N, J, 2) px, conf: (N, J), image_hw: (S, 2) per sequence -> boxes (N, 4) cx, cy, w, h px.

    :func:`bbox_from_keypoints` on each sequence alone, so a frame without confident joints
    never borrows a box from the previous sequence.
    """
    kp = np.asarray(kp2d)
    boxes = np.empty((kp.shape[0], 4), np.float32)
    hw = np.asarray(image_hw).reshape(-1, 2)
    for i, (a, n) in enumerate(zip(np.asarray(seq_start), np.asarray(seq_len))):
        a, n = int(a), int(n)
        size = (int(hw[i if len(hw) > 1 else 0][0]), int(hw[i if len(hw) > 1 else 0][1]))
        boxes[a:a + n] = bbox_from_keypoints(kp[a:a + n], None if conf is None else conf[a:a + n],
                                             image_size=size, scale=scale, conf_threshold=conf_threshold)
    return boxes


def scale_boxes(boxes: np.ndarray, *, sx: float, sy: float) -> np.ndarray:
    """boxes: (N, 4) cx, cy, w, h original px -> (N, 4) px of a copy scaled by (sx, sy).

    Pixel centres sit at integer coordinates, so a centre maps as ``(x + 0.5) * s - 0.5``.
    """
    b = np.asarray(boxes, dtype=np.float64).copy()
    b[:, 0] = (b[:, 0] + 0.5) * sx - 0.5
    b[:, 1] = (b[:, 1] + 0.5) * sy - 0.5
    b[:, 2] *= sx
    b[:, 3] *= sy
    return b.astype(np.float32)


def extract_from_sources(sources: Sequence[Any], boxes: np.ndarray, *, seq_start: np.ndarray,
                         seq_len: np.ndarray, model: ResNet50, crop_size: int = 224, batch_size: int = 16,
                         keep_spatial: bool = False, device: str | torch.device = "cpu",
                         progress: bool = True, map_layer: str = "layer4") -> dict[str, np.ndarray]:
    """sources: one :class:`hmrmamba.data.real.frames.FrameSource` per sequence, boxes: (N, 4) original px
    -> {'features': (N, 2048) float16, 'boxes': (N, 4) float32[, 'spatial': (N, C, h, w) float16]}.

    Row ``seq_start[i] + t`` is frame ``t`` of ``sources[i]``. Bounded memory: each sequence's
    frames are streamed through the model ``batch_size`` at a time.
    """
    from hmrmamba.data.real.frames import iter_frames, source_scale, source_size

    boxes = np.asarray(boxes, dtype=np.float32)
    n = boxes.shape[0]
    if len(sources) != len(seq_len) or int(np.sum(seq_len)) != n:
        raise InputError(f"{len(sources)} sources, {len(seq_len)} sequences, {n} boxes", field="sources",
                         expected="one source per sequence and one box per frame")
    net = prepare_model(model, device=device)
    feats = np.zeros((n, FEATURE_DIM), np.float16)
    spatial: np.ndarray | None = None
    with tqdm(total=n, desc="features", unit="frame", disable=not progress) as bar:
        for src, a, length in zip(sources, np.asarray(seq_start), np.asarray(seq_len)):
            a, length = int(a), int(length)
            if length == 0:
                continue
            if len(src.frames) != length:
                raise InputError(f"source of '{src.seq_name}' has {len(src.frames)} frames, the split {length}",
                                 file=src.path, field="frames", expected="one frame per split row")
            sx, sy = source_scale(src, source_size(src))
            crop_boxes = scale_boxes(boxes[a:a + length], sx=sx, sy=sy)
            bar.set_postfix_str(src.seq_name, refresh=False)
            for start, f, s in iter_features(iter_frames(src), crop_boxes, model=net, crop_size=crop_size,
                                             batch_size=batch_size, keep_spatial=keep_spatial, device=device,
                                             progress=False, prepared=True, map_layer=map_layer):
                feats[a + start:a + start + len(f)] = f
                if s is not None:
                    if spatial is None:
                        spatial = np.zeros((n, *s.shape[1:]), np.float16)
                    spatial[a + start:a + start + len(s)] = s
                bar.update(len(f))
    out = {"features": feats, "boxes": boxes}
    if keep_spatial:
        out["spatial"] = spatial if spatial is not None else np.zeros((0, MAP_CHANNELS[map_layer], 0, 0), np.float16)
    return out
