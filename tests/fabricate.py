"""Small fabricated copies of the real benchmarks, written in their exact on-disk formats.

The real files cannot be shipped, so the readers are tested (and the pipeline is exercised end
to end) on these: seeded, tiny, with plausible walking people and the real camera models.

* :func:`write_mini_h36m` -- VideoPose3D's ``data_3d_h36m.npz`` (pickled dict of (N, 32, 3)
  world-frame mocap) and ``data_2d_h36m_<detector>.npz`` files (``gt`` is the exact projection
  with the published cameras; ``cpn``/``detectron`` add seeded pixel noise; ``sh`` has 16 joints
  in Stacked Hourglass/MPII order, with VideoPose3D's metadata for that file)
  and, with ``videos=True``, tiny ``<S>/Videos/<action>.<camera id>.mp4`` videos of the figure;
* :func:`write_mini_3dpw` -- ``sequenceFiles/<split>/<seq>.pkl`` with 3DPW's keys, written as the
  real ones are: Python 2 protocol-2 pickles (:func:`py2_pickle_dumps`: text and array data as
  Python 2 ``str`` byte strings, ``numpy.core.multiarray`` names), so only ``encoding="latin1"``
  reads them (with ``images=True`` also ``imageFiles/<seq>/image_%05d.jpg``);
* :func:`write_mini_3dhp` -- ``mpi_inf_3dhp_test_set/TS*/annot_data.mat`` as MATLAB v7.3 (HDF5
  with MATLAB's 512-byte header and reversed axes), or as a v5 ``.mat`` through scipy (with
  ``images=True`` also ``TS*/imageSequence/img_%06d.jpg``);
* :func:`write_evil_pickle` -- a pickle that would run a shell command if a plain unpickler
  loaded it (the readers must refuse it).

Everything is returned alongside the paths, so tests can compare the readers' output against
the values that went in.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmrmamba.skeleton import H36M17, MPI_TO_H36M, SMPL24

# --------------------------------------------------------------------------------------------
# a walking stick figure (H36M-17, metres, z up, facing +y)
# --------------------------------------------------------------------------------------------

_TEMPLATE = {
    "pelvis": (0.0, 0.0, 0.95),
    "right_hip": (-0.13, 0.0, 0.95),
    "right_knee": (-0.13, 0.0, 0.52),
    "right_ankle": (-0.13, 0.0, 0.08),
    "left_hip": (0.13, 0.0, 0.95),
    "left_knee": (0.13, 0.0, 0.52),
    "left_ankle": (0.13, 0.0, 0.08),
    "spine": (0.0, 0.0, 1.18),
    "thorax": (0.0, 0.0, 1.45),
    "neck": (0.0, 0.06, 1.57),
    "head": (0.0, 0.0, 1.70),
    "left_shoulder": (0.17, 0.0, 1.42),
    "left_elbow": (0.17, 0.0, 1.14),
    "left_wrist": (0.17, 0.0, 0.90),
    "right_shoulder": (-0.17, 0.0, 1.42),
    "right_elbow": (-0.17, 0.0, 1.14),
    "right_wrist": (-0.17, 0.0, 0.90),
}


def walking_h36m17(
    rng: np.random.Generator, n: int, *, start=(0.0, 0.0), heading: float | None = None
) -> np.ndarray:
    """A seeded walking figure. -> (n, 17, 3) H36M-17 metres, world z up, near ``start`` (x, y)."""
    j = np.tile(np.array([_TEMPLATE[k] for k in H36M17.names])[None], (n, 1, 1))
    t = np.arange(n)
    phase = rng.uniform(0, 2 * np.pi)
    swing = 0.4 * np.sin(2 * np.pi * t / rng.uniform(20, 30) + phase)
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        hip = j[:, H36M17.index(f"{side}_hip")].copy()
        for part in ("knee", "ankle"):
            k = H36M17.index(f"{side}_{part}")
            d = j[:, k] - hip
            a = sgn * swing
            j[:, k, 1] = hip[:, 1] + d[:, 1] * np.cos(a) - d[:, 2] * np.sin(a)
            j[:, k, 2] = hip[:, 2] + d[:, 1] * np.sin(a) + d[:, 2] * np.cos(a)
        sho = j[:, H36M17.index(f"{side}_shoulder")].copy()
        for part in ("elbow", "wrist"):
            k = H36M17.index(f"{side}_{part}")
            d = j[:, k] - sho
            a = -0.6 * sgn * swing
            j[:, k, 1] = sho[:, 1] + d[:, 1] * np.cos(a) - d[:, 2] * np.sin(a)
            j[:, k, 2] = sho[:, 2] + d[:, 1] * np.sin(a) + d[:, 2] * np.cos(a)
    yaw = rng.uniform(-np.pi, np.pi) if heading is None else heading
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    j = j @ rot.T
    step = 0.02 * np.stack([-s * t, c * t, 0 * t], -1)  # walk forward 2 cm per frame
    j += step[:, None] + np.array([start[0], start[1], 0.0])
    j += rng.normal(0.0, 0.003, size=j.shape)  # every value distinct
    return j


#: Human3.6M's 32 mocap slots that VideoPose3D drops, each filled near the kept joint given here.
_STATIC_FILL = {
    4: 3,
    5: 3,
    9: 8,
    10: 8,
    11: 0,
    16: 15,
    20: 19,
    21: 19,
    22: 19,
    23: 19,
    24: 13,
    28: 27,
    29: 27,
    30: 27,
    31: 27,
}


def h36m17_to_mocap32(j17: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 17, 3) -> (n, 32, 3) mocap layout; dropped slots hold nearby points (random offsets)."""
    from hmrmamba.data.real.h36m import H36M32_TO_17

    out = np.zeros((j17.shape[0], 32, 3))
    out[:, list(H36M32_TO_17)] = j17
    for slot, near in _STATIC_FILL.items():
        out[:, slot] = out[:, near] + rng.normal(0.0, 0.03, size=3)
    return out


# --------------------------------------------------------------------------------------------
# tiny images of the figure (downscaled copies of the datasets' videos / frames)
# --------------------------------------------------------------------------------------------


def scaled_size(image_wh: Sequence[int], scale: float) -> tuple[int, int]:
    """(width, height) of the original images -> (H, W) of a copy scaled by ``scale`` (rounded, >= 2)."""
    return max(2, round(image_wh[1] * scale)), max(2, round(image_wh[0] * scale))


def draw_keypoints(kp2d: np.ndarray, *, image_wh: Sequence[int], size_hw: Sequence[int],
                   radius: float = 2.0) -> np.ndarray:
    """kp2d: (n, J, 2) original px -> (n, H, W, 3) uint8 frames of size ``size_hw`` (downscaled copy).

    A dark, slowly changing background with one coloured disc per joint, the keypoints mapped
    with the pixel-centre convention ``(x + 0.5) * s - 0.5``.
    """
    kp = np.asarray(kp2d, dtype=np.float64)
    height, width = int(size_hw[0]), int(size_hw[1])
    sx, sy = width / image_wh[0], height / image_wh[1]
    u = (kp[..., 0] + 0.5) * sx - 0.5
    v = (kp[..., 1] + 0.5) * sy - 0.5
    yy, xx = np.mgrid[0:height, 0:width]
    colours = (np.stack([np.linspace(80, 255, kp.shape[1]), np.linspace(255, 80, kp.shape[1]),
                         np.full(kp.shape[1], 200.0)], -1)).astype(np.uint8)
    out = np.empty((kp.shape[0], height, width, 3), np.uint8)
    for t in range(kp.shape[0]):
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = (20 + 30 * xx / max(width - 1, 1)).astype(np.uint8)
        frame[..., 1] = (20 + 30 * yy / max(height - 1, 1)).astype(np.uint8)
        frame[..., 2] = 30 + t % 20
        for j in range(kp.shape[1]):
            frame[(xx - u[t, j]) ** 2 + (yy - v[t, j]) ** 2 <= radius**2] = colours[j]
        out[t] = frame
    return out


def _write_jpgs(folder: Path, frames: np.ndarray, name: str, first: int = 0) -> list[Path]:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(frames):
        path = folder / name.format(first + t)
        iio.imwrite(path, frame, plugin="pillow", quality=95)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Human3.6M (VideoPose3D)
# --------------------------------------------------------------------------------------------

H36M_METADATA = {
    "layout_name": "h36m",
    "num_joints": 17,
    "keypoints_symmetry": [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]],
}
#: VideoPose3D's ``prepare_data_2d_h36m_sh.py`` metadata, verbatim: no ``layout_name``; the
#: symmetry lists (left, right) are MPII indices.
SH_METADATA = {
    "num_joints": 16,
    "keypoints_symmetry": [[3, 4, 5, 13, 14, 15], [0, 1, 2, 10, 11, 12]],
}
#: The H36M-17 joint written at each Stacked Hourglass (MPII) index 0..15: r-ankle, r-knee, r-hip,
#: l-hip, l-knee, l-ankle, pelvis, thorax, upper neck, head top, r-wrist, r-elbow, r-shoulder,
#: l-shoulder, l-elbow, l-wrist. MPII's thorax, upper neck and head top stand for H36M's spine,
#: thorax and head, as in 3d-pose-baseline's ``SH_TO_GT_PERM``; H36M's neck/nose has no slot.
_SH16_AS_H36M17 = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                   "pelvis", "spine", "thorax", "head", "right_wrist", "right_elbow",
                   "right_shoulder", "left_shoulder", "left_elbow", "left_wrist")
#: ``sh[i] = h36m17[H36M17_TO_SH16[i]]``: an H36M-17 pose in Stacked Hourglass (MPII) order.
H36M17_TO_SH16: tuple[int, ...] = tuple(H36M17.index(n) for n in _SH16_AS_H36M17)
_NOISE_PX = {"gt": 0.0, "cpn": 4.0, "detectron": 6.0, "sh": 9.0}


def save_object_npz(path: str | Path, **objects) -> Path:
    """Write an ``.npz`` whose members are 0-d object arrays (pickles), as VideoPose3D's files are:
    deflate-compressed (``np.savez_compressed``), pickle protocol 3, numpy 1.x module names
    (``numpy.core.multiarray``)."""
    import zipfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in objects.items():
            box = np.empty((), dtype=object)
            box[()] = v
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(box))
            # protocol 3 names globals as "module\nname\n" text, so the rename keeps the stream valid
            payload = pickle.dumps(box, protocol=3).replace(b"numpy._core.", b"numpy.core.")
            zf.writestr(f"{k}.npy", head.getvalue() + payload)
    return path


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2.7 + numpy 1.x wrote it: every ``str`` and ``bytes`` is a Python 2
    byte string (``SHORT_BINSTRING``/``BINSTRING``, latin-1), arrays reduce to
    ``numpy.core.multiarray._reconstruct`` with their raw data as such a string, and builtins are
    named ``__builtin__``/``copy_reg``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2, fix_imports=True)

    def _save_py2_str(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None) -> None:
        module = getattr(obj, "__module__", None)
        name = name or obj.__qualname__
        module = {"builtins": "__builtin__", "copyreg": "copy_reg"}.get(module, module)
        module = module.replace("numpy._core.", "numpy.core.")
        self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
        self.memoize(obj)

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            fortran = bool(obj.flags.f_contiguous and not obj.flags.c_contiguous)
            data = obj.tobytes(order="F" if fortran else "C")
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, obj.shape, obj.dtype, fortran, data)
        if isinstance(obj, np.dtype):
            return np.dtype, (obj.str[1:], 0, 1), obj.__reduce__()[2]
        return NotImplemented


def py2_pickle_dumps(obj) -> bytes:
    """``obj`` as Python 2.7 would have pickled it (protocol 2): what 3DPW's ``.pkl`` files are.

    Loading it without ``encoding="latin1"`` fails (the arrays' data are byte strings that the
    default ASCII decoding refuses), as with the real files."""
    buf = io.BytesIO()
    _Py2Pickler(buf).dump(obj)
    return buf.getvalue()


@dataclass
class MiniH36M:
    root: Path
    positions_3d: dict[str, dict[str, np.ndarray]]
    positions_2d: dict[str, dict[str, dict[str, list[np.ndarray]]]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def write_mini_h36m(
    root: str | Path,
    *,
    subjects: Sequence[str] = ("S1", "S5", "S6", "S7", "S8", "S9", "S11"),
    actions: Sequence[str] = ("Walking", "Directions 1"),
    frames: int = 41,
    detectors: Sequence[str] = ("gt", "cpn", "detectron", "sh"),
    extra_2d_frames: int = 0,
    seed: int = 0,
    videos: bool = False,
    video_scale: float = 0.064,
    video_cameras: Sequence[int] | None = None,
) -> MiniH36M:
    """A tiny Human3.6M in VideoPose3D's format under ``root``. Sequence lengths vary by action
    (``frames + 3 * action index``); 2D streams get ``extra_2d_frames`` more frames than the mocap.

    ``videos=True`` also writes ``<S>/Videos/<action>.<camera id>.mp4`` (cameras ``video_cameras``,
    default all four) at 50 fps with as many frames as the 2D streams: the exact ``gt`` keypoints
    drawn on a copy downscaled by ``video_scale`` (64 x 64 px for the 1000 x 1002 cameras).

    The defaults (all seven subjects, all four 2D files) match ``datasets.h36m`` in
    ``conf/config.yaml``, so the pipeline runs on it with only ``dataset.name``/``root`` changed.
    """
    from hmrmamba.data.real.h36m import DETECTION_FILES, POSITIONS_3D_FILE, project, world_to_camera
    from hmrmamba.data.real.h36m_cameras import NUM_CAMERAS, h36m_camera

    root = Path(root)
    rng = np.random.default_rng(seed)
    pos3d: dict[str, dict[str, np.ndarray]] = {}
    for s in subjects:
        pos3d[s] = {}
        for i, a in enumerate(actions):
            n = frames + 3 * i
            j17 = walking_h36m17(rng, n + extra_2d_frames, start=rng.uniform(-0.5, 0.5, 2))
            pos3d[s][a] = h36m17_to_mocap32(j17, rng).astype(np.float32)
    out = MiniH36M(
        root=root,
        positions_3d={
            s: {a: v[: frames + 3 * i] for i, (a, v) in enumerate(d.items())} for s, d in pos3d.items()
        },
    )
    out.files["positions_3d"] = save_object_npz(root / POSITIONS_3D_FILE, positions_3d=out.positions_3d)
    for det in detectors:
        p2d: dict[str, dict[str, list[np.ndarray]]] = {}
        for s, acts in pos3d.items():
            p2d[s] = {}
            for a, full in acts.items():
                streams = []
                for c in range(NUM_CAMERAS):
                    cam = h36m_camera(s, c)
                    kp = project(
                        world_to_camera(
                            full[:, [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]], cam
                        ),
                        cam,
                    )
                    kp = kp + rng.normal(0.0, _NOISE_PX.get(det, 5.0), size=kp.shape)
                    if det == "sh":
                        kp = kp[:, list(H36M17_TO_SH16)]
                    streams.append(kp.astype(np.float32))
                p2d[s][a] = streams
        out.positions_2d[det] = p2d
        meta = SH_METADATA if det == "sh" else H36M_METADATA
        out.files[det] = save_object_npz(root / DETECTION_FILES[det], positions_2d=p2d, metadata=meta)
    if videos:
        from hmrmamba.data.real.frames import h36m_video_paths
        from hmrmamba.data.real.h36m import H36M32_TO_17, SOURCE_FPS
        from hmrmamba.data.video import write_video

        for s, acts in pos3d.items():
            for a, full in acts.items():
                for c in range(NUM_CAMERAS) if video_cameras is None else video_cameras:
                    cam = h36m_camera(s, c)
                    kp = project(world_to_camera(full[:, list(H36M32_TO_17)], cam), cam)
                    frames_ = draw_keypoints(kp, image_wh=cam.resolution,
                                             size_hw=scaled_size(cam.resolution, video_scale))
                    path = h36m_video_paths(root, s, a, cam.camera_id)[0]
                    out.files[f"video:{s}/{a}/{cam.camera_id}"] = write_video(path, frames_, fps=SOURCE_FPS)
    return out


# --------------------------------------------------------------------------------------------
# 3DPW
# --------------------------------------------------------------------------------------------


def h36m17_to_smpl24(j17: np.ndarray) -> np.ndarray:
    """A plausible SMPL-24 joint set from an H36M-17 figure. (n, 17, 3) -> (n, 24, 3)."""
    h = {name: j17[:, i] for i, name in enumerate(H36M17.names)}
    pel, tho = h["pelvis"], h["thorax"]
    lerp = lambda a, b, w: a + w * (b - a)
    fwd = np.array([0.0, 0.08, -0.05])
    j = {
        "pelvis": pel,
        "left_hip": h["left_hip"],
        "right_hip": h["right_hip"],
        "spine1": lerp(pel, tho, 0.2),
        "left_knee": h["left_knee"],
        "right_knee": h["right_knee"],
        "spine2": lerp(pel, tho, 0.47),
        "left_ankle": h["left_ankle"],
        "right_ankle": h["right_ankle"],
        "spine3": lerp(pel, tho, 0.6),
        "left_foot": h["left_ankle"] + fwd,
        "right_foot": h["right_ankle"] + fwd,
        "neck": tho + [0, 0, 0.03],
        "left_collar": lerp(tho, h["left_shoulder"], 0.4),
        "right_collar": lerp(tho, h["right_shoulder"], 0.4),
        "head": h["neck"],
        "left_shoulder": h["left_shoulder"],
        "right_shoulder": h["right_shoulder"],
        "left_elbow": h["left_elbow"],
        "right_elbow": h["right_elbow"],
        "left_wrist": h["left_wrist"],
        "right_wrist": h["right_wrist"],
        "left_hand": lerp(h["left_elbow"], h["left_wrist"], 1.3),
        "right_hand": lerp(h["right_elbow"], h["right_wrist"], 1.3),
    }
    return np.stack([j[name] for name in SMPL24.names], axis=1)


def _yrot(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _openpose18(points_cam: np.ndarray, K: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """H36M-17 camera-frame joints -> OpenPose-COCO18 (n, 3, 18) pixels + confidence."""
    from hmrmamba.data.real.pw3d import OPENPOSE18

    uvw = points_cam @ K.T
    uv = uvw[..., :2] / uvw[..., 2:]
    h = {name: uv[:, i] for i, name in enumerate(H36M17.names)}
    head = h["head"]
    extra = {
        "nose": h["neck"],
        "neck": h["thorax"],
        "right_eye": head + [-6, 4],
        "left_eye": head + [6, 4],
        "right_ear": head + [-12, 8],
        "left_ear": head + [12, 8],
    }
    pts = np.stack([extra[n] if n in extra else h[n] for n in OPENPOSE18], axis=1)  # (n, 18, 2)
    pts = pts + rng.normal(0.0, 3.0, size=pts.shape)
    conf = rng.uniform(0.3, 1.0, size=pts.shape[:2])
    conf[:, 16] = 0.0  # one undetected joint
    pts[:, 16] = 0.0
    return np.concatenate([pts, conf[..., None]], axis=-1).transpose(0, 2, 1)


@dataclass
class MiniPW3D:
    root: Path
    sequences: dict[str, dict] = field(default_factory=dict)  # file stem -> the pickled dict
    files: dict[str, Path] = field(default_factory=dict)


def write_mini_3dpw(
    root: str | Path,
    *,
    splits: dict[str, Sequence[int]] | None = None,
    frames: int = 24,
    invalid: Sequence[int] = (3, 4),
    seed: int = 0,
    body_model: str | Path | None = None,
    images: bool = False,
    image_scale: float = 1 / 30,
) -> MiniPW3D:
    """A tiny 3DPW: ``splits`` maps a sequenceFiles folder to the person counts of its sequences
    (default ``{"test": (1, 2), "train": (1,), "validation": (1,)}``). Frames in ``invalid`` have
    ``campose_valid = 0`` (person 0). With ``body_model`` (a body-model ``.npz``), jointPositions
    come from that SMPL model; otherwise from a stick figure consistent with ``trans``.

    ``images=True`` also writes ``imageFiles/<seq>/image_%05d.jpg``, one per frame, downscaled by
    ``image_scale`` (36 x 64 px), showing the first person's projected joints."""
    from scipy.spatial.transform import Rotation

    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = splits if splits is not None else {"test": (1, 2), "train": (1,), "validation": (1,)}
    smpl = None
    if body_model is not None:
        from hmrmamba.body.body_model import load_smpl

        smpl = load_smpl(body_model)
    out = MiniPW3D(root=root)
    k = 0
    for folder, counts in splits.items():
        for persons in counts:
            name = f"{['downtown', 'outdoors', 'courtyard'][k % 3]}_walking_{k:02d}"
            k += 1
            n = frames
            K = np.array([[1961.0, 0.0, 540.0], [0.0, 1969.0, 960.0], [0.0, 0.0, 1.0]])
            cam_poses = np.tile(np.eye(4), (n, 1, 1))
            for f in range(n):  # a slowly panning, moving handheld camera; world y up
                cam_poses[f, :3, :3] = _yrot(0.01 * f) @ Rotation.from_rotvec([np.pi, 0, 0]).as_matrix()
                cam_poses[f, :3, 3] = [0.05 * np.sin(f / 5), 1.0, 4.0 + 0.01 * f]
            d: dict = {
                "sequence": name,
                "cam_intrinsics": K,
                "cam_poses": cam_poses,
                "img_frame_ids": np.arange(n),
                "genders": [],
                "betas": [],
                "betas_clothed": [],
                "poses": [],
                "trans": [],
                "jointPositions": [],
                "campose_valid": [],
                "poses2d": [],
                "poses_60Hz": [],
                "trans_60Hz": [],
                "v_template_clothed": [],
            }
            for p in range(persons):
                betas = rng.normal(0.0, 0.8, size=10)
                pose = rng.normal(0.0, 0.15, size=(n, 72))
                pose[:, :3] = Rotation.from_euler(
                    "y", (rng.uniform(-1, 1) + 0.02 * np.arange(n))[:, None]
                ).as_rotvec()
                trans = np.stack(
                    [0.8 * p - 0.4 + 0.01 * np.arange(n), 0.9 + 0.0 * np.arange(n), 0.02 * np.arange(n)], -1
                )
                if smpl is not None:
                    import torch

                    f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
                    with torch.no_grad():
                        o = smpl(
                            global_orient=f32(pose[:, :3]),
                            body_pose=f32(pose[:, 3:]),
                            betas=f32(np.tile(betas, (n, 1))),
                            transl=f32(trans),
                        )
                    j24 = o.joints[:, :24].double().numpy()
                else:
                    j17 = walking_h36m17(rng, n, heading=0.0)[..., [0, 2, 1]] * [1, 1, -1]  # z-up -> y-up
                    j17 = j17 - j17[:, :1] + (trans + np.array([0.0, -0.22, 0.03]))[:, None]
                    j24 = h36m17_to_smpl24(j17)
                valid = np.ones(n, dtype=np.int64)
                if p == 0:
                    valid[list(invalid)] = 0
                j17_cam = (
                    np.einsum(
                        "nij,nkj->nki",
                        cam_poses[:, :3, :3],
                        j24[:, [0, 2, 5, 8, 1, 4, 7, 6, 12, 15, 15, 16, 18, 20, 17, 19, 21]],
                    )
                    + cam_poses[:, None, :3, 3]
                )
                d["genders"].append("mf"[p % 2])
                d["betas"].append(betas)
                d["betas_clothed"].append(betas + 0.1)
                d["poses"].append(pose)
                d["trans"].append(trans)
                d["jointPositions"].append(j24.reshape(n, 72))
                d["campose_valid"].append(valid)
                d["poses2d"].append(_openpose18(j17_cam, K, rng))
                d["poses_60Hz"].append(np.repeat(pose, 2, axis=0))
                d["trans_60Hz"].append(np.repeat(trans, 2, axis=0))
                d["v_template_clothed"].append(np.zeros((16, 3)))
            if images:
                from hmrmamba.data.real.frames import PW3D_IMAGE, PW3D_IMAGE_DIR
                from hmrmamba.data.real.pw3d import IMAGE_WH

                op = d["poses2d"][0]  # (n, 3, 18) px + confidence of person 0
                wh = IMAGE_WH if K[0, 2] < K[1, 2] else IMAGE_WH[::-1]
                drawn = draw_keypoints(op[:, :2].transpose(0, 2, 1), image_wh=wh, size_hw=scaled_size(wh, image_scale))
                _write_jpgs(root / PW3D_IMAGE_DIR / name, drawn, PW3D_IMAGE)
            path = root / "sequenceFiles" / folder / f"{name}.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(py2_pickle_dumps(d))
            out.sequences[name] = d
            out.files[name] = path
    return out


class _ShellCommand:
    """Unpickles into ``os.system(command)`` -- what a malicious 'dataset file' would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_evil_pickle(path: str | Path, marker: str | Path) -> Path:
    """A 3DPW-shaped pickle that, loaded by ``pickle.load``, would create ``marker``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {
        "sequence": "evil_00",
        "poses": [np.zeros((2, 72))],
        "trans": [np.zeros((2, 3))],
        "betas": [np.zeros(10)],
        "cam_poses": np.tile(np.eye(4), (2, 1, 1)),
        "cam_intrinsics": np.eye(3),
        "genders": ["m"],
        "campose_valid": [np.ones(2)],
        "jointPositions": [np.zeros((2, 72))],
        "payload": _ShellCommand(f"touch {marker}"),
    }
    path.write_bytes(pickle.dumps(d, protocol=2))
    return path


# --------------------------------------------------------------------------------------------
# MPI-INF-3DHP test set
# --------------------------------------------------------------------------------------------

_MAT73_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
)


def _write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block holding MATLAB's text header.

    ``arrays`` are given in h5py's (reversed) axis order, as h5py will read them back.
    """
    import h5py

    with h5py.File(path, "w", userblock_size=512) as h5:
        for k, v in arrays.items():
            ds = h5.create_dataset(k, data=v)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
    header = _MAT73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\x00"))


@dataclass
class Mini3DHP:
    root: Path
    joints3d_h36m: dict[str, np.ndarray] = field(default_factory=dict)  # camera metres, H36M order
    joints2d_h36m: dict[str, np.ndarray] = field(default_factory=dict)  # pixels, H36M order
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def write_mini_3dhp(
    root: str | Path,
    *,
    sequences: Sequence[str] = ("TS1", "TS5"),
    frames: int = 20,
    layout: str = "h5py",
    invalid: Sequence[int] = (2, 7),
    drop: Sequence[str] = (),
    seed: int = 0,
    images: bool = False,
    image_scale: float = 1 / 32,
) -> Mini3DHP:
    """A tiny MPI-INF-3DHP test set. ``layout``: ``"h5py"`` (v7.3 as the real files: h5py reads
    ``annot3`` as (N, 1, 17, 3)), ``"matlab"`` (v7.3 holding MATLAB-order axes, (3, 17, 1, N)) or
    ``"v5"`` (scipy ``savemat``). ``drop`` leaves fields out (e.g. ``("annot3",)``). ``images=True``
    also writes ``TS*/imageSequence/img_%06d.jpg`` (from 1), downscaled by ``image_scale``."""
    from hmrmamba.data.real.mpi3dhp import ANNOT_FILE, CAMERAS, TEST_DIR

    if layout not in ("h5py", "matlab", "v5"):
        raise ValueError(f"layout {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    inverse = np.argsort(MPI_TO_H36M)  # mpi[j] = h36m[inverse[j]]
    out = Mini3DHP(root=root)
    for seq in sequences:
        world = walking_h36m17(rng, frames, heading=np.pi)  # z up
        cam = np.stack([world[..., 0], 1.0 - world[..., 2], world[..., 1] + 4.0], -1)  # x, y down, z fwd
        fx, fy, cx, cy = CAMERAS[seq]
        uv = np.stack([fx * cam[..., 0] / cam[..., 2] + cx, fy * cam[..., 1] / cam[..., 2] + cy], -1)
        valid = np.ones(frames)
        valid[list(invalid)] = 0
        out.joints3d_h36m[seq], out.joints2d_h36m[seq], out.valid[seq] = cam, uv, valid.astype(bool)
        a3 = (cam * 1000.0)[:, inverse][:, None]  # (N, 1, 17, 3) mm, MPI order
        a2 = uv[:, inverse][:, None]  # (N, 1, 17, 2)
        arrays = {
            "annot2": a2,
            "annot3": a3,
            "univ_annot3": a3 * 0.95,
            "valid_frame": valid[:, None],
            "activity_annotation": (np.arange(frames) // 5 + 1.0)[:, None],
        }
        arrays = {k: v for k, v in arrays.items() if k not in drop}
        path = root / TEST_DIR / seq / ANNOT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if layout == "h5py":
            _write_mat73(path, arrays)
        else:
            matlab = {k: np.ascontiguousarray(np.transpose(v)) for k, v in arrays.items()}
            if layout == "matlab":
                _write_mat73(path, matlab)
            else:
                from scipy.io import savemat

                savemat(path, matlab)
        out.files[seq] = path
        if images:
            from hmrmamba.data.real.frames import MPI3DHP_IMAGE, MPI3DHP_IMAGE_DIR
            from hmrmamba.data.real.mpi3dhp import IMAGE_WH

            drawn = draw_keypoints(uv, image_wh=IMAGE_WH[seq], size_hw=scaled_size(IMAGE_WH[seq], image_scale))
            _write_jpgs(path.parent / MPI3DHP_IMAGE_DIR, drawn, MPI3DHP_IMAGE, first=1)
    return out
