"""``hmrmamba demo``: a video in, meshes and pictures out.

Offline (default), in passes over the video so that memory holds per-frame numbers, not frames:

1. 2D keypoints: from ``--keypoints F.npz``, BlazePose on LiteRT (:mod:`hmrmamba.demo.blazepose`,
   every person tracked, one followed: :mod:`hmrmamba.demo.people`) or the legacy MediaPipe
   package (:mod:`hmrmamba.demo.keypoints`);
2. crop boxes, crops and ResNet-50 features (the features stage's settings), streamed;
3. the model on 16-frame windows every 8 frames, each keeping its middle 8 (so every frame has 4+
   frames of context each side; :func:`hmrmamba.demo.inference.predict_offline`), or once over the
   whole sequence for a causal model; per-frame camera translation from the keypoints; with
   ``--smooth`` a Gaussian over time on the outputs (:mod:`hmrmamba.demo.smoothing`);
4. pictures (overlay + side view) and files.

Online (``--online``, a causal checkpoint): one pass; every frame goes through
:class:`hmrmamba.demo.streaming.Tracker` (detector or file row -> box -> feature -> one model step).

Outputs in ``DIR`` (written into a temporary sibling folder that replaces ``DIR`` only when
everything succeeded, so a failure leaves no partial ``DIR``):

- ``meshes.npz``: vertices (N, V, 3) and joints (N, 17, 3) metres, pelvis-relative in the camera's
  orientation; translation (N, 3) metres (NaN where unknown), so ``vertices - joints[:, :1] +
  translation`` is the camera-frame mesh; faces (F, 3); fps; detected (N,) bool; keypoints
  (N, 17, 2) px and confidence (N, 17) as detected; camera (4,) fx, fy, cx, cy px; image_size (H, W);
  person_track (N,) the followed track's id (-1: not detected), person_jump (N,) bool (the
  keypoints moved too far to be the same person: :func:`hmrmamba.demo.people.jump_frames`, or the
  streaming follower changed track), people_count (N,) people found in the frame;
- ``frame_000000.obj`` ... (and ``frame_000000.ply`` ... with ``ply=True``), y up
  (:mod:`hmrmamba.demo.export`); ``DIR`` stays a flat folder of files, which is what
  :func:`hmrmamba.atomic.atomic_dir` agrees to replace on the next run;
- ``overlay.mp4``: each frame with the mesh drawn over it, beside a side view;
- ``contact_sheet.png``: a grid of such panels (up to 12 frames spread over the detected ones);
  ``side_view.png``: six of the side views in a row;
- ``summary.json``: what ran, frame counts, seconds per step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmrmamba.errors import InputError

__all__ = ["DemoResult", "StepTimer", "run_demo", "summary_line"]

log = logging.getLogger(__name__)

CONTACT_SHEET_FRAMES = 12


class StepTimer:
    """Wall seconds per named step; ``iterate`` charges the time spent *producing* items to a step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def iterate(self, items: Iterable, name: str) -> Iterator:
        it = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            yield item

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass
class DemoResult:
    """What ``run_demo`` did: out_dir; frames; detected frames; seconds per step; frames per second
    over all steps (the model load excluded); the files written (relative to out_dir); lines that
    say which people were tracked and which one was followed."""

    out_dir: Path
    frames: int
    detected: int
    seconds: dict[str, float]
    fps: float
    files: list[str] = field(default_factory=list)
    people: list[str] = field(default_factory=list)
    #: the body-model fit's one-line summary (``fit=True``), else None
    fit: str | None = None


def _check_out_dir(out: Path) -> None:
    """Refuse, before any work, to replace a folder that is not an earlier demo output."""
    from hmrmamba.atomic import check_replaceable_dir

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "meshes.npz").exists())):
        raise InputError("exists and is not an earlier demo output", file=out, field="--out",
                         expected="a new or empty folder, or one written by `hmrmamba demo` (it is replaced)")
    check_replaceable_dir(out, field="--out")  # also: an existing parent that is a file (params.yaml/x)


#: ``--render-size`` bounds, px (the longest side of the pictures)
RENDER_SIZE_RANGE = (16, 4096)


def _check_options(render_size, focal, batch_size) -> None:
    """Every option checked before any work (a bad one must not surface after inference)."""
    from hmrmamba.demo.camera import check_focal

    lo, hi = RENDER_SIZE_RANGE
    if isinstance(render_size, bool) or not isinstance(render_size, (int, np.integer)) or not lo <= render_size <= hi:
        raise InputError(f"render_size={render_size!r}", field="--render-size",
                         expected=f"an integer number of pixels in [{lo}, {hi}]")
    if focal is not None:
        check_focal(focal)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= 4096:
        raise InputError(f"batch_size={batch_size!r}", field="batch_size", expected="an integer in [1, 4096]")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False)


def _detect(reader, detector, timer: StepTimer, progress: bool):
    from hmrmamba.demo.keypoints import make_track

    kps, confs = [], []
    with _progress(reader.num_frames, "detect", progress) as bar:
        for frame in timer.iterate(reader, "decode"):
            with timer.step("detect"):
                kp, conf = detector(frame)
            kps.append(kp)
            confs.append(conf)
            bar.update(1)
    return make_track(np.stack(kps), np.stack(confs), image_size=reader.size)


def _detect_people(reader, tracker, timer: StepTimer, progress: bool, person: int | None):
    """Every person of every frame, then the followed one -> (KeypointTrack, people lines, people per frame)."""
    from hmrmamba.demo.people import PeopleTracks, select_person

    frames = []
    with _progress(reader.num_frames, "detect", progress) as bar:
        for frame in timer.iterate(reader, "decode"):
            with timer.step("detect"):
                frames.append(tracker(frame))
            bar.update(1)
    people = PeopleTracks.from_frames(frames, reader.size)
    track, ranking, rank = select_person(people, person)
    how = "--person" if person is not None else "the most prominent: largest, most central, longest seen"
    lines = [f"{len(ranking)} people tracked (rank: prominence = sum over frames of height share x centrality)"]
    lines += [f"  #{i} {s.describe()}" + (f"  <- followed ({how})" if i == rank else "")
              for i, s in enumerate(ranking)]
    chosen = np.where(track.detected, ranking[rank].track, -1).astype(np.int32)
    return track, lines, chosen, people.count


def _offline(inf, reader, track, timer: StepTimer, progress: bool, batch_size: int, align: bool = True):
    """-> (Predictions, SequenceInputs) for the whole video. ``align``: move the video's image features to
    the training features' moments (:mod:`hmrmamba.features.alignment`) when the project has them."""
    from hmrmamba.demo.inference import SequenceInputs, predict_offline, sequence_inputs
    from hmrmamba.demo.keypoints import fill_undetected

    kp_in, conf_in = fill_undetected(track)
    parts = []
    decode_before = timer.seconds.get("decode", 0.0)
    with _progress(reader.num_frames, "features", progress) as bar:
        frames = timer.iterate(reader, "decode")
        batches = sequence_inputs(inf, frames, kp_in, conf_in, image_size=reader.size, batch_size=batch_size)
        for _, part in timer.iterate(batches, "features"):
            parts.append(part)
            bar.update(len(part.kp2d))
    # frames were decoded inside the features generator: charge that time to decode only
    timer.seconds["features"] -= timer.seconds.get("decode", 0.0) - decode_before
    inputs = SequenceInputs(**{k: np.concatenate([getattr(p, k) for p in parts])
                               for k in ("kp2d", "conf", "feats", "boxes")},
                            spatial=np.concatenate([p.spatial for p in parts]) if inf.map_layer else None)
    if align and inf.feature_reference is not None:
        from hmrmamba.features.alignment import align_to

        inputs.feats = align_to(inputs.feats, inf.feature_reference, use=np.asarray(track.detected, bool))
    with timer.step("model"):
        pred = predict_offline(inf, inputs)
    return pred, inputs


def run_demo(video: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
             detector: str = "keypoints", keypoints: str | Path | None = None, online: bool = False,
             ply: bool = False, obj: bool = True, pictures: bool = True, render_size: int = 480,
             focal: float | None = None,
             root: str | Path | None = None, inference=None, detector_model: str | Path | None = None,
             progress: bool = True, batch_size: int = 16, person: int | None = None,
             detector_tile: int | None = None, smooth: float = 0.0, align_features: bool = True,
             fit: bool = False) -> DemoResult:
    """Meshes, pictures and files for ``video`` (a video file or a folder of frames) in ``out``.

    ``detector``: ``"keypoints"`` (needs ``keypoints``, an npz), ``"blazepose"`` (MediaPipe Pose's
    models on LiteRT, installed with the project; ``detector_model`` a folder of them, ``detector_tile``
    px tiles for small people, ``person`` the rank of the person to follow, default the most
    prominent) or ``"mediapipe"`` (the legacy ``[demo]`` extra); ``smooth``: a Gaussian over time of
    that many frames on the outputs, within runs of detected frames (offline only,
    :mod:`hmrmamba.demo.smoothing`); ``inference``: an already loaded :class:`hmrmamba.demo.inference.Inference` (else it is
    loaded from ``checkpoint``, default the train_mesh stage's ``best.pt`` under ``root``);
    ``pictures=False`` skips the overlay video and the PNGs, ``obj``/``ply`` the per-frame meshes;
    ``align_features``: (offline) move the video's image features to the training split's per-channel
    moments (:mod:`hmrmamba.features.alignment`; off, or without the project's training features, the
    raw features are used); ``fit``: afterwards fit the body model to the meshes and write
    ``animation.bvh`` and ``animation_rig.glb`` (:func:`hmrmamba.demo.rig_export.fit_and_export`).
    Raises ``InputError`` for an unreadable or empty video, no person detected, a wrong checkpoint,
    a missing extra, or an existing ``out`` that is not a demo output; ``out`` is then untouched.
    """
    import imageio.v3 as iio

    from hmrmamba.atomic import atomic_dir, atomic_path, write_json, write_npz
    from hmrmamba.demo.camera import default_camera, estimate_translation
    from hmrmamba.demo.inference import load_inference
    from hmrmamba.demo.keypoints import DETECTORS, MediaPipePoseDetector, fill_undetected, load_keypoints
    from hmrmamba.demo.pictures import PanelRenderer, grid
    from hmrmamba.demo.export import write_mesh_sequence
    from hmrmamba.data.video import VideoReader, write_video

    out = Path(out)
    if detector not in DETECTORS:
        raise InputError(f"unknown detector {detector!r}", field="--detector", expected=" | ".join(DETECTORS))
    if detector == "keypoints" and keypoints is None:
        raise InputError("no keypoints file", field="--keypoints",
                         expected="--keypoints F.npz with keypoints (N, 17, 2) px, or --detector blazepose")
    if person is not None and (isinstance(person, bool) or not isinstance(person, (int, np.integer)) or person < 0):
        raise InputError(f"--person {person!r}", field="--person", expected="an integer >= 0 (0 = the most prominent)")
    if person is not None and online:
        raise InputError(f"--person {person} with --online", field="--person",
                         expected="offline (the ranking needs the whole video); online follows the most prominent "
                                  "person in view")
    _check_options(render_size, focal, batch_size)
    from hmrmamba.demo.smoothing import check_sigma, smooth_runs

    smooth = check_sigma(smooth)
    if smooth and online:
        raise InputError(f"--smooth {smooth:g} with --online", field="--smooth",
                         expected="offline (smoothing looks at later frames), or --smooth 0")
    _check_out_dir(out)
    reader = VideoReader(video)
    n = reader.num_frames
    track = load_keypoints(keypoints, num_frames=n, image_size=reader.size) if keypoints is not None else None
    if track is not None and not track.detected.any():
        fill_undetected(track)  # raises: no person detected
    det = None
    if track is None and detector == "blazepose":
        from hmrmamba.demo.blazepose import FollowOne, PoseTracker

        # a lost person keeps their id for a second of video (at least 10 frames)
        det = PoseTracker(model_dir=detector_model, tile="auto" if detector_tile is None else detector_tile,
                          keep_lost=max(10, round(reader.fps or 0)))
        if online:
            det = FollowOne(det)
    elif track is None:
        det = MediaPipePoseDetector(model_path=detector_model, fps=reader.fps)
    people_lines: list[str] = []
    chosen = count = None
    try:
        if inference is None:
            inference = load_inference(checkpoint, root=root, need_causal=online)
        elif online and not inference.causal:
            raise InputError(f"variant '{inference.variant}' reads future frames (not causal)",
                             file=inference.checkpoint, field="config.model.causal",
                             expected="a causal variant such as 'tiny-online' for --online")
        camera = default_camera(reader.size, focal=focal)
        timer = StepTimer()
        if online:
            pred_v, pred_j, pred_p, trans, track = _run_online(inference, reader, track, det, focal, timer, progress)
        else:
            if track is None and detector == "blazepose":
                track, people_lines, chosen, count = _detect_people(reader, det, timer, progress, person)
            elif track is None:
                track = _detect(reader, det, timer, progress)
            pred, _ = _offline(inference, reader, track, timer, progress, batch_size, align_features)
            pred_v, pred_j, pred_p = pred.vertices, pred.joints, pred.pose3d
            with timer.step("camera"):
                rel = pred_j - pred_j[:, :1]
                trans = estimate_translation(rel, track.keypoints, track.confidence, camera)
                trans[~track.detected] = np.nan
                # a detection whose translation cannot be fitted is no detection (docs/demo.md)
                track.detected = track.detected & np.isfinite(trans).all(-1)
            if smooth:
                with timer.step("smooth"):
                    pred_v, pred_j, pred_p, trans = (smooth_runs(a, track.detected, smooth).astype(np.float32)
                                                     for a in (pred_v, pred_j, pred_p, trans))
    finally:
        if det is not None:
            det.close()
    detected = np.asarray(track.detected, bool)
    person_track, person_jump, people_count = _person_fields(track, chosen, count, det)
    cam_verts = pred_v - pred_j[:, :1] + trans[:, None, :]
    renderer = PanelRenderer(inference.faces, camera, reader.size, vertex_colors=inference.vertex_colors,
                             render_size=render_size)
    picks = _pick_frames(detected, CONTACT_SHEET_FRAMES)
    with atomic_dir(out) as tmp:
        panels = []
        with _progress(n if pictures else 0, "render", progress and pictures) as bar:
            start = 0
            for frames in _chunks(timer.iterate(reader, "decode") if pictures else (), 8):
                idx = range(start, start + len(frames))
                with timer.step("render"):
                    panels.append(renderer.render(np.stack(frames),
                                                  [cam_verts[i] if detected[i] else None for i in idx]))
                start += len(frames)
                bar.update(len(frames))
        with timer.step("write"):
            files = ["meshes.npz", "summary.json"]
            write_npz(tmp / "meshes.npz", vertices=pred_v.astype(np.float32), joints=pred_j.astype(np.float32),
                      pose3d=pred_p.astype(np.float32), faces=inference.faces.astype(np.int32),
                      fps=np.float32(reader.fps), detected=detected, translation=trans.astype(np.float32),
                      keypoints=track.keypoints.astype(np.float32), confidence=track.confidence.astype(np.float32),
                      camera=camera.astype(np.float32), image_size=np.asarray(reader.size, np.int32),
                      person_track=person_track, person_jump=person_jump, people_count=people_count)
            for fmt, wanted in (("obj", obj), ("ply", ply)):
                if wanted:
                    write_mesh_sequence(tmp, pred_v, inference.faces, fmt=fmt)
                    files.append(f"frame_*.{fmt}")
            if pictures:
                panels = np.concatenate(panels)
                write_video(tmp / "overlay.mp4", panels, fps=reader.fps)
                w = panels.shape[2] // 2
                for name, picture in (("contact_sheet.png", grid(panels[picks], columns=3)),
                                      ("side_view.png", grid(panels[picks[:6], :, w:], columns=6))):
                    with atomic_path(tmp / name, suffix=".png") as path:
                        iio.imwrite(path, picture, extension=".png")
                files += ["overlay.mp4", "contact_sheet.png", "side_view.png"]
        seconds = {k: round(v, 4) for k, v in timer.seconds.items()}
        fps = n / max(timer.total, 1e-9)
        write_json(tmp / "summary.json", {
            "video": str(video), "frames": n, "detected_frames": int(detected.sum()), "fps_video": reader.fps,
            "image_size": list(reader.size), "checkpoint": str(inference.checkpoint), "variant": inference.variant,
            "mode": "online" if online else "offline", "detector": detector, "smooth": smooth,
            "feature_alignment": _alignment_note(inference, online, align_features),
            "backbone_weights": inference.weights_note, "seconds": seconds, "people": people_lines,
            "person_jumps": [int(i) for i in np.flatnonzero(person_jump)],
            "frames_per_second": round(fps, 3), "camera": [float(c) for c in camera]})
    fit_line = None
    if fit:  # on the finished folder: fit_and_export replaces its files atomically or leaves them as they are
        from hmrmamba.config import find_project_root
        from hmrmamba.demo.rig_export import fit_and_export
        from hmrmamba.layout import Layout

        body_model = Layout(find_project_root() if root is None else Path(root)).body_model
        exported = fit_and_export(out, body_model)
        fit_line = exported.summary()
        files += [p.name for p in exported.files if p.name != "meshes.npz"]
    return DemoResult(out_dir=out, frames=n, detected=int(detected.sum()), seconds=seconds, fps=fps, files=files,
                      people=people_lines, fit=fit_line)


def _alignment_note(inference, online: bool, align: bool) -> str:
    """What was done to the video's image features, for summary.json."""
    if online or not align:
        return "off" if align is False else "off (--online streams: no clip moments)"
    ref = inference.feature_reference
    return "off (no training features in the project)" if ref is None else \
        f"training-split moments ({ref.frames} frames)"


def _person_fields(track, chosen, count, det) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> person_track (N,) int32, person_jump (N,) bool, people_count (N,) int32 for meshes.npz."""
    from hmrmamba.demo.people import jump_frames

    detected = np.asarray(track.detected, bool)
    jump = jump_frames(track)
    followed = getattr(det, "followed", None)
    if followed is not None:  # streaming: the follower's track per frame; a change of track is a jump
        ids = np.asarray(followed, np.int32)
        prev = np.maximum.accumulate(np.where(detected, np.arange(len(ids)), -1))
        for t in np.flatnonzero(detected):
            earlier = prev[t - 1] if t > 0 else -1
            if earlier >= 0 and ids[earlier] != ids[t]:
                jump[t] = True
        person_track = np.where(detected, ids, -1).astype(np.int32)
    elif chosen is not None:
        person_track = np.where(detected, chosen, -1).astype(np.int32)
    else:
        person_track = np.where(detected, 0, -1).astype(np.int32)
    if count is None:
        count = detected.astype(np.int32)
    return person_track, jump & detected, np.asarray(count, np.int32)


def _run_online(inference, reader, track, det, focal, timer: StepTimer, progress: bool):
    """One pass with the Tracker -> (vertices, joints, pose3d, translation, track)."""
    from hmrmamba.demo.keypoints import make_track
    from hmrmamba.demo.streaming import Tracker

    tracker = Tracker(inference, detector=det, focal=focal)
    n = reader.num_frames
    results = []
    kps = np.full((n, 17, 2), np.nan, np.float32)
    confs = np.zeros((n, 17), np.float32)
    with _progress(n, "online", progress) as bar:
        for i, frame in enumerate(timer.iterate(reader, "decode")):
            if track is not None:
                kp, conf = track.keypoints[i], track.confidence[i]
            else:
                with timer.step("detect"):
                    kp, conf = det(frame)
            kps[i], confs[i] = kp, conf
            with timer.step("step"):
                results.append(tracker.step(frame, kp, conf))
            bar.update(1)
    if not any(r.vertices is not None for r in results):
        raise InputError("no person detected in any frame", field="keypoints",
                         expected="at least one frame with a detected person")
    v0 = next(r for r in results if r.vertices is not None)
    blank = {k: np.full_like(getattr(v0, k), np.nan) for k in ("vertices", "joints", "pose3d")}
    stack = {k: np.stack([getattr(r, k) if getattr(r, k) is not None else blank[k] for r in results])
             for k in blank}
    # frames before the first detection have no mesh: hold the first one so the files stay finite
    first = next(i for i, r in enumerate(results) if r.vertices is not None)
    for value in stack.values():
        value[:first] = value[first]
    trans = np.stack([r.translation for r in results]).astype(np.float32)
    detected = np.array([r.detected for r in results], bool)
    trans[~detected] = np.nan
    out_track = make_track(kps, confs, image_size=reader.size)
    detected &= np.isfinite(trans).all(-1)
    trans[~detected] = np.nan
    out_track.detected = detected
    return stack["vertices"], stack["joints"], stack["pose3d"], trans, out_track


def _pick_frames(detected: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` frames spread over the detected ones (over all if none)."""
    idx = np.flatnonzero(detected)
    if idx.size == 0:
        idx = np.arange(len(detected))
    take = np.unique(np.linspace(0, idx.size - 1, min(count, idx.size)).round().astype(int))
    return [int(i) for i in idx[take]]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def summary_line(result: DemoResult) -> str:
    """One line for the terminal."""
    shares = ", ".join(f"{k} {v / max(sum(result.seconds.values()), 1e-9):.0%}" for k, v in result.seconds.items())
    return (f"wrote {result.out_dir}: {result.frames} frames ({result.detected} detected) at "
            f"{result.fps:.1f} frames/s ({shares})")

