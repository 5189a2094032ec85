"""Square person crops from 2D keypoints, and batched crop-and-resize with ``grid_sample``.

Coordinates are pixels with the centre of pixel (row i, column j) at (x=j, y=i), the usual
keypoint convention. A box row is ``(cx, cy, w, h)`` (VIBE's layout; the boxes made here are
square, ``w == h``) and covers ``[cx - w/2, cx + w/2] x [cy - h/2, cy + h/2]``. The S x S crop
tiles that rectangle exactly, so image point ``x`` lands at crop pixel ``(x - cx + w/2) * S/w - 0.5``
(:func:`keypoints_to_crop`). Outside the image the crop is black (zero padding in pixel space, as
SPIN pads), then everything is ImageNet-normalised.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hmrmamba.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(int(image_size[0]), int(image_size[1])) < 1:
        raise InputError(f"got {image_size!r}", field="image_size", expected="(height, width) in pixels, both >= 1")
    return int(image_size[0]), int(image_size[1])


def smooth_boxes(boxes: np.ndarray, *, sigma: float) -> np.ndarray:
    """boxes: (N, 4) cx, cy, w, h pixels (frames in time order) -> (N, 4) Gaussian-smoothed along N.

    Edges are handled by replicating the first/last box; ``sigma`` is in frames (0: no change).
    Smooth one sequence at a time: the frames must be consecutive.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if sigma < 0:
        raise InputError(f"sigma={sigma}", field="sigma", expected="a value >= 0 (frames)")
    if sigma == 0 or len(boxes) < 2:
        return boxes.astype(np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.concatenate([np.repeat(boxes[:1], radius, 0), boxes, np.repeat(boxes[-1:], radius, 0)])
    out = np.stack([np.convolve(padded[:, c], taps, mode="valid") for c in range(boxes.shape[1])], axis=1)
    return out.astype(np.float32)


def bbox_from_keypoints(kp2d: np.ndarray, conf: np.ndarray | None, *, image_size: tuple[int, int],
                        scale: float = 1.2, conf_threshold: float = 0.3, min_joints: int = 2,
                        min_size: float = 16.0, smooth_sigma: float = 0.0) -> np.ndarray:
    """kp2d: (N, J, 2) pixels, conf: (N, J) or None -> boxes (N, 4) float32: cx, cy, w, h pixels, w == h.

    Each box is the square around the confident joints (``conf >= conf_threshold`` and finite),
    ``scale`` times the larger side, at least ``min_size`` pixels. A frame with fewer than
    ``min_joints`` confident joints reuses the previous frame's box, or the whole-image square
    (``image_size = (height, width)``) when there is none. ``smooth_sigma > 0`` then smooths the
    boxes over time (see :func:`smooth_boxes`; pass one sequence at a time).
    """
    height, width = _check_image_size(image_size)
    kp = np.asarray(kp2d, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 2:
        raise InputError(f"got shape {kp.shape}", field="kp2d", expected="(N, J, 2) pixel coordinates")
    if scale <= 0 or min_size <= 0 or min_joints < 1:
        raise InputError(f"scale={scale}, min_size={min_size}, min_joints={min_joints}",
                         field="scale/min_size/min_joints", expected="positive values")
    valid = np.isfinite(kp).all(axis=2)
    if conf is not None:
        c = np.asarray(conf, dtype=np.float64)
        if c.shape != kp.shape[:2]:
            raise InputError(f"got shape {c.shape}", field="conf", expected=f"{kp.shape[:2]} matching kp2d")
        valid &= np.nan_to_num(c, nan=-np.inf) >= conf_threshold
    side = float(max(height, width))
    whole = np.array([(width - 1) / 2.0, (height - 1) / 2.0, side, side])
    boxes = np.empty((kp.shape[0], 4), dtype=np.float64)
    previous = whole
    for n in range(kp.shape[0]):
        pts = kp[n][valid[n]]
        if len(pts) >= min_joints:
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            centre = (lo + hi) / 2.0
            size = max(float((hi - lo).max()) * scale, min_size)
            previous = np.array([centre[0], centre[1], size, size])
        boxes[n] = previous
    return smooth_boxes(boxes, sigma=smooth_sigma) if smooth_sigma > 0 else boxes.astype(np.float32)


def keypoints_to_crop(kp2d: np.ndarray, boxes: np.ndarray, *, out_size: int) -> np.ndarray:
    """kp2d: (N, J, 2) image pixels, boxes: (N, 4) -> (N, J, 2) pixel coordinates in the S x S crop."""
    kp = np.asarray(kp2d, dtype=np.float64)
    b = np.asarray(boxes, dtype=np.float64)
    origin = b[:, None, 0:2] - b[:, None, 2:4] / 2.0
    return ((kp - origin) * (out_size / b[:, None, 2:4]) - 0.5).astype(np.float32)


def crop_grid(boxes: torch.Tensor, *, out_size: int, image_size: tuple[int, int]) -> torch.Tensor:
    """boxes: (N, 4) pixels -> grid (N, S, S, 2) in ``grid_sample`` units (align_corners=False)."""
    height, width = _check_image_size(image_size)
    b = boxes.to(torch.float64)
    steps = (torch.arange(out_size, dtype=torch.float64, device=b.device) + 0.5) / out_size  # (S,)
    x = b[:, 0:1] - b[:, 2:3] / 2.0 + steps[None] * b[:, 2:3]  # (N, S) image pixels
    y = b[:, 1:2] - b[:, 3:4] / 2.0 + steps[None] * b[:, 3:4]
    gx = (2.0 * x + 1.0) / width - 1.0
    gy = (2.0 * y + 1.0) / height - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return grid.to(torch.float32)


def crop_and_resize(images: np.ndarray | torch.Tensor, boxes: np.ndarray | torch.Tensor, *, out_size: int,
                    normalize: bool = True, supersample: int = 1, device: str | torch.device = "cpu",
                    max_chunk_bytes: int = 256 * 2**20) -> torch.Tensor:
    """images: (N, H, W, 3) uint8 RGB, boxes: (N, 4) cx, cy, w, h pixels -> (N, 3, S, S) float32 crops.

    Bilinear sampling (``grid_sample``, align_corners=False) of ``supersample**2`` points per output
    pixel, averaged (``supersample > 1`` anti-aliases strong downscaling); outside the image is
    black; with ``normalize`` the result is ``(rgb/255 - mean) / std`` with ImageNet statistics.
    Images are converted to float ``max_chunk_bytes`` at a time. The result is ``channels_last``.
    """
    img = torch.as_tensor(images)
    if img.ndim != 4 or img.shape[-1] != 3 or img.dtype != torch.uint8:
        raise InputError(f"got shape {tuple(img.shape)} dtype {img.dtype}", field="images",
                         expected="(N, H, W, 3) uint8 RGB")
    bx = boxes if torch.is_tensor(boxes) else torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    if tuple(bx.shape) != (img.shape[0], 4):
        raise InputError(f"got shape {tuple(bx.shape)}", field="boxes", expected=f"({img.shape[0]}, 4)")
    if not bool(torch.isfinite(bx).all()) or bool((bx[:, 2:4] <= 0).any()):
        raise InputError("non-finite or non-positive box", field="boxes", expected="finite cx, cy and w, h > 0")
    if out_size < 1 or supersample < 1:
        raise InputError(f"out_size={out_size}, supersample={supersample}", field="out_size/supersample",
                         expected="integers >= 1")
    n, height, width = img.shape[:3]
    per_chunk = max(1, int(max_chunk_bytes // max(1, height * width * 3 * 4)))
    grid = crop_grid(bx.to(device), out_size=out_size * supersample, image_size=(height, width))
    parts = []
    for start in range(0, n, per_chunk):
        # (n, H, W, 3) -> (n, 3, H, W) view in channels_last layout, scaled to [0, 1] before sampling.
        src = img[start:start + per_chunk].to(device).permute(0, 3, 1, 2).to(torch.float32).mul_(1.0 / 255.0)
        out = F.grid_sample(src, grid[start:start + per_chunk], mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        if supersample > 1:
            out = F.avg_pool2d(out, supersample)
        parts.append(out)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, device=out.device).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=out.device).reshape(1, 3, 1, 1)
        out = (out - mean) / std
    return out.contiguous(memory_format=torch.channels_last)
