"""Bringing a new video's image features to the training distribution (demo on real footage).

The reconstructor reads the backbone's global feature vector of every frame. On real footage those
vectors leave the range the model was trained on (the backbone saw only rendered people): measured on
the 45-frame real test clip with the default model, a few hundred of the 2048 channels vary over the
clip far more than they ever do in training, and the predicted meshes turn rough (roughness 3.75
against the template body; docs/demo.md).

:func:`align_to` moves the clip's per-channel moments to the training split's: each channel is
recentred on the training mean and, where it varies over the clip more than over the training
frames, shrunk to the training spread. A channel is never amplified, so a short clip, whose spread
is underestimated, is not blown up (an 8-frame estimate works, docs/demo.md). This is the diagonal
form of moment matching (the first two moments per channel, as AdaBN re-estimates batch-norm
statistics on the target domain); it changes nothing the model learned and uses only the clip itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmrmamba.errors import InputError

__all__ = ["FeatureMoments", "align_to", "feature_moments", "read_feature_moments"]


@dataclass(frozen=True)
class FeatureMoments:
    """Per-channel mean and standard deviation (F,) float64 of ``frames`` feature vectors."""

    mean: np.ndarray
    std: np.ndarray
    frames: int


def feature_moments(features: np.ndarray, *, chunk: int = 4096) -> FeatureMoments:
    """features (N, F) (any float dtype; accumulated in float64, ``chunk`` rows at a time) -> moments."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) == 0:
        raise InputError(f"features of shape {features.shape}", field="features", expected="(N >= 1, F)")
    total = np.zeros(features.shape[1])
    squares = np.zeros(features.shape[1])
    for lo in range(0, len(features), chunk):
        block = features[lo:lo + chunk].astype(np.float64)
        total += block.sum(0)
        squares += np.square(block).sum(0)
    n = len(features)
    mean = total / n
    return FeatureMoments(mean=mean, std=np.sqrt(np.maximum(squares / n - mean**2, 0.0)), frames=n)


def read_feature_moments(path: str | Path, dataset: str = "features") -> FeatureMoments:
    """The moments of the ``dataset`` (N, F) of a features HDF5 file (the features stage's output)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            if dataset not in fh:
                raise InputError(f"no '{dataset}' dataset", file=path, field=dataset,
                                 expected="a features file written by the features stage")
            return feature_moments(fh[dataset])
    except OSError as exc:
        raise InputError(f"cannot read features ({exc})", file=path, field=dataset,
                         expected="an HDF5 features file") from None


def align_to(features: np.ndarray, reference: FeatureMoments, *, use: np.ndarray | None = None) -> np.ndarray:
    """features (N, F) of one clip -> (N, F) float32 with each channel recentred on ``reference.mean``
    and, where the clip's spread exceeds ``reference.std``, scaled down to it (never up).

    ``use`` (N,) bool: the frames whose moments are the clip's (e.g. those where the person was
    detected); all frames are moved the same way. Default: every frame."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != len(reference.mean):
        raise InputError(f"features of shape {features.shape}", field="features",
                         expected=f"(N, {len(reference.mean)}) as the training features")
    if use is not None:
        use = np.asarray(use, bool)
        if use.shape != (len(features),) or not use.any():
            raise InputError(f"frame mask of shape {use.shape} with {int(use.sum())} frames", field="use",
                             expected=f"({len(features)},) bool with at least one frame")
    clip = feature_moments(features if use is None else features[use])
    scale = np.minimum(1.0, reference.std / np.maximum(clip.std, 1e-12))
    return (reference.mean + (features - clip.mean) * scale).astype(np.float32)
