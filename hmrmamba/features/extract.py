"""Per-frame ResNet-50 features of person crops, streamed in batches.

Frames come from an in-memory array, anything sliceable with a ``shape`` (an ``h5py.Dataset``
is read ``batch_size`` frames at a time, never whole), or an iterable of frames / frame chunks.
The model is copied, put in eval mode, BN-fused and switched to ``channels_last`` (the caller's
model is not modified); features are returned as float16.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hmrmamba.errors import InputError
from hmrmamba.features.crops import bbox_from_keypoints, crop_and_resize
from hmrmamba.features.resnet import MAP_CHANNELS, ResNet50

FP16_MAX = float(np.finfo(np.float16).max)


def prepare_model(model: ResNet50, *, device: str | torch.device = "cpu") -> ResNet50:
    """A BN-fused, eval-mode, channels_last copy of ``model`` on ``device`` for inference."""
    net = copy.deepcopy(model).eval()
    net.fuse_bn()
    return net.to(device=device, memory_format=torch.channels_last)


def _read_slice(images: Any, start: int, stop: int) -> np.ndarray:
    """``images[start:stop]`` as an array; a damaged stored slice (h5py's ``OSError`` "filter returned
    failure" for a corrupt compressed chunk) is an :class:`InputError` naming the file and dataset."""
    try:
        return np.asarray(images[start:stop])
    except OSError as exc:
        h5file = getattr(getattr(images, "file", None), "filename", None)
        field = str(getattr(images, "name", None) or "images").lstrip("/")
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"frames {start}..{stop - 1} cannot be read ({detail})", file=h5file, field=field,
                         expected="intact stored frames; the file is corrupt — re-run the stage that "
                                  "wrote it") from None


def _frame_batches(images: Any, num_frames: int, batch_size: int) -> Iterator[np.ndarray]:
    """Yield (b, H, W, 3) uint8 batches covering exactly ``num_frames`` frames."""
    if hasattr(images, "shape") and hasattr(images, "__getitem__"):
        if len(images.shape) != 4 or images.shape[0] != num_frames or images.shape[-1] != 3:
            raise InputError(f"got shape {tuple(images.shape)}", field="images",
                             expected=f"({num_frames}, H, W, 3) uint8 frames, one per keypoint row")
        for start in range(0, num_frames, batch_size):
            yield _read_slice(images, start, min(start + batch_size, num_frames))
        return
    buffer: list[np.ndarray] = []
    buffered = 0
    seen = 0
    for item in images:
        arr = np.asarray(item)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InputError(f"an item has shape {arr.shape}", field="images",
                             expected="(H, W, 3) frames or (n, H, W, 3) chunks")
        seen += arr.shape[0]
        if seen > num_frames:
            raise InputError(f"more than {num_frames} frames", field="images", expected=f"{num_frames} frames")
        buffer.append(arr)
        buffered += arr.shape[0]
        while buffered >= batch_size:
            cat = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
            yield cat[:batch_size]
            buffer, buffered = ([cat[batch_size:]], buffered - batch_size) if buffered > batch_size else ([], 0)
    if buffered:
        yield np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
    if seen != num_frames:
        raise InputError(f"got {seen} frames", field="images", expected=f"{num_frames} frames, one per keypoint row")


def iter_features(images: Any, boxes: np.ndarray, *, model: ResNet50, crop_size: int = 224,
                  batch_size: int = 16, keep_spatial: bool = False, device: str | torch.device = "cpu",
                  progress: bool = True, supersample: int = 1, prepared: bool = False,
                  map_layer: str = "layer4") -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield (start, features (b, 2048) float16, spatial (b, C, h, w) float16 or None) per batch.

    ``images``: (N, H, W, 3) uint8 array / h5py dataset / iterable; ``boxes``: (N, 4) cx, cy, w, h.
    ``prepared=True`` uses ``model`` as is (already from :func:`prepare_model`); ``map_layer``:
    which stage's map ``spatial`` is (:data:`hmrmamba.features.resnet.MAP_CHANNELS`).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"got shape {boxes.shape}", field="boxes", expected="(N, 4) cx, cy, w, h")
    if batch_size < 1 or crop_size < 32:
        raise InputError(f"batch_size={batch_size}, crop_size={crop_size}", field="batch_size/crop_size",
                         expected="batch_size >= 1 and crop_size >= 32")
    num_frames = boxes.shape[0]
    net = model if prepared else prepare_model(model, device=device)
    start = 0
    with tqdm(total=num_frames, desc="features", unit="frame", disable=not progress, leave=False) as bar:
        for frames in _frame_batches(images, num_frames, batch_size):
            if frames.dtype != np.uint8:
                raise InputError(f"got dtype {frames.dtype}", field="images", expected="uint8 RGB frames")
            n = frames.shape[0]
            # inference mode only around the compute, never across the yield (it is thread state).
            with torch.inference_mode():
                crops = crop_and_resize(frames, boxes[start:start + n], out_size=crop_size,
                                        supersample=supersample, device=device)
                pooled, spatial = net.forward_features(crops, map_layer=map_layer)
                largest = float((spatial if keep_spatial else pooled).abs().max())
                if not np.isfinite(largest) or largest > FP16_MAX:
                    raise InputError(f"frames {start}..{start + n - 1} give non-finite or fp16-overflowing "
                                     f"features (max |x| = {largest:.3g})", field="features",
                                     expected="finite values below 65504 (check the weights)")
                feats = pooled.to(torch.float16).cpu().numpy()
                spat = spatial.to(torch.float16).contiguous().cpu().numpy() if keep_spatial else None
            yield start, feats, spat
            start += n
            bar.update(n)


def extract_features(images: Any, kp2d: np.ndarray | None, conf: np.ndarray | None, *, model: ResNet50,
                     crop_size: int = 224, batch_size: int = 16, keep_spatial: bool = False,
                     device: str | torch.device = "cpu", progress: bool = True, boxes: np.ndarray | None = None,
                     bbox_scale: float = 1.2, conf_threshold: float = 0.3, supersample: int = 1,
                     image_size: tuple[int, int] | None = None, map_layer: str = "layer4") -> dict[str, np.ndarray]:
    """images: (N, H, W, 3) uint8 (array, h5py dataset or iterable), kp2d: (N, J, 2) px, conf: (N, J)
    -> {'features': (N, 2048) float16, 'boxes': (N, 4) float32 cx, cy, w, h[, 'spatial': (N, C, h, w) float16]}.

    Boxes come from :func:`bbox_from_keypoints` (``bbox_scale``, ``conf_threshold``) unless ``boxes``
    is given (e.g. smoothed per sequence); ``image_size`` (H, W) is needed only for an iterable of
    frames without ``boxes``. Deterministic for a given model, input and device.
    """
    if boxes is None:
        if kp2d is None:
            raise InputError("neither kp2d nor boxes given", field="kp2d", expected="(N, J, 2) keypoints or boxes")
        shape = getattr(images, "shape", None)
        if image_size is None and (shape is None or len(shape) != 4):
            raise InputError("image size unknown for an iterable of frames", field="images",
                             expected="an array/h5py dataset (N, H, W, 3), or pass image_size= or boxes=")
        size = image_size if image_size is not None else (int(shape[1]), int(shape[2]))
        boxes = bbox_from_keypoints(kp2d, conf, image_size=size, scale=bbox_scale, conf_threshold=conf_threshold)
    boxes = np.asarray(boxes, dtype=np.float32)
    feats: list[np.ndarray] = []
    spats: list[np.ndarray] = []
    for _, f, s in iter_features(images, boxes, model=model, crop_size=crop_size, batch_size=batch_size,
                                 keep_spatial=keep_spatial, device=device, progress=progress,
                                 supersample=supersample, map_layer=map_layer):
        feats.append(f)
        if s is not None:
            spats.append(s)
    out = {"features": np.concatenate(feats) if feats else np.zeros((0, 2048), np.float16), "boxes": boxes}
    if keep_spatial:
        out["spatial"] = np.concatenate(spats) if spats else np.zeros((0, MAP_CHANNELS[map_layer], 0, 0), np.float16)
    return out

