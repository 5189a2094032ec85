"""Temporal smoothing of the demo's outputs (``hmrmamba demo --smooth SIGMA``, offline only).

A Gaussian filter over time, ``SIGMA`` frames wide, applied to the vertices, joints, 3D pose and
camera translation, separately within each run of consecutive detected frames (edges: the run's
end value repeated, ``scipy.ndimage.gaussian_filter1d(mode="nearest")``), so that nothing leaks
across a frame without a person and undetected frames stay as they were. It looks at future frames,
so ``--online`` refuses it. ``python -m hmrmamba.demo.quality DIR --smooth SIGMA`` applies the same
function to an unsmoothed output, which is what the demo would have written with ``--smooth SIGMA``.
"""

from __future__ import annotations

import numpy as np

from hmrmamba.errors import InputError

__all__ = ["MAX_SIGMA", "check_sigma", "detected_runs", "smooth_runs"]

#: a larger sigma than this many frames would blur whole motions away
MAX_SIGMA = 30.0


def check_sigma(sigma) -> float:
    """-> sigma as a float in [0, :data:`MAX_SIGMA`] frames; ``InputError`` otherwise."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) or \
            not 0.0 <= float(sigma) <= MAX_SIGMA:
        raise InputError(f"--smooth {sigma!r}", field="--smooth",
                         expected=f"a number of frames in [0, {MAX_SIGMA:g}] (0: no smoothing)")
    return float(sigma)


def detected_runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """valid (N,) bool -> [(start, stop)] of the runs of consecutive True frames."""
    v = np.concatenate([[False], np.asarray(valid, bool), [False]])
    edges = np.flatnonzero(v[1:] != v[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def smooth_runs(x: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """x (N, ...) over time, valid (N,) bool -> a float copy with each run of valid frames filtered by a
    Gaussian of ``sigma`` frames along axis 0 (0: unchanged); invalid frames are left as they are."""
    from scipy.ndimage import gaussian_filter1d

    sigma = check_sigma(sigma)
    out = np.array(x, copy=True)
    if sigma == 0.0:
        return out
    for a, b in detected_runs(valid):
        if b - a > 1:
            out[a:b] = gaussian_filter1d(np.asarray(x[a:b], np.float64), sigma, axis=0, mode="nearest")
    return out
