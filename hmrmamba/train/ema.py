"""An exponential moving average of a model's weights, for validation and the best checkpoint.

After every optimiser step ``ema = d * ema + (1 - d) * weights`` for every parameter, with the decay
warmed up as ``d_t = min(decay, (1 + t) / (10 + t))`` (t: updates so far) so that the first steps
are not averaged with the initial weights for long; buffers (normalisation statistics, fixed
matrices) are copied. The averaged weights follow the training run with less of the last steps'
noise, which at a constant or slowly decaying learning rate is where runs of different seeds part.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hmrmamba.errors import InputError

__all__ = ["WeightAverage"]


class WeightAverage:
    """The moving average of ``module``'s weights, kept in a frozen copy of it (``.module``)."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise InputError(f"ema={decay!r}", field="ema", expected="0 < decay < 1 (0 in params: off)")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses (warmed up over the first updates)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One step towards ``module``'s current weights (the module this average was made from)."""
        weight = 1.0 - self.current_decay()
        mine, theirs = list(self.module.parameters()), [p.detach() for p in module.parameters()]
        if len(mine) != len(theirs):
            raise InputError(f"{len(theirs)} parameters for an average of {len(mine)}", field="module",
                             expected="the module the average was made from")
        torch._foreach_lerp_(mine, theirs, weight)
        self._copy_buffers(module)
        self.updates += 1

    def _copy_buffers(self, module: nn.Module) -> None:
        """The buffers are ``module``'s, not averaged (sparse ones are fixed matrices and stay as copied)."""
        for mb, b in zip(self.module.buffers(), module.buffers(), strict=True):
            if not mb.is_sparse:
                mb.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """Plain containers for a checkpoint: the decay, the update count and the averaged parameters (the
        buffers are the module's own)."""
        return {"decay": self.decay, "updates": self.updates,
                "params": {k: v.detach().cpu().clone() for k, v in self.module.named_parameters()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], module: nn.Module, *, source: str = "checkpoint") -> None:
        """Restore from :meth:`state_dict`; the buffers come from ``module`` (the resumed training model)."""
        params = dict(self.module.named_parameters())
        saved = state.get("params") or {}
        if set(saved) != set(params) or any(tuple(saved[k].shape) != tuple(p.shape) for k, p in params.items()):
            raise InputError("the weight average does not fit this model", file=source, field="extra.ema.params",
                             expected=f"the {len(params)} parameters of the model being trained")
        for k, p in params.items():
            p.copy_(saved[k])
        self._copy_buffers(module)
        self.updates = int(state["updates"])
