"""2D keypoint sources: ground truth, simulated detectors, and keypoints imported from a file.

Every source returns :class:`Detections` with keypoints ``kp (N, 17, 2)`` in pixels (H36M-17
order) and confidences ``conf (N, 17)`` for the same ``N`` frames as the dataset, so the rest of
the pipeline swaps sources by name (``detections/<source>`` in the HDF5, as VideoPose3D's
``data_2d_<dataset>_<detector>.npz`` files did).

Keypoint files are ``.npz`` archives (read with ``allow_pickle=False``) holding

* ``keypoints``: ``(N, J, 2)`` pixels, or ``(N, J, 3)`` with a confidence in the last channel;
* ``confidence`` (optional): ``(N, J)``; it takes precedence over a third keypoint channel;
* ``joint_set`` (optional string): ``h36m17`` (default) or ``coco17`` (converted to H36M-17 by
  :func:`coco17_to_h36m17`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmrmamba.atomic import write_npz
from hmrmamba.detect.noise import (
    LIMB_PAIRS,
    NUM_JOINTS,
    PRESETS,
    parse_image_size,
    person_scale,
    sequence_layout,
    simulate,
    validate_joints2d,
)
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.skeleton import COCO17, H36M17

DETECTOR_SOURCES: tuple[str, ...] = ("gt", "sh", "detectron", "cpn", "file")
FILE_JOINT_SETS: tuple[str, ...] = ("h36m17", "coco17")


@dataclass
class Detections:
    """2D keypoints of one source. kp: (N, 17, 2) float32 px; conf: (N, 17) float32 in [0, 1]."""

    kp: np.ndarray
    conf: np.ndarray
    source: str
    meta: dict = field(default_factory=dict)

    def __getitem__(self, key: str):
        return getattr(self, key)


# --------------------------------------------------------------------------------------------
# COCO-17 -> H36M-17
# --------------------------------------------------------------------------------------------

def _coco_sources() -> tuple[tuple[int, ...], ...]:
    c = COCO17.index
    hips = (c("left_hip"), c("right_hip"))
    shoulders = (c("left_shoulder"), c("right_shoulder"))
    by_name = {
        "pelvis": hips,
        "right_hip": (c("right_hip"),), "right_knee": (c("right_knee"),),
        "right_ankle": (c("right_ankle"),),
        "left_hip": (c("left_hip"),), "left_knee": (c("left_knee"),),
        "left_ankle": (c("left_ankle"),),
        "spine": hips + shoulders,           # mid(pelvis, thorax) == mean of the four
        "thorax": shoulders,
        "neck": (c("nose"),),
        "head": (c("left_eye"), c("right_eye"), c("left_ear"), c("right_ear")),
        "left_shoulder": (c("left_shoulder"),), "left_elbow": (c("left_elbow"),),
        "left_wrist": (c("left_wrist"),),
        "right_shoulder": (c("right_shoulder"),), "right_elbow": (c("right_elbow"),),
        "right_wrist": (c("right_wrist"),),
    }
    return tuple(by_name[name] for name in H36M17.names)


#: For each H36M-17 joint, the COCO-17 joints it is the mean of.
COCO17_TO_H36M17_SOURCES: tuple[tuple[int, ...], ...] = _coco_sources()


def coco17_to_h36m17(kp: np.ndarray, conf: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """COCO-17 -> H36M-17. kp: (..., 17, 2) px, conf: (..., 17) -> (..., 17, 2), (..., 17).

    Pelvis = mid-hips, thorax = mid-shoulders, spine = mid(pelvis, thorax), neck/nose = nose,
    head = mean of eyes and ears; a derived joint's confidence is the minimum of its sources'.
    """
    kp = np.asarray(kp)
    if kp.ndim < 2 or kp.shape[-2] != COCO17.num_joints:
        raise InputError(f"shape {kp.shape}", field="keypoints",
                         expected=f"(..., {COCO17.num_joints}, C) COCO-17 keypoints")
    weights = np.zeros((NUM_JOINTS, COCO17.num_joints))
    for j, srcs in enumerate(COCO17_TO_H36M17_SOURCES):
        weights[j, list(srcs)] = 1.0 / len(srcs)
    out = np.einsum("hc,...cd->...hd", weights, kp.astype(np.float64)).astype(
        kp.dtype if kp.dtype.kind == "f" else np.float64)
    if conf is None:
        return out, None
    conf = np.asarray(conf)
    if conf.shape != kp.shape[:-1]:
        raise InputError(f"shape {conf.shape}", field="confidence", expected=f"{kp.shape[:-1]}")
    conf_out = np.stack([conf[..., list(srcs)].min(axis=-1) for srcs in COCO17_TO_H36M17_SOURCES],
                        axis=-1)
    return out, conf_out


# --------------------------------------------------------------------------------------------
# Keypoint files
# --------------------------------------------------------------------------------------------

def _read_key(z, path: Path, key: str) -> np.ndarray:
    try:
        return z[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"cannot read array ({e})", file=path, field=key,
                         expected="a numeric array stored without pickling") from None


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every ``.npy`` member of an ``.npz``, read from the headers alone (a few
    hundred bytes of each member are decompressed, never the data)."""
    path = Path(path)
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                out[info.filename[:-4]] = (tuple(int(d) for d in shape), dtype)
    except Exception as exc:  # noqa: BLE001 - zip/npy header errors come in many types; all are bad input
        raise InputError(f"cannot be read as npz ({type(exc).__name__}: {str(exc)[:120]})", file=path,
                         expected="an .npz written by numpy.savez") from None
    return out


def _check_headers(path: Path, num_frames: int, expected_kp: str) -> None:
    """Shape and dtype of ``keypoints`` and ``confidence`` from their ``.npy`` headers, before either is
    decompressed: a small deflated file may inflate to gigabytes (a (1e7, 17, 2) array is a 1.3 MB
    npz), so more or fewer rows than the split's ``num_frames`` are refused unread."""
    headers = npz_headers(path)
    if "keypoints" in headers:
        shape, dtype = headers["keypoints"]
        if dtype.hasobject:  # a pickled array: np.load refuses it unread (allow_pickle=False)
            return
        if dtype.kind != "f":
            raise InputError(f"dtype {dtype}", file=path, field="keypoints", expected=expected_kp)
        if len(shape) != 3 or shape[0] != num_frames or shape[1] != 17 or shape[2] not in (2, 3):
            what = (f"{shape[0]} frames but the dataset has {num_frames}"
                    if len(shape) == 3 and shape[0] != num_frames else f"shape {shape}")
            raise InputError(what, file=path, field="keypoints", expected=expected_kp)
    if "confidence" in headers:
        shape, dtype = headers["confidence"]
        if dtype.kind != "f" or shape != (num_frames, 17):
            raise InputError(f"dtype {dtype}, shape {shape}", file=path, field="confidence",
                             expected=f"{(num_frames, 17)} floating-point values in [0, 1]")


def load_keypoints_file(path: str | Path, *, num_frames: int
                        ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read and validate a keypoint ``.npz``. -> kp (N, 17, 2) f32 px, conf (N, 17) f32, meta.

    Confidences outside [0, 1] are clipped (``meta['conf_clipped']`` counts them); missing
    confidences are 1.
    """
    path = Path(path)
    expected_kp = f"({num_frames}, 17, 2) or ({num_frames}, 17, 3) floating-point pixels"
    if not path.is_file():
        raise MissingFileError("keypoint file not found", file=path,
                               expected=f"an .npz with 'keypoints' {expected_kp}")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"cannot read as .npz ({e})", file=path,
                         expected=f"an .npz with 'keypoints' {expected_kp}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError("not an .npz archive", file=path,
                         expected=f"an .npz with 'keypoints' {expected_kp}")
    with z:
        if "keypoints" not in z.files:
            raise InputError(f"missing (keys: {sorted(z.files)})", file=path, field="keypoints",
                             expected=expected_kp)
        _check_headers(path, num_frames, expected_kp)
        kp = _read_key(z, path, "keypoints")
        conf = _read_key(z, path, "confidence") if "confidence" in z.files else None
        joint_set = "h36m17"
        if "joint_set" in z.files:
            js = _read_key(z, path, "joint_set")
            if js.shape != () or js.dtype.kind not in "US":
                raise InputError(f"dtype {js.dtype}, shape {js.shape}", file=path,
                                 field="joint_set", expected=f"a string, one of {list(FILE_JOINT_SETS)}")
            joint_set = js.item().decode() if js.dtype.kind == "S" else str(js.item())
    if joint_set not in FILE_JOINT_SETS:
        raise InputError(f"unsupported joint set '{joint_set}'", file=path, field="joint_set",
                         expected=f"one of {list(FILE_JOINT_SETS)}")
    if kp.dtype.kind != "f":
        raise InputError(f"dtype {kp.dtype}", file=path, field="keypoints", expected=expected_kp)
    if kp.ndim != 3 or kp.shape[0] != num_frames or kp.shape[1] != 17 or kp.shape[2] not in (2, 3):
        what = (f"{kp.shape[0]} frames but the dataset has {num_frames}"
                if kp.ndim == 3 and kp.shape[0] != num_frames else f"shape {kp.shape}")
        raise InputError(what, file=path, field="keypoints", expected=expected_kp)
    bad = ~np.isfinite(kp[..., :2])
    if bad.any():
        f = int(np.nonzero(bad.any(axis=(1, 2)))[0][0])
        raise InputError(f"{int(bad.any(-1).sum())} NaN/Inf keypoints (first at frame {f})",
                         file=path, field="keypoints", expected=f"finite values, {expected_kp}")
    if conf is not None:
        if conf.dtype.kind != "f" or conf.shape != kp.shape[:2]:
            raise InputError(f"dtype {conf.dtype}, shape {conf.shape}", file=path, field="confidence",
                             expected=f"{kp.shape[:2]} floating-point values in [0, 1]")
        if not np.all(np.isfinite(conf)):
            raise InputError("NaN/Inf confidences", file=path, field="confidence",
                             expected=f"{kp.shape[:2]} finite values in [0, 1]")
    elif kp.shape[2] == 3:
        conf = kp[..., 2]
        if not np.all(np.isfinite(conf)):
            raise InputError("NaN/Inf confidences in the third channel", file=path,
                             field="keypoints", expected=f"finite values, {expected_kp}")
    has_conf = conf is not None
    conf = np.ones(kp.shape[:2]) if conf is None else conf.astype(np.float64)
    xy = kp[..., :2].astype(np.float64)
    if joint_set == "coco17":
        xy, conf = coco17_to_h36m17(xy, conf)
    clipped = int(np.sum((conf < 0) | (conf > 1)))
    meta = {"file": str(path), "joint_set": joint_set, "has_confidence": has_conf,
            "conf_clipped": clipped}
    return xy.astype(np.float32), np.clip(conf, 0.0, 1.0).astype(np.float32), meta


def save_keypoints_file(path: str | Path, *, kp: np.ndarray, conf: np.ndarray | None = None,
                        joint_set: str = "h36m17") -> None:
    """Atomically write a keypoint ``.npz`` readable by :func:`load_keypoints_file`. kp: (N, J, 2) px."""
    if joint_set not in FILE_JOINT_SETS:
        raise InputError(f"unsupported joint set '{joint_set}'", field="joint_set",
                         expected=f"one of {list(FILE_JOINT_SETS)}")
    arrays = {"keypoints": np.asarray(kp, dtype=np.float32), "joint_set": np.array(joint_set)}
    if conf is not None:
        arrays["confidence"] = np.asarray(conf, dtype=np.float32)
    write_npz(path, **arrays)


# --------------------------------------------------------------------------------------------
# The dispatcher
# --------------------------------------------------------------------------------------------

def detect(source: str, *, joints2d: np.ndarray, seq_start: np.ndarray, seq_len: np.ndarray,
           rng: np.random.Generator | int | None, file: str | Path | None = None,
           image_size: int | tuple[int, int] | None = None, noise_scale: float = 1.0) -> Detections:
    """2D keypoints from ``source``. joints2d: (N, 17, 2) GT px -> Detections (N, 17, 2), (N, 17).

    ``gt`` copies the ground truth (confidence 1); ``sh``/``detectron``/``cpn`` simulate that
    detector with ``rng`` (a Generator or an int seed); ``file`` imports ``file``. ``image_size``
    (int or (W, H)) clips simulated keypoints into the image; ``noise_scale`` multiplies a
    simulated detector's error magnitudes (``DetectorNoiseModel.scaled``).
    """
    if source not in DETECTOR_SOURCES:
        raise InputError(f"unknown 2D keypoint source '{source}'", field="source",
                         expected=f"one of {list(DETECTOR_SOURCES)}")
    if file is not None and source != "file":
        raise InputError(f"a keypoint file was given but source is '{source}'", field="file",
                         expected="file=None unless source == 'file'")
    gt = validate_joints2d(joints2d)
    sequence_layout(seq_start, seq_len, gt.shape[0])
    if source == "gt":
        return Detections(kp=gt.astype(np.float32), conf=np.ones(gt.shape[:2], np.float32),
                          source="gt", meta={})
    if source == "file":
        if file is None:
            raise InputError("source 'file' needs a keypoint file", field="file",
                             expected="a path to an .npz with 'keypoints'")
        kp, conf, meta = load_keypoints_file(file, num_frames=gt.shape[0])
        return Detections(kp=kp, conf=conf, source="file", meta=meta)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng of type {type(rng).__name__}", field="rng",
                         expected="a numpy Generator or an int seed for simulated detectors")
    model = PRESETS[source] if noise_scale == 1.0 else PRESETS[source].scaled(float(noise_scale))
    parse_image_size(image_size)
    kp, conf = simulate(gt, seq_start, seq_len, model=model, rng=rng, image_size=image_size)
    return Detections(kp=kp, conf=conf, source=source, meta={"model": model.to_dict()})


# --------------------------------------------------------------------------------------------
# Error measures
# --------------------------------------------------------------------------------------------

def _pair(kp: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kp, gt = np.asarray(kp, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if kp.shape != gt.shape or kp.ndim < 2 or kp.shape[-1] != 2:
        raise InputError(f"shapes {kp.shape} and {gt.shape}", field="kp/gt",
                         expected="two arrays of the same shape (..., J, 2)")
    return kp, gt


def mean_error_px(kp: np.ndarray, gt: np.ndarray) -> float:
    """Mean Euclidean 2D error over all frames and joints. kp, gt: (..., J, 2) px -> px."""
    kp, gt = _pair(kp, gt)
    return float(np.linalg.norm(kp - gt, axis=-1).mean()) if kp.size else 0.0


def error_report(kp: np.ndarray, gt: np.ndarray, conf: np.ndarray | None = None) -> dict:
    """2D error summary. kp, gt: (N, 17, 2) px; conf: (N, 17) -> dict of floats.

    Keys: ``mean_px``, ``mean_pct_box`` (error / person box size, in %), ``per_joint_px``
    (name -> px), ``swap_rate`` (fraction of (frame, limb pair) whose two slots are each closer
    to the other's ground truth), ``pck_0.05`` (fraction of joints within 0.05 x box size);
    with ``conf`` also ``mean_conf`` and ``conf_error_corr`` (Pearson, conf vs. relative error).
    """
    kp, gt = _pair(kp, gt)
    if kp.ndim != 3 or kp.shape[1] != NUM_JOINTS:
        raise InputError(f"shape {kp.shape}", field="kp", expected=f"(N, {NUM_JOINTS}, 2)")
    err = np.linalg.norm(kp - gt, axis=-1)                       # (N, 17)
    rel = err / person_scale(gt)[:, None]
    pairs = np.array(LIMB_PAIRS)
    a, b = pairs[:, 0], pairs[:, 1]
    d = lambda x, y: np.linalg.norm(kp[:, x] - gt[:, y], axis=-1)
    swapped = (d(a, b) < d(a, a)) & (d(b, a) < d(b, b))
    report = {
        "mean_px": float(err.mean()),
        "mean_pct_box": float(100.0 * rel.mean()),
        "per_joint_px": {name: float(v) for name, v in zip(H36M17.names, err.mean(axis=0))},
        "swap_rate": float(swapped.mean()),
        "pck_0.05": float((rel < 0.05).mean()),
    }
    if conf is not None:
        conf = np.asarray(conf, dtype=np.float64)
        if conf.shape != err.shape:
            raise InputError(f"shape {conf.shape}", field="conf", expected=f"{err.shape}")
        report["mean_conf"] = float(conf.mean())
        ok = conf.std() > 0 and rel.std() > 0
        report["conf_error_corr"] = float(np.corrcoef(conf.ravel(), rel.ravel())[0, 1]) if ok else None
    return report


# --------------------------------------------------------------------------------------------
# Calibration batch and the documentation table
# --------------------------------------------------------------------------------------------

# Body template in units of the ankle-to-head-top extent's parts; x = person's left, y up, z forward.
_HIP_W, _SHO_W, _SHO_Y = 0.09, 0.17, 0.24
_THIGH, _SHIN, _UPPER_ARM, _FOREARM = 0.245, 0.245, 0.16, 0.14


def synthetic_walking_2d(*, num_seqs: int, seq_len: int, rng: np.random.Generator,
                         image_size: int = 128, height_px: tuple[float, float] = (60.0, 110.0)
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walking stick figures seen from random yaws. -> joints2d (S*T, 17, 2) px, seq_start, seq_len.

    Each sequence draws a person height (ankle to head top, px), a yaw, a gait phase and cadence;
    legs swing with knee flexion, arms counter-swing, the pelvis bobs, and the body drifts along
    its walking direction (orthographic projection into a square ``image_size`` image).
    """
    s, t = int(num_seqs), int(seq_len)
    if s < 1 or t < 1:
        raise InputError(f"num_seqs={num_seqs}, seq_len={seq_len}", field="num_seqs/seq_len",
                         expected="both >= 1")
    height = rng.uniform(*height_px, size=(s, 1))
    yaw = rng.uniform(0.0, 2.0 * np.pi, size=(s, 1))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(s, 1))
    omega = 2.0 * np.pi / rng.uniform(24.0, 36.0, size=(s, 1))       # one gait cycle per ~1 s
    speed = rng.uniform(0.002, 0.004, size=(s, 1))                   # body heights per frame
    ph = omega * np.arange(t)[None, :] + phase                        # (S, T)

    j = np.zeros((s, t, NUM_JOINTS, 3))

    def put(name: str, xyz) -> None:
        j[:, :, H36M17.index(name)] = np.stack(np.broadcast_arrays(*xyz), axis=-1)

    def limb(root: np.ndarray, length: float, angle: np.ndarray) -> np.ndarray:
        """A segment hanging from root, swung forward by angle (rad) in the sagittal plane."""
        return root + length * np.stack([0 * angle, -np.cos(angle), np.sin(angle)], axis=-1)

    for side, sgn, off in (("left", 1.0, 0.0), ("right", -1.0, np.pi)):
        hip = np.stack(np.broadcast_arrays(sgn * _HIP_W, 0.0, 0.0 * ph), axis=-1)
        thigh = 0.45 * np.sin(ph + off)
        knee_flex = 0.55 * (1.0 - np.cos(ph + off))
        knee = limb(hip, _THIGH, thigh)
        ankle = limb(knee, _SHIN, thigh - knee_flex)
        sho = np.stack(np.broadcast_arrays(sgn * _SHO_W, _SHO_Y, 0.0 * ph), axis=-1)
        arm = -0.35 * np.sin(ph + off)
        elbow = limb(sho, _UPPER_ARM, arm)
        wrist = limb(elbow, _FOREARM, arm + 0.3 + 0.15 * np.sin(ph + off))
        for part, xyz in (("hip", hip), ("knee", knee), ("ankle", ankle), ("shoulder", sho),
                          ("elbow", elbow), ("wrist", wrist)):
            j[:, :, H36M17.index(f"{side}_{part}")] = xyz
    put("spine", (0.0, 0.12, 0.0))
    put("thorax", (0.0, 0.25, 0.0))
    put("neck", (0.0, 0.31, 0.03))
    put("head", (0.0, 0.40, 0.0))
    j[..., 1] += 0.01 * np.cos(2.0 * ph)[..., None]                  # vertical bob
    j[..., 2] += (speed * (np.arange(t)[None, :] - t / 2.0))[..., None]  # walk forward

    cos, sin = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
    x_img = j[..., 0] * cos + j[..., 2] * sin
    px = (height / 0.89)[..., None]                                   # ankle-to-head = 0.89 units
    u = image_size / 2.0 + px * x_img
    v = image_size / 2.0 + px * (0.045 - j[..., 1])                   # mid-body at image centre
    joints2d = np.stack([u, v], axis=-1).reshape(s * t, NUM_JOINTS, 2)
    return (joints2d.astype(np.float32), np.arange(s, dtype=np.int64) * t,
            np.full(s, t, dtype=np.int64))


def detector_error_rows(*, sources: tuple[str, ...] = ("sh", "detectron", "cpn", "gt"),
                        num_seqs: int = 32, seq_len: int = 100, seed: int = 0,
                        image_size: int = 128) -> list[dict]:
    """Measure each source on a fixed synthetic walking batch. -> one dict per source."""
    joints2d, seq_start, seq_len_arr = synthetic_walking_2d(
        num_seqs=num_seqs, seq_len=seq_len, rng=np.random.default_rng(seed), image_size=image_size)
    rows = []
    for i, src in enumerate(sources):
        det = detect(src, joints2d=joints2d, seq_start=seq_start, seq_len=seq_len_arr,
                     rng=np.random.default_rng([seed, i + 1]), image_size=image_size)
        rep = error_report(det.kp, joints2d, det.conf)
        rows.append({"source": src, "model": det.meta.get("model"), "mean_px": rep["mean_px"],
                     "mean_pct_box": rep["mean_pct_box"], "pck_0.05": rep["pck_0.05"],
                     "swap_rate": rep["swap_rate"], "mean_conf": rep["mean_conf"],
                     "wrist_px": 0.5 * (rep["per_joint_px"]["left_wrist"]
                                        + rep["per_joint_px"]["right_wrist"]),
                     "pelvis_px": rep["per_joint_px"]["pelvis"],
                     "mean_box_px": float(person_scale(joints2d.astype(np.float64)).mean())})
    return rows


def detector_error_table(*, num_seqs: int = 32, seq_len: int = 100, seed: int = 0,
                         image_size: int = 128, h36m_box_px: float = 400.0) -> str:
    """Markdown tables of the preset parameters and their measured errors (for docs/detectors.md)."""
    rows = detector_error_rows(num_seqs=num_seqs, seq_len=seq_len, seed=seed, image_size=image_size)
    lines = ["| preset | sigma | AR coef | swap p (len) | drop p (len, sigma) | outlier p |",
             "|---|---|---|---|---|---|"]
    for name, m in PRESETS.items():
        lines.append(f"| {name} | {m.sigma:.4f} | {m.ar_coef:.2f} | {m.swap_prob:.3f} "
                     f"({m.swap_len[0]}-{m.swap_len[1]}) | {m.drop_prob:.3f} "
                     f"({m.drop_len[0]}-{m.drop_len[1]}, {m.drop_sigma:.3f}) | {m.outlier_prob:.4f} |")
    box = rows[0]["mean_box_px"]
    lines += ["", (f"Measured on {num_seqs} synthetic walking sequences x {seq_len} frames "
              f"({image_size} px images, mean person box {box:.1f} px, seed {seed}):"), "",
              (f"| source | mean 2D error (px) | % of box | at {h36m_box_px:.0f} px box (px) "
              "| wrist / pelvis (px) | PCK@0.05 | swap rate | mean conf |"),
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['mean_px']:.2f} | {r['mean_pct_box']:.2f} | "
                     f"{r['mean_pct_box'] * h36m_box_px / 100:.1f} | "
                     f"{r['wrist_px']:.2f} / {r['pelvis_px']:.2f} | {r['pck_0.05']:.3f} | "
                     f"{r['swap_rate']:.4f} | {r['mean_conf']:.3f} |")
    return "\n".join(lines) + "\n"
