"""A vectorised z-buffer triangle rasterizer with Lambert shading, in plain PyTorch (no OpenGL).

Conventions
-----------
* Camera frame: x right, y down, z forward, metres. Pinhole intrinsics per batch item
  ``camera = (fx, fy, cx, cy)`` in pixels: a point ``(X, Y, Z)`` lands at
  ``u = fx * X / Z + cx``, ``v = fy * Y / Z + cy``.
* Pixel ``(row, col)`` has its centre at ``(u, v) = (col, row)`` (OpenCV convention), so a
  vertex projecting to ``(u, v)`` is drawn in pixel ``(round(v), round(u))``.
* A triangle covers a pixel when the pixel centre lies inside it (edges inclusive, with a
  tiny tolerance so that neighbouring triangles leave no cracks).
* Triangles with any vertex at ``z <= near`` are culled whole; triangles partly outside the
  frame are clipped to it.

Method
------
Every triangle enumerates exactly the pixel centres of its clipped screen bounding box
(``repeat_interleave`` over the per-triangle counts: no padding, no Python loop over
triangles or pixels). Each candidate gets screen-space barycentrics from per-triangle affine
coefficients; inside candidates are packed into one int64 key
``(float32 bits of depth) << 32 | face`` and resolved with ``scatter_reduce(amin)``: the
nearest face wins, ties go to the lower face index, whatever the face order. Positive float32
bit patterns order like the floats, so the key order is the depth order. Depth is the exact
plane depth along the ray through the pixel centre (``1/z`` is affine in screen space), and
attributes use perspective-correct barycentrics. Shading is ``ambient + diffuse * max(0,
n . l)`` with smooth (interpolated vertex) or flat normals, two-sided: a face seen from behind
is lit with its normal flipped towards the camera.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hmrmamba.errors import InputError

__all__ = [
    "DEFAULT_COLOR",
    "DEFAULT_LIGHT_DIR",
    "Fragments",
    "RenderOutput",
    "overlay",
    "rasterize",
    "render_mesh",
    "rotate_about_vertical",
    "side_view",
]

#: Direction from the surface towards the light in the camera frame (up-left-behind the camera).
DEFAULT_LIGHT_DIR: tuple[float, float, float] = (0.4, -0.6, -1.0)
#: Mesh colour when no vertex colours are given (RGB in [0, 1]).
DEFAULT_COLOR: tuple[float, float, float] = (0.78, 0.74, 0.70)

_EMPTY_KEY = torch.iinfo(torch.int64).max
_FACE_BITS = 0xFFFFFFFF
_INSIDE_TOL = 1e-5  # barycentric tolerance: closes cracks between neighbouring triangles


@dataclass
class Fragments:
    """Per-pixel rasterization result. All (B, H, W[, 3])."""

    face_index: torch.Tensor  # (B, H, W) long, -1 where no face covers the pixel
    depth: torch.Tensor  # (B, H, W) float32 metres, +inf where empty
    bary: torch.Tensor  # (B, H, W, 3) float32 perspective-correct barycentrics, 0 where empty

    @property
    def mask(self) -> torch.Tensor:
        return self.face_index >= 0


@dataclass
class RenderOutput:
    """Rendered frames. Supports ``out["image"]`` as well as ``out.image``."""

    image: torch.Tensor  # (B, H, W, 3) uint8
    depth: torch.Tensor  # (B, H, W) float32 metres, +inf background
    mask: torch.Tensor  # (B, H, W) bool, True where the mesh is visible
    face_index: torch.Tensor  # (B, H, W) long, -1 background

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


# ----------------------------------------------------------------------------------------------
# input checks


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise InputError(f"got {image_size!r}", field="image_size",
                         expected="a pair of positive ints (H, W)") from None
    if h <= 0 or w <= 0 or h * w > 1 << 26:
        raise InputError(f"got {(h, w)}", field="image_size",
                         expected="positive (H, W) with H*W <= 2**26")
    return h, w


def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 3 or vertices.shape[-1] != 3:
        shape = tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices)
        raise InputError(f"got shape {shape}", field="vertices",
                         expected="a float tensor of shape (B, V, 3) in metres, camera frame")
    if not vertices.is_floating_point():
        raise InputError(f"got dtype {vertices.dtype}", field="vertices",
                         expected="a float tensor of shape (B, V, 3)")
    b, v = vertices.shape[:2]
    if b == 0 or v == 0:
        raise InputError(f"got shape {tuple(vertices.shape)}", field="vertices",
                         expected="(B, V, 3) with B >= 1 and V >= 1")
    if not bool(torch.isfinite(vertices).all()):
        raise InputError("contains NaN or inf", field="vertices",
                         expected="finite values, shape (B, V, 3)")
    if (not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[-1] != 3
            or faces.is_floating_point() or faces.dtype == torch.bool or faces.shape[0] == 0):
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces)
        dtype = faces.dtype if isinstance(faces, torch.Tensor) else None
        raise InputError(f"got shape {shape}, dtype {dtype}", field="faces",
                         expected="an integer tensor of shape (F, 3) with F >= 1")
    if int(faces.min()) < 0 or int(faces.max()) >= v:
        raise InputError(f"indices span [{int(faces.min())}, {int(faces.max())}]", field="faces",
                         expected=f"vertex indices in [0, {v - 1}] for V={v} vertices")
    if not isinstance(camera, torch.Tensor):
        camera = torch.as_tensor(camera, dtype=torch.float32, device=vertices.device)
    if camera.ndim == 1:
        camera = camera.unsqueeze(0).expand(b, -1)
    if camera.shape != (b, 4):
        raise InputError(f"got shape {tuple(camera.shape)}", field="camera",
                         expected=f"(B, 4) = ({b}, 4) as fx, fy, cx, cy in pixels, or (4,)")
    camera = camera.to(device=vertices.device, dtype=torch.float32)
    if not bool(torch.isfinite(camera).all()) or bool((camera[:, :2] <= 0).any()):
        raise InputError("has non-finite values or non-positive focal length", field="camera",
                         expected="finite (B, 4) fx, fy, cx, cy with fx, fy > 0")
    return vertices.to(torch.float32), faces.to(device=vertices.device, dtype=torch.long), camera


def _check_colors(vertex_colors: torch.Tensor | None, b: int, v: int, device: torch.device
                  ) -> torch.Tensor:
    if vertex_colors is None:
        return torch.tensor(DEFAULT_COLOR, device=device).expand(b, v, 3)
    c = torch.as_tensor(vertex_colors, device=device)
    if c.ndim == 2:
        c = c.unsqueeze(0).expand(b, -1, -1)
    if c.shape != (b, v, 3) or not c.is_floating_point():
        raise InputError(f"got shape {tuple(c.shape)}, dtype {c.dtype}", field="vertex_colors",
                         expected=f"float RGB in [0, 1] of shape (V, 3) or (B, V, 3) = ({b}, {v}, 3)")
    if not bool(torch.isfinite(c).all()):
        raise InputError("contains NaN or inf", field="vertex_colors",
                         expected="finite RGB in [0, 1]")
    return c.to(torch.float32).clamp(0.0, 1.0)


def _check_background(background: torch.Tensor | None, b: int, h: int, w: int,
                      device: torch.device) -> torch.Tensor:
    if background is None:
        return torch.zeros(b, h, w, 3, dtype=torch.uint8, device=device)
    bg = torch.as_tensor(background, device=device)
    if bg.ndim == 3:
        bg = bg.unsqueeze(0).expand(b, -1, -1, -1)
    if bg.shape != (b, h, w, 3) or bg.dtype != torch.uint8:
        raise InputError(f"got shape {tuple(bg.shape)}, dtype {bg.dtype}", field="background",
                         expected=f"uint8 of shape (H, W, 3) or (B, H, W, 3) = ({b}, {h}, {w}, 3)")
    return bg


def _check_light(light_dir: Sequence[float] | torch.Tensor, b: int, device: torch.device
                 ) -> torch.Tensor:
    light = torch.as_tensor(light_dir, dtype=torch.float32, device=device)
    if light.ndim == 1:
        light = light.unsqueeze(0).expand(b, -1)
    if light.shape != (b, 3) or not bool(torch.isfinite(light).all()):
        raise InputError(f"got shape {tuple(light.shape)}", field="light_dir",
                         expected=f"finite (3,) or (B, 3) = ({b}, 3), direction towards the light")
    norm = light.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-12).any()):
        raise InputError("has zero length", field="light_dir", expected="a non-zero 3-vector")
    return light / norm


# ----------------------------------------------------------------------------------------------
# rasterization


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of x at index (``index_select`` on dim 0: several times faster than ``x[index]``)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def _triangle_setup(vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor,
                    height: int, width: int, near: float, cull_backfaces: bool):
    """Bounding boxes and affine coefficients of the triangles that can cover a pixel centre.

    Returns (tri, coef, boxes): tri (T,) flat ``batch * F + face`` ids; coef (T, 9) =
    x0, y0, A1, B1, A2, B2, 1/z0, 1/z1 - 1/z0, 1/z2 - 1/z0 with b1 = A1 (x - x0) + B1 (y - y0),
    b2 = A2 (x - x0) + B2 (y - y0), 1/z = 1/z0 + b1 d1 + b2 d2; boxes (T, 4) long = box origin
    x, y, box width and candidate count (> 0).
    """
    b, v = vertices.shape[:2]
    f = faces.shape[0]
    z = vertices[..., 2]
    inv_z = 1.0 / z.clamp_min(near)  # (B, V)
    u = camera[:, None, 0] * vertices[..., 0] * inv_z + camera[:, None, 2]
    w = camera[:, None, 1] * vertices[..., 1] * inv_z + camera[:, None, 3]
    # a vertex at z <= near poisons its triangles: NaN fails every comparison below
    u = u.masked_fill(z <= near, math.nan)
    uvz = torch.stack([u, w, inv_z], dim=-1).view(b * v, 3)  # per-vertex table
    tri_uv = torch.stack([u, w], dim=-1).index_select(1, faces.view(-1)).view(b, f, 3, 2)
    tu, tv = tri_uv[..., 0], tri_uv[..., 1]
    area2 = ((tu[..., 1] - tu[..., 0]) * (tv[..., 2] - tv[..., 0])
             - (tu[..., 2] - tu[..., 0]) * (tv[..., 1] - tv[..., 0]))  # > 0: seen from behind
    keep = (area2 < -1e-9) if cull_backfaces else (area2.abs() > 1e-9)
    # pixel centres inside the bounding box, clipped to the frame (clamp floats before casting)
    u_min, u_max = torch.aminmax(tu.clamp(-1.0, width), dim=-1)
    v_min, v_max = torch.aminmax(tv.clamp(-1.0, height), dim=-1)
    x_lo = u_min.ceil_().clamp_min_(0)
    y_lo = v_min.ceil_().clamp_min_(0)
    box_w = (u_max.floor_().clamp_max_(width - 1) - x_lo + 1).clamp_min_(0)
    box_h = (v_max.floor_().clamp_max_(height - 1) - y_lo + 1).clamp_min_(0)
    counts = (box_w * box_h).masked_fill_(~keep, 0).view(-1)
    tri = torch.nonzero(counts > 0).squeeze(1)
    boxes = torch.stack([_take(x_lo.view(-1), tri), _take(y_lo.view(-1), tri),
                         _take(box_w.view(-1), tri), _take(counts, tri)], dim=-1).long()
    batch = torch.div(tri, f, rounding_mode="floor")
    corner = _take(faces, tri - batch * f) + (batch * v)[:, None]  # (T, 3) rows of uvz
    ta = _take(uvz, corner)  # (T, 3, 3)
    eu1, ev1 = ta[:, 1, 0] - ta[:, 0, 0], ta[:, 1, 1] - ta[:, 0, 1]
    eu2, ev2 = ta[:, 2, 0] - ta[:, 0, 0], ta[:, 2, 1] - ta[:, 0, 1]
    inv_area = 1.0 / _take(area2.view(-1), tri)
    iz = ta[..., 2]
    coef = torch.stack([ta[:, 0, 0], ta[:, 0, 1], ev2 * inv_area, -eu2 * inv_area,
                        -ev1 * inv_area, eu1 * inv_area, iz[:, 0], iz[:, 1] - iz[:, 0],
                        iz[:, 2] - iz[:, 0]], dim=-1)
    return tri, coef, boxes


def _barycentric(coef: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
    """coef: (N, 9) per-candidate triangle coefficients, px/py: (N,) -> b0, b1, b2, 1/z (N,)."""
    dx = px - coef[:, 0]
    dy = py - coef[:, 1]
    b1 = coef[:, 2] * dx + coef[:, 3] * dy
    b2 = coef[:, 4] * dx + coef[:, 5] * dy
    b0 = 1.0 - b1 - b2
    inv_z = coef[:, 6] + b1 * coef[:, 7] + b2 * coef[:, 8]
    return b0, b1, b2, inv_z


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor, *,
              image_size: Sequence[int] = (128, 128), near: float = 0.05,
              cull_backfaces: bool = False, max_candidates: int = 1 << 21) -> Fragments:
    """Z-buffer rasterization. vertices: (B, V, 3) metres camera frame, faces: (F, 3), camera: (B, 4).

    Returns :class:`Fragments` (face index, depth, perspective-correct barycentrics per pixel).
    ``max_candidates`` bounds the pixel candidates processed at once (memory), not the result.
    """
    height, width = _check_image_size(image_size)
    vertices, faces, camera = _check_mesh(vertices, faces, camera)
    return _rasterize(vertices, faces, camera, height, width, _check_near(near),
                      cull_backfaces, max_candidates)


def _check_near(near: float) -> float:
    if isinstance(near, bool) or not isinstance(near, (int, float)) or not (
            math.isfinite(near) and near > 0):
        raise InputError(f"got {near!r}", field="near", expected="a positive float in metres")
    return float(near)


def _rasterize(vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor, height: int,
               width: int, near: float, cull_backfaces: bool, max_candidates: int) -> Fragments:
    """Unchecked :func:`rasterize` on validated float32 inputs."""
    b, f = vertices.shape[0], faces.shape[0]
    device = vertices.device
    tri, coef, boxes = _triangle_setup(vertices, faces, camera, height, width, near,
                                       cull_backfaces)
    counts = boxes[:, 3]
    zbuf = torch.full((b * height * width,), _EMPTY_KEY, dtype=torch.int64, device=device)
    if tri.numel() > 0:
        # split the triangle list so that each chunk has about max_candidates candidates
        ends = counts.cumsum(0)
        total = int(ends[-1])
        n_chunks = max(1, -(-total // max(1, int(max_candidates))))
        bounds = torch.searchsorted(ends, torch.arange(1, n_chunks, device=device)
                                    * (total // n_chunks))
        cuts = [0, *sorted({int(c) + 1 for c in bounds}), tri.numel()]
        for lo, hi in itertools.pairwise(cuts):
            if hi > lo:
                _rasterize_chunk(zbuf, lo, counts[lo:hi], tri, coef, boxes, f, height, width)
    found = zbuf != _EMPTY_KEY
    face_flat = (zbuf & _FACE_BITS).masked_fill_(~found, -1)
    depth = (zbuf >> 32).to(torch.int32).view(torch.float32).masked_fill(~found, math.inf)
    bary = torch.zeros(b * height * width, 3, device=device)
    pix = torch.nonzero(found).squeeze(1)
    if pix.numel() > 0:
        lut = torch.full((b * f,), -1, dtype=torch.long, device=device)
        lut[tri] = torch.arange(tri.numel(), device=device)
        batch = torch.div(pix, height * width, rounding_mode="floor")
        rem = pix - batch * (height * width)
        row = torch.div(rem, width, rounding_mode="floor")
        c = _take(coef, _take(lut, batch * f + _take(face_flat, pix)))
        b0, b1, b2, _ = _barycentric(c, (rem - row * width).to(torch.float32),
                                     row.to(torch.float32))
        inv_z = torch.stack([c[:, 6], c[:, 6] + c[:, 7], c[:, 6] + c[:, 8]], dim=-1)
        wts = torch.stack([b0, b1, b2], dim=-1).clamp_min_(0.0) * inv_z  # b_i / z_i
        bary.index_copy_(0, pix, wts / wts.sum(-1, keepdim=True).clamp_min(1e-20))
    return Fragments(face_index=face_flat.view(b, height, width),
                     depth=depth.view(b, height, width),
                     bary=bary.view(b, height, width, 3))


def _rasterize_chunk(zbuf: torch.Tensor, lo: int, counts: torch.Tensor, tri: torch.Tensor,
                     coef: torch.Tensor, boxes: torch.Tensor, num_faces: int, height: int,
                     width: int) -> None:
    """Test the bounding-box pixels of triangles lo .. lo + len(counts) and min-reduce into zbuf."""
    n = int(counts.sum())
    device = zbuf.device
    cand = torch.repeat_interleave(torch.arange(lo, lo + counts.numel(), device=device), counts,
                                   output_size=n)  # triangle (setup index) of each candidate
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts, output_size=n)
    offset = torch.arange(n, device=device) - starts
    box = _take(boxes, cand)
    bw = box[:, 2]
    row = torch.div(offset, bw, rounding_mode="floor")
    px = box[:, 0] + (offset - row * bw)
    py = box[:, 1] + row
    b0, b1, b2, inv_z = _barycentric(_take(coef, cand), px.to(torch.float32),
                                     py.to(torch.float32))
    inside = (b0 >= -_INSIDE_TOL) & (b1 >= -_INSIDE_TOL) & (b2 >= -_INSIDE_TOL) & (inv_z > 0)
    sel = torch.nonzero(inside).squeeze(1)
    flat = _take(tri, _take(cand, sel))
    batch = torch.div(flat, num_faces, rounding_mode="floor")
    face = flat - batch * num_faces
    key = ((1.0 / _take(inv_z, sel)).view(torch.int32).to(torch.int64) << 32) | face
    pixel = (batch * height + _take(py, sel)) * width + _take(px, sel)
    zbuf.scatter_reduce_(0, pixel, key, reduce="amin", include_self=True)


# ----------------------------------------------------------------------------------------------
# shading


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """vertices: (B, V, 3), faces: (F, 3) -> unit area-weighted vertex normals (B, V, 3)."""
    b, v = vertices.shape[:2]
    table = vertices.permute(1, 0, 2).reshape(v, b * 3)  # (V, B*3): whole-row gathers and adds
    tri = _take(table, faces).view(-1, 3, b, 3)  # (F, 3, B, 3)
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).reshape(-1, b * 3)
    vn = vertices.new_zeros(v, b * 3)
    for k in range(3):
        vn.index_add_(0, faces[:, k], fn)
    vn = vn.view(v, b, 3).permute(1, 0, 2)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _shade(frags: Fragments, vertices: torch.Tensor, faces: torch.Tensor,
           colors: torch.Tensor, background: torch.Tensor, light: torch.Tensor,
           ambient: float, diffuse: float, smooth: bool) -> torch.Tensor:
    """Lambert + ambient shading of the visible pixels composited over background -> uint8."""
    b, h, w = frags.face_index.shape
    image = background.reshape(b * h * w, 3).clone()
    face_flat = frags.face_index.reshape(-1)
    pix = torch.nonzero(face_flat >= 0).squeeze(1)
    if pix.numel() == 0:
        return image.view(b, h, w, 3)
    batch = torch.div(pix, h * w, rounding_mode="floor")
    nv = vertices.shape[1]
    vid = _take(faces, _take(face_flat, pix)) + (batch * nv)[:, None]  # (P, 3) rows of (B*V)
    bary = _take(frags.bary.reshape(-1, 3), pix).unsqueeze(-1)  # (P, 3, 1)
    table = [vertices, colors] + ([_vertex_normals(vertices, faces)] if smooth else [])
    corner = _take(torch.cat(table, dim=-1).reshape(b * nv, -1), vid)  # (P, 3, 6 or 9)
    attr = torch.bmm(bary.transpose(1, 2), corner).squeeze(1)  # (P, 6 or 9) interpolated
    tri = corner[..., 0:3]
    face_n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    normal = attr[:, 6:9] if smooth else face_n
    # two-sided lighting: a face seen from its back is lit as if it faced the camera
    flip = (face_n * tri[:, 0]).sum(-1, keepdim=True) > 0
    normal = torch.where(flip, -normal, normal)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lambert = (normal * _take(light, batch)).sum(-1, keepdim=True).clamp_min(0.0)
    color = attr[:, 3:6]
    rgb = (color * (ambient + diffuse * lambert)).clamp(0.0, 1.0)
    image.index_copy_(0, pix, (rgb * 255.0 + 0.5).to(torch.uint8))
    return image.view(b, h, w, 3)


def render_mesh(vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor, *,
                image_size: Sequence[int] = (128, 128),
                vertex_colors: torch.Tensor | None = None,
                background: torch.Tensor | None = None,
                light_dir: Sequence[float] | torch.Tensor = DEFAULT_LIGHT_DIR,
                ambient: float = 0.35, diffuse: float = 0.65, near: float = 0.05,
                smooth: bool = True, cull_backfaces: bool = False,
                batch_chunk: int = 16, max_candidates: int = 1 << 21) -> RenderOutput:
    """Render shaded meshes. vertices: (B, V, 3) metres camera frame; faces: (F, 3); camera: (B, 4).

    vertex_colors: (V, 3) or (B, V, 3) RGB in [0, 1]; background: (H, W, 3) or (B, H, W, 3)
    uint8 (black if None); light_dir: (3,) or (B, 3), direction towards the light, camera frame.
    ``cull_backfaces`` skips faces whose outward (counter-clockwise) normal points away from
    the camera: about 2x faster on closed, consistently wound meshes such as SMPL, wrong on
    open or inconsistently wound ones. Frames are rendered ``batch_chunk`` at a time (keeps
    the working set in cache and bounds memory; results do not depend on it). Returns image
    (B, H, W, 3) uint8, depth (B, H, W) metres (+inf background), mask (B, H, W) bool and
    face_index (B, H, W) (-1 background).
    """
    height, width = _check_image_size(image_size)
    vertices, faces, camera = _check_mesh(vertices, faces, camera)
    b, v = vertices.shape[:2]
    device = vertices.device
    colors = _check_colors(vertex_colors, b, v, device)
    bg = _check_background(background, b, height, width, device)
    light = _check_light(light_dir, b, device)
    near = _check_near(near)
    if isinstance(batch_chunk, bool) or not isinstance(batch_chunk, int) or batch_chunk < 1:
        raise InputError(f"got {batch_chunk!r}", field="batch_chunk", expected="a positive int")
    parts = []
    for lo in range(0, b, batch_chunk):
        sl = slice(lo, lo + batch_chunk)
        frags = _rasterize(vertices[sl], faces, camera[sl], height, width, near,
                           cull_backfaces, max_candidates)
        image = _shade(frags, vertices[sl], faces, colors[sl], bg[sl], light[sl],
                       float(ambient), float(diffuse), smooth)
        parts.append((image, frags.depth, frags.face_index))
    image, depth, face_index = (torch.cat(x) if len(parts) > 1 else x[0] for x in zip(*parts))
    return RenderOutput(image=image, depth=depth, mask=face_index >= 0, face_index=face_index)


# ----------------------------------------------------------------------------------------------
# pictures for people: overlays and side views


def overlay(frames: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
            camera: torch.Tensor, *, alpha: float = 0.6,
            vertex_colors: torch.Tensor | None = None, **render_kwargs) -> torch.Tensor:
    """Blend the rendered mesh over frames. frames: (B, H, W, 3) uint8 -> (B, H, W, 3) uint8.

    vertices: (B, V, 3) metres camera frame, camera: (B, 4). Pixels off the mesh are unchanged.
    """
    if (not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3
            or frames.dtype != torch.uint8):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames)
        raise InputError(f"got {shape}", field="frames", expected="uint8 tensor (B, H, W, 3)")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"got {alpha!r}", field="alpha", expected="a float in [0, 1]")
    if isinstance(vertices, torch.Tensor) and vertices.ndim == 3 and vertices.shape[0] != frames.shape[0]:
        raise InputError(f"got {vertices.shape[0]} meshes for {frames.shape[0]} frames",
                         field="vertices", expected="(B, V, 3) with B equal to the frame count")
    out = render_mesh(vertices, faces, camera, image_size=frames.shape[1:3],
                      vertex_colors=vertex_colors, background=frames, **render_kwargs)
    blend = (float(alpha) * out.image.float() + (1.0 - float(alpha)) * frames.float() + 0.5)
    return torch.where(out.mask[..., None], blend.to(torch.uint8), frames)


def rotate_about_vertical(vertices: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate (B, V, 3) camera-frame vertices about the camera y axis through their centroid."""
    a = math.radians(float(angle_deg))
    c, s = math.cos(a), math.sin(a)
    rot = vertices.new_tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    centre = vertices.mean(dim=1, keepdim=True)
    return (vertices - centre) @ rot.T + centre


def side_view(vertices: torch.Tensor, faces: torch.Tensor, camera: torch.Tensor, *,
              angle_deg: float = 90.0, **render_kwargs) -> RenderOutput:
    """Render the mesh turned by ``angle_deg`` about the vertical axis through its centroid.

    vertices: (B, V, 3) metres camera frame; same camera and keyword arguments as render_mesh.
    """
    vertices, faces, camera = _check_mesh(vertices, faces, camera)
    return render_mesh(rotate_about_vertical(vertices, angle_deg), faces, camera, **render_kwargs)
