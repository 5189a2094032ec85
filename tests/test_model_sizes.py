"""Paper-size fidelity (Table 4): parameter counts within 2 %, per-clip cost within 10 %.

Models are built on the meta device (no memory, no arithmetic: under a second each), which the
counter handles like real tensors (checked against a CPU count). The cost of one 16-frame clip is
counted in multiply-adds (the fvcore/thop convention, which is what reproduces the paper's
"GFlops"; see docs/model.md).
"""

from __future__ import annotations

import pytest
import torch

from hmrmamba.efficiency.flops import clip_inputs, count_cost, count_parameters, model_clip_inputs, parameters_by_module
from hmrmamba.models import build, random_mesh_assets
from hmrmamba.models.registry import resolve_config

PAPER_PARAMS_M = {"hmrmamba-s": 79.63, "hmrmamba-l": 89.04, "hmrmamba-s-vanilla": 79.63, "pmce": 102.80}
PAPER_GFLOPS = {"hmrmamba-s": 7.88, "hmrmamba-l": 9.32, "hmrmamba-s-vanilla": 7.53, "pmce": 6.77}


@pytest.fixture(scope="module")
def assets():
    return random_mesh_assets()


def meta_model(name, assets, **overrides):
    with torch.device("meta"):
        return build(name, assets=assets, **overrides)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_the_paper(name, assets):
    params_m = count_parameters(meta_model(name, assets)) / 1e6
    assert params_m == pytest.approx(PAPER_PARAMS_M[name], rel=0.02), params_m


def test_where_the_parameters_go(assets):
    s = parameters_by_module(meta_model("hmrmamba-s", assets), depth=2)
    m = 1e6
    # PMCE-style reconstruction head: image residuals 3 x (2048 -> 6890), learnable 431->1723->6890,
    # 3 co-evolution blocks (dim 64) whose AdaLNs read the 2048-d context
    assert s["reconstructor.residual"] == 2048 * 6890 * 3 + 6890 * 3
    assert s["reconstructor.upsampler"] == 431 * 1723 + 1723 + 1723 * 6890 + 6890
    assert 10.0 * m < s["reconstructor.decoder"] < 10.5 * m
    assert 1.0 * m < s["reconstructor.context"] < 2.0 * m
    assert 13.0 * m < s["lifter"] < 14.0 * m
    # depth 3 -> 5 adds two (spatial block, GA, temporal block) layers
    l_lifter = count_parameters(meta_model("hmrmamba-l", assets).lifter)
    per_layer = (l_lifter - s["lifter"]) // 2
    assert per_layer * 3 == s["lifter.spatial_blocks"] + s["lifter.ga_blocks"] + s["lifter.temporal_blocks"]
    # vanilla = the same model without the kinematic scan: it loses exactly the 6 fusion convolutions
    vanilla = count_parameters(meta_model("hmrmamba-s-vanilla", assets))
    assert count_parameters(meta_model("hmrmamba-s", assets)) - vanilla == 6 * (256 * 256 * 3 + 256)


def test_ablation_flags_shrink_the_paper_model(assets):
    full = count_parameters(meta_model("hmrmamba-s", assets))
    no_ga = count_parameters(meta_model("hmrmamba-s", assets, ga=False))
    no_motion = count_parameters(meta_model("hmrmamba-s", assets, em=False, im=False))
    assert full - no_ga > 3 * 2048 * 256  # three GA modules, each with 2048-d value and query projections
    assert full - no_motion > 1e6


def test_tiny_is_small_and_cheap():
    model = build("tiny", assets=random_mesh_assets())
    cost = count_cost(model, model_clip_inputs(model, map_hw=(6, 6)))
    assert cost.params < 1_000_000
    assert cost.gmacs < 0.3
    # module breakdown: containers that are never called (ModuleList) sum their children
    parts = ("lifter.encoder", "lifter.spatial_blocks", "lifter.ga_map_projection", "lifter.ga_blocks", "lifter.temporal_blocks",
             "lifter.head")  # ga_map_projection: the GA blocks' projection of the feature maps, all blocks in one matmul
    assert all(cost.flops_under(p) > 0 for p in parts)
    assert sum(cost.flops_under(p) for p in parts) == cost.flops_under("lifter")
    assert cost.flops_under("lifter") + cost.flops_under("reconstructor") == cost.flops


def test_meta_device_count_equals_the_cpu_count():
    assets = random_mesh_assets(sizes=(300, 100, 30))
    torch.manual_seed(0)
    cpu_model = build("tiny", assets=assets, upsample_mode="learnable")
    cpu = count_cost(cpu_model, model_clip_inputs(cpu_model, frames=8))
    with torch.device("meta"):
        model = build("tiny", assets=assets, upsample_mode="learnable")
    meta = count_cost(model, model_clip_inputs(model, frames=8, device="meta"))
    assert meta.flops == cpu.flops and meta.params == cpu.params
    assert meta.flops_by_module == cpu.flops_by_module


def without_maps(name: str) -> dict:
    """Overrides that make GA sample the global features over time only (no feature maps)."""
    return {"map_dim": 0} if "map_dim" in resolve_config(name)["lifter"] else {}


@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_clip_cost_matches_the_paper_without_the_maps_projection(name, assets):
    """The paper's Table 4 is matched by the model whose GA samples no image maps (docs/benchmarks.md)."""
    cost = count_cost(meta_model(name, assets, **without_maps(name)), clip_inputs(batch=1, frames=16, device="meta"))
    assert cost.gmacs == pytest.approx(PAPER_GFLOPS[name], rel=0.10), cost.gmacs
    assert cost.flops == 2 * cost.macs


def test_sampling_the_maps_costs_their_value_projection(assets):
    """GA on 7 x 7 x 2048 maps: each of the 3 blocks projects every cell of every frame (2048 -> 256)
    once, plus trilinear instead of linear sampling; nothing else changes."""
    frames = 16
    flat = count_cost(meta_model("hmrmamba-s", assets, map_dim=0), clip_inputs(frames=frames, device="meta"))
    model = meta_model("hmrmamba-s", assets)
    maps = count_cost(model, model_clip_inputs(model, frames=frames, device="meta"))
    projection = 3 * frames * 7 * 7 * 2048 * 256
    # the time-only blocks projected the frame's global feature once per frame (2048 -> 256) instead
    assert projection - 3 * frames * 2048 * 256 <= maps.macs - flat.macs <= 1.01 * projection
    assert maps.params == flat.params  # the same projection widths: only what is projected changes
