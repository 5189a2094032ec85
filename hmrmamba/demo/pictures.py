"""Pictures of the demo's meshes, drawn by the project's rasterizer (:mod:`hmrmamba.render`).

Each video frame becomes a two-panel picture: the frame with the mesh blended over it (camera
translation from :mod:`hmrmamba.demo.camera`), and the same mesh turned 90 degrees about the vertical
axis through its centroid (a side view, on grey). Frames are scaled so that their longer side is at
most ``render_size`` pixels (the intrinsics are scaled with them). A frame without a detection, or
whose translation is unknown, shows the plain frame with a red corner mark and an empty side panel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PanelRenderer", "grid", "render_scale"]

SIDE_BACKGROUND = 200  # grey level of the side-view panel
MARK = (220, 30, 30)   # corner mark of frames without a mesh


def render_scale(image_size: tuple[int, int], render_size: int) -> tuple[float, tuple[int, int]]:
    """image_size (H, W) px, longest side wanted -> (scale <= 1, (h, w) px)."""
    h, w = image_size
    s = min(1.0, float(render_size) / float(max(h, w)))
    return s, (max(1, round(h * s)), max(1, round(w * s)))


class PanelRenderer:
    """``render(frames (n, H, W, 3) uint8, vertices (n, V, 3) camera metres or None rows) -> (n, h, 2w, 3)``."""

    def __init__(self, faces: np.ndarray, camera: np.ndarray, image_size: tuple[int, int], *,
                 vertex_colors: np.ndarray | None = None, render_size: int = 480, chunk: int = 8):
        self.faces = torch.as_tensor(np.asarray(faces, np.int64))
        self.scale, self.size = render_scale(image_size, render_size)
        s = self.scale
        fx, fy, cx, cy = (float(c) for c in camera)
        # pixel centres at integers: x' = (x + 0.5) s - 0.5
        self.camera = torch.tensor([fx * s, fy * s, (cx + 0.5) * s - 0.5, (cy + 0.5) * s - 0.5])
        self.colors = None if vertex_colors is None else torch.as_tensor(vertex_colors, dtype=torch.float32)
        self.chunk = chunk

    def resize(self, frames: np.ndarray) -> torch.Tensor:
        """frames (n, H, W, 3) uint8 -> (n, h, w, 3) uint8 (antialiased when shrinking)."""
        x = torch.as_tensor(np.ascontiguousarray(frames))
        if tuple(x.shape[1:3]) == self.size:
            return x
        y = F.interpolate(x.permute(0, 3, 1, 2).float(), size=self.size, mode="bilinear", antialias=True,
                          align_corners=False)
        return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def render(self, frames: np.ndarray, vertices: Sequence[np.ndarray | None]) -> np.ndarray:
        """frames (n, H, W, 3) uint8, vertices: n items of (V, 3) camera-frame metres or None -> (n, h, 2w, 3)."""
        from hmrmamba.render.raster import overlay, side_view

        small = self.resize(frames)
        n = small.shape[0]
        h, w = self.size
        side = torch.full((n, h, w, 3), SIDE_BACKGROUND, dtype=torch.uint8)
        front = small.clone()
        have = [i for i, v in enumerate(vertices) if v is not None and np.isfinite(v).all()]
        for lo in range(0, len(have), self.chunk):
            idx = have[lo:lo + self.chunk]
            verts = torch.as_tensor(np.stack([vertices[i] for i in idx]), dtype=torch.float32)
            cam = self.camera.expand(len(idx), 4)
            kw = {"vertex_colors": self.colors, "cull_backfaces": True}
            front[idx] = overlay(small[idx], verts, self.faces, cam, alpha=0.7, **kw)
            bg = torch.full((len(idx), h, w, 3), SIDE_BACKGROUND, dtype=torch.uint8)
            side[idx] = side_view(verts, self.faces, cam, angle_deg=90.0, image_size=(h, w), background=bg,
                                  **kw).image
        missing = sorted(set(range(n)) - set(have))
        if missing:
            m = max(3, min(h, w) // 20)
            front[missing, :m, :m] = torch.tensor(MARK, dtype=torch.uint8)
        return torch.cat([front, side], dim=2).numpy()


def grid(images: np.ndarray, *, columns: int = 4, gutter: int = 4, fill: int = 255) -> np.ndarray:
    """images (n, h, w, 3) uint8 -> one (rows*(h+g)-g, columns*(w+g)-g, 3) uint8 picture, row by row."""
    n, h, w, _ = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    out = np.full((rows * (h + gutter) - gutter, columns * (w + gutter) - gutter, 3), fill, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        out[r * (h + gutter):r * (h + gutter) + h, c * (w + gutter):c * (w + gutter) + w] = images[i]
    return out
