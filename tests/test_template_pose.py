"""Template-shaped decoding: the coarse template posed by the lifted joints (models/template_pose.py)."""

from __future__ import annotations

import math

import pytest
import torch

from hmrmamba.models import build, random_mesh_assets
from hmrmamba.models.template_pose import H36M17_FRAMES, TemplatePoser, bind_to_bones, swing_rotation
from hmrmamba.skeleton import H36M17


def _rest_body() -> tuple[torch.Tensor, torch.Tensor]:
    """A T-pose H36M-17 skeleton (metres) and 'flesh' points scattered around its bones."""
    j = torch.tensor([
        [0, 0, 0], [-.1, 0, 0], [-.1, -.45, 0], [-.1, -.85, 0], [.1, 0, 0], [.1, -.45, 0], [.1, -.85, 0],
        [0, .25, 0], [0, .5, 0], [0, .6, 0], [0, .75, 0], [.18, .5, 0], [.45, .5, 0], [.7, .5, 0],
        [-.18, .5, 0], [-.45, .5, 0], [-.7, .5, 0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    bones = [(p, c) for c, p in enumerate(H36M17.parents) if p >= 0]
    pts = []
    for p, c in bones:
        s = torch.rand(12, 1, generator=g, dtype=torch.float64)
        pts.append(j[p] + s * (j[c] - j[p]) + 0.04 * torch.randn(12, 3, generator=g, dtype=torch.float64))
    return torch.cat(pts).float(), j.float()


def _rotation(axis: torch.Tensor, angle: float) -> torch.Tensor:
    a = axis / axis.norm()
    k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return torch.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


@pytest.fixture(scope="module")
def poser() -> TemplatePoser:
    verts, joints = _rest_body()
    return TemplatePoser(verts, joints, H36M17.parents, frames=H36M17_FRAMES)


def test_rest_joints_give_the_rest_template_exactly(poser):
    verts, joints = _rest_body()
    out = poser(joints[None])[0]
    assert torch.allclose(out, verts, atol=1e-5)


def test_binding_weights_are_convex_and_reconstruct_each_vertex():
    verts, joints = _rest_body()
    idx, w, s, r = bind_to_bones(verts, joints, H36M17.parents, nearest=3)
    assert idx.shape == w.shape == s.shape == (len(verts), 3) and r.shape == (len(verts), 3, 3)
    assert torch.allclose(w.sum(1), torch.ones(len(verts)), atol=1e-6) and (w >= 0).all()
    bones = [(p, c) for c, p in enumerate(H36M17.parents) if p >= 0]
    start = joints[[p for p, _ in bones]]
    vec = joints[[c for _, c in bones]] - start
    back = start[idx] + s[..., None] * vec[idx] + r
    assert torch.allclose(back, verts[:, None].expand_as(back), atol=1e-5)
    # r is perpendicular to its bone
    assert ((r * vec[idx]).sum(-1).abs() < 1e-5).all()


def test_rigid_motion_of_the_skeleton_moves_the_mesh_rigidly(poser):
    verts, joints = _rest_body()
    rot = _rotation(torch.tensor([0.3, 1.0, -0.2]), 2.4)  # includes turning the body away from the camera
    shift = torch.tensor([0.5, -0.2, 4.0])
    out = poser((joints @ rot.T + shift)[None])[0]
    assert torch.allclose(out, verts @ rot.T + shift, atol=1e-4)


def test_a_bent_elbow_moves_only_the_forearm_side(poser):
    verts, joints = _rest_body()
    bent = joints.clone()
    elbow, wrist = 12, 13
    bent[wrist] = bent[elbow] + torch.tensor([0.0, -0.25, 0.0])  # forearm hangs down
    out = poser(bent[None])[0]
    moved = (out - verts).norm(dim=1) > 1e-3
    legs = verts[:, 1] < -0.1
    assert not moved[legs].any()
    near_wrist = (verts - joints[wrist]).norm(dim=1) < 0.05
    assert moved[near_wrist].all()
    # forearm flesh keeps its distance to the (new) forearm segment: the width is the template's
    forearm = (verts[:, 0] > 0.55) & (verts[:, 0] < 0.65)
    def dist_to_line(x, a, b):
        return torch.linalg.cross(x - a, (b - a).expand_as(x), dim=-1).norm(dim=-1) / (b - a).norm()

    d_rest = dist_to_line(verts[forearm], joints[elbow], joints[wrist])
    d_bent = dist_to_line(out[forearm], bent[elbow], bent[wrist])
    assert torch.allclose(d_rest, d_bent, atol=0.01)


def test_longer_bones_stretch_the_mesh_along_them(poser):
    verts, joints = _rest_body()
    tall = joints.clone()
    tall[[2, 3]] += torch.tensor([0.0, -0.1, 0.0])  # right shin and knee 10 cm lower
    tall[3] += torch.tensor([0.0, -0.1, 0.0])
    out = poser(tall[None])[0]
    low_shin = (verts[:, 0] < -0.05) & (verts[:, 1] < -0.65)
    assert low_shin.sum() >= 3
    assert out[low_shin][:, 1].mean() < verts[low_shin][:, 1].mean() - 0.15
    left_leg = (verts[:, 0] > 0.05) & (verts[:, 1] < -0.2)
    assert torch.allclose(out[left_leg], verts[left_leg], atol=1e-5)


@pytest.mark.parametrize("b", [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 2.0, -3.0], [1.0, 0.0, 1e-9]])
def test_swing_rotation_maps_a_onto_b_and_is_a_rotation(b):
    a = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([b, b], dtype=torch.float64)
    r = swing_rotation(a, b)
    assert torch.allclose((r @ a[..., None])[..., 0], b / b.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=torch.float64), atol=1e-6)


def test_swing_rotation_has_finite_gradients():
    a = torch.randn(64, 3, dtype=torch.float64)
    b = torch.randn(64, 3, dtype=torch.float64, requires_grad=True)
    swing_rotation(a, b).sum().backward()
    assert torch.isfinite(b.grad).all()


def test_an_untrained_variant_outputs_the_posed_template():
    torch.manual_seed(0)
    assets = random_mesh_assets(sizes=(200, 60, 20))
    model = build("tiny", assets=assets).eval()
    rec = model.reconstructor
    assert rec.template is not None
    joints = assets.rest_joints[None, None].expand(2, 4, -1, -1).contiguous()
    out = rec(joints, torch.randn(2, 4, 2048))
    assert torch.allclose(out.coarse, assets.rest_coarse.expand_as(out.coarse), atol=1e-4)
    nearest = build("tiny", assets=assets, coarse_init="nearest").eval().reconstructor
    out_n = nearest(joints, torch.randn(2, 4, 2048))
    assert torch.allclose(out_n.coarse, joints[:, :, assets.vertex_init].reshape(out_n.coarse.shape), atol=1e-5)


def test_template_init_without_a_rest_pose_is_refused():
    from hmrmamba.errors import InputError
    from hmrmamba.models import MeshAssets, MotionGuidedReconstructor

    a = random_mesh_assets(sizes=(60, 20, 8))
    with pytest.raises(InputError, match="rest pose"):
        MotionGuidedReconstructor(upsample=a.upsample, vertex_init=a.vertex_init, joint_regressor=a.joint_regressor,
                                  coarse_init="template", feat_dim=8, context="none")
    assert isinstance(a, MeshAssets)


def test_implicit_motion_sees_no_frame_differences():
    """IM is per frame: permuting the frames permutes its output, so it cannot read M_exp."""
    from hmrmamba.models.reconstructor import ImplicitMotion

    torch.manual_seed(0)
    im = ImplicitMotion(num_joints=17, feat_dim=12, dim=8)
    torch.nn.init.normal_(im.film.weight)  # zero-initialised FiLM would hide the pose path
    feats, pose = torch.randn(2, 6, 12), torch.randn(2, 6, 17, 3)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out = im(feats, pose)
    assert torch.allclose(im(feats[:, perm], pose[:, perm]), out[:, perm], atol=1e-6)
    moved = pose.clone()
    moved[:, 2] += 0.1  # changes the frame differences at frames 2 and 3, the pose at frame 2 only
    diff = (im(feats, moved) - out).abs().amax(dim=(0, 2))
    assert diff[2] > 1e-4 and torch.all(diff[[0, 1, 3, 4, 5]] == 0)


@pytest.mark.parametrize("row", ["ga", "ga+em", "ga+im", "em+im"])
def test_table3_rows_are_the_full_model_minus_exactly_the_named_modules(row):
    from hmrmamba.models import TABLE3_ABLATIONS

    names = ["ga", "ga+em", "ga+im", "em+im", "full"]
    flags = dict(zip(names, TABLE3_ABLATIONS))
    assets = random_mesh_assets(sizes=(200, 60, 20))
    full = {k for k, _ in build("tiny", assets=assets, **flags["full"]).named_parameters()}
    part = {k for k, _ in build("tiny", assets=assets, **flags[row]).named_parameters()}
    assert part <= full
    removed = full - part
    owners = {"ga": "lifter.ga_blocks", "em": "reconstructor.context.explicit", "im": "reconstructor.context.implicit"}
    dropped = [m for m in ("ga", "em", "im") if not flags[row][m]]
    if "em" in dropped and "im" in dropped:  # no motion source left: the motion attention is absent
        owners["em"] = owners["im"] = "reconstructor.context"
    # the attention's key/value projections shrink with one source fewer; nothing else changes
    shape_only = {"reconstructor.context.kv_norm.weight", "reconstructor.context.kv_norm.bias",
                  "reconstructor.context.w_k.weight", "reconstructor.context.w_v.weight"}
    for k in removed:
        assert any(k.startswith(owners[m]) for m in dropped), k
    for m in dropped:
        assert any(k.startswith(owners[m]) for k in removed), m
    full_shapes = dict((k, v.shape) for k, v in build("tiny", assets=assets, **flags["full"]).named_parameters())
    part_shapes = dict((k, v.shape) for k, v in build("tiny", assets=assets, **flags[row]).named_parameters())
    changed = {k for k in part_shapes if part_shapes[k] != full_shapes[k]}
    assert changed <= shape_only


def test_template_posing_gradients_repeat_bit_for_bit_on_two_threads():
    """The joints' gradient through the poser's gathers (repeated bone indices) is the same in every run:
    advanced indexing's backward added them with atomics across threads and drifted run to run."""
    from hmrmamba.models import random_mesh_assets
    from hmrmamba.models.registry import build

    poser = build("tiny", assets=random_mesh_assets()).reconstructor.template
    joints = torch.randn(256, 17, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            j = joints.clone().requires_grad_(True)
            poser(j).pow(2).sum().backward()
            grads.append(j.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    with torch.no_grad():  # index_select gathers the same values as x[:, index]
        from hmrmamba.models.template_pose import _take

        idx = poser.bone_index
        assert torch.equal(_take(joints, idx), joints[:, idx])
