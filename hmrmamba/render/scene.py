"""Scene dressing for rendered frames: textured backgrounds, occluders, motion blur, part colours.

Randomness comes only from the ``torch.Generator`` passed in (or a seed, which makes one), and
every function draws a fixed number of values in a fixed order whatever the data, so the same
seed gives the same pictures. Noise is drawn on the CPU and moved to the output's device, so
results do not depend on the device either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hmrmamba.errors import InputError
from hmrmamba.render.raster import RenderOutput, render_mesh
from hmrmamba.skeleton import SMPL24

__all__ = [
    "OccluderOutput",
    "add_occluders",
    "clothing_colors",
    "clothing_palette",
    "default_part_palette",
    "make_generator",
    "motion_blur",
    "part_colors",
    "procedural_background",
]


def make_generator(generator: torch.Generator | int) -> torch.Generator:
    """A CPU ``torch.Generator``: the one given, or a fresh one seeded with the given int."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise InputError(f"got {type(generator).__name__}", field="generator",
                         expected="a torch.Generator or an int seed")
    return torch.Generator().manual_seed(int(generator))


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=gen)


def _check_hw(batch: int, height: int, width: int) -> None:
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"got {value!r}", field=name, expected="a positive int")


def _pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised coordinates (H, W) each, y down, both spanning [-1, 1] along the longer side."""
    scale = 2.0 / max(height, width)
    ys = (torch.arange(height, dtype=torch.float32) - (height - 1) / 2) * scale
    xs = (torch.arange(width, dtype=torch.float32) - (width - 1) / 2) * scale
    return torch.meshgrid(ys, xs, indexing="ij")


def _value_noise(gen: torch.Generator, batch: int, height: int, width: int,
                 cells: Sequence[int] = (3, 6, 12, 24)) -> torch.Tensor:
    """Smooth multi-octave noise (B, H, W) in about [0, 1]."""
    total = torch.zeros(batch, 1, height, width)
    weight = 1.0
    for c in cells:
        grid = _rand(gen, batch, 1, c + 1, c + 1)
        total += weight * F.interpolate(grid, size=(height, width), mode="bicubic",
                                        align_corners=True)
        weight *= 0.55
    total = total / sum(0.55 ** k for k in range(len(cells)))
    return total[:, 0].clamp(0.0, 1.0)


def procedural_background(generator: torch.Generator | int, batch: int, height: int, width: int,
                          *, device: torch.device | str | None = None) -> torch.Tensor:
    """Varied textured backgrounds (B, H, W, 3) uint8.

    Each image blends a two-colour linear gradient with one random pattern -- smooth noise,
    soft stripes at a random angle and frequency, a rotated checkerboard, or a floor/wall split
    with a noisy floor -- and adds fine grain.
    """
    _check_hw(batch, height, width)
    gen = make_generator(generator)
    yy, xx = _pixel_grid(height, width)
    # per-image parameters, drawn in one go
    colors = _rand(gen, batch, 4, 3)  # gradient a, b; pattern a, b
    angles = _rand(gen, batch, 2) * (2 * math.pi)
    freq = 2.0 + 10.0 * _rand(gen, batch)
    kind = torch.randint(0, 4, (batch,), generator=gen)
    mix = 0.35 + 0.5 * _rand(gen, batch)
    horizon = -0.4 + 0.8 * _rand(gen, batch)
    noise = _value_noise(gen, batch, height, width)
    grain = _rand(gen, batch, height, width, 1) - 0.5

    def along(angle: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, H, W) coordinate
        return (torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy)

    t_grad = (along(angles[:, 0]) * 0.5 + 0.5).clamp(0, 1)
    stripes = 0.5 + 0.5 * torch.sin(along(angles[:, 1]) * freq[:, None, None] * math.pi)
    rot = angles[:, 1] + math.pi / 2
    checker = ((torch.floor(along(angles[:, 1]) * freq[:, None, None] * 0.5)
                + torch.floor(along(rot) * freq[:, None, None] * 0.5)) % 2).float()
    floor = (yy > horizon[:, None, None]).float() * (0.6 + 0.4 * noise)
    patterns = torch.stack([noise, stripes, checker, floor], dim=1)  # (B, 4, H, W)
    t_pat = patterns[torch.arange(batch), kind]  # (B, H, W)

    gradient = torch.lerp(colors[:, None, None, 0], colors[:, None, None, 1], t_grad[..., None])
    pattern = torch.lerp(colors[:, None, None, 2], colors[:, None, None, 3], t_pat[..., None])
    image = torch.lerp(gradient, pattern, mix[:, None, None, None]) + 0.06 * grain
    out = (image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    return out if device is None else out.to(device)


@dataclass
class OccluderOutput:
    """Frames with occluders. Supports ``out["images"]`` as well as ``out.images``."""

    images: torch.Tensor  # (B, H, W, 3) uint8
    depth: torch.Tensor  # (B, H, W) float32 metres, occluder depth where an occluder is drawn
    occluder_mask: torch.Tensor  # (B, H, W) bool, True where an occluder covers the pixel

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


def add_occluders(images: torch.Tensor, depth: torch.Tensor, generator: torch.Generator | int,
                  *, max_occluders: int = 2, probability: float = 0.5,
                  size_range: tuple[float, float] = (0.15, 0.45),
                  ) -> OccluderOutput:
    """Draw random rectangles/ellipses in front of the body. images: (B, H, W, 3) uint8, depth: (B, H, W).

    Each of ``max_occluders`` slots is used with ``probability``. An occluder is centred inside
    the body's screen box (the finite pixels of ``depth``; the whole frame when there are none),
    its half-extents are ``size_range`` fractions of that box's larger side (at least 2 px), it is
    rotated at random, filled with a shaded random colour, and placed at 0.85 x the body's nearest
    depth, so it is in front of every body pixel. Pixels of the body hidden by occluders are
    ``mask & occluder_mask``.
    """
    if (not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3
            or images.dtype != torch.uint8):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise InputError(f"got {shape}", field="images", expected="uint8 tensor (B, H, W, 3)")
    b, h, w, _ = images.shape
    if not isinstance(depth, torch.Tensor) or depth.shape != (b, h, w):
        shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth)
        raise InputError(f"got {shape}", field="depth",
                         expected=f"float tensor (B, H, W) = ({b}, {h}, {w}), +inf background")
    if isinstance(max_occluders, bool) or not isinstance(max_occluders, int) or max_occluders < 0:
        raise InputError(f"got {max_occluders!r}", field="max_occluders",
                         expected="a non-negative int")
    if not 0.0 <= float(probability) <= 1.0:
        raise InputError(f"got {probability!r}", field="probability", expected="a float in [0, 1]")
    lo, hi = (float(s) for s in size_range)
    if not 0.0 < lo <= hi:
        raise InputError(f"got {size_range!r}", field="size_range",
                         expected="(lo, hi) with 0 < lo <= hi, fractions of the body box")
    gen = make_generator(generator)
    k = max_occluders
    device = images.device
    # fixed-size draws, independent of the data
    active = _rand(gen, b, k) < float(probability)
    centre = _rand(gen, b, k, 2)
    half = lo + (hi - lo) * _rand(gen, b, k, 2)
    angle = _rand(gen, b, k) * math.pi
    ellipse = _rand(gen, b, k) < 0.5
    color = _rand(gen, b, k, 3)
    shade = _value_noise(gen, b * k, h, w, cells=(2, 4)).view(b, k, h, w)

    body = torch.isfinite(depth).cpu()
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)
    has_body = body.flatten(1).any(1)
    rows, cols = body.any(2), body.any(1)  # (B, H), (B, W)
    big = torch.tensor(1e9)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -big).amax(1)
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -big).amax(1)
    y0, y1 = torch.where(has_body, y0, 0.0), torch.where(has_body, y1, h - 1.0)
    x0, x1 = torch.where(has_body, x0, 0.0), torch.where(has_body, x1, w - 1.0)
    cy = y0[:, None] + centre[..., 0] * (y1 - y0)[:, None]
    cx = x0[:, None] + centre[..., 1] * (x1 - x0)[:, None]
    extent = torch.maximum(y1 - y0, x1 - x0) + 1.0
    half = (half * extent[:, None, None]).clamp_min(2.0)  # (B, K, 2) half height, half width
    dy = ys[None, None, :, None] - cy[..., None, None]  # (B, K, H, 1)
    dx = xs[None, None, None, :] - cx[..., None, None]  # (B, K, 1, W)
    c, s = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    ry = (c * dy - s * dx) / half[..., 0, None, None]
    rx = (s * dy + c * dx) / half[..., 1, None, None]
    inside = torch.where(ellipse[..., None, None], ry * ry + rx * rx <= 1.0,
                         (ry.abs() <= 1.0) & (rx.abs() <= 1.0))
    inside &= active[..., None, None]  # (B, K, H, W)

    finite_depth = torch.where(body, depth.cpu().float(), torch.tensor(math.inf))
    nearest = finite_depth.flatten(1).amin(1)
    occ_depth = torch.where(torch.isfinite(nearest), 0.85 * nearest, torch.tensor(1.0))
    out = images.cpu().float()
    for j in range(k):  # a handful of occluders, later ones over earlier ones
        fill = color[:, j, None, None, :] * (0.55 + 0.45 * shade[:, j, ..., None])
        out = torch.where(inside[:, j, ..., None], fill * 255.0, out)
    occ = inside.any(1)
    new_depth = torch.where(occ, occ_depth[:, None, None], depth.cpu().float())
    return OccluderOutput(images=(out + 0.5).clamp(0, 255).to(torch.uint8).to(device),
                          depth=new_depth.to(device), occluder_mask=occ.to(device))


def motion_blur(vertices: torch.Tensor, velocity: torch.Tensor, faces: torch.Tensor,
                camera: torch.Tensor, *, samples: int = 5, shutter: float = 0.5,
                **render_kwargs) -> RenderOutput:
    """Render with motion blur. vertices, velocity: (B, V, 3) metres and metres/frame; camera: (B, 4).

    The image is the mean of ``samples`` renders at sub-frame positions ``vertices + s *
    velocity`` for ``s`` evenly spaced in ``[-shutter/2, shutter/2]`` (frame units; 0.5 is a
    half-open shutter), each over the same background, so the mesh smears along its true 3D
    motion, with correct occlusion. depth, mask and face_index are those of the sharp frame
    (``s = 0``), i.e. the labels. All sub-frames are rendered in one batch.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"got {samples!r}", field="samples", expected="a positive int")
    if not 0.0 <= float(shutter) <= 1.0:
        raise InputError(f"got {shutter!r}", field="shutter", expected="a float in [0, 1]")
    if not isinstance(vertices, torch.Tensor) or not isinstance(velocity, torch.Tensor) or (
            velocity.shape != vertices.shape):
        shape = tuple(velocity.shape) if isinstance(velocity, torch.Tensor) else type(velocity)
        raise InputError(f"got {shape}", field="velocity",
                         expected="a float tensor with the shape of vertices, (B, V, 3)")
    if vertices.ndim != 3:
        raise InputError(f"got shape {tuple(vertices.shape)}", field="vertices",
                         expected="a float tensor of shape (B, V, 3)")
    b = vertices.shape[0]
    offsets = torch.linspace(-0.5 * shutter, 0.5 * shutter, samples, dtype=vertices.dtype,
                             device=vertices.device)
    if samples % 2 == 1:  # the middle sample is the sharp frame
        sharp = samples // 2
        offsets[sharp] = 0.0
    else:  # render the sharp frame as an extra sample, left out of the average
        sharp = samples
        offsets = torch.cat([offsets, offsets.new_zeros(1)])
    n = offsets.numel()
    sub = vertices[None] + offsets[:, None, None, None] * velocity[None]  # (n, B, V, 3)
    sub = sub.reshape(n * b, *vertices.shape[1:])

    # per-batch arguments (leading dim B) are repeated for every sub-frame
    batched_ndim = {"camera": 2, "background": 4, "vertex_colors": 3, "light_dir": 2}
    kwargs = dict(render_kwargs, camera=camera)
    for key, ndim in batched_ndim.items():
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim == ndim:
            kwargs[key] = value.repeat(n, *([1] * (ndim - 1)))
    cam = kwargs.pop("camera")
    out = render_mesh(sub, faces, cam, **kwargs)
    frames = out.image.view(n, b, *out.image.shape[1:])
    blurred = frames[torch.arange(n) != sharp] if n > samples else frames
    image = (blurred.float().mean(0) + 0.5).to(torch.uint8)
    pick = slice(sharp * b, (sharp + 1) * b)
    return RenderOutput(image=image, depth=out.depth[pick], mask=out.mask[pick],
                        face_index=out.face_index[pick])


# ----------------------------------------------------------------------------------------------
# part colours


def default_part_palette() -> torch.Tensor:
    """(24, 3) RGB in [0, 1] for the SMPL-24 parts: left side warm (reds/oranges), right side
    cool (blues/greens), the midline neutral (greys/olive), each part a different shade."""
    warm = [(0.90, 0.25, 0.20), (0.95, 0.50, 0.15), (0.85, 0.15, 0.45), (0.98, 0.70, 0.25),
            (0.75, 0.10, 0.10), (0.95, 0.40, 0.55), (0.80, 0.35, 0.05)]
    cool = [(0.15, 0.40, 0.90), (0.10, 0.70, 0.75), (0.35, 0.25, 0.85), (0.20, 0.80, 0.45),
            (0.05, 0.25, 0.60), (0.45, 0.60, 0.95), (0.10, 0.55, 0.30)]
    mid = [(0.75, 0.75, 0.70), (0.60, 0.62, 0.55), (0.82, 0.80, 0.60), (0.55, 0.55, 0.60),
           (0.70, 0.68, 0.50), (0.88, 0.86, 0.80)]
    palette, n_left, n_right, n_mid = [], 0, 0, 0
    for name in SMPL24.names:
        if name.startswith("left_"):
            palette.append(warm[n_left % len(warm)])
            n_left += 1
        elif name.startswith("right_"):
            palette.append(cool[n_right % len(cool)])
            n_right += 1
        else:
            palette.append(mid[n_mid % len(mid)])
            n_mid += 1
    return torch.tensor(palette, dtype=torch.float32)


def part_colors(lbs_weights: torch.Tensor, palette: torch.Tensor | None = None,
                *, sharpness: float = 4.0) -> torch.Tensor:
    """Per-vertex colours from skinning weights. lbs_weights: (V, J), palette: (J, 3) -> (V, 3) in [0, 1].

    Weights are sharpened (raised to ``sharpness`` and renormalised) so that parts read as
    patches with soft borders, then mixed through the palette. The default palette is
    :func:`default_part_palette` (J = 24, SMPL order): left and right differ in hue.
    """
    if (not isinstance(lbs_weights, torch.Tensor) or lbs_weights.ndim != 2
            or not lbs_weights.is_floating_point()):
        shape = tuple(lbs_weights.shape) if isinstance(lbs_weights, torch.Tensor) else type(lbs_weights)
        raise InputError(f"got {shape}", field="lbs_weights", expected="float tensor (V, J)")
    if not bool(torch.isfinite(lbs_weights).all()) or bool((lbs_weights < 0).any()):
        raise InputError("has negative or non-finite entries", field="lbs_weights",
                         expected="non-negative finite skinning weights (V, J)")
    j = lbs_weights.shape[1]
    pal = default_part_palette() if palette is None else torch.as_tensor(palette)
    if pal.ndim != 2 or pal.shape != (j, 3):
        raise InputError(f"got shape {tuple(pal.shape)}", field="palette",
                         expected=f"(J, 3) = ({j}, 3) RGB in [0, 1]")
    pal = pal.to(device=lbs_weights.device, dtype=lbs_weights.dtype)
    w = lbs_weights.clamp_min(0.0) ** float(sharpness)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    return (w @ pal).clamp(0.0, 1.0)


#: SMPL-24 parts by what covers them: always skin, the shirt, the trousers, the shoes; sleeves and
#: trouser legs are long or short per outfit (their joints then wear the garment or show skin).
_SKIN = ("neck", "head", "left_wrist", "right_wrist", "left_hand", "right_hand")
_SHIRT = ("spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder", "right_shoulder")
_SLEEVES = ("left_elbow", "right_elbow")
_TROUSERS = ("pelvis", "left_hip", "right_hip")
_LEGS = ("left_knee", "right_knee", "left_ankle", "right_ankle")
_SHOES = ("left_foot", "right_foot")

#: skin tones (RGB in [0, 1]), dark to light; an outfit's skin is drawn between two neighbours
_SKIN_TONES = ((0.24, 0.15, 0.11), (0.45, 0.30, 0.22), (0.63, 0.45, 0.34), (0.80, 0.62, 0.50),
               (0.93, 0.78, 0.67))


def _garment_colour(rng) -> tuple[float, float, float]:
    """A random garment colour: any hue, saturation 0-0.8, value 0.1-0.95 (HSV -> RGB)."""
    import colorsys

    return colorsys.hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0.0, 0.8)), float(rng.uniform(0.1, 0.95)))


def clothing_palette(rng) -> torch.Tensor:
    """A random outfit as a (24, 3) SMPL-24 palette in [0, 1]: one skin tone, shirt, trousers and shoes,
    long or short sleeves and trouser legs. Left and right always match (no body-side colour code).

    ``rng``: a ``numpy.random.Generator``.
    """
    t = float(rng.uniform(0, len(_SKIN_TONES) - 1))
    lo = int(t)
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    skin = tuple((1 - (t - lo)) * a + (t - lo) * b for a, b in zip(_SKIN_TONES[lo], _SKIN_TONES[hi]))
    shirt, trousers, shoes = _garment_colour(rng), _garment_colour(rng), _garment_colour(rng)
    sleeves = shirt if rng.uniform() < 0.6 else skin
    legs = trousers if rng.uniform() < 0.7 else skin
    wear = {}
    for names, colour in ((_SKIN, skin), (_SHIRT, shirt), (_SLEEVES, sleeves), (_TROUSERS, trousers),
                          (_LEGS, legs), (_SHOES, shoes)):
        wear.update(dict.fromkeys(names, colour))
    return torch.tensor([wear[name] for name in SMPL24.names], dtype=torch.float32)


def clothing_colors(lbs_weights: torch.Tensor, rest_vertices: torch.Tensor, rng) -> torch.Tensor:
    """Per-vertex colours of a random outfit: lbs_weights (V, 24), rest_vertices (V, 3) metres (the
    template, y up) -> (V, 3) in [0, 1].

    :func:`clothing_palette` through sharp skinning weights, times a texture: horizontal stripes on
    the garments of some outfits (a random period of 4-12 cm along the body's height) and a fixed
    +-6 % per-vertex grain, so that the pixels carry no code for the body's side or part.
    """
    palette = clothing_palette(rng)
    colors = part_colors(lbs_weights, palette, sharpness=8.0)
    v = colors.shape[0]
    shade = torch.ones(v)
    if rng.uniform() < 0.4:
        period = float(rng.uniform(0.04, 0.12))
        phase = float(rng.uniform(0, 2 * math.pi))
        stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * rest_vertices[:, 1].float() / period + phase)
        garment = lbs_weights[:, [SMPL24.names.index(n) for n in _SHIRT + _TROUSERS]].sum(1).clamp(0, 1)
        shade = shade * (1.0 - float(rng.uniform(0.2, 0.45)) * stripes * garment)
    grain = torch.as_tensor(rng.uniform(0.94, 1.06, size=v), dtype=torch.float32)
    return (colors * (shade * grain)[:, None]).clamp(0.0, 1.0)
