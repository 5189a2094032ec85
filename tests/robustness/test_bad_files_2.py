"""Bad input files, second part: damage below the schema (bit flips in HDF5 metadata and compressed
image chunks, an mp4 that decodes to more frames than it has packets), a tracking store that is not a
database, NaN weights, and a keypoint ``.npz`` whose header asks for gigabytes.

Each must end in one :class:`InputError` raised by hmrmamba naming the file, the field and what was
expected, after bounded work.
"""

from __future__ import annotations

import io
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from hmrmamba.data import h5schema as H
from hmrmamba.errors import InputError

from .support import expect_clean_failure, own_mlflow_env, raised_by_hmrmamba, snapshot


def small_split(path: Path, *, images: bool = True) -> Path:
    """A 25-frame, 2-sequence split written by the schema's own writer (strings in attrs included)."""
    rng = np.random.default_rng(0)
    n, lengths = 25, (20, 5)
    frames = {
        "joints3d": (rng.normal(size=(n, 17, 3)) * 0.3).astype(np.float32),
        "joints2d": rng.uniform(0, 64, size=(n, 17, 2)).astype(np.float32),
        "smpl_pose": rng.normal(size=(n, 72)).astype(np.float32),
        "smpl_betas": rng.normal(size=(n, 10)).astype(np.float32),
        "smpl_trans": rng.normal(size=(n, 3)).astype(np.float32),
    }
    if images:
        frames["image"] = rng.integers(0, 255, size=(n, 8, 8, 3), dtype=np.uint8)
    seqs = {"seq_name": np.array(["s0", "s1"]), "seq_start": np.array([0, 20]), "seq_len": np.array(lengths),
            "camera": np.tile([100.0, 100.0, 32.0, 32.0], (2, 1)), "fps": np.full(2, 25.0)}
    H.write_split(path, frames, seqs, attrs={"source": "test"})
    return path


# =============================================================================================
# 1. bit-flipped HDF5 metadata
# =============================================================================================


def metadata_positions(data: bytes) -> list[int]:
    """Byte offsets inside the file's metadata: the superblock, the local heaps (group member names),
    the group B-trees and the global heap's collection header, found by their signatures.

    Before the fix these gave ``RuntimeError: bad heap free list``, ``OSError: wrong B-tree
    signature`` / ``bad global heap collection signature`` and more from h5py. (The global heap
    *object* sizes are left out: libhdf5 loops forever on some of them, which no reader can bound.)
    """
    positions = [9, 12, 24, 28]  # superblock: versions, sizes, base address
    for m in re.finditer(rb"HEAP", data):
        positions += [m.start() + k for k in (1, 4, 10, 13, 16, 19, 22, 25, 28, 31)]
    for m in list(re.finditer(rb"TREE", data))[:2]:
        positions += [m.start() + k for k in (1, 2, 5, 16, 32, 35, 38)]
    for m in re.finditer(rb"GCOL", data):
        positions += [m.start() + k for k in (1, 4, 10, 13, 16)]
    return sorted({p for p in positions if p < len(data)})


@pytest.mark.parametrize("reader", ["split", "table"])
def test_bit_flipped_hdf5_metadata_is_one_input_error(tmp_path, reliability, reader):
    if reader == "split":
        good = small_split(tmp_path / "good.h5")
        read = lambda p: H.read_split(p, with_images=True)  # noqa: E731
    else:
        good = tmp_path / "good.h5"
        H.write_table(good, {"boxes": np.ones((25, 4), np.float32), "score": np.ones(25, np.float32)},
                      attrs={"source": "test"})
        fields = {"boxes": H.Field((4,), "f"), "score": H.Field((), "f")}
        read = lambda p: H.read_table(p, fields, rows=25)  # noqa: E731
    data = good.read_bytes()
    positions = metadata_positions(data)
    assert len(positions) >= 20
    refused = 0
    bad = tmp_path / "flipped.h5"
    for pos in positions:
        for bit in (0, 5):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            bad.write_bytes(bytes(flipped))
            t0 = time.monotonic()
            try:
                read(bad)
            except InputError as err:
                raised_by_hmrmamba(err)
                msg = str(err)
                assert str(bad) in msg and "\n" not in msg, msg
                assert err.expected, msg
                refused += 1
            except Exception as err:  # noqa: BLE001 - the point: no other exception type
                pytest.fail(f"byte {pos} bit {bit}: {type(err).__name__}: {err}")
            assert time.monotonic() - t0 < 5, f"byte {pos} bit {bit} took too long"
    assert refused >= 10, refused
    reliability.bad_input(f"h5schema.read_{reader}", "single bit flips in HDF5 metadata",
                          examples=2 * len(positions))


def test_bit_flipped_heap_names_the_file_and_what_was_expected(tmp_path):
    """The audit's case: a flipped byte in a group's local heap ("bad heap free list")."""
    good = small_split(tmp_path / "good.h5")
    data = bytearray(good.read_bytes())
    heaps = [m.start() for m in re.finditer(rb"HEAP", bytes(data))]
    bad = tmp_path / "train.h5"
    for heap in heaps:
        for k in (16, 19, 22):
            flipped = bytearray(data)
            flipped[heap + k] ^= 1
            bad.write_bytes(bytes(flipped))
            try:
                H.read_split(bad)
            except InputError as err:
                if "corrupt" in str(err):
                    assert "an HDF5 split written by the pipeline" in str(err)
                    assert err.field, str(err)
                    return
    pytest.fail("no flip in a local heap was reported as a corrupt file")


# =============================================================================================
# 2. bit-flipped image chunks read by the features stage
# =============================================================================================


def test_corrupt_image_chunk_names_file_and_dataset(tmp_path, reliability):
    from hmrmamba.features.extract import _frame_batches

    good = small_split(tmp_path / "good.h5")
    with h5py.File(good) as h5:
        info = h5["frames/image"].id.get_chunk_info(0)
    data = bytearray(good.read_bytes())
    for k in range(info.byte_offset + 2, info.byte_offset + info.size, 3):
        data[k] ^= 0xFF
    bad = tmp_path / "train.h5"
    bad.write_bytes(bytes(data))

    def consume():
        with H.open_h5(bad) as h5:
            for _ in _frame_batches(h5["frames/image"], 25, 8):
                pass

    err = expect_clean_failure(consume, watch=[tmp_path], file=bad, field="frames/image")
    assert "corrupt" in str(err)
    reliability.bad_input("features.extract (HDF5 frames)", "bit-flipped compressed image chunk")


# =============================================================================================
# 3. a tracking store that is not an SQLite database
# =============================================================================================


@pytest.mark.parametrize("content", [b"this is not sqlite\n" * 4,
                                     b"SQLite format 3\x00" + bytes(range(256)) * 20],
                         ids=["text", "sqlite-header-then-garbage"])
def test_mlflow_db_that_is_not_a_database_is_one_input_error(tmp_path, reliability, content):
    from hmrmamba import mlflow_runs

    db = tmp_path / "mlflow.db"
    db.write_bytes(content)

    def open_store():
        with mlflow_runs.stage_run("prepare", root=tmp_path, params={}, tracking={"fallback_local": True}):
            pass

    with own_mlflow_env():
        err = expect_clean_failure(open_store, watch=[db], file=db, field="tracking.uri")
    assert "an MLflow SQLite store (or remove the file)" in str(err) and "\n" not in str(err)
    reliability.bad_input("mlflow_runs.stage_run", f"mlflow.db: {content[:16]!r}...")


def test_sqlite_header_check_passes_a_real_store(tmp_path):
    import sqlite3

    from hmrmamba import mlflow_runs

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table t (x int)").connection.close()
    mlflow_runs.check_sqlite_store(f"sqlite:///{db}")
    mlflow_runs.check_sqlite_store(f"sqlite:///{tmp_path / 'absent.db'}")  # created later: fine
    mlflow_runs.check_sqlite_store("http://127.0.0.1:5000")  # not a file store: not checked


# =============================================================================================
# 4. NaN weights in a checkpoint
# =============================================================================================


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("feat_mean", torch.zeros(3))


@pytest.mark.parametrize("name, value", [("lin.weight", float("nan")), ("lin.bias", float("inf")),
                                         ("feat_mean", float("-inf"))])
def test_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path, reliability, name, value):
    from hmrmamba.train.checkpoint import load_checkpoint, save_checkpoint

    model = Tiny()
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = value
    path = save_checkpoint(tmp_path / "last.pt", model=model, epoch=1, step=1, config={})
    err = expect_clean_failure(lambda: load_checkpoint(path), watch=[tmp_path], file=path, field=f"model.{name}")
    assert "finite" in str(err)
    reliability.bad_input("train.checkpoint.load_checkpoint", f"{value} in model.{name}")


def test_checkpoint_with_non_finite_optimizer_state_still_loads(tmp_path):
    from hmrmamba.train.checkpoint import load_checkpoint, save_checkpoint

    model = Tiny()
    opt = torch.optim.Adam(model.parameters())
    model.lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    for state in opt.state.values():
        state["exp_avg"].fill_(float("nan"))
    path = save_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt, epoch=1, step=1, config={})
    ckpt = load_checkpoint(path)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


# =============================================================================================
# 5. a video that decodes to more frames than its stream has packets
# =============================================================================================


def test_video_decoding_more_frames_than_counted_names_the_video(tmp_path, reliability, monkeypatch):
    import imageio_ffmpeg

    from hmrmamba.data.video import VideoReader, write_video

    frames = np.random.default_rng(0).integers(0, 255, size=(6, 16, 16, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=25)
    assert len(list(VideoReader(path))) == 6  # a sound video: unchanged
    # a damaged stream: fewer packets than the frames it decodes to (the audit's 388 vs 400)
    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", lambda *a, **k: (4, 0.16))
    reader = VideoReader(path)
    assert reader.num_frames == 4
    err = expect_clean_failure(lambda: list(reader), watch=[tmp_path], file=path, field="frames")
    assert "4" in str(err)
    expect_clean_failure(lambda: reader.read(0, 4), file=path, field="frames")
    assert [f.shape for f in reader.frames(0, 3)] == [(16, 16, 3)] * 3  # before the damage shows: fine
    reliability.bad_input("data.video.VideoReader", "stream decodes to more frames than its packets")


# =============================================================================================
# 6. a detection keypoint .npz whose header asks for gigabytes
# =============================================================================================


def _npz_claiming(path: Path, shape: tuple[int, ...], dtype=np.float16, member: str = "keypoints",
                  data: bytes = b"") -> Path:
    """A deflated ``.npz`` whose ``member`` header claims ``shape`` (followed by ``data`` only)."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{member}.npy", head.getvalue() + data)
    return path


def test_detection_keypoints_npz_claiming_1e7_frames_is_refused_from_its_header(tmp_path, reliability):
    from hmrmamba.detect.sources import load_keypoints_file

    path = _npz_claiming(tmp_path / "kp.npz", (10_000_000, 17, 2), data=bytes(1 << 20))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        err = expect_clean_failure(lambda: load_keypoints_file(path, num_frames=20), watch=[tmp_path],
                                   file=path, field="keypoints")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert "10000000 frames" in str(err) and "20" in str(err)
    assert time.perf_counter() - t0 < 5
    assert peak < 64 << 20, f"refusal allocated {peak / 2**20:.0f} MiB"  # 680 MB before the fix
    reliability.bad_input("detect.sources.load_keypoints_file", "npz header claiming (1e7, 17, 2) float16")


def test_detection_confidence_header_checked_before_reading(tmp_path):
    from hmrmamba.detect.sources import load_keypoints_file

    path = tmp_path / "kp.npz"
    np.savez(path, keypoints=np.ones((4, 17, 2), np.float32))
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 17)})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("confidence.npy", head.getvalue())
    before = snapshot(tmp_path)
    expect_clean_failure(lambda: load_keypoints_file(path, num_frames=4), file=path, field="confidence")
    assert snapshot(tmp_path) == before
    kp, conf, meta = load_keypoints_file(_kp_ok(tmp_path / "ok.npz"), num_frames=4)
    assert kp.shape == (4, 17, 2) and conf.shape == (4, 17) and meta["has_confidence"]


def _kp_ok(path: Path) -> Path:
    np.savez_compressed(path, keypoints=np.full((4, 17, 2), 5.0, np.float32),
                        confidence=np.full((4, 17), 0.5, np.float32))
    return path
