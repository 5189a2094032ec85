"""Causal models and streaming: stepping frame by frame equals the whole clip, nothing reads the future,
the state has a constant size, and the non-causal variants are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrmamba.errors import InputError
from hmrmamba.models import (
    DualScanMambaBlock,
    GeometryAwareAttention,
    MotionAwareAttention,
    build,
    random_mesh_assets,
    resolve_config,
)
from hmrmamba.demo.streaming import OnlineModel
from hmrmamba.skeleton import H36M17


@pytest.fixture(scope="module")
def assets():
    return random_mesh_assets(seed=1)


def _jitter(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter, so zero-initialised layers (gates, FiLM, W_O, residual) matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def _inputs(b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, t, 17, 2, generator=g) * 2 - 1, torch.rand(b, t, 17, generator=g),
            torch.randn(b, t, 2048, generator=g))


@pytest.fixture(scope="module")
def online_model(assets):
    torch.manual_seed(0)
    return _jitter(build("tiny-online", assets=assets))


def _step_all(model, kp, conf, feats):
    state = model.init_state(kp.shape[0])
    outs = []
    for t in range(kp.shape[1]):
        out, state = model.step(kp[:, t:t + 1], conf[:, t:t + 1], feats[:, t:t + 1], state)
        outs.append(out)
    return {k: torch.cat([o[k] for o in outs], 1) for k in outs[0]}, state


@torch.no_grad()
def test_stepping_equals_the_whole_clip(online_model):
    """The key property: T = 24 > max_frames, so the GA look-back and the attention window both slide."""
    kp, conf, feats = _inputs(2, 24)
    whole = online_model(kp, conf, feats)
    stepped, _ = _step_all(online_model, kp, conf, feats)
    for key in ("pose3d", "vertices", "joints", "coarse"):
        scale = float(whole[key].abs().max())
        assert scale > 0.05  # outputs are not trivially zero
        torch.testing.assert_close(stepped[key], whole[key], atol=1e-5 * max(1.0, scale), rtol=1e-5)


@torch.no_grad()
def test_causal_model_never_reads_later_frames(online_model):
    kp, conf, feats = _inputs(1, 30, seed=1)
    base = online_model(kp, conf, feats)
    kp2, feats2 = kp.clone(), feats.clone()
    kp2[:, 20:] += 0.3
    feats2[:, 20:] *= -1.0
    changed = online_model(kp2, conf, feats2)
    assert torch.equal(changed.vertices[:, :20], base.vertices[:, :20])
    assert (changed.vertices[:, 20:] - base.vertices[:, 20:]).abs().max() > 1e-3


@torch.no_grad()
def test_state_size_is_constant(online_model):
    def numel(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel()
        if isinstance(obj, (list, tuple)):
            return sum(numel(o) for o in obj)
        if hasattr(obj, "__dataclass_fields__"):
            return sum(numel(getattr(obj, f)) for f in obj.__dataclass_fields__)
        return 0

    kp, conf, feats = _inputs(1, 24)
    _, s3 = _step_all(online_model, kp[:, :3], conf[:, :3], feats[:, :3])
    _, s24 = _step_all(online_model, kp, conf, feats)
    assert numel(s3) == numel(s24) > 0
    assert s24.lifter.frames == 24 and s24.recon.frames == 24


@torch.no_grad()
def test_online_model_matches_forward(online_model):
    kp, conf, feats = _inputs(1, 12, seed=2)
    whole = online_model(kp, conf, feats)
    online = OnlineModel(online_model)
    results = [online.step(kp[0, t].numpy(), conf[0, t].numpy(), feats[0, t].numpy()) for t in range(12)]
    assert [r.index for r in results] == list(range(12))
    np.testing.assert_allclose(np.stack([r.vertices for r in results]), whole.vertices[0].numpy(), atol=2e-5)
    online.reset()
    again = online.step(kp[0, 0].numpy(), conf[0, 0].numpy(), feats[0, 0].numpy())
    np.testing.assert_allclose(again.vertices, results[0].vertices, atol=1e-6)


@torch.no_grad()
def test_temporal_block_step_matches_forward():
    torch.manual_seed(3)
    block = _jitter(DualScanMambaBlock(16, axis="temporal", kinematic_order=H36M17.scan_order, d_state=4,
                                       causal=True), seed=3, scale=0.1)
    x = torch.randn(2, 9, 17, 16)
    whole = block(x)
    state = block.allocate_state(2, 17)
    steps = []
    for t in range(9):
        y, state = block.step(x[:, t:t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_ga_step_matches_forward_and_looks_back_only():
    torch.manual_seed(4)
    ga = _jitter(GeometryAwareAttention(16, feat_dim=8, num_heads=4, num_points=3, lookback=3), seed=4, scale=0.3)
    x, kp, feats = torch.randn(1, 10, 17, 16), torch.rand(1, 10, 17, 2) * 2 - 1, torch.randn(1, 10, 8)
    whole = ga(x, kp, feats=feats)
    values = ga.allocate_state(1)
    steps = []
    for t in range(10):
        y, values = ga.step(x[:, t:t + 1], feats[:, t:t + 1], values)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)
    # a feature more than `lookback` frames back no longer matters; a later one never does
    feats2 = feats.clone()
    feats2[:, 2] += 5.0
    changed = ga(x, kp, feats=feats2)
    assert torch.equal(changed[:, :2], whole[:, :2]) and torch.equal(changed[:, 6:], whole[:, 6:])


@torch.no_grad()
def test_motion_attention_window():
    torch.manual_seed(5)
    att = _jitter(MotionAwareAttention(num_joints=17, feat_dim=32, dim=16, num_heads=4, max_frames=4, causal=True),
                  scale=0.2)
    feats, pose = torch.randn(1, 12, 32), torch.randn(1, 12, 17, 3) * 0.3
    whole = att(feats, pose)
    feats2 = feats.clone()
    feats2[:, 3] += 3.0  # frame 3 is seen by frames 3..6 (window 4) and, through M_exp, by frame 4's motion
    changed = att(feats2, pose)
    assert torch.equal(changed[:, :3], whole[:, :3]) and torch.equal(changed[:, 8:], whole[:, 8:])
    assert (changed[:, 3:7] - whole[:, 3:7]).abs().max() > 1e-4


def test_non_causal_variants_are_unchanged(assets):
    tiny = build("tiny", assets=assets)
    online = build("tiny-online", assets=assets)
    assert "causal" not in resolve_config("tiny") and resolve_config("tiny-online")["causal"] is True
    # tiny's GA samples feature maps (their standardisation buffers); the causal form samples over time only
    assert set(tiny.state_dict()) - set(online.state_dict()) == {"lifter.encoder.time_pos", "lifter.map_mean",
                                                                 "lifter.map_std"}
    assert tiny.map_dim == 1024 and online.map_dim == 0
    assert set(online.state_dict()) <= set(tiny.state_dict())
    assert not tiny.causal and online.causal
    with pytest.raises(InputError, match="frame by frame"):
        tiny.init_state(1)
    with pytest.raises(InputError, match="causal"):
        OnlineModel(tiny)


@pytest.mark.parametrize("name, overrides, match", [
    ("hmrmamba-s-vanilla", {"causal": True}, "no causal form"),
    ("pmce", {"causal": True}, "no causal form"),
])
def test_variants_without_a_causal_form_refuse(assets, name, overrides, match):
    with pytest.raises(InputError, match=match):
        build(name, assets=assets, **overrides)


@torch.no_grad()
def test_causal_model_takes_clips_longer_than_max_frames(online_model, assets):
    kp, conf, feats = _inputs(1, 50)
    assert online_model(kp, conf, feats).vertices.shape == (1, 50, 6890, 3)
    with pytest.raises(InputError, match="T<=16"):
        build("tiny", assets=assets).eval()(kp, conf, feats)
