"""Tiny inputs that ask for huge allocations: each is refused in well under a second and a few
hundred MB at most, with a one-line message naming the file, before anything sized by it is made.

Allocation is measured with :mod:`tracemalloc` (Python's and numpy's allocators both report to
it), so a test fails on the old behaviour by the memory it took, not only by the message.
"""

from __future__ import annotations

import copyreg
import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hmrmamba.errors import InputError

from .support import expect_clean_failure

#: What a refusal may take (the inputs ask for gigabytes).
MAX_SECONDS = 1.0
MAX_BYTES = 64 << 20


class Reduce:
    """Pickles into ``func(*args)`` (what a hand-made file carries)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def cheaply(call):
    """Run ``call`` -> (the exception it raised, seconds, peak traced bytes)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the caller checks what it was
        err = exc
    else:
        err = None
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return err, seconds, peak


def assert_cheap_refusal(call, *, file: str, match: str | None = None) -> InputError:
    err, seconds, peak = cheaply(call)
    assert isinstance(err, InputError), f"{type(err).__name__}: {err}"
    assert file in str(err), str(err)
    assert "\n" not in str(err), str(err)
    if match is not None:
        assert match in str(err), str(err)
    assert seconds < MAX_SECONDS, f"refusal took {seconds:.2f} s"
    assert peak < MAX_BYTES, f"refusal allocated {peak / 2**20:.0f} MiB"
    return err


GB3 = 3_000_000_000

SIZED_PICKLES = {
    "bytearray(3e9)": lambda: Reduce(bytearray, GB3),
    "bytes(3e9)": lambda: Reduce(bytes, GB3),
    "list(range(1e9))": lambda: Reduce(list, range(10**9)),
    "tuple(range(1e9))": lambda: Reduce(tuple, range(10**9)),
    "set(range(1e9))": lambda: Reduce(set, range(10**9)),
    "range(1e18)": lambda: range(10**18),
    "copyreg._reconstructor(bytearray, 3e9)": lambda: Reduce(copyreg._reconstructor, bytearray, bytearray, GB3),
    "numpy.ndarray((3e9,))": lambda: Reduce(np.ndarray, (GB3,)),
    "numpy _reconstruct((3e9,))": lambda: Reduce(np._core.multiarray._reconstruct, np.ndarray, (GB3,), b"b"),
}


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("case", list(SIZED_PICKLES))
def test_sized_constructors_in_a_tiny_pickle_are_refused_cheaply(tmp_path, reliability, case, protocol):
    from hmrmamba.safe_pickle import safe_load

    path = tmp_path / "tiny.pkl"
    path.write_bytes(pickle.dumps({"v": SIZED_PICKLES[case]()}, protocol=protocol))
    assert path.stat().st_size < 200
    assert_cheap_refusal(lambda: safe_load(path), file=str(path), match="would make")
    reliability.bad_input("safe_pickle.safe_load", f"{path.stat().st_size}-byte pickle of {case}")


def test_many_small_allocations_share_one_budget(reliability):
    """1000 references to ``bytearray(100_000)`` each fit alone, but not together (100 MB from 20 KB)."""
    from hmrmamba.safe_pickle import safe_loads

    blob = pickle.dumps([Reduce(bytearray, 100_000 + i) for i in range(1000)], protocol=2)
    assert len(blob) < 30_000
    assert_cheap_refusal(lambda: safe_loads(blob, name="many.pkl"), file="many.pkl", match="would make")
    reliability.bad_input("safe_pickle.safe_load", "1000 bytearray(1e5) calls in 20 KB (one budget per load)")


def test_zero_size_dtype_array_of_huge_shape_is_refused(reliability):
    """``V0`` arrays hold no bytes, so their data cannot bound their shape; the element count does."""
    from hmrmamba.safe_pickle import safe_loads

    a = np.zeros(0, dtype="V0")
    blob = pickle.dumps(a, protocol=2).replace(b"\x4b\x00\x85", b"\x4a" + (10**9).to_bytes(4, "little") + b"\x85", 1)
    err = assert_cheap_refusal(lambda: safe_loads(blob, name="v0.pkl"), file="v0.pkl")
    assert "1,000,000,000" in str(err) or "would make" in str(err), str(err)
    reliability.bad_input("safe_pickle.safe_load", "void-0 array with 1e9 elements")


def test_shared_rows_and_huge_sparse_shapes_are_not_densified(reliability):
    """A list of 1000 references to one list of 1000 references ... is small pickled, 1e12 dense."""
    import scipy.sparse as sp

    from hmrmamba.safe_pickle import MAX_DENSE_ELEMENTS, safe_loads, to_array

    row: list = [0.0] * 1000
    for _ in range(3):
        row = [row] * 1000
    blob = pickle.dumps({"J": row, "S": sp.coo_matrix((200_000, 200_000))}, protocol=2)
    assert len(blob) < 200_000
    d = safe_loads(blob, name="bomb.pkl")
    for key in ("J", "S"):
        err = assert_cheap_refusal(lambda: to_array(d[key], file="bomb.pkl", field=key), file="bomb.pkl")
        assert f"field '{key}'" in str(err) and f"{MAX_DENSE_ELEMENTS:,}" in str(err)
    reliability.bad_input("safe_pickle.to_array", "nested shared rows of 1e12 elements / 2e5 x 2e5 sparse")


def test_real_pickles_still_load_after_the_limits(tmp_path):
    """Everything a real file holds round-trips, values and types (py2 latin-1 3DPW included)."""
    import scipy.sparse as sp

    from fabricate import py2_pickle_dumps
    from hmrmamba.safe_pickle import safe_loads

    d = {"a": np.arange(12.0).reshape(3, 4), "f": np.asfortranarray(np.ones((2, 3), np.float32)),
         "ba": bytearray(b"xyz"), "b": b"abc" * 3000, "s": {1, 2}, "fs": frozenset({3}), "r": range(5),
         "t": (1, "x"), "l": list(range(1000)), "sp": sp.csc_matrix(np.eye(4))}
    for protocol in range(6):
        out = safe_loads(pickle.dumps(d, protocol=protocol))
        assert type(out["ba"]) is bytearray and out["ba"] == bytearray(b"xyz")
        assert type(out["s"]) is set and out["s"] == {1, 2} and out["fs"] == frozenset({3})
        assert out["r"] == range(5) and out["l"] == list(range(1000)) and out["b"] == b"abc" * 3000
        np.testing.assert_array_equal(out["a"], d["a"])
        np.testing.assert_array_equal(out["f"], d["f"])
        np.testing.assert_array_equal(out["sp"].toarray(), np.eye(4))
    py2 = safe_loads(py2_pickle_dumps({"sequence": "courtyard_01", "x": np.arange(5.0), "g": ["m", "f"]}))
    assert py2["sequence"] == "courtyard_01" and py2["g"] == ["m", "f"]
    np.testing.assert_array_equal(py2["x"], np.arange(5.0))


def test_3dpw_fixture_is_a_python2_latin1_pickle(tmp_path, reliability):
    """Real 3DPW files are Python 2 pickles: byte strings for text and array data, ``numpy.core``
    names, readable only with ``encoding='latin1'``. The fixture is one, and the reader reads it."""
    import pickletools

    from fabricate import write_mini_3dpw
    from hmrmamba.data.real.pw3d import read_sequence

    mini = write_mini_3dpw(tmp_path / "raw", splits={"test": (1,)}, frames=6)
    path = next(iter(mini.files.values()))
    blob = path.read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    assert blob[:2] == b"\x80\x02"
    assert {"SHORT_BINSTRING", "BINSTRING"} & ops and not {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES"} & ops
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob and b"numpy._core" not in blob
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)  # Python 3's default ASCII decoding cannot read a real 3DPW file
    (person,) = read_sequence(path)
    d = next(iter(mini.sequences.values()))
    assert person.sequence == d["sequence"] and person.gender == "m"
    np.testing.assert_allclose(person.betas, d["betas"][0][:10])
    assert person.valid.tolist() == [bool(v) for v in d["campose_valid"][0]]
    reliability.bad_input("3DPW reader", "Python 2 latin-1 pickle fixture read with its values")


def test_convert_smpl_of_a_36_byte_bytearray_pickle(tmp_path, capsys, reliability):
    from .test_bad_cli import assert_one_line_error, hmrmamba

    src = tmp_path / "SMPL_NEUTRAL.pkl"
    src.write_bytes(pickle.dumps(Reduce(bytearray, GB3), protocol=2))
    out = tmp_path / "SMPL.npz"
    err, seconds, peak = cheaply(lambda: hmrmamba(["convert-smpl", str(src), "-o", str(out)], capsys))
    assert err is None, err
    rc, msg = hmrmamba(["convert-smpl", str(src), "-o", str(out)], capsys)
    assert_one_line_error(rc, msg, "convert-smpl", str(src), "would make")
    assert seconds < MAX_SECONDS and peak < MAX_BYTES, (seconds, peak)
    assert not out.exists()
    reliability.bad_input("hmrmamba convert-smpl", f"{src.stat().st_size}-byte pickle of bytearray(3e9)")



# ---------------------------------------------------------------------------------------------
# demo inputs: keypoint files and frames, refused by their headers
# ---------------------------------------------------------------------------------------------


def _npz_bomb(path: Path, shape: tuple[int, ...], dtype=np.uint8, *, chunk: int = 1 << 24,
              member: str = "keypoints", mode: str = "w") -> Path:
    """A deflated ``.npz`` whose ``member`` is ``shape`` zeros, streamed (never in memory)."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    total = int(np.prod(shape)) * np.dtype(dtype).itemsize
    zeros = bytes(chunk)
    with zipfile.ZipFile(path, mode, compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{member}.npy", "w", force_zip64=True) as fh:
            fh.write(head.getvalue())
            while total > 0:
                fh.write(zeros[: min(chunk, total)])
                total -= chunk
    return path


def test_keypoints_npz_that_inflates_to_1e7_frames_is_refused_by_its_header(tmp_path, reliability):
    from hmrmamba.demo.keypoints import MAX_KEYPOINT_FRAMES, load_keypoints

    path = _npz_bomb(tmp_path / "kp.npz", (10**7, 17, 2))
    assert path.stat().st_size < 2 << 20  # 340 MB of uint8 (1.4 GB as float32) in < 2 MB
    err = assert_cheap_refusal(lambda: load_keypoints(path), file=str(path), match="10,000,000 frames")
    assert f"{MAX_KEYPOINT_FRAMES:,}" in str(err) and "field 'keypoints'" in str(err)
    err = assert_cheap_refusal(lambda: load_keypoints(path, num_frames=20), file=str(path), match="10000000 frames")
    assert "20 rows" in str(err)
    reliability.bad_input("demo keypoints .npz", f"{path.stat().st_size // 1024} KB deflated to (1e7, 17, 2)")


def test_keypoints_npz_members_other_than_keypoints_are_never_decompressed(tmp_path, reliability):
    """A 300 MB ``junk`` member next to good keypoints: the file loads, the junk is not inflated."""
    import zipfile

    from hmrmamba.demo.keypoints import load_keypoints

    out = tmp_path / "kp.npz"
    kp = np.random.default_rng(0).uniform(10, 50, size=(4, 17, 2)).astype(np.float32)
    np.savez_compressed(out, keypoints=kp)
    _npz_bomb(out, (300_000_000,), member="junk", mode="a")
    with zipfile.ZipFile(out) as zf:
        assert zf.getinfo("junk.npy").file_size > 300_000_000 and out.stat().st_size < 2 << 20
    err, seconds, peak = cheaply(lambda: load_keypoints(out, num_frames=4, image_size=(64, 64)))
    assert err is None, err
    assert seconds < MAX_SECONDS and peak < MAX_BYTES, (seconds, peak)
    track = load_keypoints(out, num_frames=4, image_size=(64, 64))
    np.testing.assert_array_equal(track.keypoints, kp)
    assert track.detected.all()
    reliability.bad_input("demo keypoints .npz", "a 300 MB extra member is never decompressed")


def _big_png(path: Path, side: int = 10_000) -> Path:
    from PIL import Image

    Image.new("L", (side, side)).save(path, compress_level=1)
    return path


def test_demo_frames_of_10000x10000_are_refused_by_the_header(tmp_path, reliability):
    import shutil

    from hmrmamba.data.video import MAX_FRAME_PIXELS, VideoReader

    folder = tmp_path / "frames"
    folder.mkdir()
    _big_png(folder / "frame_000.png")
    for i in range(1, 10):
        shutil.copy(folder / "frame_000.png", folder / f"frame_{i:03d}.png")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10 * (1 << 20)
    err = assert_cheap_refusal(lambda: VideoReader(folder), file="frame_000.png", match="10000 x 10000")
    assert f"{MAX_FRAME_PIXELS / 1e6:.1f} Mpx" in str(err)
    reliability.bad_input("demo frames folder (VideoReader)", "ten 10000 x 10000 PNGs (3 GB decoded)")


def test_a_huge_frame_later_in_the_folder_is_refused_before_decoding(tmp_path, reliability):
    from PIL import Image

    from hmrmamba.data.video import VideoReader

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (i, i, i)).save(folder / f"f_{i}.png")
    _big_png(folder / "f_3.png")
    reader = VideoReader(folder)
    assert reader.size == (24, 32) and reader.num_frames == 4
    frames = iter(reader)
    assert [next(frames)[0, 0, 0] for _ in range(3)] == [0, 1, 2]
    assert_cheap_refusal(lambda: next(frames), file="f_3.png", match="10000 x 10000")
    reliability.bad_input("demo frames folder (VideoReader)", "one 10000 x 10000 frame after small ones")
