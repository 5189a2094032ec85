import h5py
import numpy as np
import pytest

from hmrmamba.data import h5schema as H
from hmrmamba.data.windows import WindowDataset, window_starts
from hmrmamba.errors import InputError, MissingFileError


def make_split(lengths=(20, 5)):
    n = sum(lengths)
    rng = np.random.default_rng(0)
    frames = {
        "joints3d": rng.normal(size=(n, 17, 3)).astype(np.float32),
        "joints2d": rng.uniform(0, 128, size=(n, 17, 2)).astype(np.float32),
        "smpl_pose": rng.normal(size=(n, 72)).astype(np.float32),
        "smpl_betas": rng.normal(size=(n, 10)).astype(np.float32),
        "smpl_trans": rng.normal(size=(n, 3)).astype(np.float32),
        "image": rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8),
    }
    starts = np.cumsum((0,) + tuple(lengths[:-1]))
    seqs = {"seq_name": np.array([f"s{i}" for i in range(len(lengths))]),
            "seq_start": starts, "seq_len": np.array(lengths),
            "camera": np.tile([100.0, 100.0, 64.0, 64.0], (len(lengths), 1)),
            "fps": np.full(len(lengths), 25.0)}
    return frames, seqs


def test_round_trip(tmp_path):
    frames, seqs = make_split()
    path = tmp_path / "train.h5"
    H.write_split(path, frames, seqs, attrs={"source": "test"})
    split = H.read_split(path, with_images=True)
    assert split.num_frames == 25 and split.num_seqs == 2
    assert split.attrs["source"] == "test"
    for k, v in frames.items():
        np.testing.assert_array_equal(split.frames[k], v)
    assert list(split.seqs["seq_name"]) == ["s0", "s1"]
    assert "image" not in H.read_split(path).frames
    assert list(tmp_path.iterdir()) == [path]  # no temp files left


@pytest.mark.parametrize("field,bad,match", [
    ("joints3d", np.zeros((25, 16, 3), np.float32), r"joints3d.*shape \(25, 16, 3\).*\(25,17,3\) float"),
    ("joints2d", np.zeros((25, 17, 2), np.int64), r"joints2d.*dtype int64.*float"),
    ("joints2d", np.full((25, 17, 2), np.nan, np.float32), r"joints2d.*NaN/Inf\) at row 0"),
])
def test_bad_fields_are_refused_and_nothing_written(tmp_path, field, bad, match):
    frames, seqs = make_split()
    frames[field] = bad
    path = tmp_path / "x.h5"
    with pytest.raises(InputError, match=match):
        H.write_split(path, frames, seqs)
    assert list(tmp_path.iterdir()) == []


def test_sequences_must_tile(tmp_path):
    frames, seqs = make_split()
    seqs["seq_len"] = np.array([20, 4])
    with pytest.raises(InputError, match="tile"):
        H.write_split(tmp_path / "x.h5", frames, seqs)


def test_truncated_and_missing_files(tmp_path):
    frames, seqs = make_split()
    path = tmp_path / "train.h5"
    H.write_split(path, frames, seqs)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"trunc\.h5.*(truncated|corrupt)"):
        H.read_split(trunc)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(InputError, match="garbage.h5"):
        H.read_split(garbage)
    with pytest.raises(MissingFileError, match="nope.h5"):
        H.read_split(tmp_path / "nope.h5")


def test_schema_version_checked(tmp_path):
    frames, seqs = make_split()
    path = tmp_path / "train.h5"
    H.write_split(path, frames, seqs)
    with h5py.File(path, "a") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(InputError, match="schema_version 99"):
        H.read_split(path)


def test_table_round_trip_and_row_check(tmp_path):
    path = tmp_path / "det.h5"
    kp = np.ones((25, 17, 2), np.float32)
    H.write_table(path, {"keypoints": kp}, {"source": "gt"})
    fields = {"keypoints": H.Field((17, 2), "f", finite=True)}
    out, attrs = H.read_table(path, fields, rows=25)
    np.testing.assert_array_equal(out["keypoints"], kp)
    assert attrs["source"] == "gt"
    with pytest.raises(InputError, match=r"keypoints.*24 rows|25 rows.*expected \(24"):
        H.read_table(path, fields, rows=24)


def test_train_windows_cover_every_frame_and_pad_short_sequences():
    starts, ids = window_starts(np.array([0, 20]), np.array([20, 5]), length=16, stride=4, centred=False)
    assert starts.tolist() == [0, 4, 20] and ids.tolist() == [0, 0, 1]
    frames, seqs = make_split()
    ds = WindowDataset({"j": frames["joints3d"]}, seq_start=seqs["seq_start"], seq_len=seqs["seq_len"],
                       camera=seqs["camera"], length=16, stride=4)
    short = ds[2]
    assert short["mask"].sum().item() == 5
    np.testing.assert_array_equal(short["frame_index"].numpy(), np.clip(np.arange(20, 36), 20, 24))
    np.testing.assert_array_equal(short["j"][10].numpy(), frames["joints3d"][24])  # edge replication


def test_eval_windows_are_centred_on_every_frame():
    frames, seqs = make_split()
    ds = WindowDataset({"j": frames["joints3d"]}, seq_start=seqs["seq_start"], seq_len=seqs["seq_len"],
                       camera=seqs["camera"], length=16, stride=1, centred=True)
    assert len(ds) == 25
    mids = [int(ds[i]["frame_index"][8]) for i in range(len(ds))]
    assert mids == list(range(25))
    first = ds[0]
    assert first["mask"][:8].sum() == 0 and first["mask"][8:].all()
    assert int(ds[20]["seq_index"]) == 1 and int(ds[20]["frame_index"].min()) == 20
