"""Import precomputed per-frame image features (e.g. PMCE/ARTS's) instead of extracting them.

Accepted files (``features.import_path``: one path for all splits, or ``{split: path}``):

* ``.npz`` (read with ``allow_pickle=False``) or ``.h5``/``.hdf5`` (datasets at the file's root),
  holding M rows:

  - ``features`` (M, 2048) float: one feature vector per frame;
  - ``seq_name`` (M,) str: the split's sequence name (``S9/Walking/60457274``,
    ``downtown_walking_00/0``, ``TS1``; see ``docs/real_data.md``);
  - ``frame`` (M,) int: the 0-based frame of the sequence's source video / image list (before
    any subsampling: Human3.6M row ``t`` is frame ``2 t`` at the default stride);
  - ``bbox`` (M, 4) float, optional: the crop box (cx, cy, w, h) in original pixels, as in
    VIBE/PMCE's databases; without it, boxes are made from the configured 2D detections.

Rows are matched to the split by (``seq_name``, ``frame``); extra rows (other splits, the 50 fps
frames Human3.6M drops) are ignored, a missing or duplicated row is an error. PMCE ships its
features inside joblib pickles (``*_db.pt``), which are never unpickled here: convert them once,
on your own trusted copy, as shown in ``docs/real_data.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.errors import InputError, MissingFileError

FEATURE_KEYS = ("features", "seq_name", "frame")
SUFFIXES = (".npz", ".h5", ".hdf5")
FP16_MAX = float(np.finfo(np.float16).max)
CONVERT_HINT = ("an .npz or .h5 with features (M,2048), seq_name (M,), frame (M,) [, bbox (M,4)]; "
                "see docs/real_data.md for converting PMCE/ARTS *_db.pt files")


@dataclass
class ImportedFeatures:
    """The rows of one import file."""

    path: Path
    features: np.ndarray  # (M, D) float
    seq_name: np.ndarray  # (M,) str
    frame: np.ndarray  # (M,) int64
    bbox: np.ndarray | None  # (M, 4) float32 cx, cy, w, h original px

    @property
    def num_rows(self) -> int:
        return int(self.features.shape[0])


def import_path_for(value: Any, split: str) -> Any:
    """``features.import_path`` (a path, or a mapping split -> path) -> the path for ``split`` or None."""
    if isinstance(value, Mapping):
        return value.get(split)
    return value or None


def _strings(a: np.ndarray) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in np.asarray(a).reshape(-1)])


def load_feature_file(path: str | Path, *, feature_dim: int = 2048) -> ImportedFeatures:
    """An ``.npz``/``.h5`` feature file -> :class:`ImportedFeatures` (validated; never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("feature file not found", file=path, field="features.import_path",
                               expected=CONVERT_HINT)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"unsupported file type '{path.suffix}' (pickled/joblib files are not read)",
                         file=path, field="features.import_path", expected=CONVERT_HINT)
    raw: dict[str, np.ndarray] = {}
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for k in (*FEATURE_KEYS, "bbox"):
                    if k in z.files:
                        raw[k] = z[k]
        else:
            import h5py

            with h5py.File(path, "r") as h5:
                for k in (*FEATURE_KEYS, "bbox"):
                    if k in h5 and isinstance(h5[k], h5py.Dataset):
                        raw[k] = h5[k][()]
    except ValueError as err:  # object arrays refused by allow_pickle=False
        raise InputError(f"holds pickled objects ({err})", file=path, field="features.import_path",
                         expected=CONVERT_HINT) from None
    except (OSError, EOFError) as err:
        raise InputError(f"unreadable ({type(err).__name__}: {str(err)[:160]})", file=path,
                         field="features.import_path", expected=CONVERT_HINT) from None
    for k in FEATURE_KEYS:
        if k not in raw:
            raise InputError("missing key", file=path, field=k, expected=CONVERT_HINT)
    feats = raw["features"]
    if feats.ndim != 2 or feats.shape[1] != feature_dim or feats.dtype.kind != "f":
        raise InputError(f"shape {feats.shape} dtype {feats.dtype}", file=path, field="features",
                         expected=f"(M, {feature_dim}) float")
    m = feats.shape[0]
    if not np.isfinite(feats).all() or (np.abs(feats).max(initial=0.0) > FP16_MAX):
        raise InputError("non-finite or fp16-overflowing values", file=path, field="features",
                         expected="finite values below 65504")
    names = raw["seq_name"]
    if names.dtype.kind not in "SU" or names.reshape(-1).shape[0] != m:
        raise InputError(f"shape {names.shape} dtype {names.dtype}", file=path, field="seq_name",
                         expected=f"({m},) strings, one per feature row")
    frame = raw["frame"]
    if frame.dtype.kind not in "iu" or frame.reshape(-1).shape[0] != m or (m and frame.min() < 0):
        raise InputError(f"shape {frame.shape} dtype {frame.dtype}", file=path, field="frame",
                         expected=f"({m},) non-negative integers, one per feature row")
    bbox = raw.get("bbox")
    if bbox is not None:
        if bbox.shape != (m, 4) or bbox.dtype.kind != "f" or not np.isfinite(bbox).all() \
                or (m and (bbox[:, 2:4] <= 0).any()):
            raise InputError(f"shape {bbox.shape} dtype {bbox.dtype}", file=path, field="bbox",
                             expected=f"({m}, 4) finite float cx, cy, w, h with w, h > 0")
        bbox = bbox.astype(np.float32)
    return ImportedFeatures(path=path, features=feats, seq_name=_strings(names),
                            frame=frame.reshape(-1).astype(np.int64), bbox=bbox)


def match_rows(imported: ImportedFeatures, *, seq_name: np.ndarray, frame: np.ndarray,
               split: str = "split") -> np.ndarray:
    """seq_name: (N,) str, frame: (N,) int of every split row -> (N,) row index into ``imported``.

    Raises :class:`InputError` naming the file when a (sequence, frame) key is duplicated in the
    file or a split row has no row in the file (with the count and the first few).
    """
    want_seq = _strings(seq_name)
    want_frame = np.asarray(frame, np.int64).reshape(-1)
    # (sequence, frame) -> one int64 key: sequence code * span + frame, then sort and binary search
    names, codes = np.unique(np.concatenate([imported.seq_name, want_seq]), return_inverse=True)
    span = int(max(imported.frame.max(initial=0), want_frame.max(initial=0))) + 1
    have = codes[:imported.num_rows].astype(np.int64) * span + imported.frame
    want = codes[imported.num_rows:].astype(np.int64) * span + want_frame
    order = np.argsort(have, kind="stable")
    sorted_have = have[order]
    dup = np.nonzero(sorted_have[1:] == sorted_have[:-1])[0]
    if len(dup):
        k = int(sorted_have[dup[0]])
        raise InputError(f"{len(dup)} duplicated (seq_name, frame) key(s), e.g. ({str(names[k // span])!r}, {k % span})",
                         file=imported.path, field="seq_name/frame", expected="one row per sequence frame")
    pos = np.minimum(np.searchsorted(sorted_have, want), max(len(sorted_have) - 1, 0))
    found = sorted_have[pos] == want if len(sorted_have) else np.zeros(len(want), bool)
    if not found.all():
        miss = np.nonzero(~found)[0]
        first = ", ".join(f"({str(want_seq[i])!r}, {int(want_frame[i])})" for i in miss[:5])
        seqs = sorted({str(x) for x in want_seq[miss]})
        raise InputError(f"{len(miss)} of the {len(want)} frames of split '{split}' have no feature row "
                         f"(sequences {seqs[:5]}{' ...' if len(seqs) > 5 else ''}; first: {first})",
                         file=imported.path, field="seq_name/frame",
                         expected="a row for every (seq_name, frame) of the split (docs/real_data.md)")
    return order[pos]


def match_split_rows(imported: ImportedFeatures, data, *, frame: np.ndarray, split: str) -> np.ndarray:
    """The row of ``imported`` for every frame of split ``data`` -> (N,) int (see :func:`match_rows`).

    ``frame`` (N,): the source frame of every split row (:func:`hmrmamba.data.real.frames.split_frame_index`).
    """
    names = np.repeat(np.asarray(data.seqs["seq_name"]), data.seqs["seq_len"])
    if len(frame) != len(names):
        raise InputError(f"{len(frame)} frame indices for {len(names)} rows", file=data.path,
                         field="frame", expected="one per split row")
    return match_rows(imported, seq_name=names, frame=frame, split=split)
