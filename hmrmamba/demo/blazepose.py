"""BlazePose (MediaPipe Pose's models) run by LiteRT, for several people per frame.

Two networks, as in MediaPipe Pose (the models: :mod:`hmrmamba.demo.pose_models`):

1. **detector** ``pose_detection.tflite``: the frame letterboxed to 224 x 224, values in [-1, 1]
   -> 2254 SSD anchors x (box + 4 keypoints, score). Anchors as MediaPipe's ``SsdAnchorsCalculator``
   builds them for this model (strides 8, 16, 32, 32, 32; two anchors per layer and place; fixed
   size, so only the centres matter); boxes decoded against them, a sigmoid on the score, kept at
   >= ``min_score``, merged by weighted non-maximum suppression (IoU > 0.3).
   A detection's keypoint 0 is the hips' centre and keypoint 1 a point on the circle that encloses
   the body, so the region of interest (ROI) is a square centred on keypoint 0, side 2 x |k1 - k0| x
   1.25, turned so that k0 -> k1 points up (:func:`roi_from_points`).
2. **landmarks** ``pose_landmark_full.tflite`` (or ``_lite``): the ROI cropped (rotated) to
   256 x 256, values in [0, 1] -> 39 points (the 33 BlazePose landmarks and two alignment points)
   x (x, y, z, visibility, presence), and a pose-presence score. The next frame's ROI comes from
   alignment points 33 (hips' centre) and 34 (body circle) the same way, so a person is followed
   from frame to frame without the detector.

**Several people** (:class:`PoseTracker`): the detector runs on every ``detect_every``-th frame
(default 3; on a wide frame also on squares of its shorter side, so people are not shrunk by the
letterbox); a detection near a followed person's hips (:data:`MATCH_DISTANCE` x its ROI side) is
that person, one near where a track was lost in the last ``keep_lost`` frames (the demo: a second
of video, at least 10 frames) takes that track's id back, any other starts a new track (at most
``max_people``). Each track's landmarks are computed in its ROI;
a track whose pose-presence score falls below ``min_presence`` ends. Two tracks whose landmark
boxes overlap by IoU >= :data:`DUPLICATE_IOU` are one person: the younger track ends. Track ids
are never reused. Which track the demo follows is chosen afterwards (:mod:`hmrmamba.demo.people`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmrmamba.errors import InputError

__all__ = ["BlazePose", "FollowOne", "Person", "PoseTracker", "Roi", "decode_detections", "iou", "roi_from_points",
           "ssd_anchors", "weighted_nms"]

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
NUM_LANDMARKS = 39  # 33 BlazePose landmarks + alignment points (33: hips' centre, 34: body circle) + 2 more
ROI_SCALE = 1.25
NMS_IOU = 0.3
MATCH_DISTANCE = 0.2
LOST_SPREAD = 0.1
MAX_LOST_REACH = 1.0
DUPLICATE_IOU = 0.6
AUTO_TILE_ASPECT = 1.2


@dataclass(frozen=True)
class Roi:
    """A square region in image pixels: centre (cx, cy), side, rotation (radians; 0 = upright)."""

    cx: float
    cy: float
    size: float
    rotation: float

    def box(self) -> np.ndarray:
        """(4,) x0, y0, x1, y1: the axis-aligned box around the turned square."""
        half = 0.5 * self.size * (abs(math.cos(self.rotation)) + abs(math.sin(self.rotation)))
        return np.array([self.cx - half, self.cy - half, self.cx + half, self.cy + half])

    def to_image(self, unit: np.ndarray) -> np.ndarray:
        """unit (..., 2) coordinates in [0, 1] of the square's crop -> (..., 2) image pixels."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        u = (np.asarray(unit, np.float64) - 0.5) * self.size
        return np.stack([self.cx + c * u[..., 0] - s * u[..., 1], self.cy + s * u[..., 0] + c * u[..., 1]], -1)

    def crop(self, image, size: int) -> np.ndarray:
        """PIL image -> (size, size, 3) float32 in [0, 1]: the turned square resampled (bilinear), zero outside."""
        from PIL import Image

        c, s = math.cos(self.rotation), math.sin(self.rotation)
        k = self.size / size
        # output pixel (x, y) -> input (a x + b y + c0, d x + e y + f0), through to_image's map
        a, b, d, e = c * k, -s * k, s * k, c * k
        c0 = self.cx - 0.5 * self.size * (c - s)
        f0 = self.cy - 0.5 * self.size * (s + c)
        out = image.transform((size, size), Image.Transform.AFFINE, (a, b, c0, d, e, f0),
                              resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        return np.asarray(out, dtype=np.float32) / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (..., 4), b (..., 4) boxes x0, y0, x1, y1 -> (...) intersection over union (0 for empty boxes)."""
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[..., 2:] - x[..., :2], 0, None).prod(-1)

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def ssd_anchors(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = (8, 16, 32, 32, 32)) -> np.ndarray:
    """-> (A, 2) anchor centres in [0, 1] (x, y), MediaPipe's order: layers of one stride together,
    rows, columns, then two anchors per layer (an aspect ratio and an interpolated scale)."""
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_place = 2 * (j - i)
        side = math.ceil(size / strides[i])
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], -1)
        out.append(np.repeat(centres, per_place, axis=0))
        i = j
    return np.concatenate(out).astype(np.float64)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, *,
                      min_score: float = 0.5, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """raw_boxes (A, 12), raw_scores (A,) logits, anchors (A, 2) -> boxes (K, 4) x0 y0 x1 y1, keypoints
    (K, 4, 2) and scores (K,), all in [0, 1] of the detector's square input, for scores >= ``min_score``."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -100, 100)))
    keep = scores >= min_score
    raw = raw_boxes[keep].astype(np.float64) / size
    anc = anchors[keep]
    centre = raw[:, :2] + anc
    half = 0.5 * raw[:, 2:4]
    boxes = np.concatenate([centre - half, centre + half], -1)
    keypoints = raw[:, 4:12].reshape(-1, 4, 2) + anc[:, None, :]
    return boxes, keypoints, scores[keep]


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 threshold: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Weighted non-maximum suppression (MediaPipe's WEIGHTED): the best remaining detection and all
    others overlapping it by IoU > ``threshold`` become one, their boxes and keypoints averaged with
    the scores as weights, scored as the best. -> [(box (4,), keypoints (4, 2), score)], best first."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    alive = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        group = alive & (iou(boxes[i], boxes) > threshold)
        group[i] = True
        w = scores[group] / scores[group].sum()
        out.append(((boxes[group] * w[:, None]).sum(0), (keypoints[group] * w[:, None, None]).sum(0),
                    float(scores[i])))
        alive &= ~group
    return out


def roi_from_points(centre: np.ndarray, circle: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """Hips' centre (2,) px and a point on the body circle (2,) px -> the square ROI: side
    2 |circle - centre| x ``scale``, turned so that centre -> circle points up the crop."""
    dx, dy = float(circle[0] - centre[0]), float(circle[1] - centre[1])
    rotation = math.pi / 2 - math.atan2(-dy, dx)
    rotation = (rotation + math.pi) % (2 * math.pi) - math.pi
    return Roi(float(centre[0]), float(centre[1]), 2.0 * math.hypot(dx, dy) * scale, rotation)


@dataclass
class Person:
    """One person in one frame: ``track`` id, landmarks (33, 2) px, visibility (33,) in [0, 1],
    presence score, box (4,) of the landmarks x0 y0 x1 y1 px, and the ROI the next frame starts from."""

    track: int
    landmarks: np.ndarray
    visibility: np.ndarray
    presence: float
    box: np.ndarray
    next_roi: Roi


def _interpreter(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken wheel: one clear message
        raise InputError(f"LiteRT is not importable ({type(exc).__name__}: {str(exc)[:100]})",
                         field="--detector blazepose", expected="pip install ai-edge-litert (a dependency of hmrmamba)"
                         ) from None
    try:
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError for bad files
        raise InputError(f"is not a TFLite model LiteRT can load ({type(exc).__name__})", file=path,
                         expected="a .tflite model file") from None
    return it


class BlazePose:
    """The two networks: ``detect(image)`` -> ROIs of people; ``landmarks(image, roi)`` -> Person fields.

    ``model_dir``: a folder with the files of :data:`hmrmamba.demo.pose_models.MODEL_FILES` (default:
    the installed one; checked against their SHA-256 unless ``verify=False``); ``landmark_model``:
    ``"full"`` or ``"lite"``; ``threads``: LiteRT threads per network (default 2, or fewer CPUs).
    """

    def __init__(self, model_dir: str | Path | None = None, *, landmark_model: str = "full",
                 threads: int | None = None, verify: bool = True, min_score: float = 0.5):
        from hmrmamba.demo.pose_models import INSTALL_HINT, check_model_dir, find_model_dir

        if landmark_model not in ("full", "lite"):
            raise InputError(f"landmark_model={landmark_model!r}", field="landmark_model", expected="full | lite")
        folder = Path(model_dir) if model_dir is not None else find_model_dir()
        if folder is None:
            raise InputError("the BlazePose models are not installed", field="--detector blazepose",
                             expected=f"install them with {INSTALL_HINT}, or pass --keypoints F.npz")
        names = ("pose_detection.tflite", f"pose_landmark_{landmark_model}.tflite")
        if verify:
            check_model_dir(folder, names)
        threads = threads or max(1, min(2, os.cpu_count() or 1))
        self.model_dir = folder
        self._det = _interpreter(folder / names[0], threads)
        self._lm = _interpreter(folder / names[1], threads)
        for it, size, what in ((self._det, DETECTOR_SIZE, names[0]), (self._lm, LANDMARK_SIZE, names[1])):
            shape = tuple(it.get_input_details()[0]["shape"])
            if shape != (1, size, size, 3):
                raise InputError(f"has input shape {shape}", file=folder / what, expected=f"(1, {size}, {size}, 3)")
        self._anchors = ssd_anchors()
        outs = {tuple(d["shape"]): d["index"] for d in self._det.get_output_details()}
        try:
            self._det_boxes = outs[(1, len(self._anchors), 12)]
            self._det_scores = outs[(1, len(self._anchors), 1)]
        except KeyError:
            raise InputError(f"has outputs {sorted(outs)}", file=folder / names[0],
                             expected=f"(1, {len(self._anchors)}, 12) boxes and (1, {len(self._anchors)}, 1) scores"
                             ) from None
        lm_outs = {tuple(d["shape"]): d["index"] for d in self._lm.get_output_details()}
        try:
            self._lm_points = lm_outs[(1, NUM_LANDMARKS * 5)]
            self._lm_flag = lm_outs[(1, 1)]
        except KeyError:
            raise InputError(f"has outputs {sorted(lm_outs)}", file=folder / names[1],
                             expected=f"(1, {NUM_LANDMARKS * 5}) landmarks and (1, 1) presence") from None
        self.min_score = float(min_score)

    def _detect_square(self, image, square: Roi) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Detector on one upright square of the image -> [(box (4,) px, keypoints (4, 2) px, score)]."""
        x = square.crop(image, DETECTOR_SIZE) * 2.0 - 1.0
        self._det.set_tensor(self._det.get_input_details()[0]["index"], x[None])
        self._det.invoke()
        raw_boxes = self._det.get_tensor(self._det_boxes)[0]
        raw_scores = self._det.get_tensor(self._det_scores)[0, :, 0]
        boxes, kps, scores = decode_detections(raw_boxes, raw_scores, self._anchors, min_score=self.min_score)
        origin = np.array([square.cx - square.size / 2.0, square.cy - square.size / 2.0])
        return [(boxes[i] * square.size + np.tile(origin, 2), kps[i] * square.size + origin, float(scores[i]))
                for i in range(len(scores))]

    def detect(self, image, tile: int | None = None) -> list[tuple[Roi, float]]:
        """PIL RGB image -> [(ROI, score)] of the people the detector finds, best first.

        The whole frame goes in letterboxed (centred in a square). People smaller than about a
        third of the frame's longer side are missed there; ``tile`` (px) adds squares of that side
        over the frame, overlapping by half, whose detections are merged with the whole frame's.
        """
        w, h = image.size
        squares = [Roi(w / 2.0, h / 2.0, float(max(w, h)), 0.0)]
        if tile is not None and tile < max(w, h):
            for y0 in _tile_starts(h, tile):
                for x0 in _tile_starts(w, tile):
                    squares.append(Roi(x0 + tile / 2.0, y0 + tile / 2.0, float(tile), 0.0))
        found = [d for sq in squares for d in self._detect_square(image, sq)]
        if not found:
            return []
        boxes = np.stack([d[0] for d in found])
        kps = np.stack([d[1] for d in found])
        scores = np.array([d[2] for d in found])
        return [(roi_from_points(kp[0], kp[1]), score) for _, kp, score in weighted_nms(boxes, kps, scores)]

    def landmarks(self, image, roi: Roi) -> tuple[np.ndarray, np.ndarray, float, Roi]:
        """PIL RGB image, ROI -> landmarks (33, 2) px, visibility (33,), presence score, next frame's ROI."""
        x = roi.crop(image, LANDMARK_SIZE)
        self._lm.set_tensor(self._lm.get_input_details()[0]["index"], x[None])
        self._lm.invoke()
        raw = self._lm.get_tensor(self._lm_points)[0].reshape(NUM_LANDMARKS, 5).astype(np.float64)
        presence = float(np.asarray(self._lm.get_tensor(self._lm_flag)).ravel()[0])
        points = roi.to_image(raw[:, :2] / LANDMARK_SIZE)
        visibility = 1.0 / (1.0 + np.exp(-np.clip(raw[:33, 3], -60, 60)))
        return points[:33], visibility, presence, roi_from_points(points[33], points[34])


def _tile_starts(length: int, tile: int) -> list[int]:
    """Starts of tiles of side ``tile`` over ``length`` px, half overlapping, the last flush with the end."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile, max(1, tile // 2)))
    return [*starts, length - tile]


def _landmark_box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


class PoseTracker:
    """People in a video, frame after frame: ``tracker(frame (H, W, 3) uint8 RGB) -> [Person]``.

    ``detect_every``: run the detector on every n-th frame (1: every frame; followed people are
    tracked from their own landmarks in between); ``max_people``: at most this many tracks at once;
    ``min_presence``: a track is lost when its pose-presence score falls below it; ``keep_lost``: a
    lost track's id comes back to a detection near where it was lost within this many frames;
    ``tile``: see :meth:`BlazePose.detect` (for people smaller than a third of the frame); ``"auto"``
    (default): squares of the frame's shorter side for frames wider (or taller) than 1.2 : 1, else
    none; 0 or None: the whole frame only.

    A detection is a followed person when its hips' centre lies within :data:`MATCH_DISTANCE` x
    the person's ROI side of the person's hips (within ``min(MATCH_DISTANCE + LOST_SPREAD x frames
    lost, MAX_LOST_REACH)`` x side for a lost track).
    """

    def __init__(self, pose: BlazePose | None = None, *, detect_every: int = 3, max_people: int = 6,
                 min_presence: float = 0.5, keep_lost: int = 10, tile: int | str | None = "auto", **kwargs):
        for name, value, low in (("detect_every", detect_every, 1), ("max_people", max_people, 1),
                                 ("keep_lost", keep_lost, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name}={value!r}", field=name, expected=f"an integer >= {low}")
        if tile == 0:
            tile = None
        if tile is not None and tile != "auto" and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 32):
            raise InputError(f"tile={tile!r}", field="--detector-tile",
                             expected="'auto', 0 (none) or an integer >= 32 (pixels)")
        self.pose = pose if pose is not None else BlazePose(**kwargs)
        self.detect_every = detect_every
        self.max_people = max_people
        self.min_presence = float(min_presence)
        self.keep_lost = keep_lost
        self.tile = tile
        self._frame = 0
        self._next_id = 0
        self._tracks: dict[int, Roi] = {}  # track id -> ROI for the coming frame
        self._lost: dict[int, tuple[int, Roi]] = {}  # track id -> (frame it was last seen, its ROI then)
        self._born: dict[int, int] = {}

    def _claim(self, roi: Roi, rois: dict[int, Roi]) -> int | None:
        """The id a detection's ROI belongs to: None when a followed person has it, else a lost
        track's id near it, else a new id (or None at ``max_people``)."""
        def near(a: Roi, b: Roi, reach: float) -> bool:
            return math.hypot(a.cx - b.cx, a.cy - b.cy) < reach * max(a.size, b.size)

        if any(near(roi, r, MATCH_DISTANCE) for r in rois.values()):
            return None
        if len(rois) >= self.max_people:
            return None
        best = None
        for track, (seen, old) in self._lost.items():
            gap = self._frame - seen
            if near(roi, old, min(MATCH_DISTANCE + LOST_SPREAD * gap, MAX_LOST_REACH)) and \
                    (best is None or seen > best[1]):
                best = (track, seen)
        if best is not None:
            del self._lost[best[0]]
            return best[0]
        self._born[self._next_id] = self._frame
        self._next_id += 1
        return self._next_id - 1

    def _tile(self, size: tuple[int, int]) -> int | None:
        """The tile side for a frame of ``size`` (H, W): ``auto`` is the shorter side when the longer
        is at least :data:`AUTO_TILE_ASPECT` times it (a letterboxed wide frame wastes the input)."""
        if self.tile != "auto":
            return self.tile
        short, long = sorted(size)
        return int(short) if long >= AUTO_TILE_ASPECT * short else None

    def __call__(self, frame: np.ndarray) -> list[Person]:
        from PIL import Image

        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"got shape {frame.shape} dtype {frame.dtype}", field="frame",
                             expected="(H, W, 3) uint8 RGB")
        image = Image.fromarray(frame, "RGB")
        rois = dict(self._tracks)
        lost_before = dict(self._lost)
        if self._frame % self.detect_every == 0 or not rois:
            for roi, _ in self.pose.detect(image, self._tile(frame.shape[:2])):
                track = self._claim(roi, rois)
                if track is not None:
                    rois[track] = roi
        people = []
        for track, roi in rois.items():
            points, vis, presence, next_roi = self.pose.landmarks(image, roi)
            if presence >= self.min_presence and np.isfinite(points).all():
                people.append(Person(track, points, vis, presence, _landmark_box(points), next_roi))
        # one person followed twice: the older track keeps it
        people.sort(key=lambda p: self._born[p.track])
        kept: list[Person] = []
        for p in people:
            if all(iou(p.box, q.box) < DUPLICATE_IOU for q in kept):
                kept.append(p)
        alive = {p.track for p in kept}
        for track in rois:
            if track in alive:
                continue
            if track in self._tracks:  # followed until the last frame: lost now
                self._lost[track] = (self._frame - 1, self._tracks[track])
            elif track in lost_before:  # a lost track a detection revived, not confirmed: still lost as before
                self._lost[track] = lost_before[track]
        self._lost = {t: v for t, v in self._lost.items() if self._frame - v[0] <= self.keep_lost and t not in alive}
        self._tracks = {p.track: p.next_roi for p in kept}
        self._frame += 1
        return kept

    def close(self) -> None:
        """Nothing to release (kept for the detectors' common interface)."""


class FollowOne:
    """One person at a time from a :class:`PoseTracker`, for streaming: ``detector(frame) ->
    (keypoints (17, 2) px H36M-17, confidence (17,))``, NaN and 0 when nobody is followed.

    Follows the track it picked until that track is lost, then picks again among the people of
    the frame: the largest, most central (box height x (1 - 0.5 r), as :mod:`hmrmamba.demo.people`
    ranks whole tracks). ``followed`` lists the track id per frame (-1: nobody)."""

    def __init__(self, tracker: PoseTracker):
        self.tracker = tracker
        self.followed: list[int] = []

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from hmrmamba.demo.keypoints import mediapipe33_to_h36m17

        people = self.tracker(frame)
        last = self.followed[-1] if self.followed else -1
        pick = next((p for p in people if p.track == last), None)
        if pick is None and people:
            h, w = frame.shape[:2]
            half_diag = 0.5 * math.hypot(w, h)

            def score(p: Person) -> float:
                centre = 0.5 * (p.box[:2] + p.box[2:])
                r = min(math.hypot(centre[0] - w / 2, centre[1] - h / 2) / half_diag, 1.0)
                return float(p.box[3] - p.box[1]) / h * (1 - 0.5 * r)

            pick = max(people, key=score)
        self.followed.append(-1 if pick is None else pick.track)
        if pick is None:
            return np.full((17, 2), np.nan, np.float32), np.zeros(17, np.float32)
        return mediapipe33_to_h36m17(pick.landmarks, pick.visibility)

    def close(self) -> None:
        self.tracker.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m hmrmamba.demo.blazepose VIDEO``: the detector alone over a video: the people it
    tracks (ranked as the demo ranks them) and its frames/s."""
    import argparse
    import time

    from hmrmamba.data.video import VideoReader
    from hmrmamba.demo.people import PeopleTracks, rank_tracks

    ap = argparse.ArgumentParser(prog="python -m hmrmamba.demo.blazepose", description=main.__doc__.splitlines()[0])
    ap.add_argument("video", help="a video file or a folder of frames")
    ap.add_argument("--tile", type=int, help="tile side px (default: auto; 0: the whole frame only)")
    ap.add_argument("--every", type=int, default=3, help="run the detector every N frames (default 3)")
    ap.add_argument("--landmarks", choices=("full", "lite"), default="full", help="landmark model")
    ap.add_argument("--threads", type=int, help="LiteRT threads (default 2, or fewer CPUs)")
    args = ap.parse_args(argv)
    reader = VideoReader(args.video)
    tracker = PoseTracker(BlazePose(landmark_model=args.landmarks, threads=args.threads), detect_every=args.every,
                          tile="auto" if args.tile is None else args.tile, keep_lost=max(10, round(reader.fps or 0)))
    frames, seconds = [], 0.0
    for frame in reader:
        start = time.perf_counter()
        frames.append(tracker(frame))
        seconds += time.perf_counter() - start
    people = PeopleTracks.from_frames(frames, reader.size)
    for i, s in enumerate(rank_tracks(people)):
        print(f"#{i} {s.describe()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(frames)} frames {reader.size[1]}x{reader.size[0]}, {people.count.mean():.2f} people per frame, "
          f"{len(frames) / max(seconds, 1e-9):.1f} frames/s ({os.cpu_count()} CPUs, load average {load:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
