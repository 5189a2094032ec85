"""Model family: layouts, dual-scan blocks, GA sampling, lifter, reconstructor, registry, counting.

All on tiny sizes and random tensors, CPU, a few seconds in total.
"""

from __future__ import annotations

import io

import pytest
import torch

from hmrmamba.efficiency.flops import clip_inputs, count_cost, count_parameters, model_clip_inputs, scan_macs
from hmrmamba.models import (
    TABLE3_ABLATIONS,
    VARIANTS,
    CoevolutionDecoder,
    DualScanMambaBlock,
    GeometryAwareAttention,
    GeometryAwareLifter,
    HMRMamba,
    MeshAssets,
    MeshUpsampler,
    MLPLifter,
    MotionGuidedReconstructor,
    ScanLayout,
    TransformerLifter,
    build,
    build_from_config,
    explicit_motion,
    init_coarse_vertices,
    mesh_assets_from_hierarchy,
    nearest_joint_index,
    random_mesh_assets,
    resolve_config,
    variant_config,
)
from hmrmamba.errors import InputError
from hmrmamba.models.baselines import GRUContext
from hmrmamba.models.outputs import HMROutput
from hmrmamba.skeleton import H36M17
from hmrmamba.ssm import Mamba

J = 17
ORDER = H36M17.scan_order
SMALL_MESH = (60, 20, 8)  # fine -> coarse vertex counts for fast reconstructor tests


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_lifter(**kw) -> GeometryAwareLifter:
    args = {"dim": 16, "depth": 1, "ga_heads": 2, "ga_points": 2, "d_state": 4, "feat_dim": 12, "max_frames": 8,
            "drop_path": 0.0, "mlp_ratio": 2.0, "backend": "torch"}
    args.update(kw)
    return GeometryAwareLifter(**args)


def small_recon(assets: MeshAssets, **kw) -> MotionGuidedReconstructor:
    args = {"num_joints": J, "feat_dim": 12, "max_frames": 8, "motion_dim": 8, "motion_heads": 2, "decoder_dim": 8,
            "decoder_depth": 1, "joint_heads": 2, "vertex_heads": 1, "decoder_mlp_ratio": 2.0, "drop_path": 0.0,
            "upsample_mode": "learnable", "residual": "fine", "gru_hidden": 6}
    args.update(kw)
    return MotionGuidedReconstructor(upsample=assets.upsample, vertex_init=assets.vertex_init,
                                     joint_regressor=assets.joint_regressor, **args)


def inputs(b=2, t=5, feat=12):
    return clip_inputs(batch=b, frames=t, num_joints=J, feat_dim=feat, seed=1)


# ----------------------------------------------------------------------------------------------
# layouts and the dual-scan block


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("order", [None, ORDER])
def test_layout_round_trip_is_exact(axis, order):
    x = torch.randn(2, 5, J, 3)
    layout = ScanLayout(axis, order)
    seq = layout.to_seq(x)
    assert torch.equal(layout.from_seq(seq, x.shape), x)
    n_seq = {("spatial", False): 2 * 5, ("temporal", False): 2 * J, ("spatial", True): 2 * 5, ("temporal", True): 2}
    assert seq.shape[0] == n_seq[(axis, order is not None)]


def test_kinematic_layouts_put_joints_in_scan_order():
    x = torch.randn(2, 5, J, 3)
    spatial = ScanLayout("spatial", ORDER).to_seq(x)  # (B*T, J, C)
    chain = ScanLayout("temporal", ORDER).to_seq(x)  # (B, J*T, C)
    for k, joint in enumerate(ORDER):
        assert torch.equal(spatial.view(2, 5, J, 3)[:, :, k], x[:, :, joint])
        assert torch.equal(chain[:, k * 5:(k + 1) * 5], x[:, :, joint])  # all frames of a joint, then the next
    assert ScanLayout("spatial", ORDER).inverse == H36M17.scan_inverse


def test_layout_rejects_bad_orders_and_shapes():
    with pytest.raises(ValueError, match="misses joints"):
        ScanLayout("spatial", (0, 0, 2))  # revisits are allowed (a walk), skipping joint 1 is not
    with pytest.raises(ValueError, match="axis"):
        ScanLayout("diagonal")
    with pytest.raises(ValueError, match=r"\(B, T, J, C\)"):
        ScanLayout("spatial").to_seq(torch.zeros(3, J, 4))


def _block(axis, scan, dim=8):
    return DualScanMambaBlock(dim, axis=axis, scan=scan, kinematic_order=ORDER, d_state=4, mlp_ratio=2.0,
                              backend="torch").eval()


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
@pytest.mark.parametrize("scan", ["dual", "bi"])
def test_block_shapes_and_gradients(axis, scan):
    block = _block(axis, scan)
    x = torch.randn(2, 4, J, 8, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_dual_and_bi_blocks_differ_only_by_the_fusion_conv():
    dual, bi = _block("spatial", "dual", 16), _block("spatial", "bi", 16)
    conv = count_parameters(dual.fusion_conv)
    assert conv == 16 * 16 * 3 + 16
    assert count_parameters(dual) - count_parameters(bi) == conv


def test_spatial_local_branch_follows_the_kinematic_order():
    block = _block("spatial", "dual")
    h = torch.randn(1, 2, J, 8)
    p = 6
    h2 = h.clone()
    h2[:, :, ORDER[p]] += 1.0
    a, b = block.local_branch(h), block.local_branch(h2)
    for k, joint in enumerate(ORDER):  # causal along the scan: only positions >= p change
        changed = not torch.allclose(a[:, :, joint], b[:, :, joint])
        assert changed == (k >= p), (k, joint)


def test_temporal_local_branch_runs_joint_by_joint_along_the_chain():
    block = _block("temporal", "dual")
    t, p, t0 = 4, 5, 2
    h = torch.randn(1, t, J, 8)
    h2 = h.clone()
    h2[:, t0, ORDER[p]] += 1.0
    a, b = block.local_branch(h), block.local_branch(h2)
    for k, joint in enumerate(ORDER):
        for f in range(t):
            changed = not torch.allclose(a[:, f, joint], b[:, f, joint])
            assert changed == (k > p or (k == p and f >= t0)), (k, f)


def test_spatial_block_treats_frames_independently():
    for scan in ("dual", "bi"):
        block = _block("spatial", scan)
        x = torch.randn(2, 5, J, 8)
        perm = torch.tensor([3, 0, 4, 1, 2])
        assert torch.allclose(block(x[:, perm]), block(x)[:, perm], atol=1e-5)


def test_bi_temporal_block_treats_joints_independently_and_dual_does_not():
    x = torch.randn(1, 4, J, 8)
    perm = torch.randperm(J)
    bi = _block("temporal", "bi")
    assert torch.allclose(bi(x[:, :, perm]), bi(x)[:, :, perm], atol=1e-5)
    dual = _block("temporal", "dual")
    assert not torch.allclose(dual(x[:, :, perm]), dual(x)[:, :, perm], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# GA deformable attention


def _identity_ga(feat_dim=4, heads=2, points=1):
    ga = GeometryAwareAttention(feat_dim, feat_dim=feat_dim, num_heads=heads, num_points=points)
    with torch.no_grad():
        for lin in (ga.value_proj, ga.output_proj):
            lin.weight.copy_(torch.eye(feat_dim))
            lin.bias.zero_()
        ga.sampling_offsets.bias.zero_()
    return ga


def test_ga_zero_offset_one_point_samples_the_reference_frame_exactly():
    ga = _identity_ga()
    feats = torch.randn(2, 5, 4)
    q = torch.randn(2, 5, J, 4)
    kp = torch.rand(2, 5, J, 2) * 2 - 1
    out = ga.sample(q, kp, feats=feats)
    assert torch.allclose(out, feats[:, :, None].expand(-1, -1, J, -1), atol=1e-6)


def test_ga_time_offsets_are_in_frames():
    ga = _identity_ga()
    feats = torch.randn(1, 5, 4)
    q = torch.randn(1, 5, J, 4)
    kp = torch.zeros(1, 5, J, 2)
    for dt, expect in ((1.0, torch.cat([feats[:, 1:], torch.zeros(1, 1, 4)], 1)),
                       (0.5, torch.cat([(feats[:, 1:] + feats[:, :-1]) / 2, feats[:, -1:] / 2], 1))):
        with torch.no_grad():
            ga.sampling_offsets.bias.view(2, 1, 3)[..., 2] = dt
        out = ga.sample(q, kp, feats=feats)
        assert torch.allclose(out[:, :, 3], expect, atol=1e-6)


def test_ga_samples_spatial_maps_at_the_keypoint():
    ga = _identity_ga()
    t, h, w = 3, 4, 6
    spatial = torch.randn(1, t, 4, h, w)
    rows, cols = torch.randint(0, h, (1, t, J)), torch.randint(0, w, (1, t, J))
    kp = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], -1).float()  # pixel centres
    out = ga.sample(torch.randn(1, t, J, 4), kp, spatial=spatial)
    expect = spatial[0].permute(0, 2, 3, 1)[torch.arange(t)[:, None], rows[0], cols[0]]  # (T, J, C)
    assert torch.allclose(out[0], expect, atol=1e-5)


def test_ga_attention_weights_average_the_points():
    ga = _identity_ga(points=2)
    with torch.no_grad():
        ga.sampling_offsets.bias.view(2, 2, 3)[:, 1, 2] = 1.0  # point 0 at t, point 1 at t+1; equal weights
    feats = torch.randn(1, 4, 4)
    out = ga.sample(torch.randn(1, 4, J, 4), torch.zeros(1, 4, J, 2), feats=feats)
    assert torch.allclose(out[0, :3, 0], (feats[0, :3] + feats[0, 1:]) / 2, atol=1e-6)


def test_ga_block_gradients_reach_offsets_and_values():
    ga = GeometryAwareAttention(8, feat_dim=12, num_heads=2, num_points=3)
    x = torch.randn(2, 4, J, 8, requires_grad=True)
    out = ga(x, torch.rand(2, 4, J, 2) * 2 - 1, feats=torch.randn(2, 4, 12))
    assert out.shape == x.shape
    out.square().sum().backward()
    for p in (ga.sampling_offsets.weight, ga.attention_weights.weight, ga.value_proj.weight, x):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # offsets/weights start query-independent (zero weights, as Deformable DETR), so the query
    # projection learns only once they move
    assert ga.query_proj.weight.grad.abs().sum() == 0
    torch.nn.init.normal_(ga.sampling_offsets.weight, std=0.1)
    ga.zero_grad()
    ga(x, torch.rand(2, 4, J, 2) * 2 - 1, feats=torch.randn(2, 4, 12)).square().sum().backward()
    assert ga.query_proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# lifters


@pytest.mark.parametrize("scan", ["dual", "bi"])
@pytest.mark.parametrize("with_maps", [False, True])
def test_lifter_shapes_and_gradients(scan, with_maps):
    lifter = small_lifter(scan=scan)
    x = inputs()
    if with_maps:
        x["spatial"] = torch.randn(2, 5, 12, 3, 3)
    x["kp2d"].requires_grad_(True)
    out = lifter(**x)
    assert out.shape == (2, 5, J, 3)
    out.sum().backward()
    assert x["kp2d"].grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in lifter.named_parameters() if "time_pos" not in n)


def test_ga_flag_removes_the_modules():
    on, off = small_lifter(ga=True, depth=2), small_lifter(ga=False, depth=2)
    assert off.ga_blocks is None
    ga_params = sum(count_parameters(m) for m in on.ga_blocks)
    assert ga_params > 0 and count_parameters(on) - count_parameters(off) == ga_params
    assert off(**inputs()).shape == (2, 5, J, 3)


def test_lifter_features_are_used():
    lifter = small_lifter().eval()
    x = inputs()
    y = dict(x, feats=x["feats"] + 1.0)
    assert not torch.allclose(lifter(**x), lifter(**y))


@pytest.mark.parametrize("cls", [TransformerLifter, MLPLifter])
def test_baseline_lifters(cls):
    lifter = cls(num_joints=J, feat_dim=12, max_frames=8, dim=16, depth=1).eval()
    x = inputs()
    out = lifter(**x)
    assert out.shape == (2, 5, J, 3)
    perm = torch.tensor([4, 2, 0, 1, 3])
    shuffled = {k: v[:, perm] for k, v in x.items()}
    if cls is MLPLifter:  # per-frame: permuting frames commutes
        assert torch.allclose(lifter(**shuffled), out[:, perm], atol=1e-5)
    else:  # time position embeddings make the transformer order-aware
        assert not torch.allclose(lifter(**shuffled), out[:, perm], atol=1e-5)


def test_gru_context_shape():
    assert GRUContext(feat_dim=12, hidden=5)(torch.randn(2, 4, 12)).shape == (2, 4, 10)


# ----------------------------------------------------------------------------------------------
# reconstructor


def test_explicit_motion_known_answer():
    p = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 4, 1, 1).expand(1, 4, J, 3)
    m = explicit_motion(p)
    assert torch.equal(m[0, :, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_nearest_joint_init():
    joints = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0]])
    verts = torch.tensor([[0.9, 0.1, 0], [0.1, 1.8, 0], [-0.2, 0, 0]])
    idx = nearest_joint_index(verts, joints)
    assert idx.tolist() == [1, 2, 0]
    batch = torch.randn(2, 3, 3)
    weights = torch.nn.functional.one_hot(idx, 3).float()
    assert torch.allclose(init_coarse_vertices(batch, idx), init_coarse_vertices(batch, weights))
    assert torch.allclose(init_coarse_vertices(batch, idx, torch.ones(3, 3)), batch[:, idx] + 1)


@pytest.mark.parametrize("mode", ["fixed", "learnable", "conv"])
def test_upsampler_modes_start_as_the_given_matrices(mode):
    assets = random_mesh_assets(num_joints=J, sizes=SMALL_MESH)
    dense = [u.to_dense() for u in assets.upsample]
    x = torch.randn(3, SMALL_MESH[-1], 3, requires_grad=True)
    expect = dense[1] @ (dense[0] @ x)
    up = MeshUpsampler(assets.upsample, mode)
    out = up(x)
    assert torch.allclose(out, expect, atol=1e-5)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    trainable = count_parameters(up)
    assert (trainable == 0) == (mode == "fixed")


@pytest.mark.parametrize("context", ["motion", "gru", "none"])
@pytest.mark.parametrize("residual", ["fine", "coarse", "none"])
def test_reconstructor_shapes_and_gradients(context, residual):
    assets = random_mesh_assets(num_joints=J, sizes=SMALL_MESH)
    rec = small_recon(assets, context=context, residual=residual)
    pose = torch.randn(2, 5, J, 3, requires_grad=True)
    out = rec(pose, torch.randn(2, 5, 12))
    assert out.vertices.shape == (2, 5, 60, 3) and out.coarse.shape == (2, 5, 8, 3)
    assert out.joints.shape == (2, 5, J, 3) and out["coevo_joints"].shape == (2, 5, J, 3)
    assert torch.allclose(out.joints, torch.einsum("jv,btvc->btjc", assets.joint_regressor, out.vertices), atol=1e-5)
    (out.vertices.sum() + out.joints.sum()).backward()
    assert pose.grad.abs().sum() > 0


def test_motion_flags_remove_the_modules():
    assets = random_mesh_assets(num_joints=J, sizes=SMALL_MESH)
    full = small_recon(assets)
    no_em, no_im, neither = (small_recon(assets, em=False), small_recon(assets, im=False),
                             small_recon(assets, em=False, im=False))
    assert no_em.context.explicit is None and no_im.context.implicit is None and neither.context is None
    n = count_parameters
    assert n(full) > n(no_em) > n(neither) and n(full) > n(no_im) > n(neither)
    assert n(full) - n(no_im) >= n(full.context.implicit)
    pose, feats = torch.randn(1, 4, J, 3), torch.randn(1, 4, 12)
    assert torch.equal(neither.contextualise(pose, feats), feats)


def test_motion_context_starts_as_the_image_features_and_depends_on_motion():
    assets = random_mesh_assets(num_joints=J, sizes=SMALL_MESH)
    rec = small_recon(assets).eval()
    pose, feats = torch.randn(1, 4, J, 3), torch.randn(1, 4, 12)
    assert torch.allclose(rec.contextualise(pose, feats), feats)  # W_O zero-initialised
    torch.nn.init.normal_(rec.context.w_o.weight)
    a = rec.contextualise(pose, feats)
    moved = pose.clone()
    moved[:, 2:] += 0.1  # a jump between frames 1 and 2 changes M_exp
    assert not torch.allclose(a, rec.contextualise(moved, feats))


def test_mesh_assets_are_validated():
    a = random_mesh_assets(num_joints=J, sizes=SMALL_MESH)
    with pytest.raises(ValueError, match="joint_regressor"):
        MeshAssets(a.upsample, a.vertex_init, a.joint_regressor[:, :10]).validate(J)
    with pytest.raises(ValueError, match="vertex_init"):
        MeshAssets(a.upsample, a.vertex_init[:3], a.joint_regressor).validate(J)
    with pytest.raises(ValueError, match="upsample"):
        MeshAssets(a.upsample[::-1], a.vertex_init, a.joint_regressor).validate(J)


def test_mesh_assets_from_a_computed_hierarchy():
    trimesh = pytest.importorskip("trimesh")
    from hmrmamba.body.mesh_sampling import compute_downsampling

    sphere = trimesh.creation.icosphere(subdivisions=3)  # 642 vertices
    hierarchy = compute_downsampling(sphere.vertices, sphere.faces, sizes=(160, 40))
    reg = torch.rand(J, 642, dtype=torch.float64)
    reg = (reg / reg.sum(1, keepdim=True)).numpy()
    assets = mesh_assets_from_hierarchy(hierarchy, sphere.vertices, reg, with_offsets=True)
    assets.validate(J)
    assert [tuple(u.shape) for u in assets.upsample] == [(160, 40), (642, 160)]
    coarse = torch.as_tensor(hierarchy.D[1] @ (hierarchy.D[0] @ sphere.vertices))
    joints = torch.as_tensor(reg @ sphere.vertices)
    assert torch.equal(assets.vertex_init, torch.cdist(coarse, joints).argmin(1))
    assert torch.allclose(init_coarse_vertices(joints[None].float(), assets.vertex_init, assets.coarse_offsets)[0],
                          coarse.float(), atol=1e-6)
    # the upsampled coarse template stays on the unit sphere's surface, within the chord error
    fine = MeshUpsampler(assets.upsample, "fixed")(coarse[None].float())[0]
    assert (fine - torch.as_tensor(sphere.vertices).float()).norm(dim=1).max() < 0.2


def test_coevolution_decoder_shapes():
    dec = CoevolutionDecoder(num_joints=J, num_vertices=8, dim=8, depth=2, cond_dim=6, joint_heads=2, vertex_heads=1)
    j, v = dec(torch.randn(3, J, 3), torch.randn(3, 8, 3), torch.randn(3, 6))
    assert j.shape == (3, J, 3) and v.shape == (3, 8, 3)


# ----------------------------------------------------------------------------------------------
# full model and registry


@pytest.fixture(scope="module")
def tiny():
    return build("tiny", assets=random_mesh_assets(num_joints=J, sizes=(200, 60, 20)))


def test_full_model_outputs_and_lift_only(tiny):
    tiny.eval()
    x = model_clip_inputs(tiny, batch=2, frames=6, seed=3, map_hw=(3, 3))
    out = tiny(**x)
    assert isinstance(out, HMROutput)
    assert out.pose3d.shape == (2, 6, J, 3) and out.vertices.shape == (2, 6, 200, 3)
    assert out["joints"].shape == (2, 6, J, 3) and out.coarse.shape == (2, 6, 20, 3)
    assert set(out.keys()) == {"pose3d", "vertices", "joints", "coarse", "coevo_joints"}
    lift = tiny(**x, lift_only=True)
    assert lift.vertices is None and list(lift.keys()) == ["pose3d"]
    assert torch.allclose(lift.pose3d, out.pose3d)
    lift_model = build("tiny", lift_only=True)
    assert lift_model.reconstructor is None and lift_model(**x).vertices is None


def test_decoding_chosen_frames_equals_those_frames_of_the_full_decode(tiny):
    tiny.eval()
    x = model_clip_inputs(tiny, batch=2, frames=7, seed=5, map_hw=(3, 3))
    full = tiny(**x)
    frames = torch.tensor([0, 3, 6])
    part = tiny(**x, decode_frames=frames)
    assert torch.equal(part.pose3d, full.pose3d)  # the lifter still returns every frame
    for key in ("vertices", "joints", "coarse", "coevo_joints"):
        assert part[key].shape[1] == 3
        assert torch.allclose(part[key], full[key][:, frames], atol=1e-5), key
    one = tiny(**x, decode_frames=torch.tensor([6]))  # the evaluation protocol's middle frame
    assert torch.allclose(one.vertices[:, 0], full.vertices[:, 6], atol=1e-5)


@pytest.mark.parametrize("frames", [torch.tensor([7]), torch.tensor([-1]), torch.tensor([], dtype=torch.long),
                                    torch.tensor([0.5]), torch.tensor([[0, 1]])])
def test_decode_frames_out_of_range_or_not_integers_are_refused(tiny, frames):
    x = model_clip_inputs(tiny, batch=1, frames=7, seed=6, map_hw=(3, 3))
    with pytest.raises(InputError, match="frames"):
        tiny(**x, decode_frames=frames)


def test_full_model_trains_one_step(tiny):
    tiny.train()
    x = model_clip_inputs(tiny, batch=2, frames=4, seed=4, map_hw=(3, 3))
    opt = torch.optim.SGD(tiny.parameters(), lr=1e-3)
    out = tiny(**x)
    loss = sum(out[k].square().mean() for k in ("pose3d", "vertices", "joints", "coevo_joints"))
    loss.backward()
    assert all(p.grad is not None for n, p in tiny.named_parameters() if "time_pos" not in n)
    opt.step()


def test_state_dict_round_trip_with_weights_only(tiny):
    tiny.eval()
    buf = io.BytesIO()
    torch.save(tiny.state_dict(), buf)
    buf.seek(0)
    other = build("tiny", assets=random_mesh_assets(num_joints=J, sizes=(200, 60, 20)))
    other.load_state_dict(torch.load(buf, weights_only=True))
    other.eval()
    x = model_clip_inputs(tiny, batch=1, frames=5, seed=5, map_hw=(3, 3))
    assert torch.allclose(tiny(**x).vertices, other(**x).vertices)


@pytest.mark.parametrize("bad, match", [
    ({"kp2d": torch.zeros(1, 4, 16, 2)}, r"kp2d.*\(B, T<=16, J=17, 2\)"),
    ({"kp2d": torch.zeros(1, 17, 17, 2)}, r"T<=16"),
    ({"feats": torch.zeros(1, 4, 100)}, r"feats.*\(1, 4, 2048\)"),
    ({"conf": torch.zeros(1, 4, 16)}, r"conf.*\(1, 4, 17\)"),
    ({"spatial": torch.zeros(1, 4, 3, 2, 2)}, r"spatial.*\(B, T, C, h, w\).*\(1, 4, 1024\)"),
])
def test_wrong_shapes_name_the_expected_shape(tiny, bad, match):
    x = model_clip_inputs(tiny, batch=1, frames=4, map_hw=(3, 3))
    x.update(bad)
    with pytest.raises(ValueError, match=match):
        tiny(**x)


@pytest.mark.parametrize("field", ["kp2d", "conf", "feats", "spatial"])
def test_nan_inputs_are_rejected(tiny, field):
    x = model_clip_inputs(tiny, batch=1, frames=4, map_hw=(3, 3))
    x[field] = x[field].clone()
    x[field].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=f"'{field}'.*NaN"):
        tiny(**x)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'hmrmamba-xl'.*one of"):
        build("hmrmamba-xl")
    with pytest.raises(ValueError, match="unknown override 'gaa'"):
        build("tiny", gaa=False)
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_config("tiny", drop_path=0.3)
    with pytest.raises(ValueError, match="assets"):
        build("tiny")
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_config("tiny", {"lifter": {"num_points": 3}})
    with pytest.raises(ValueError, match="lifter kind"):
        resolve_config("tiny", {"lifter": {"kind": "lstm"}})


def test_registry_overrides_and_config_round_trip():
    cfg = resolve_config("hmrmamba-s", {"lifter": {"dim": 32}}, ga=False, em=False, depth=2, max_frames=8)
    assert cfg["lifter"]["ga"] is False and cfg["reconstructor"]["em"] is False
    assert cfg["lifter"]["dim"] == 32 and cfg["lifter"]["depth"] == 2 and cfg["max_frames"] == 8
    assert VARIANTS["hmrmamba-s"]["lifter"]["ga"] is True  # the table is not modified
    assert variant_config("hmrmamba-s-vanilla")["lifter"]["scan"] == "bi"
    assert variant_config("hmrmamba-l")["lifter"]["depth"] == 5
    assets = random_mesh_assets(num_joints=J, sizes=(200, 60, 20))
    tiny_cfg = resolve_config("tiny", em=False)
    a, b = build_from_config(tiny_cfg, assets=assets), build("tiny", assets=assets, em=False)
    assert count_parameters(a) == count_parameters(b)
    assert a.reconstructor.context.explicit is None


def test_variant_table_is_plain_data():
    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        return x is None or isinstance(x, (bool, int, float, str))
    assert all(plain(v) for v in VARIANTS.values())
    assert {"hmrmamba-s", "hmrmamba-l", "hmrmamba-s-vanilla", "pmce", "tiny"} <= set(VARIANTS)


def test_table3_ablations_build_and_drop_parameters():
    assets = random_mesh_assets(num_joints=J, sizes=(200, 60, 20))
    sizes = {tuple(sorted(a.items())): count_parameters(build("tiny", assets=assets, **a)) for a in TABLE3_ABLATIONS}
    full = sizes[(("em", True), ("ga", True), ("im", True))]
    assert all(n <= full for n in sizes.values()) and len(set(sizes.values())) == len(sizes)


def test_hmrmamba_wraps_any_lifter():
    model = HMRMamba(MLPLifter(num_joints=J, feat_dim=12, max_frames=8, dim=8), None)
    assert model(**inputs()).pose3d.shape == (2, 5, J, 3)


# ----------------------------------------------------------------------------------------------
# counting


def test_mamba_flops_match_the_analytic_count():
    d, b, length = 16, 2, 7
    m = Mamba(d, d_state=4, backend="torch")
    di, r, n, k = m.d_inner, m.dt_rank, m.d_state, m.d_conv

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    cost = count_cost(Wrap(), {"x": torch.randn(b, length, d)})
    tokens = b * length
    conv = b * length * di * k  # the causal conv: k multiply-adds per output (its addcmul taps)
    macs = tokens * (d * 2 * di + di * (r + 2 * n) + r * di + di * d) + conv + scan_macs(b, length, di, n)
    assert cost.macs == macs and cost.flops == 2 * macs


def test_cpu_attention_and_grid_sample_are_counted():
    class Attn(torch.nn.Module):
        def forward(self, q):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    q = torch.randn(2, 3, 10, 8)
    assert count_cost(Attn(), {"q": q}).flops == 2 * (2 * 2 * 3 * 10 * 10 * 8)
    ga = _identity_ga()
    x = {"x": torch.randn(1, 5, J, 4), "keypoints": torch.zeros(1, 5, J, 2), "feats": torch.randn(1, 5, 4)}
    cost = count_cost(ga, x)
    linear_macs = 5 * 4 * 4 + 5 * 4 * 4 + 5 * J * 4 * (2 * 1 * 3 + 2 * 1) + 5 * J * 4 * 4  # query, value, offsets+weights, out
    grid_macs = 4 * 2 * 2 * 5 * J * 1  # bilinear: 4 per (head, channel, query, point)
    assert cost.macs == linear_macs + grid_macs


def test_fixed_upsampling_runs_in_csr_and_equals_the_coo_product():
    """Without gradients the fixed (sparse) upsampling multiplies through a cached CSR copy: the same
    values as the COO product; with gradients it keeps the COO product (training numerics unchanged);
    deep copies and dtype moves still work."""
    import copy

    from hmrmamba.models.reconstructor import MeshUpsampler

    gen = torch.Generator().manual_seed(0)
    mats = [(torch.rand(40, 12, generator=gen) * (torch.rand(40, 12, generator=gen) < 0.2)).to_sparse().coalesce(),
            (torch.rand(90, 40, generator=gen) * (torch.rand(90, 40, generator=gen) < 0.1)).to_sparse().coalesce()]
    up = MeshUpsampler(mats, mode="fixed")
    x = torch.randn(2, 12, 3, generator=gen, requires_grad=True)
    y = up(x)
    h = x.detach().permute(1, 0, 2).reshape(12, 6)
    ref = torch.sparse.mm(mats[1], torch.sparse.mm(mats[0], h)).view(90, 2, 3).permute(1, 0, 2)
    assert torch.equal(y, ref)
    y.sum().backward()
    dense = mats[1].to_dense() @ mats[0].to_dense()  # d sum / d x = column sums of the product
    assert torch.allclose(x.grad, dense.sum(0)[None, :, None].expand(2, 12, 3), atol=1e-6)
    with torch.no_grad():
        assert torch.equal(up(x), ref)  # the CSR path
    from hmrmamba.models.reconstructor import _CSR_OF

    assert any(ref_() is up.matrix_0 for ref_, _ in _CSR_OF.values())
    twin = copy.deepcopy(up)
    assert torch.equal(twin(x.detach()), y.detach())
    assert torch.allclose(up.double()(x.detach().double()), y.detach().double(), atol=1e-6)
    with torch.inference_mode():
        fresh = MeshUpsampler(mats, mode="fixed")
        fresh(x.detach())  # the CSR copy made under inference mode must still serve autograd afterwards
    fresh(x).sum().backward()


def test_uniform_dropout_keeps_dropout_semantics():
    from hmrmamba.models.dual_scan import UniformDropout

    x = torch.rand(64, 32, 256) + 0.5  # no zeros of its own
    drop = UniformDropout(0.3)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    assert abs(1.0 - kept.float().mean().item() - 0.3) < 0.01  # 524k draws: the std of the rate is 6e-4
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded: the same mask
    assert torch.equal(UniformDropout(0.0).train()(x), x)
