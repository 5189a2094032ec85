"""Spatial GA end to end: the features stage caches feature maps, the loaders hand them to the model,
and GA samples them where the joints are (eq. 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrmamba.data.h5schema import open_h5
from hmrmamba.data.loading import load_split_arrays, map_shape, normalize_keypoints
from hmrmamba.errors import InputError
from hmrmamba.features import ResNet50
from hmrmamba.features.crops import keypoints_to_crop
from hmrmamba.layout import Layout
from hmrmamba.models.ga_attention import GeometryAwareAttention
from hmrmamba.models.registry import build
from hmrmamba.train.experiment import build_model, map_statistics


def test_layer3_map_is_the_network_stage_and_the_pooled_vector_is_unchanged():
    net = ResNet50(init_seed=1).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        pooled4, map4 = net.forward_features(x)
        pooled3, map3 = net.forward_features(x, map_layer="layer3")
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        expect = net.layer3(net.layer2(net.layer1(stem)))
    assert map3.shape == (2, 1024, 6, 4) and map4.shape == (2, 2048, 3, 2)
    torch.testing.assert_close(map3, expect)
    torch.testing.assert_close(pooled3, pooled4)
    with pytest.raises(InputError, match="map_layer"):
        net.forward_features(x, map_layer="layer2")


def test_normalised_keypoints_are_the_crop_pixel_grid_ga_samples():
    """kp2d in [-1, 1] (what GA's grid_sample reads, align_corners=False) is crop pixel p at
    2 (p + 0.5) / S - 1: the map's extent is the crop's, so a joint's cell is floor((u + 1) / 2 * w)."""
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 200, (5, 17, 2))
    boxes = np.concatenate([rng.uniform(50, 150, (5, 2)), np.repeat(rng.uniform(30, 90, (5, 1)), 2, 1)], 1)
    for size in (32, 96):
        crop_px = keypoints_to_crop(kp, boxes.astype(np.float32), out_size=size)
        np.testing.assert_allclose(normalize_keypoints(kp, boxes), 2 * (crop_px + 0.5) / size - 1, atol=1e-5)


def test_map_statistics_known_answers():
    maps = np.zeros((7, 3, 2, 2), np.float16)
    maps[:, 1] = 5.0
    maps[:, 2, 0, 0] = 4.0  # one of four cells: mean 1, std sqrt(3)
    mean, std = map_statistics(maps, chunk=3)
    np.testing.assert_allclose(mean.numpy(), [0.0, 5.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(std.numpy(), [0.0, 0.0, 3.0 ** 0.5], atol=1e-6)
    rand = np.random.default_rng(1).normal(2.0, 3.0, (50, 4, 3, 5)).astype(np.float16)
    mean, std = map_statistics(rand, chunk=7)
    ref = rand.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), ref.mean((0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), ref.std((0, 2, 3)), rtol=1e-4)


def test_map_dropout_drops_whole_channels_of_a_frame():
    model = build("tiny", lift_only=True, map_dim=8)
    lifter = model.lifter
    lifter.encoder.feat_centre = False
    maps = torch.rand(3, 4, 8, 5, 5) + 1.0  # no zeros before dropout
    lifter.train()
    out = lifter.prepare_maps(maps)
    dropped = out == 0
    per_channel = dropped.flatten(3)
    assert bool((per_channel.all(-1) | ~per_channel.any(-1)).all())  # all cells or none
    assert 0 < float(dropped.float().mean()) < 1
    kept = ~dropped
    p = lifter.encoder.feat_drop.p
    torch.testing.assert_close(out[kept], maps[kept] / (1 - p))
    lifter.eval()
    torch.testing.assert_close(lifter.prepare_maps(maps), maps)  # unit statistics: identity in eval


def test_ga_reads_the_map_only_around_the_joints():
    """Zero offsets: GA's output depends on the cells bilinearly around each keypoint and on no other."""
    torch.manual_seed(0)
    ga = GeometryAwareAttention(16, feat_dim=12, num_heads=2, num_points=2, value_dim=6, image_query=False).eval()
    with torch.no_grad():
        ga.sampling_offsets.bias.zero_()
    t, h, w, j = 3, 6, 6, 4
    rows = torch.tensor([1, 1, 4, 3]); cols = torch.tensor([0, 3, 2, 5])
    kp = torch.stack([(2 * cols + 1.4) / w - 1, (2 * rows + 0.6) / h - 1], -1).expand(1, t, j, 2)  # off-centre
    touched = torch.zeros(h, w, dtype=torch.bool)
    for r, c in zip(rows.tolist(), cols.tolist()):  # 0.2 cell right of and 0.2 cell above the centre
        touched[max(r - 1, 0):r + 1, c:min(c + 2, w)] = True
    maps = torch.randn(1, t, 6, h, w)
    x = torch.randn(1, t, j, 16)
    base = ga(x, kp, feats=torch.randn(1, t, 12), spatial=maps)
    far = maps.clone()
    far[..., ~touched] += 10.0
    near = maps.clone()
    near[..., rows[2], cols[2]] += 10.0
    with torch.no_grad():
        torch.testing.assert_close(ga(x, kp, feats=None, spatial=far), base)
        changed = (ga(x, kp, feats=None, spatial=near) - base).abs().amax(-1)[0]  # (T, J)
    assert bool((changed[:, 2] > 1e-3).all()) and bool((changed[:, [0, 1, 3]] < 1e-6).all())


# ---------------------------------------------------------------------------------------------- data path


def test_features_stage_caches_layer3_maps_and_the_loader_returns_them(tiny_project):
    layout = Layout(tiny_project)
    shape = map_shape(layout, "train")
    assert shape == (1024, 2, 2)  # crop 32 through layer3 (stride 16)
    data = load_split_arrays(layout, "train", detector="cpn", with_maps=True)
    with open_h5(layout.features("train")) as h5:
        stored = h5["spatial"][()]
        assert h5.attrs["map_layer"] == "layer3"
    assert data.arrays["spatial"].dtype == np.float16
    np.testing.assert_array_equal(data.arrays["spatial"], stored)
    window = data.windows(length=8, stride=4, centred=False)[0]
    assert tuple(window["spatial"].shape) == (8, 1024, 2, 2)
    assert "spatial" not in load_split_arrays(layout, "train", detector="cpn").arrays


def test_model_takes_the_map_width_from_the_cache_and_ga_false_needs_no_maps(tiny_project, tiny_params):
    layout = Layout(tiny_project)
    model, cfg = build_model(tiny_params, layout, lift_only=True)
    assert model.map_dim == 1024 and cfg["lifter"]["map_dim"] == 1024
    assert all(blk.value_proj.in_features == 1024 for blk in model.lifter.ga_blocks)
    params = dict(tiny_params, experiment={**tiny_params["experiment"], "overrides": {"ga": False}})
    no_ga, _ = build_model(params, layout, lift_only=True)
    assert no_ga.map_dim == 0 and no_ga.lifter.ga_blocks is None
    # GA is the only module that reads the maps: without it, the model is the full one minus the GA blocks
    extra = {k for k in model.state_dict() if not k.startswith("lifter.ga_blocks.")} - set(no_ga.state_dict())
    assert extra == {"lifter.map_mean", "lifter.map_std"}


def test_a_maps_model_refuses_a_batch_without_maps(tiny_project, tiny_params):
    model, _ = build_model(tiny_params, Layout(tiny_project), lift_only=True)
    data = load_split_arrays(Layout(tiny_project), "val", detector="cpn")
    batch = data.windows(length=8, stride=4, centred=False)[0]
    with pytest.raises(InputError, match="keep_spatial"):
        model(batch["kp2d"][None], batch["conf"][None], batch["feats"][None])


def _reference_maps(lifter, spatial: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The maps' preparation written out step by step: standardise, centre over time, drop channels."""
    x = (spatial.float() - lifter.map_mean.view(-1, 1, 1)) / lifter.map_std.view(-1, 1, 1)
    if lifter.encoder.feat_centre:
        x = x - x.mean(1, keepdim=True)
    if keep is not None:
        x = x * keep / (1.0 - lifter.encoder.feat_drop.p)
    return x


@pytest.mark.parametrize("centre", [True, False])
def test_prepared_maps_match_the_step_by_step_definition(centre):
    """The folded form (one scale factor; the channel mean cancels under centring) equals the definition,
    in eval and in training with the same dropout draws."""
    model = build("tiny", lift_only=True, map_dim=8)
    lifter = model.lifter
    lifter.encoder.feat_centre = centre
    g = torch.Generator().manual_seed(3)
    lifter.set_map_stats(torch.randn(8, generator=g), torch.rand(8, generator=g) + 0.5)
    maps = (torch.randn(2, 5, 8, 3, 3, generator=g) * 3 + 1).half()
    lifter.eval()
    torch.testing.assert_close(lifter.prepare_maps(maps), _reference_maps(lifter, maps, None), rtol=1e-5, atol=1e-5)
    lifter.train()
    torch.manual_seed(7)
    got = lifter.prepare_maps(maps)
    torch.manual_seed(7)
    keep = (torch.rand(2, 5, 8, 1, 1) >= lifter.encoder.feat_drop.p).float()
    assert 0 < float(keep.mean()) < 1
    torch.testing.assert_close(got, _reference_maps(lifter, maps, keep), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_map_values_are_each_ga_blocks_projection_of_the_prepared_maps(centre, train):
    """The fused path (channels-last in one pass, 1/std folded into the stacked weights, centring after
    the projection) equals each GA block's value_proj of prepare_maps, with the same dropout draws."""
    model = build("tiny", lift_only=True, map_dim=8, depth=2)
    lifter = model.lifter.double()
    lifter.encoder.feat_centre = centre
    g = torch.Generator().manual_seed(5)
    lifter.set_map_stats(torch.randn(8, generator=g), torch.rand(8, generator=g) + 0.5)
    with torch.no_grad():
        for blk in lifter.ga_blocks:
            blk.value_proj.bias.normal_(generator=g)
    maps = (torch.randn(2, 5, 8, 3, 4, generator=g) * 3 + 1).half()
    lifter.train(train)
    torch.manual_seed(11)
    got = lifter.map_values(maps)
    torch.manual_seed(11)
    prepared = lifter.prepare_maps(maps).permute(0, 1, 3, 4, 2)
    assert len(got) == 2
    for blk, values in zip(lifter.ga_blocks, got):
        assert values.shape == (2, 5, 3, 4, 32)
        torch.testing.assert_close(values, blk.value_proj(prepared), rtol=1e-10, atol=1e-10)
    if train:
        assert 0 < float((prepared == 0).double().mean()) < 1  # dropout did draw


def test_lifter_output_is_what_each_ga_block_gives_on_its_own_maps():
    """Feeding GA the projected values equals GA projecting the prepared maps itself."""
    torch.manual_seed(2)
    model = build("tiny", lift_only=True, map_dim=8).eval()
    lifter = model.lifter
    b, t = 2, 6
    kp, conf, feats = torch.rand(b, t, 17, 2) * 2 - 1, torch.rand(b, t, 17), torch.randn(b, t, 2048)
    maps = torch.randn(b, t, 8, 3, 3)
    with torch.no_grad():
        got = lifter(kp, conf, feats, maps)
        x, f, _ = lifter.encoder(kp, conf, feats, None, return_feats=True)
        prepared = lifter.prepare_maps(maps)
        for i, (s_block, t_block) in enumerate(zip(lifter.spatial_blocks, lifter.temporal_blocks)):
            x = t_block(lifter.ga_blocks[i](s_block(x), kp, feats=f, spatial=prepared))
        want = lifter.head(lifter.norm(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    from hmrmamba.models.lifter import all_finite

    big = torch.finfo(dtype).max
    x = torch.full((1000,), big, dtype=dtype)  # the largest finite values: their sum must not count as Inf
    assert all_finite(x) and bool(torch.isfinite(x).all())
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[517] = bad
        assert all_finite(y) is False
    z = torch.tensor([big, -big], dtype=dtype)
    z[1] = float("-inf")
    z[0] = float("inf")
    assert all_finite(z) is False  # Inf + -Inf is NaN: still caught
