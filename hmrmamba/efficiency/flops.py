"""Parameter, FLOP and MAC counting for the model family (Table 4).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add for
matmuls, convolutions and attention) plus formulas for what it counts as zero:

- the CPU fused attention ``aten._scaled_dot_product_flash_attention_for_cpu`` (same formula as the
  CUDA kernels: ``QK^T`` and ``AV``);
- ``grid_sample`` (2-D bilinear: 4 multiply-adds per output element; 3-D trilinear: 8);
- sparse @ dense (``aten._sparse_addmm`` for COO, ``aten.mm`` with a CSR operand: one multiply-add per
  stored entry and output column);
- ``addcmul`` (one multiply-add per output element): the taps of the Mamba block's depthwise causal
  conv, which runs as shifted multiply-adds on channels-last tensors (:meth:`hmrmamba.ssm.Mamba._conv`);
- the **selective scan**, whose time loop is element-wise: per (batch, channel, step, state) it costs
  9 multiply-adds (VMamba's fvcore convention: ``exp(delta A)``, ``delta B u``, the state update and
  the ``C`` read-out), plus one per (batch, channel, step) for the ``D`` skip and one for the ``z``
  gate. During counting, the scan inside :class:`hmrmamba.ssm.Mamba` is routed through an opaque op
  (registered lazily under ``hmrmamba_flops::selective_scan``) so that its inner kernels are not
  counted twice.

Element-wise activations, norms and softmax are not counted (as fvcore/thop do not).
``macs = flops / 2`` is the fvcore/thop convention ("GFLOPs" in most HMR papers, PMCE/ARTS/HMRMamba
included: one multiply-add = one "FLOP"); docs/model.md states which of the two reproduces Table 4.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "CostReport",
    "clip_inputs",
    "cost_table",
    "count_cost",
    "count_parameters",
    "parameters_by_module",
    "scan_macs",
]


@dataclass
class CostReport:
    """Cost of one forward pass. ``flops``: 2 per multiply-add; ``macs``: multiply-adds;
    ``flops_by_module``: FLOPs per called module, keyed like ``named_modules()`` (``""`` is the root)."""

    params: int
    flops: int
    flops_by_module: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def flops_under(self, path: str) -> int:
        """FLOPs of module ``path``; for a container that is never called itself (``nn.ModuleList``),
        the sum over its called children."""
        if path in self.flops_by_module:
            return self.flops_by_module[path]
        prefix = path + "."
        return sum(v for k, v in self.flops_by_module.items()
                   if k.startswith(prefix) and "." not in k[len(prefix):])

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "params_m": self.mparams, "flops": self.flops, "gflops": self.gflops,
                "macs": self.macs, "gmacs": self.gmacs, "flops_by_module": dict(self.flops_by_module)}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def parameters_by_module(module: nn.Module, depth: int = 2) -> dict[str, int]:
    """Parameter counts per child path up to ``depth`` levels, e.g. ``{"lifter": ..., "lifter.encoder": ...}``."""
    out: dict[str, int] = {}
    for name, sub in module.named_modules():
        if name and name.count(".") < depth:
            out[name] = count_parameters(sub)
    return out


def scan_macs(batch: int, length: int, d_inner: int, d_state: int, *, with_d: bool = True,
              with_z: bool = True) -> int:
    """Multiply-adds of one selective scan u (batch, d_inner, length) with d_state states."""
    n = 9 * batch * length * d_inner * d_state
    return n + (batch * d_inner * length if with_d else 0) + (batch * d_inner * length if with_z else 0)


# ----------------------------------------------------------------------------------------------
# formulas for ops FlopCounterMode counts as zero (all in FLOPs = 2 x multiply-adds)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def _grid_2d_flop(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    n, c = input_shape[:2]
    return 2 * 4 * n * c * grid_shape[1] * grid_shape[2]


def _grid_3d_flop(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    n, c = input_shape[:2]
    return 2 * 8 * n * c * grid_shape[1] * grid_shape[2] * grid_shape[3]


def _addcmul_flop(self_shape, t1_shape, t2_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(out_shape if out_shape is not None else torch.broadcast_shapes(self_shape, t1_shape, t2_shape))


def _sparse_addmm_flop(self_t, sparse, dense, *args, out_val=None, **kwargs) -> int:
    return 2 * int(sparse._nnz()) * int(dense.shape[-1])


_sparse_addmm_flop._get_raw = True  # type: ignore[attr-defined]


def _mm_flop(a, b, *args, out_val=None, **kwargs) -> int:
    """``aten.mm``: a sparse (CSR) left operand costs one multiply-add per stored entry and output
    column, as ``_sparse_addmm``; dense operands as torch's own count (2 m k n)."""
    if a.layout != torch.strided:
        return 2 * int(a._nnz()) * int(b.shape[-1])
    return 2 * int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])


_mm_flop._get_raw = True  # type: ignore[attr-defined]


def _scan_flop(u_shape, delta_shape, a_shape, b_shape, c_shape, d_shape=None, z_shape=None, *args,
               out_shape=None, **kwargs) -> int:
    batch, d_inner, length = u_shape
    return 2 * scan_macs(batch, length, d_inner, a_shape[1], with_d=d_shape is not None, with_z=z_shape is not None)


@functools.lru_cache(maxsize=1)
def _scan_op():
    """The opaque counting op (defined once, on first use, never at import)."""
    from hmrmamba.ssm.scan import selective_scan

    @torch.library.custom_op("hmrmamba_flops::selective_scan", mutates_args=())
    def _op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
            delta_softplus: bool) -> torch.Tensor:
        return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)

    @_op.register_fake
    def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        return torch.empty_like(u)

    return torch.ops.hmrmamba_flops.selective_scan


@contextlib.contextmanager
def _opaque_scan() -> Iterator[Any]:
    """Route ``Mamba``'s scan through the counting op while the context is open."""
    from unittest import mock

    import hmrmamba.ssm.mamba as mamba_module
    from hmrmamba.ssm.backend import channels_first_call

    op = _scan_op()
    original = mamba_module.scan_channels_last

    def counted(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False, initial_state=None, backend="auto"):
        """Mamba's channels-last call: u, delta, z (B, L, D); B, C (B, L, N) -> (B, L, D)."""
        if return_last_state or initial_state is not None:
            return original(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                            return_last_state=return_last_state, initial_state=initial_state, backend=backend)
        return channels_first_call(lambda *a, z=None: op(*a, z, delta_bias, delta_softplus), u, delta, A, B, C, D, z)

    with mock.patch.object(mamba_module, "scan_channels_last", counted):
        yield op


#: cells of the feature maps GA samples when cost is counted: a 224-px crop through layer4 (SPIN's map)
PAPER_MAP_HW = (7, 7)


def clip_inputs(*, batch: int = 1, frames: int = 16, num_joints: int = 17, feat_dim: int = 2048,
                spatial_hw: tuple[int, int] | None = None, map_dim: int = 0, seed: int = 0,
                device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Random model inputs of one clip: kp2d (B, T, J, 2) in [-1, 1], conf (B, T, J), feats (B, T, F)
    [, spatial (B, T, C, h, w) with C = ``map_dim`` or F when ``spatial_hw`` is given]."""
    g = torch.Generator().manual_seed(seed)
    out = {"kp2d": torch.rand(batch, frames, num_joints, 2, generator=g) * 2 - 1,
           "conf": torch.rand(batch, frames, num_joints, generator=g),
           "feats": torch.rand(batch, frames, feat_dim, generator=g)}
    if spatial_hw is not None:
        out["spatial"] = torch.rand(batch, frames, map_dim or feat_dim, *spatial_hw, generator=g)
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def model_clip_inputs(model: nn.Module, *, batch: int = 1, frames: int = 16, seed: int = 0,
                      map_hw: tuple[int, int] = PAPER_MAP_HW,
                      device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """:func:`clip_inputs` of the shapes ``model`` (an HMRMamba) takes, with the feature maps
    (``map_hw`` cells) when its GA samples them."""
    lifter = model.lifter
    map_dim = int(getattr(model, "map_dim", 0))
    return clip_inputs(batch=batch, frames=frames, num_joints=int(lifter.num_joints),
                       feat_dim=int(getattr(lifter, "feat_dim", 2048)), map_dim=map_dim,
                       spatial_hw=tuple(map_hw) if map_dim else None, seed=seed, device=device)


def count_cost(model: nn.Module, inputs: Mapping[str, torch.Tensor], *,
               forward_kwargs: Mapping[str, Any] | None = None) -> CostReport:
    """Parameters and forward FLOPs of ``model(**inputs, **forward_kwargs)`` (eval mode, no grad)."""
    aten = torch.ops.aten
    with _opaque_scan() as scan_op:
        mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
                   aten.grid_sampler_2d: _grid_2d_flop,
                   aten.grid_sampler_3d: _grid_3d_flop,
                   aten._sparse_addmm: _sparse_addmm_flop,
                   aten.mm: _mm_flop,
                   aten.addcmul: _addcmul_flop,
                   aten.addcmul_: _addcmul_flop,
                   scan_op: _scan_flop}
        was_training = model.training
        model.eval()
        try:
            counter = FlopCounterMode(display=False, custom_mapping=mapping)
            with torch.no_grad(), counter:
                model(**inputs, **(forward_kwargs or {}))
        finally:
            model.train(was_training)
    root = type(model).__name__
    by_module = {}
    for name, ops in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        by_module[key] = int(sum(ops.values()))
    return CostReport(params=count_parameters(model), flops=int(counter.get_total_flops()),
                      flops_by_module=by_module)


def cost_table(names: list[str] | tuple[str, ...] = ("hmrmamba-s", "hmrmamba-l", "hmrmamba-s-vanilla", "pmce"), *,
               frames: int = 16, assets: Any = None) -> str:
    """A markdown table of parameters, GMACs and GFLOPs per variant for one clip of ``frames`` frames
    (random mesh assets of the real sizes unless ``assets`` is given)."""
    from hmrmamba.models import build, random_mesh_assets

    assets = random_mesh_assets() if assets is None else assets
    lines = ["| model | #P (M) | GMACs / clip | GFLOPs / clip (2 per MAC) |", "|---|---:|---:|---:|"]
    for name in names:
        model = build(name, assets=assets)
        cost = count_cost(model, model_clip_inputs(model, frames=frames))
        lines.append(f"| {name} | {cost.mparams:.2f} | {cost.gmacs:.2f} | {cost.gflops:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m hmrmamba.efficiency.flops [variant ...]
    import sys

    print(cost_table(tuple(sys.argv[1:]) or ("hmrmamba-s", "hmrmamba-l", "hmrmamba-s-vanilla", "pmce")))
