"""Fixed-length windows over the sequences of a split, as a ``torch.utils.data.Dataset``.

Training windows start every ``stride`` frames inside a sequence (the last one is aligned to the
sequence end so no frame is left out). Evaluation windows use stride 1 and are *centred* on each
frame, so that the middle frame (index ``T // 2``) is the one scored (PMCE/ARTS protocol).
Frames beyond a sequence's ends are filled by edge replication and flagged by ``mask == False``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from hmrmamba.errors import InputError


def window_starts(seq_start: np.ndarray, seq_len: np.ndarray, *, length: int, stride: int,
                  centred: bool) -> tuple[np.ndarray, np.ndarray]:
    """Window origins as global frame indices (may be outside the sequence) and their sequence ids.

    seq_start, seq_len: (S,) -> (starts (W,), seq_ids (W,)).
    Centred windows: one per frame, origin ``frame - length // 2``.
    """
    starts, ids = [], []
    for s, (a, n) in enumerate(zip(seq_start.tolist(), seq_len.tolist())):
        if centred:
            local = np.arange(0, n, stride) - length // 2
        elif n <= length:
            local = np.zeros(1, dtype=np.int64)
        else:
            local = np.arange(0, n - length + 1, stride)
            if local[-1] != n - length:
                local = np.append(local, n - length)
        starts.append(a + local)
        ids.append(np.full(len(local), s))
    return np.concatenate(starts).astype(np.int64), np.concatenate(ids).astype(np.int64)


def window_indices(start: int, length: int, seq_first: int, seq_last: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of one window clamped into [seq_first, seq_last] and its validity mask.

    -> (idx (T,) int64, mask (T,) bool).
    """
    raw = start + np.arange(length)
    idx = np.clip(raw, seq_first, seq_last)
    return idx, raw == idx


class WindowDataset(Dataset):
    """Windows of ``length`` frames over per-frame arrays that share the split's frame rows.

    ``arrays`` maps names to (N, ...) arrays (e.g. ``kp2d``, ``conf``, ``features``, ``joints3d``,
    ``smpl_pose``); each item is a dict of tensors (T, ...) plus ``mask (T,)``, ``frame_index (T,)``,
    ``seq_index ()`` and ``camera (4,)``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], *, seq_start: np.ndarray, seq_len: np.ndarray,
                 camera: np.ndarray, length: int = 16, stride: int = 4, centred: bool = False,
                 source: str = "<arrays>"):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1
                   for v in (length, stride)):
            raise InputError(f"length={length!r}, stride={stride!r}", field="window",
                             expected="positive integer window length and stride")
        seq_start, seq_len = np.asarray(seq_start), np.asarray(seq_len)
        if seq_start.ndim != 1 or seq_start.shape != seq_len.shape or seq_start.dtype.kind not in "iu" \
                or seq_len.dtype.kind not in "iu":
            raise InputError(f"seq_start {seq_start.shape} {seq_start.dtype}, seq_len {seq_len.shape} "
                             f"{seq_len.dtype}", file=source, field="seq_start/seq_len",
                             expected="two integer arrays (S,) of the same length")
        n = int(np.sum(seq_len))
        if n == 0 or (seq_len < 1).any():
            raise InputError(f"sequence lengths {seq_len.tolist()[:10]}", file=source, field="seq_len",
                             expected="a non-empty split, every sequence at least one frame")
        if seq_start[0] != 0 or (seq_start[1:] != seq_start[:-1] + seq_len[:-1]).any():
            raise InputError("sequences do not tile the frames contiguously", file=source, field="seq_start",
                             expected="seq_start[0] = 0 and seq_start[i+1] = seq_start[i] + seq_len[i]")
        if np.shape(camera) != (len(seq_len), 4):
            raise InputError(f"shape {np.shape(camera)}", file=source, field="camera",
                             expected=f"({len(seq_len)}, 4): fx, fy, cx, cy per sequence")
        for name, arr in arrays.items():
            if np.ndim(arr) == 0 or arr.shape[0] != n:
                raise InputError(f"shape {np.shape(arr)}", file=source, field=name,
                                 expected=f"{n} rows, one per frame of the split")
        self.arrays = dict(arrays)
        self.length = length
        self.seq_start = np.asarray(seq_start, dtype=np.int64)
        self.seq_len = np.asarray(seq_len, dtype=np.int64)
        self.camera = np.asarray(camera, dtype=np.float32)
        self.starts, self.seq_ids = window_starts(self.seq_start, self.seq_len, length=length,
                                                  stride=stride, centred=centred)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(self.seq_ids[i])
        first = int(self.seq_start[s])
        idx, mask = window_indices(int(self.starts[i]), self.length, first, first + int(self.seq_len[s]) - 1)
        item = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.arrays.items()}
        item["mask"] = torch.from_numpy(mask)
        item["frame_index"] = torch.from_numpy(idx)
        item["seq_index"] = torch.tensor(s)
        item["camera"] = torch.from_numpy(self.camera[s])
        return item
