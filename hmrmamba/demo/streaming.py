"""Streaming mesh recovery: one frame in, one mesh out, with constant memory.

A causal model (``causal: true`` in its config, e.g. the ``tiny-online`` variant) carries the
recurrent state of its SSM scans, the last few frames' GA values and motion-attention keys, and
the previous pose from frame to frame (:class:`hmrmamba.models.StreamState`), instead of
re-running a window of frames for every new frame. Stepping a clip frame by frame gives the same
meshes as running the model on the whole clip at once (tested to 1e-5).

Two levels:

- :class:`OnlineModel` ``.step(kp2d, conf, feat)``: model inputs of one frame (keypoints in crop
  coordinates, confidences, the 2048-d image feature) -> :class:`FrameResult`;
- :class:`Tracker` ``.step(frame)``: an RGB frame -> 2D keypoints (a detector, or given) -> crop
  box -> ResNet feature -> :class:`OnlineModel` -> mesh and camera translation.

Memory does not grow with the number of frames: the state has a fixed size, and the tracker keeps
only the last box and keypoints. Frames before the first detection give results with
``detected=False`` and no mesh, and do not advance the model; after that, an undetected frame
holds the last keypoints with confidence 0 (its result is flagged ``detected=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmrmamba.errors import InputError

__all__ = ["FrameResult", "OnlineModel", "Tracker"]


@dataclass
class FrameResult:
    """One frame's output. index: frame number; detected: a person was detected in this frame;
    pose3d (17, 3), joints (17, 3), vertices (V, 3): metres, pelvis-relative, camera orientation (None
    before the first detection); keypoints (17, 2) px, confidence (17,), box (4,) cx, cy, w, h px (the
    inputs used; None before the first detection); translation (3,) metres: the mesh's place in the
    camera frame (NaN when unknown)."""

    index: int
    detected: bool
    pose3d: np.ndarray | None = None
    joints: np.ndarray | None = None
    vertices: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    confidence: np.ndarray | None = None
    box: np.ndarray | None = None
    translation: np.ndarray | None = None


class OnlineModel:
    """A causal HMRMamba run frame by frame: ``step(kp2d (17, 2) in [-1, 1], conf (17,), feat (F,))
    -> FrameResult`` (no translation, no pixels)."""

    def __init__(self, model: torch.nn.Module):
        if not getattr(model, "causal", False):
            raise InputError("this model reads future frames and cannot stream", field="model",
                             expected="a causal model (config causal: true, e.g. variant 'tiny-online')")
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next step is frame 0 of a new stream."""
        self.state = self.model.init_state(1)
        self.frames = 0

    @torch.no_grad()
    def step(self, kp2d: np.ndarray, conf: np.ndarray, feat: np.ndarray, *, detected: bool = True) -> FrameResult:
        """kp2d (17, 2) crop coordinates, conf (17,), feat (F,) -> FrameResult of this frame."""
        kp = torch.as_tensor(np.asarray(kp2d, np.float32)).view(1, 1, -1, 2)
        c = torch.as_tensor(np.asarray(conf, np.float32)).view(1, 1, -1)
        f = torch.as_tensor(np.asarray(feat, np.float32)).view(1, 1, -1)
        out, self.state = self.model.step(kp, c, f, self.state)
        result = FrameResult(index=self.frames, detected=detected, pose3d=out.pose3d[0, 0].numpy(),
                             joints=None if out.joints is None else out.joints[0, 0].numpy(),
                             vertices=None if out.vertices is None else out.vertices[0, 0].numpy())
        self.frames += 1
        return result


class Tracker:
    """Frames -> meshes, online. ``step(frame (H, W, 3) uint8 RGB[, keypoints (17, 2) px, confidence
    (17,)]) -> FrameResult``; keypoints come from ``detector(frame) -> (keypoints, confidence)`` when
    not given. Build it from a checkpoint with :meth:`from_checkpoint`."""

    def __init__(self, inference, *, detector: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                 focal: float | None = None):
        self.inference = inference
        self.online = OnlineModel(inference.model)
        self.detector = detector
        self.focal = focal
        self.reset()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | None = None, *, root: str | Path | None = None,
                        detector: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                        focal: float | None = None) -> Tracker:
        """A tracker for a causal checkpoint (see :func:`hmrmamba.demo.inference.load_inference`)."""
        from hmrmamba.demo.inference import load_inference

        return cls(load_inference(checkpoint, root=root, need_causal=True), detector=detector, focal=focal)

    def reset(self) -> None:
        """Start a new video."""
        self.online.reset()
        self.frames = 0
        self._last_kp: np.ndarray | None = None
        self._last_box: np.ndarray | None = None
        self._supersample: int | None = None

    @torch.no_grad()
    def step(self, frame: np.ndarray, keypoints: np.ndarray | None = None,
             confidence: np.ndarray | None = None) -> FrameResult:
        """frame (H, W, 3) uint8 RGB[, keypoints (17, 2) px, confidence (17,)] -> FrameResult."""
        from hmrmamba.data.loading import normalize_keypoints
        from hmrmamba.demo.camera import default_camera, estimate_translation
        from hmrmamba.demo.inference import choose_supersample
        from hmrmamba.demo.keypoints import clean_keypoints, detected_frames
        from hmrmamba.features.crops import bbox_from_keypoints
        from hmrmamba.features.extract import iter_features

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"got shape {frame.shape} dtype {frame.dtype}", field="frame",
                             expected="(H, W, 3) uint8 RGB")
        index = self.frames
        self.frames += 1
        if keypoints is None:
            if self.detector is None:
                raise InputError("no keypoints and no detector", field="keypoints",
                                 expected="keypoints (17, 2) px, or a Tracker built with a detector")
            keypoints, confidence = self.detector(frame)
        kp, conf = clean_keypoints(np.asarray(keypoints, np.float32).reshape(17, 2),
                                   None if confidence is None else np.asarray(confidence, np.float32).reshape(17),
                                   frame.shape[:2])
        detected = bool(detected_frames(kp[None], conf[None])[0])
        if detected:
            kp = np.where(np.isfinite(kp), kp, np.nanmean(np.where(conf[:, None] > 0, kp, np.nan), 0))
            self._last_kp = kp
        elif self._last_kp is None:  # nothing to track yet: the model is not stepped
            return FrameResult(index=index, detected=False, translation=np.full(3, np.nan, np.float32))
        else:
            kp, conf = self._last_kp, np.zeros(17, np.float32)
        h, w = frame.shape[:2]
        box = bbox_from_keypoints(kp[None], conf[None], image_size=(h, w), scale=self.inference.bbox_scale)[0]
        if not detected and self._last_box is not None:
            box = self._last_box
        self._last_box = box
        if self._supersample is None:
            self._supersample = choose_supersample(float(box[2]), self.inference.crop_size)
        (_, feat, _), = iter_features(frame[None], box[None], model=self.inference.backbone,
                                      crop_size=self.inference.crop_size, batch_size=1, prepared=True,
                                      progress=False, supersample=self._supersample)
        result = self.online.step(normalize_keypoints(kp[None], box[None])[0], conf, feat[0].astype(np.float32),
                                  detected=detected)
        result.index, result.keypoints, result.confidence, result.box = index, kp, conf, box
        joints = result.joints if result.joints is not None else result.pose3d
        camera = default_camera((h, w), focal=self.focal)
        trans = estimate_translation(joints[None] - joints[None, :1], kp[None],
                                     (conf if detected else np.ones(17, np.float32))[None], camera)[0]
        result.translation = trans
        return result
