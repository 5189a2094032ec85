"""Assemble model-ready windows from a split and its sibling tables (detections, features).

This is the one place that joins ``data/prepared``, ``data/detections`` and ``data/features``
row by row, so training, evaluation, the demo and the tests all see the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmrmamba.data.h5schema import Field, Split, read_split, read_table
from hmrmamba.data.windows import WindowDataset
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout


def normalize_keypoints(kp: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Pixels -> crop coordinates in [-1, 1] of the person box the features were computed on.

    kp: (N, J, 2) px; boxes: (N, 4) cx, cy, w, h -> (N, J, 2). The lifter thus sees the same
    frame of reference as the image features (and as GA's sampling grid), independent of where
    the person stands in the image and how large they appear.
    """
    centre = boxes[:, None, :2]
    half = np.maximum(boxes[:, None, 2:4] / 2.0, 1e-6)
    return ((kp - centre) / half).astype(np.float32)


@dataclass
class SplitArrays:
    """Per-frame arrays of one split joined with one 2D source and the cached features."""

    split: Split
    detector: str
    arrays: dict[str, np.ndarray]

    def windows(self, *, length: int, stride: int, centred: bool) -> WindowDataset:
        return WindowDataset(self.arrays, seq_start=self.split.seqs["seq_start"],
                             seq_len=self.split.seqs["seq_len"], camera=self.split.seqs["camera"],
                             length=length, stride=stride, centred=centred, source=str(self.split.path))


def map_shape(layout: Layout, split_name: str = "train") -> tuple[int, int, int] | None:
    """(C, h, w) of the feature maps cached for ``split_name`` (``features.keep_spatial``), None if
    the features file has none. Reads the dataset's header only."""
    from hmrmamba.data.h5schema import open_h5

    path = layout.features(split_name)
    with open_h5(path) as h5:
        if "spatial" not in h5:
            return None
        shape = tuple(int(d) for d in h5["spatial"].shape)
    if len(shape) != 4 or min(shape[1:]) < 1:
        raise InputError(f"has shape {shape}", file=path, field="spatial", expected="(N, C, h, w) feature maps")
    return shape[1], shape[2], shape[3]


def load_split_arrays(layout: Layout, split_name: str, *, detector: str, with_smpl: bool = False,
                      with_maps: bool = False) -> SplitArrays:
    """Join prepared split + ``detector`` keypoints + features into float32 per-frame arrays.

    Arrays: ``kp2d (N,17,2)`` in crop coordinates of the feature boxes (see
    :func:`normalize_keypoints`: also GA's sampling frame on the maps), ``kp2d_px``, ``conf (N,17)``,
    ``feats (N,2048)``, ``joints3d (N,17,3)`` root-relative m, ``root (N,3)`` camera-frame pelvis m;
    with ``with_smpl`` also ``smpl_pose (N,72)``, ``smpl_betas (N,10)``, ``smpl_trans (N,3)`` for
    mesh targets, and, only for a split whose ground-truth meshes come from the gendered SMPL
    models (3DPW, see :mod:`hmrmamba.body.gendered`), ``smpl_gender (N,)`` int8 (1 male, 2
    female; 0 would be the configured model); with ``with_maps`` the cached feature maps
    ``spatial (N,C,h,w)``, kept float16.
    """
    split = read_split(layout.prepared(split_name))
    n = split.num_frames
    size = split.attrs.get("image_size")
    if not size:
        raise InputError("missing attribute", file=split.path, field="image_size",
                         expected="the frame size in pixels (written by the prepare stage)")
    det_path = layout.detections(split_name)
    det, attrs = read_table(det_path, {f"{detector}/keypoints": Field((17, 2), "f", finite=True),
                                       f"{detector}/confidence": Field((17,), "f", finite=True)}, rows=n)
    feat_path = layout.features(split_name)
    feat_fields = {"features": Field((None,), "f", finite=True), "boxes": Field((4,), "f", finite=True)}
    if with_maps:
        if map_shape(layout, split_name) is None:
            raise InputError("missing dataset: the model's GA samples feature maps", file=feat_path, field="spatial",
                             expected="(N, C, h, w) maps: set features.keep_spatial: true and rerun the features stage")
        feat_fields["spatial"] = Field((None, None, None), "f", finite=True)
    feats, _ = read_table(feat_path, feat_fields, rows=n)
    kp = det[f"{detector}/keypoints"].astype(np.float32)
    j3d = split.frames["joints3d"].astype(np.float32)
    arrays = {
        "kp2d": normalize_keypoints(kp, feats["boxes"]),
        "kp2d_px": kp,
        "conf": det[f"{detector}/confidence"].astype(np.float32),
        "feats": feats["features"].astype(np.float32),
        "joints3d": j3d - j3d[:, :1],
        "root": j3d[:, 0],
    }
    if with_maps:
        arrays["spatial"] = feats["spatial"].astype(np.float16, copy=False)
    if with_smpl:
        from hmrmamba.body.gendered import frame_genders

        for k in ("smpl_pose", "smpl_betas", "smpl_trans"):
            arrays[k] = split.frames[k].astype(np.float32)
        gender = frame_genders(split)  # None unless the split's meshes come from the gendered models
        if gender is not None:
            arrays["smpl_gender"] = gender
    return SplitArrays(split=split, detector=detector, arrays=arrays)


def select_sequences(data: SplitArrays, indices: list[int]) -> SplitArrays:
    """The sequences ``indices`` of ``data`` as a split of their own (frames re-packed, in that order)."""
    import dataclasses

    seqs = data.split.seqs
    n_seq = int(seqs["seq_start"].shape[0])
    bad = [i for i in indices if not 0 <= int(i) < n_seq]
    if bad or not indices:
        raise InputError(f"sequence indices {list(indices)}", file=data.split.path, field="sequences",
                         expected=f"a non-empty list of indices in [0, {n_seq})")
    rows = np.concatenate([np.arange(int(seqs["seq_start"][i]), int(seqs["seq_start"][i] + seqs["seq_len"][i]))
                           for i in indices])
    lens = np.asarray([int(seqs["seq_len"][i]) for i in indices], dtype=seqs["seq_len"].dtype)
    new_seqs = {k: np.asarray(v)[list(indices)] for k, v in seqs.items()}
    new_seqs["seq_len"] = lens
    new_seqs["seq_start"] = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(seqs["seq_start"].dtype)
    frames = {k: np.asarray(v)[rows] for k, v in data.split.frames.items()}
    split = dataclasses.replace(data.split, frames=frames, seqs=new_seqs)
    return SplitArrays(split=split, detector=data.detector, arrays={k: v[rows] for k, v in data.arrays.items()})
