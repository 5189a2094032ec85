"""How much body the image features carry: a linear probe from the global features to 3D joints.

A ridge regression from the cached per-frame features alone (no keypoints) to root-relative 3D
joints, fitted on the train split, its strength chosen on val, scored on test as MPJPE (mm), beside
the mean-pose floor (every test frame gets the train split's mean pose). A backbone that sees the
body lands well below the floor; features of a random network land near it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hmrmamba.errors import InputError

#: ridge strengths tried, times the mean eigenvalue of the standardised features' Gram matrix / N
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class ProbeResult:
    """MPJPE (mm) of the probe and of the mean pose on test, the chosen ridge strength, frame counts."""

    probe_mm: float
    floor_mm: float
    ratio: float  # probe / floor: 1 = no better than the mean pose
    ridge: float
    train_frames: int
    test_frames: int

    def as_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def mpjpe_mm(pred: np.ndarray, target: np.ndarray) -> float:
    """pred, target: (N, J, 3) metres -> mean joint error in mm."""
    return float(np.linalg.norm(pred - target, axis=-1).mean() * 1000.0)


def _fit(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge weights (F + 1, K) for x (N, F) standardised, y (N, K); the bias is not penalised."""
    n, f = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], 1)
    gram = xb.T @ xb
    scale = np.trace(gram[:f, :f]) / f
    penalty = np.eye(f + 1) * ridge * scale
    penalty[f, f] = 0.0
    return np.linalg.solve(gram + penalty, xb.T @ y)


def _predict(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], 1) @ w


def feature_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray]) -> ProbeResult:
    """Each of train/val/test: (features (N, F), root-relative joints (N, J, 3) metres) -> ProbeResult."""
    for name, (x, y) in (("train", train), ("val", val), ("test", test)):
        if x.ndim != 2 or y.ndim != 3 or len(x) != len(y) or len(x) == 0 or y.shape[-1] != 3:
            raise InputError(f"features {x.shape}, joints {y.shape}", field=f"probe.{name}",
                             expected="(N, F) features and (N, J, 3) joints, N >= 1")
    x_tr, y_tr = train[0].astype(np.float64), train[1].astype(np.float64)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    norm = (lambda x: (x.astype(np.float64) - mean) / std)
    flat = (lambda y: y.reshape(len(y), -1).astype(np.float64))
    best = None
    for ridge in RIDGE_GRID:
        w = _fit(norm(x_tr), flat(y_tr), ridge)
        err = mpjpe_mm(_predict(norm(val[0]), w).reshape(val[1].shape), val[1])
        if best is None or err < best[0]:
            best = (err, ridge, w)
    _, ridge, w = best
    y_te = test[1].astype(np.float64)
    probe = mpjpe_mm(_predict(norm(test[0]), w).reshape(y_te.shape), y_te)
    floor = mpjpe_mm(np.broadcast_to(y_tr.mean(0), y_te.shape), y_te)
    return ProbeResult(probe_mm=probe, floor_mm=floor, ratio=probe / floor, ridge=ridge,
                       train_frames=len(x_tr), test_frames=len(y_te))
