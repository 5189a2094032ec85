"""The report's helpers: clip selection, sequence subsets, this run's Table-1 lines."""

from pathlib import Path

import numpy as np
import pytest

from hmrmamba.data.h5schema import Split
from hmrmamba.data.loading import SplitArrays, select_sequences
from hmrmamba.errors import InputError
from hmrmamba.report.document import pick_sequences, table1_lines


def _split(lengths):
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n = int(sum(lengths))
    frames = {"joints3d": np.arange(n * 51, dtype=np.float32).reshape(n, 17, 3)}
    seqs = {"seq_start": starts, "seq_len": np.asarray(lengths, np.int64),
            "seq_name": np.asarray([f"s{i}" for i in range(len(lengths))]),
            "camera": np.tile(np.asarray([[100.0, 100.0, 32.0, 32.0]], np.float32), (len(lengths), 1))}
    split = Split(path=Path("x.h5"), frames=frames, seqs=seqs, attrs={"image_size": 64})
    arrays = {"joints3d": frames["joints3d"].copy(), "kp2d": np.arange(n * 34, dtype=np.float32).reshape(n, 17, 2)}
    return SplitArrays(split=split, detector="gt", arrays=arrays)


def test_pick_sequences_spreads_over_long_enough_clips():
    assert pick_sequences(np.array([20, 5, 30, 40, 16, 50]), count=3, min_frames=16) == [0, 3, 5]
    assert pick_sequences(np.array([20, 5, 30]), count=3, min_frames=16) == [0, 2]
    assert pick_sequences(np.array([5, 5]), count=3, min_frames=16) == []


def test_select_sequences_repacks_frames_in_the_given_order():
    data = _split([3, 4, 5])
    sub = select_sequences(data, [2, 0])
    assert sub.split.seqs["seq_start"].tolist() == [0, 5] and sub.split.seqs["seq_len"].tolist() == [5, 3]
    assert sub.split.seqs["seq_name"].tolist() == ["s2", "s0"]
    np.testing.assert_array_equal(sub.arrays["kp2d"][:5], data.arrays["kp2d"][7:12])
    np.testing.assert_array_equal(sub.arrays["kp2d"][5:], data.arrays["kp2d"][:3])
    np.testing.assert_array_equal(sub.split.frames["joints3d"], sub.arrays["joints3d"])
    assert len(sub.windows(length=4, stride=1, centred=True)) == 8
    with pytest.raises(InputError, match="sequences"):
        select_sequences(data, [3])


def test_table1_lines_show_stage1_and_mesh_rows():
    ev = {"synthetic": {"mpjpe": 112.04, "pa_mpjpe": 75.9, "mpvpe": 139.2, "accel": 31.5, "edge_err": 3.71,
                        "normal_err": 34.48, "roughness": 1.096},
          "stage1": {"synthetic": {"mpjpe": 111.2, "pa_mpjpe": 74.0, "accel": 30.0}}}
    lines = table1_lines(ev, "synthetic")
    assert "roughness" in lines[0] and "normal err" in lines[0]
    assert lines[2] == "| stage 1 (lifted pose) | 111.2 | 74.0 | – | 30.0 | – | – | – |"
    assert lines[3] == "| mesh (stage 2) | 112.0 | 75.9 | 139.2 | 31.5 | 3.7 | 34.5 | 1.10 |"
