"""The project's HDF5 schema for one dataset split, with atomic writing and validated reading.

Layout of ``<split>.h5`` (``attrs["schema_version"] == SCHEMA_VERSION``):

- per frame (N rows, group ``frames/``): ``joints3d (N,17,3)`` metres, camera frame;
  ``joints2d (N,17,2)`` pixels; ``smpl_pose (N,72)`` axis-angle; ``smpl_betas (N,10)``;
  ``smpl_trans (N,3)``; optional ``valid (N,)`` bool, ``vertices (N,V,3)``, ``image (N,H,W,3) uint8``;
- per sequence (S rows, group ``sequences/``): ``seq_name`` str, ``seq_start``, ``seq_len``,
  ``camera (S,4)`` (fx, fy, cx, cy), ``fps``; optional ``subject`` str, ``motion`` str.

Later stages never rewrite a split; they write sibling tables (detections, features) whose rows
line up with the split's frames (:func:`write_table` / :func:`read_table`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError, MissingFileError

SCHEMA_VERSION = 1

_KIND_NAMES = {"f": "float", "i": "int", "u": "uint8", "b": "bool", "S": "str"}


@dataclass(frozen=True)
class Field:
    """One dataset of the schema: its trailing shape (``None`` = any size) and dtype kind."""

    tail: tuple[int | None, ...]
    kind: str  # numpy dtype kind: "f" float, "i" integer, "u" unsigned, "b" bool, "S" string
    required: bool = True
    finite: bool = False

    def describe(self, rows: str) -> str:
        dims = [rows] + ["*" if d is None else str(d) for d in self.tail]
        return f"({','.join(dims)}) {_KIND_NAMES.get(self.kind, self.kind)}"


FRAME_FIELDS: dict[str, Field] = {
    "joints3d": Field((17, 3), "f", finite=True),
    "joints2d": Field((17, 2), "f", finite=True),
    "smpl_pose": Field((72,), "f", finite=True),
    "smpl_betas": Field((10,), "f", finite=True),
    "smpl_trans": Field((3,), "f", finite=True),
    "valid": Field((), "b", required=False),
    "vertices": Field((None, 3), "f", required=False),
    "image": Field((None, None, 3), "u", required=False),
}

SEQ_FIELDS: dict[str, Field] = {
    "seq_name": Field((), "S"),
    "seq_start": Field((), "i"),
    "seq_len": Field((), "i"),
    "camera": Field((4,), "f", finite=True),
    "fps": Field((), "f", finite=True),
    "subject": Field((), "S", required=False),
    "motion": Field((), "S", required=False),
}

_COMPRESSED = {"image": dict(compression="gzip", compression_opts=1),
               "vertices": dict(compression="gzip", compression_opts=1)}


def _kind_ok(field: Field, dtype: np.dtype) -> bool:
    if field.kind == "S":
        return dtype.kind in "SOU"
    if field.kind == "i":
        return dtype.kind in "iu"
    return dtype.kind == field.kind


def check_array(name: str, arr: np.ndarray, field: Field, rows: int | None, *, file: str | Path,
                rows_label: str = "N") -> None:
    """Raise :class:`InputError` unless ``arr`` has ``rows`` rows, the field's tail shape and dtype."""
    expected = field.describe(rows_label if rows is None else str(rows))
    if arr.ndim != 1 + len(field.tail) or any(
            t is not None and s != t for s, t in zip(arr.shape[1:], field.tail)):
        raise InputError(f"shape {tuple(arr.shape)}", file=file, field=name, expected=expected)
    if rows is not None and arr.shape[0] != rows:
        raise InputError(f"{arr.shape[0]} rows", file=file, field=name, expected=expected)
    if not _kind_ok(field, arr.dtype):
        raise InputError(f"dtype {arr.dtype}", file=file, field=name, expected=expected)
    if field.finite and arr.size and not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0, 0])
        raise InputError(f"non-finite value (NaN/Inf) at row {bad}", file=file, field=name,
                         expected="finite numbers")


def _require(table: Mapping[str, Field], data: Mapping[str, object], group: str, file) -> None:
    missing = [k for k, f in table.items() if f.required and k not in data]
    if missing:
        raise InputError(f"missing {group} field(s) {missing}", file=file, field=missing[0],
                         expected=f"all of {[k for k, f in table.items() if f.required]}")


def validate_split(frames: Mapping[str, np.ndarray], seqs: Mapping[str, np.ndarray], *,
                   file: str | Path) -> int:
    """Check a split's arrays against the schema; return the frame count N."""
    _require(FRAME_FIELDS, frames, "frame", file)
    _require(SEQ_FIELDS, seqs, "sequence", file)
    for table, name, rows in ((FRAME_FIELDS, "joints3d", "N"), (SEQ_FIELDS, "seq_start", "S")):
        if np.ndim(frames[name] if rows == "N" else seqs[name]) == 0:
            raise InputError("a scalar", file=file, field=name, expected=table[name].describe(rows))
    n = int(np.asarray(frames["joints3d"]).shape[0])
    s = int(np.asarray(seqs["seq_start"]).shape[0])
    if n == 0 or s == 0:
        raise InputError("empty split", file=file, field="joints3d", expected="at least one frame")
    for name, arr in frames.items():
        if name in FRAME_FIELDS:
            check_array(name, np.asarray(arr), FRAME_FIELDS[name], n, file=file)
    for name, arr in seqs.items():
        if name in SEQ_FIELDS:
            check_array(name, np.asarray(arr), SEQ_FIELDS[name], s, file=file, rows_label="S")
    start, length = np.asarray(seqs["seq_start"], np.int64), np.asarray(seqs["seq_len"], np.int64)
    if (length <= 0).any() or (length > n).any() or start[0] != 0 \
            or (start[1:] != start[:-1] + length[:-1]).any() or start[-1] + length[-1] != n:
        raise InputError("sequences must tile the frames contiguously", file=file, field="seq_start",
                         expected=f"seq_start[0]=0, seq_start[i+1]=seq_start[i]+seq_len[i], "
                                  f"sum(seq_len)={n}")
    check_units(np.asarray(frames["joints3d"]), file=file, valid=frames.get("valid"))
    return n


#: A body's farthest joint from the pelvis is ~0.3-1.2 m away; a median outside these bounds is
#: another unit: millimetres give ~1000, metres divided by 1000 again ~0.001.
MIN_BODY_EXTENT_M = 0.1
MAX_BODY_EXTENT_M = 10.0
_UNIT_SCALE = {"m": 1.0, "mm": 1000.0}


def check_units(joints3d: np.ndarray, *, file: str | Path, field: str = "joints3d", unit: str = "m",
                valid: np.ndarray | None = None) -> None:
    """Refuse joints that are evidently not in ``unit`` ("m" or "mm"). joints3d: (N, J, 3), pelvis at
    joint 0; valid: (N,) bool, the frames to look at (all when None or none is set).

    The median over frames of the largest joint distance from the pelvis must lie within
    [:data:`MIN_BODY_EXTENT_M`, :data:`MAX_BODY_EXTENT_M`] in that unit: millimetres (H36M/3DHP raw
    files, AMASS exports) fail the metre check, and metres fail the millimetre check (3DHP's
    ``annot3`` already converted gives a body 0.8 mm tall once divided by 1000).
    """
    scale = _UNIT_SCALE[unit]
    j = np.asarray(joints3d)
    if valid is not None and np.asarray(valid).any():
        j = j[np.asarray(valid, bool)]
    j = j[np.isfinite(j).all(axis=(1, 2))]
    if j.size == 0:
        return
    extent = np.linalg.norm(j - j[:, :1], axis=-1).max(axis=1)
    median = float(np.median(extent))
    lo, hi = MIN_BODY_EXTENT_M * scale, MAX_BODY_EXTENT_M * scale
    if lo <= median <= hi:
        return
    hint = {("m", False): "millimetres?", ("m", True): "metres divided by 1000 once too often?",
            ("mm", False): "not millimetres?", ("mm", True): "already metres?"}[unit, median < lo]
    raise InputError(f"median body extent {median:.4g} {unit} around the pelvis ({hint})", file=file,
                     field=field, expected=f"{unit}: a body spans {lo:g} to {hi:g} {unit}")


def _create_file(path: Path) -> h5py.File:
    """A new HDF5 file with the chunk cache off: every chunk is written inside ``create_dataset``.

    A failed write (disk full, file-size limit) then raises from that call. With a chunk cache, the
    write happens when h5py drops the dataset object, where the error is swallowed and the following
    ``close()`` can crash the interpreter (h5py 3.x, seen with RLIMIT_FSIZE). Arrays are always written
    whole, so the cache buys nothing here.
    """
    return h5py.File(path, "w", rdcc_nbytes=0)


def _create(h5: h5py.File, key: str, arr: np.ndarray, compressed: bool) -> None:
    if arr.dtype.kind in "UO":
        arr = arr.astype("S")
    kwargs = {}
    if compressed and arr.shape[0]:
        kwargs = dict(chunks=(min(64, arr.shape[0]),) + arr.shape[1:], **_COMPRESSED[key.split("/")[-1]])
    h5.create_dataset(key, data=arr, **kwargs)


def write_split(path: str | Path, frames: Mapping[str, np.ndarray], seqs: Mapping[str, np.ndarray],
                attrs: Mapping[str, object] | None = None) -> None:
    """Validate and atomically write one split file."""
    path = Path(path)
    validate_split(frames, seqs, file=path)
    with atomic_path(path, suffix=".h5") as tmp:
        with _create_file(tmp) as h5:
            h5.attrs["schema_version"] = SCHEMA_VERSION
            for k, v in (attrs or {}).items():
                h5.attrs[k] = v
            for name, arr in frames.items():
                _create(h5, f"frames/{name}", np.asarray(arr), name in _COMPRESSED)
            for name, arr in seqs.items():
                _create(h5, f"sequences/{name}", np.asarray(arr), False)


def open_h5(path: str | Path) -> h5py.File:
    """Open an HDF5 file read-only, turning missing/corrupt/truncated files into clear errors."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError("file not found", file=path,
                               expected="an HDF5 file made by the pipeline (run `dvc repro` or the "
                                        "stage that produces it)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot be read as HDF5 ({exc})", file=path,
                         expected="a complete HDF5 file; it may be truncated or corrupt — re-run "
                                  "the stage that wrote it") from None


def _decode(a: np.ndarray) -> np.ndarray:
    """A string dataset as h5py returns it (bytes, fixed ``S`` or variable-length object) -> ``str``."""
    flat = [s.decode("utf-8", errors="replace") if isinstance(s, bytes) else str(s) for s in a.reshape(-1)]
    return np.array(flat, dtype=str).reshape(a.shape)


def decode_strings(arrays: Mapping[str, object]) -> dict[str, object]:
    """Every string dataset or attribute of ``arrays`` as ``str``: the one place where the bytes
    HDF5 stores become text again (:func:`_create` writes ``str`` as UTF-8 ``S``). Others pass as is."""
    out: dict[str, object] = {}
    for k, v in arrays.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        elif isinstance(v, np.ndarray) and v.dtype.kind in "SO":
            v = _decode(v)
        out[k] = v
    return out


@dataclass
class Split:
    """A split loaded into memory: ``frames`` and ``seqs`` dicts of numpy arrays, plus attrs."""

    path: Path
    frames: dict[str, np.ndarray]
    seqs: dict[str, np.ndarray]
    attrs: dict[str, object]

    @property
    def num_frames(self) -> int:
        return int(self.frames["joints3d"].shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.seqs["seq_start"].shape[0])

    def seq_of_frame(self) -> np.ndarray:
        """(N,) sequence index of every frame."""
        return np.repeat(np.arange(self.num_seqs), self.seqs["seq_len"])


def _check_members(group: h5py.Group, table: Mapping[str, Field], rows_label: str, path: Path) -> None:
    """Every known member is a dataset of the right shape and dtype (metadata only, nothing read).

    Checking before reading keeps a file that declares absurd shapes from being loaded at all.
    """
    rows: int | None = None
    for name, field in table.items():
        if name not in group:
            continue
        ds = group[name]
        if not isinstance(ds, h5py.Dataset):
            raise InputError(f"is a {type(ds).__name__}", file=path, field=f"{group.name.lstrip('/')}/{name}",
                             expected=field.describe(rows_label))
        meta_field = Field(field.tail, field.kind, field.required, finite=False)
        check_array(name, ds, meta_field, rows, file=path, rows_label=rows_label)
        rows = ds.shape[0] if rows is None and ds.ndim else rows


#: What h5py raises for a file whose metadata is damaged (a flipped bit in a B-tree, heap or object
#: header): "bad heap free list" (RuntimeError), "wrong B-tree signature" (OSError), a name lookup that
#: fails (KeyError), an impossible shape or type (ValueError/TypeError).
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@contextlib.contextmanager
def corrupt_as_input_error(path: Path, where: list[str], expected: str) -> Iterator[None]:
    """h5py's errors inside the block become one :class:`InputError` naming ``path`` and the member
    being read (``where[-1]``); :class:`InputError` raised by the checks passes unchanged."""
    try:
        yield
    except InputError:
        raise
    except _H5_ERRORS as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(f"unreadable or corrupt HDF5 file ({type(exc).__name__}: {detail})", file=path,
                         field=where[-1], expected=expected) from None


def read_split(path: str | Path, *, with_images: bool = False, with_vertices: bool = False) -> Split:
    """Read and validate a split. Images and vertices are only read when asked for (they are big).

    The whole read (open, schema checks, data) is guarded: a file damaged anywhere, its metadata
    included, gives one :class:`InputError` naming the file and the member being read.
    """
    path = Path(path)
    skip = {k for k, want in (("image", with_images), ("vertices", with_vertices)) if not want}
    where = ["schema_version"]
    with corrupt_as_input_error(path, where, "an HDF5 split written by the pipeline (re-run the stage "
                                              "that wrote it)"):
        with open_h5(path) as h5:
            version = h5.attrs.get("schema_version")
            if not (np.ndim(version) == 0 and np.issubdtype(np.asarray(version).dtype, np.integer)
                    and int(version) == SCHEMA_VERSION):
                raise InputError(f"schema_version {version}", file=path, field="schema_version",
                                 expected=f"{SCHEMA_VERSION} (re-run the `prepare` stage)")
            for group, table, rows in (("frames", FRAME_FIELDS, "N"), ("sequences", SEQ_FIELDS, "S")):
                where.append(group)
                if not isinstance(h5.get(group), h5py.Group):
                    raise InputError(f"missing group '{group}'", file=path, field=group,
                                     expected="a split written by hmrmamba")
                _check_members(h5[group], table, rows, path)
            frames: dict[str, np.ndarray] = {}
            seqs: dict[str, np.ndarray] = {}
            for group, out in (("frames", frames), ("sequences", seqs)):
                where.append(group)
                for k in h5[group]:
                    if group == "frames" and k in skip:
                        continue
                    where.append(f"{group}/{k}")
                    out[k] = h5[group][k][()]
            where.append("attrs")
            attrs = decode_strings(h5.attrs)
    frames, seqs = decode_strings(frames), decode_strings(seqs)
    validate_split(frames, seqs, file=path)
    return Split(path=path, frames=frames, seqs=seqs, attrs=attrs)


def write_table(path: str | Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object]) -> None:
    """Atomically write a per-frame sibling table (detections, features) with attrs."""
    with atomic_path(path, suffix=".h5") as tmp:
        with _create_file(tmp) as h5:
            h5.attrs["schema_version"] = SCHEMA_VERSION
            for k, v in attrs.items():
                h5.attrs[k] = v
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                chunks = (min(1024, arr.shape[0]),) + arr.shape[1:] if arr.ndim and arr.shape[0] else None
                h5.create_dataset(name, data=arr, chunks=chunks)


def read_table(path: str | Path, fields: Mapping[str, Field], *, rows: int | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Read a sibling table, validating every present field (and the row count when given).

    Required fields that are absent raise :class:`InputError`; optional absent ones are skipped. A file
    damaged anywhere (metadata included) gives one :class:`InputError` naming the file and the member.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    where = ["(file)"]
    with corrupt_as_input_error(path, where, "an HDF5 table written by the pipeline (re-run the stage "
                                              "that wrote it)"):
        with open_h5(path) as h5:
            for name, field in fields.items():
                where.append(name)
                if name not in h5:
                    if not field.required:
                        continue
                    raise InputError("missing dataset", file=path, field=name,
                                     expected=field.describe("N" if rows is None else str(rows)))
                ds = h5[name]
                if not isinstance(ds, h5py.Dataset):
                    raise InputError(f"is a {type(ds).__name__}", file=path, field=name,
                                     expected=field.describe("N" if rows is None else str(rows)))
                meta_field = Field(field.tail, field.kind, field.required, finite=False)  # shape/dtype only
                check_array(name, ds, meta_field, rows, file=path)
                out[name] = ds[()]
                check_array(name, out[name], field, rows, file=path)
            where.append("attrs")
            attrs = decode_strings(h5.attrs)
    return decode_strings(out), attrs
