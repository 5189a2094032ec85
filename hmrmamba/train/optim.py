"""The optimiser's parameter groups: weight decay on weight matrices only.

The convention of mamba-ssm and the Vim/timm training scripts: no weight decay on

- parameters marked ``p._no_weight_decay = True`` (mamba-ssm's attribute: ``A_log`` and ``D`` of
  every :class:`hmrmamba.ssm.Mamba`),
- normalisation parameters (``LayerNorm``, ``GroupNorm``, batch/instance norms: weight and bias),
- biases (names ending in ``bias``) and any other parameter with fewer than two dimensions;

every other trainable parameter (Linear / Conv weights, embeddings) decays at the configured rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["NO_DECAY_RULE", "build_adamw", "no_weight_decay", "parameter_groups"]

#: One line for checkpoints' configs: a run whose optimiser groups differ never resumes another's.
NO_DECAY_RULE = "adamw; no weight decay on _no_weight_decay (A_log, D), norms, biases, 1-D params"

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the parameters that must not decay."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if (getattr(p, "_no_weight_decay", False) or isinstance(module, _NORMS)
                    or p_name.endswith("bias") or p.dim() < 2):
                names.add(full)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over ``model``'s trainable parameters, each parameter in exactly one:
    ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]``
    (parameters shared by several modules are listed once, as ``named_parameters`` does; an empty
    group is left out)."""
    skip = no_weight_decay(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_adamw(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (both training stages)."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=float(lr), weight_decay=float(weight_decay))
