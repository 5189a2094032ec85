"""Optimiser parameter groups: no weight decay on A_log, D, norms and biases (mamba-ssm's convention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hmrmamba.models import build, random_mesh_assets
from hmrmamba.ssm import Mamba
from hmrmamba.train.optim import build_adamw, no_weight_decay, parameter_groups


@pytest.fixture(scope="module")
def model():
    return build("tiny", assets=random_mesh_assets(sizes=(300, 100, 30)), map_dim=0)


def test_every_parameter_is_in_exactly_one_group(model):
    groups = parameter_groups(model, 0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(len(g["params"]) > 0 for g in groups)


def test_which_parameters_decay(model):
    wd = {id(p): g["weight_decay"] for g in parameter_groups(model, 0.05) for p in g["params"]}
    seen = {"A_log": 0, "D": 0, "norm": 0, "bias": 0, "linear": 0}
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, Mamba) and name in ("A_log", "D"):
                assert wd[id(p)] == 0.0, f"{mod_name}.{name}"
                seen[name] += 1
            elif isinstance(module, nn.LayerNorm):
                assert wd[id(p)] == 0.0, f"{mod_name}.{name}"
                seen["norm"] += 1
            elif name == "bias":
                assert wd[id(p)] == 0.0, f"{mod_name}.{name}"
                seen["bias"] += 1
            elif isinstance(module, nn.Linear) and name == "weight":
                assert wd[id(p)] == 0.05, f"{mod_name}.{name}"
                seen["linear"] += 1
    assert all(seen.values()), seen  # every kind was present and checked
    assert seen["A_log"] == seen["D"] == sum(isinstance(m, Mamba) for m in model.modules())


def test_the_no_weight_decay_attribute_is_honoured():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[1].weight._no_weight_decay = True
    assert no_weight_decay(net) == {"0.bias", "1.weight", "1.bias"}


def test_frozen_parameters_are_left_out_and_adamw_uses_the_groups():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    net[0].weight.requires_grad_(False)
    opt = build_adamw(net, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    assert [len(g["params"]) for g in opt.param_groups] == [3]  # the empty decayed group is left out
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]
