from pathlib import Path

import numpy as np

from hmrmamba.data.h5schema import Split
from hmrmamba.data.loading import SplitArrays
from hmrmamba.evaluate.protocol import Predictions, evaluate_predictions


def make(n=(10, 6), valid=None):
    total = sum(n)
    rng = np.random.default_rng(0)
    j = rng.normal(size=(total, 17, 3)).astype(np.float32) * 0.3
    j -= j[:, :1]
    frames = {"joints3d": j}
    if valid is not None:
        frames["valid"] = valid
    seqs = {"seq_start": np.array([0, n[0]]), "seq_len": np.array(n), "seq_name": np.array(["a", "b"])}
    split = Split(path=Path("x.h5"), frames=frames, seqs=seqs, attrs={})
    return SplitArrays(split=split, detector="gt", arrays={"joints3d": j})


def test_perfect_prediction_scores_zero_and_offset_scores_known_mm():
    data = make()
    gt = data.arrays["joints3d"]
    summary, table, per_joint = evaluate_predictions(Predictions(pose3d=gt.copy()), data)
    assert summary["mpjpe"] < 1e-4 and summary["pa_mpjpe"] < 1e-3 and summary["accel"] < 1e-3
    shifted = gt.copy()
    shifted[:, 1:, 0] += 0.01  # every non-pelvis joint 10 mm off (pelvis-centring keeps it)
    summary, table, per_joint = evaluate_predictions(Predictions(pose3d=shifted), data)
    np.testing.assert_allclose(summary["mpjpe"], 10.0, rtol=1e-4)
    np.testing.assert_allclose(per_joint, 10.0, rtol=1e-4)
    assert list(table["sequence"]) == ["a", "b"] and len(per_joint) == 14


def test_invalid_frames_are_not_scored():
    valid = np.ones(16, bool)
    valid[3] = False
    data = make(valid=valid)
    pred = data.arrays["joints3d"].copy()
    pred[3, 1:] += 1.0  # a wild prediction on the invalid frame only
    summary, table, _ = evaluate_predictions(Predictions(pose3d=pred), data)
    assert summary["mpjpe"] < 1e-4 and summary["accel"] < 1e-3
    assert table["frames"].tolist() == [9, 6]
    summary17, _, per_joint = evaluate_predictions(Predictions(pose3d=pred), data, eval_joints=tuple(range(17)))
    assert len(per_joint) == 17
