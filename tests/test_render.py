"""Tests for the torch z-buffer renderer and the scene dressing (backgrounds, occluders, blur)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from hmrmamba.errors import InputError
from hmrmamba.render import overlay, rasterize, render_mesh, rotate_about_vertical, side_view
from hmrmamba.render.scene import (
    add_occluders,
    default_part_palette,
    motion_blur,
    part_colors,
    procedural_background,
)
from hmrmamba.skeleton import SMPL24

CAM = torch.tensor([[100.0, 110.0, 31.5, 30.0]])  # fx, fy, cx, cy for 64 x 64 frames


def sphere(subdivisions: int = 3, radius: float = 0.5, z: float = 3.0):
    """An outward-wound icosphere centred on the optical axis at depth z: (1, V, 3), (F, 3)."""
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = torch.tensor(m.vertices, dtype=torch.float32) + torch.tensor([0.0, 0.0, z])
    return v[None], torch.tensor(m.faces, dtype=torch.long)


def square(z: float, half: float = 1.0):
    """Two triangles spanning [-half, half]^2 at depth z, facing the camera: (4, 3), (2, 3)."""
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return v, torch.tensor([[0, 2, 1], [0, 3, 2]])


def flat_color(value: float, n: int) -> torch.Tensor:
    return torch.full((n, 3), value)


# ----------------------------------------------------------------------------------------------
# geometry


def test_known_vertex_projects_to_expected_pixel():
    # a tiny triangle whose vertices all project within 0.3 px of (u, v) = (40, 20)
    z = 2.0
    fx, fy, cx, cy = CAM[0].tolist()
    x, y = (40 - cx) * z / fx, (20 - cy) * z / fy
    d = 0.25 * z / fx
    v = torch.tensor([[[x - d, y - d, z], [x + d, y - d, z], [x, y + d, z]]])
    out = render_mesh(v, torch.tensor([[0, 1, 2]]), CAM, image_size=(64, 64))
    assert out.mask.sum() == 1
    assert bool(out.mask[0, 20, 40])
    assert out.depth[0, 20, 40].item() == pytest.approx(z, rel=1e-6)
    assert out.face_index[0, 20, 40].item() == 0


def test_near_triangle_occludes_far_one_regardless_of_face_order():
    near_v, near_f = square(2.0)
    far_v, far_f = square(4.0, half=2.0)
    verts = torch.cat([near_v, far_v])[None]
    colors = torch.cat([flat_color(1.0, 4), flat_color(0.2, 4)])
    kw = {"image_size": (64, 64), "vertex_colors": colors, "ambient": 1.0, "diffuse": 0.0}
    a = render_mesh(verts, torch.cat([near_f, far_f + 4]), CAM, **kw)
    b = render_mesh(verts, torch.cat([far_f + 4, near_f]), CAM, **kw)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)
    # the near square covers u in [31.5 - 50, 31.5 + 50]: the whole frame is near, white
    assert bool((a.depth == 2.0).all())
    assert bool((a.image == 255).all())


def test_depth_equals_analytic_plane_depth():
    # a strongly tilted triangle; the depth at each covered pixel is where that pixel's ray
    # meets the triangle's plane
    v = torch.tensor([[[-1.0, -0.8, 2.0], [1.2, -0.5, 5.0], [-0.2, 0.9, 3.0]]], dtype=torch.float64)
    out = render_mesh(v, torch.tensor([[0, 1, 2]]), CAM, image_size=(64, 64))
    p0, p1, p2 = v[0]
    n = torch.cross(p1 - p0, p2 - p0, dim=0)
    rows, cols = torch.nonzero(out.mask[0], as_tuple=True)
    assert rows.numel() > 200
    fx, fy, cx, cy = CAM[0].double().tolist()
    rays = torch.stack([(cols.double() - cx) / fx, (rows.double() - cy) / fy,
                        torch.ones_like(rows, dtype=torch.float64)], dim=-1)
    expected = (n @ p0) / (rays @ n)  # ray (x, y, 1) * t: depth is t
    np.testing.assert_allclose(out.depth[0, rows, cols].double(), expected, rtol=2e-6)
    assert bool(torch.isinf(out.depth[0][~out.mask[0]]).all())


def test_perspective_correct_colour_interpolation():
    # colour varies linearly in 3D along x; on a tilted triangle, perspective-correct
    # interpolation reproduces the colour of the 3D point hit by each pixel's ray
    v = torch.tensor([[[-1.0, -1.0, 2.0], [1.0, -1.0, 6.0], [0.0, 1.0, 2.5]]])
    red = (v[0, :, 0] + 1.0) / 2.0
    colors = torch.stack([red, torch.zeros(3), torch.zeros(3)], dim=-1)
    out = render_mesh(v, torch.tensor([[0, 1, 2]]), CAM, image_size=(64, 64),
                      vertex_colors=colors, ambient=1.0, diffuse=0.0)
    rows, cols = torch.nonzero(out.mask[0], as_tuple=True)
    fx, _, cx, _ = CAM[0].tolist()
    x3d = (cols.float() - cx) / fx * out.depth[0, rows, cols]
    expected = ((x3d + 1.0) / 2.0).clamp(0, 1) * 255.0
    got = out.image[0, rows, cols, 0].float()
    assert (got - expected).abs().max().item() <= 1.0
    # affine (screen-space) interpolation would be off by many levels on this triangle
    assert out.image[0, rows, cols, 1:].max().item() == 0


def reference_rasterize(vertices: np.ndarray, faces: np.ndarray, cam: np.ndarray, h: int, w: int):
    """Slow float64 reference: every pixel against every triangle. -> depth (H, W), +inf empty."""
    fx, fy, cx, cy = cam
    u = fx * vertices[:, 0] / vertices[:, 2] + cx
    v = fy * vertices[:, 1] / vertices[:, 2] + cy
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.stack([xs.ravel(), ys.ravel()], 1)[:, None, :]  # (P, 1, 2)
    a, b, c = (np.stack([u[faces[:, k]], v[faces[:, k]]], 1)[None] for k in range(3))
    def edge(p0, p1, q):
        return (p1[..., 0] - p0[..., 0]) * (q[..., 1] - p0[..., 1]) - (
            p1[..., 1] - p0[..., 1]) * (q[..., 0] - p0[..., 0])
    area = edge(a, b, c)
    w0, w1, w2 = edge(b, c, p) / area, edge(c, a, p) / area, edge(a, b, p) / area
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (np.abs(area) > 1e-9)
    iz = 1.0 / vertices[:, 2]
    inv_depth = w0 * iz[faces[:, 0]] + w1 * iz[faces[:, 1]] + w2 * iz[faces[:, 2]]
    depth = np.where(inside, 1.0 / np.where(inside, inv_depth, 1.0), np.inf).min(1)
    return depth.reshape(h, w)


def test_matches_slow_reference_on_a_bumpy_sphere():
    gen = torch.Generator().manual_seed(0)
    verts, faces = sphere(subdivisions=2, radius=0.6, z=2.5)
    verts = verts + 0.05 * torch.randn(verts.shape, generator=gen)
    out = rasterize(verts, faces, CAM, image_size=(40, 48))
    ref = reference_rasterize(verts[0].double().numpy(), faces.numpy(), CAM[0].double().numpy(),
                              40, 48)
    mask_ref = np.isfinite(ref)
    # edge-on pixel centres may fall either way; allow a couple of silhouette pixels
    assert (out.mask[0].numpy() != mask_ref).sum() <= 2
    both = out.mask[0].numpy() & mask_ref
    np.testing.assert_allclose(out.depth[0].numpy()[both], ref[both], rtol=1e-5)


def test_chunking_and_batching_do_not_change_the_result():
    v1, faces = sphere(subdivisions=3, radius=0.7, z=2.5)
    v2 = v1 + torch.tensor([0.3, -0.2, 0.5])
    cams = torch.cat([CAM, CAM * torch.tensor([1.2, 1.2, 1.0, 1.0])])
    both = render_mesh(torch.cat([v1, v2]), faces, cams, image_size=(64, 64))
    small = render_mesh(torch.cat([v1, v2]), faces, cams, image_size=(64, 64), max_candidates=97,
                        batch_chunk=1)
    one = render_mesh(v2, faces, cams[1:], image_size=(64, 64))
    for key in ("image", "depth", "face_index"):
        assert torch.equal(both[key], small[key])
        assert torch.equal(both[key][1:], one[key])


def test_backface_culling_matches_full_render_on_a_closed_mesh():
    verts, faces = sphere(subdivisions=3, radius=0.8, z=2.5)
    full = render_mesh(verts, faces, CAM, image_size=(64, 64))
    culled = render_mesh(verts, faces, CAM, image_size=(64, 64), cull_backfaces=True)
    assert (full.mask != culled.mask).sum() <= 2
    same = full.mask & culled.mask
    assert torch.equal(full.face_index[same], culled.face_index[same])
    assert full.mask.sum() > 500


def test_triangles_behind_the_near_plane_are_culled_and_offscreen_parts_clipped():
    v = torch.tensor([[[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, -1.0]]])
    out = render_mesh(v, torch.tensor([[0, 1, 2]]), CAM, image_size=(64, 64))
    assert not bool(out.mask.any())
    # a square much larger than the view, off-centre: clipped to the frame, every pixel covered
    big, faces = square(1.0, half=3.0)
    out = render_mesh(big[None] + torch.tensor([0.5, 0.0, 0.0]), faces, CAM, image_size=(64, 64))
    assert bool(out.mask.all())


# ----------------------------------------------------------------------------------------------
# shading and compositing


def test_face_towards_the_light_is_brighter_than_a_grazing_one():
    light = torch.tensor([0.0, 0.0, -1.0])  # towards the camera
    facing, faces = square(3.0, half=0.5)
    ang = math.radians(80.0)  # rotate about y: normal 80 degrees away from the light
    rot = torch.tensor([[math.cos(ang), 0.0, math.sin(ang)], [0.0, 1.0, 0.0],
                        [-math.sin(ang), 0.0, math.cos(ang)]])
    grazing = (facing - torch.tensor([0.0, 0.0, 3.0])) @ rot.T + torch.tensor([0.0, 0.0, 3.0])
    kw = {"image_size": (64, 64), "vertex_colors": flat_color(1.0, 4), "light_dir": light,
          "ambient": 0.2, "diffuse": 0.8}
    out = render_mesh(torch.stack([facing, grazing]), faces, CAM.expand(2, 4), **kw)
    bright = out.image[0][out.mask[0]].float().mean().item()
    dim = out.image[1][out.mask[1]].float().mean().item()
    assert bright == pytest.approx(255.0, abs=0.5)
    assert dim == pytest.approx(255.0 * (0.2 + 0.8 * math.cos(ang)), abs=1.0)
    # two-sided: the same square seen from its back is lit like its front
    back = render_mesh(facing[None], faces.flip(1), CAM, **kw)
    assert torch.equal(back.image, out.image[:1])


def test_smooth_shading_of_a_sphere_follows_the_light():
    verts, faces = sphere(subdivisions=4, radius=0.8, z=3.0)
    out = render_mesh(verts, faces, CAM, image_size=(64, 64), light_dir=(1.0, 0.0, 0.0),
                      ambient=0.0, diffuse=1.0, vertex_colors=flat_color(1.0, verts.shape[1]))
    row = out.image[0, 30, :, 0].float()
    lit = out.mask[0, 30]
    cols = torch.nonzero(lit).squeeze(1)
    # brightness grows monotonically (up to rounding) from the dark left to the lit right
    vals = row[cols]
    assert vals[0] < 30 and vals[-1] > 200
    assert bool((vals[1:] >= vals[:-1] - 3).all())


def test_background_is_kept_where_mask_is_false():
    verts, faces = sphere()
    bg = procedural_background(3, 2, 64, 64)
    out = render_mesh(verts.expand(2, -1, -1), faces, CAM.expand(2, 4), image_size=(64, 64),
                      background=bg)
    assert torch.equal(out.image[~out.mask], bg[~out.mask])
    assert 0 < out.mask.float().mean() < 0.5
    assert not torch.equal(out.image[out.mask], bg[out.mask])


def test_overlay_blends_only_on_the_mesh():
    verts, faces = sphere()
    frames = procedural_background(5, 1, 64, 64)
    ref = render_mesh(verts, faces, CAM, image_size=(64, 64), background=frames)
    out = overlay(frames, verts, faces, CAM, alpha=0.6)
    assert torch.equal(out[~ref.mask], frames[~ref.mask])
    expected = (0.6 * ref.image.float() + 0.4 * frames.float() + 0.5).to(torch.uint8)
    assert torch.equal(out[ref.mask], expected[ref.mask])
    assert torch.equal(overlay(frames, verts, faces, CAM, alpha=1.0), ref.image)


def test_side_view_rotates_about_the_vertical_axis_through_the_centroid():
    verts, faces = square(3.0, half=0.5)
    verts = verts[None]
    rot = rotate_about_vertical(verts, 90.0)
    torch.testing.assert_close(rot.mean(1), verts.mean(1))
    # +x of the centroid goes to -z (towards the camera), y is unchanged
    torch.testing.assert_close(rot[0, 1] - rot.mean(1)[0], torch.tensor([0.0, -0.5, -0.5]))
    front = render_mesh(verts, faces, CAM, image_size=(64, 64))
    side = side_view(verts, faces, CAM, image_size=(64, 64))
    assert front.mask.sum() > 200 and side.mask.sum() == 0  # a plate seen edge-on vanishes
    torch.testing.assert_close(rotate_about_vertical(verts, 360.0), verts)


# ----------------------------------------------------------------------------------------------
# scene dressing


def test_procedural_background_is_deterministic_and_varied():
    a = procedural_background(11, 8, 48, 64)
    b = procedural_background(torch.Generator().manual_seed(11), 8, 48, 64)
    c = procedural_background(12, 8, 48, 64)
    assert a.shape == (8, 48, 64, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    per_image_std = a.float().flatten(1).std(1)
    assert bool((per_image_std > 3).all())  # textured, not flat
    means = a.float().mean((1, 2))
    assert means.std(0).min() > 10  # different colours across the batch


def test_add_occluders_is_in_front_and_deterministic():
    verts, faces = sphere(radius=0.8)
    out = render_mesh(verts.expand(6, -1, -1), faces, CAM.expand(6, 4), image_size=(64, 64),
                      background=procedural_background(0, 6, 64, 64))
    a = add_occluders(out.image, out.depth, 4, max_occluders=3, probability=0.9)
    b = add_occluders(out.image, out.depth, 4, max_occluders=3, probability=0.9)
    assert torch.equal(a.images, b.images) and torch.equal(a.occluder_mask, b.occluder_mask)
    occ = a.occluder_mask
    assert occ.any() and (occ & out.mask).any()  # placed over the body
    assert torch.equal(a.images[~occ], out.image[~occ])
    assert torch.equal(a.depth[~occ], out.depth[~occ])
    body_min = out.depth.flatten(1).amin(1)
    assert bool((a.depth[occ] < body_min[:, None, None].expand_as(occ)[occ]).all())
    none = add_occluders(out.image, out.depth, 4, probability=0.0)
    assert torch.equal(none.images, out.image) and not none.occluder_mask.any()


def test_motion_blur_smears_the_image_but_keeps_the_sharp_labels():
    verts, faces = sphere(radius=0.5)
    bg = procedural_background(1, 1, 64, 64)
    sharp = render_mesh(verts, faces, CAM, image_size=(64, 64), background=bg)
    still = motion_blur(verts, torch.zeros_like(verts), faces, CAM, image_size=(64, 64),
                        background=bg)
    assert torch.equal(still.image, sharp.image)
    vel = torch.zeros_like(verts)
    vel[..., 0] = 0.3
    for samples in (4, 5):
        blur = motion_blur(verts, vel, faces, CAM, samples=samples, image_size=(64, 64),
                           background=bg)
        assert torch.equal(blur.mask, sharp.mask) and torch.equal(blur.depth, sharp.depth)
        assert not torch.equal(blur.image, sharp.image)
        # the smear reaches beyond the sharp silhouette along x only
        changed = (blur.image != bg).any(-1)[0]
        sharp_cols = torch.nonzero(sharp.mask[0].any(0)).squeeze(1)
        blur_cols = torch.nonzero(changed.any(0)).squeeze(1)
        assert blur_cols.min() < sharp_cols.min() and blur_cols.max() > sharp_cols.max()


def test_part_colors_separate_left_and_right():
    names = SMPL24.names
    weights = torch.eye(24)  # one vertex fully bound to each joint
    colors = part_colors(weights)
    torch.testing.assert_close(colors, default_part_palette())
    for i, name in enumerate(names):
        if name.startswith("left_"):
            j = names.index("right_" + name[len("left_"):])
            assert colors[i, 0] > colors[i, 2] and colors[j, 2] > colors[j, 0]  # warm vs cool
    # a vertex shared 50/50 between two parts gets a mixture of the two colours
    mixed = part_colors(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    torch.testing.assert_close(mixed, torch.tensor([[0.5, 0.0, 0.5]]))


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kwargs, field, expected", [
    ({"vertices": torch.zeros(3, 3)}, "vertices", "(B, V, 3)"),
    ({"vertices": torch.full((1, 3, 3), math.nan)}, "vertices", "finite"),
    ({"faces": torch.tensor([[0, 1, 3]])}, "faces", "[0, 2]"),
    ({"faces": torch.tensor([[0.0, 1.0, 2.0]])}, "faces", "(F, 3)"),
    ({"faces": torch.tensor([0, 1, 2])}, "faces", "(F, 3)"),
    ({"camera": torch.ones(2, 4)}, "camera", "(B, 4) = (1, 4)"),
    ({"camera": torch.tensor([[0.0, 1.0, 0.0, 0.0]])}, "camera", "fx, fy > 0"),
    ({"vertex_colors": torch.ones(4, 3)}, "vertex_colors", "(V, 3) or (B, V, 3) = (1, 3, 3)"),
    ({"background": torch.zeros(8, 8, 3, dtype=torch.uint8)}, "background", "(1, 16, 16, 3)"),
    ({"image_size": (0, 16)}, "image_size", "positive (H, W)"),
    ({"light_dir": (0.0, 0.0, 0.0)}, "light_dir", "non-zero"),
    ({"near": -1.0}, "near", "positive"),
])
def test_bad_input_raises_input_error_with_expected_shapes(kwargs, field, expected):
    args = {"vertices": torch.tensor([[[0.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 1.0, 2.0]]]),
            "faces": torch.tensor([[0, 1, 2]]), "camera": torch.tensor([[10.0, 10.0, 8.0, 8.0]]),
            "image_size": (16, 16)}
    args.update(kwargs)
    with pytest.raises(InputError) as info:
        render_mesh(args.pop("vertices"), args.pop("faces"), args.pop("camera"), **args)
    assert f"'{field}'" in str(info.value) and expected in str(info.value)


def test_scene_helpers_reject_bad_input():
    img = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(InputError, match=r"\(2, 8, 8\)"):
        add_occluders(img, torch.zeros(2, 8), 0)
    with pytest.raises(InputError, match="uint8"):
        add_occluders(img.float(), torch.zeros(2, 8, 8), 0)
    with pytest.raises(InputError, match="generator"):
        procedural_background("seed", 1, 8, 8)
    with pytest.raises(InputError, match=r"\(24, 3\)"):
        part_colors(torch.rand(5, 24), torch.rand(23, 3))
    verts = torch.zeros(1, 3, 3)
    with pytest.raises(InputError, match="velocity"):
        motion_blur(verts, torch.zeros(1, 4, 3), torch.tensor([[0, 1, 2]]), CAM)


def test_outfits_have_no_body_side_code_and_vary():
    import numpy as np

    from hmrmamba.render.scene import clothing_colors, clothing_palette
    from hmrmamba.skeleton import SMPL24

    names = list(SMPL24.names)
    pairs = [(names.index(n), names.index("right_" + n[5:])) for n in names if n.startswith("left_")]
    palettes = [clothing_palette(np.random.default_rng(s)) for s in range(20)]
    for pal in palettes:
        assert pal.shape == (24, 3) and float(pal.min()) >= 0 and float(pal.max()) <= 1
        for left, right in pairs:
            torch.testing.assert_close(pal[left], pal[right])
        # head and hands share the skin tone
        torch.testing.assert_close(pal[names.index("head")], pal[names.index("left_hand")])
    shirts = torch.stack([p[names.index("spine2")] for p in palettes])
    assert float(shirts.std(0).min()) > 0.1  # outfits differ
    weights = torch.softmax(torch.randn(50, 24) * 3, 1)
    rest = torch.randn(50, 3)
    a = clothing_colors(weights, rest, np.random.default_rng(7))
    torch.testing.assert_close(a, clothing_colors(weights, rest, np.random.default_rng(7)))  # seeded
    assert a.shape == (50, 3) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, clothing_colors(weights, rest, np.random.default_rng(8)))
