"""The Mamba block (selective SSM with a causal depthwise convolution and a SiLU gate), pure PyTorch.

Parameter names, shapes and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``, so a
state dict loads into either class. The recurrent state, :class:`MambaState`, uses mamba_ssm's
layout too (``conv``: the last ``d_conv`` conv inputs, oldest first; ``ssm``: the SSM state).

Three ways to run it:

- ``forward(x)``: a whole sequence, zero initial state.
- ``stream(x, state) -> (y, state)``: a chunk of any length that continues from ``state``; chunks
  fed one after another give the same output as one ``forward`` over their concatenation.
- ``step(x_t, state) -> (y_t, state)``: one token, the constant-cost recurrent form.

States are returned, never modified in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.ssm.backend import channels_first_call, check_backend_name, scan_channels_last
from hmrmamba.ssm.scan import selective_scan_ref

__all__ = ["BiMamba", "Mamba", "MambaState"]


@dataclass
class MambaState:
    """Recurrent state of one Mamba block: conv (B, d_inner, d_conv); ssm (B, d_inner, d_state) float32."""

    conv: torch.Tensor
    ssm: torch.Tensor

    def detach(self) -> MambaState:
        """The same state cut from the autograd graph (for truncated back-propagation / streaming)."""
        return MambaState(conv=self.conv.detach(), ssm=self.ssm.detach())


class Mamba(nn.Module):
    """Mamba block: x (B, L, d_model) -> y (B, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, backend: str = "auto",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise InputError(f"unknown dt_init {dt_init!r}", field="dt_init",
                             expected="'random' | 'constant'")
        if not (0 < dt_min <= dt_max):
            raise InputError(f"dt_min={dt_min}, dt_max={dt_max}", field="dt_min",
                             expected="0 < dt_min <= dt_max")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = check_backend_name(backend)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt projection: weights keep the variance of dt at init; the bias is the inverse softplus
        # of a dt drawn log-uniformly in [dt_min, dt_max], so softplus(bias) starts in that range.
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(self.d_inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real initialisation: A[d, n] = -(n + 1), stored as log(-A) in float32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: torch.Tensor, name: str = "hidden_states", length: int | None = None) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model or (
                length is not None and x.shape[1] != length):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            seq = "seqlen" if length is None else str(length)
            raise InputError(f"has shape {shape}", field=name, expected=f"(batch, {seq}, {self.d_model})")

    def _check_state(self, state: MambaState, batch: int) -> None:
        want_conv = (batch, self.d_inner, self.d_conv)
        want_ssm = (batch, self.d_inner, self.d_state)
        if tuple(state.conv.shape) != want_conv:
            raise InputError(f"has shape {tuple(state.conv.shape)}", field="state.conv",
                             expected=str(want_conv))
        if tuple(state.ssm.shape) != want_ssm:
            raise InputError(f"has shape {tuple(state.ssm.shape)}", field="state.ssm", expected=str(want_ssm))

    def _A(self) -> torch.Tensor:
        """A: (d_inner, d_state), negative."""
        return -torch.exp(self.A_log.float())

    def _conv(self, padded: torch.Tensor) -> torch.Tensor:
        """The depthwise causal conv and its SiLU, channels last: padded (B, d_conv - 1 + L, d_inner), the
        d_conv - 1 inputs before the first output first -> (B, L, d_inner). Tap k reads input t + k, as
        ``F.conv1d`` with the same weights; written as d_conv shifted multiply-adds, it needs no transpose."""
        w = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
        seqlen = padded.shape[1] - self.d_conv + 1
        bias = self.conv1d.bias if self.conv1d.bias is not None else padded.new_zeros(())
        out = torch.addcmul(bias, padded[:, :seqlen], w[:, 0])
        for k in range(1, self.d_conv):
            out.addcmul_(padded[:, k:k + seqlen], w[:, k])
        return self.act(out)

    def _scan(self, x: torch.Tensor, z: torch.Tensor, initial_state: torch.Tensor | None):
        """x, z: (B, L, d_inner), x after the conv -> y (B, L, d_inner) [, last ssm state (B, d_inner, N)]."""
        x_dbl = self.x_proj(x)  # (B, L, R + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, d_inner); bias added in the scan
        if torch.jit.is_tracing() or torch.compiler.is_exporting():  # export: the fast scan is an autograd.Function
            return channels_first_call(selective_scan_ref, x, dt, self._A(), Bm, Cm, self.D.float(), z,
                                       last_state=initial_state is not None, delta_bias=self.dt_proj.bias.float(),
                                       delta_softplus=True, return_last_state=initial_state is not None,
                                       initial_state=initial_state)
        return scan_channels_last(x, dt, self._A(), Bm, Cm, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                                  delta_softplus=True, return_last_state=initial_state is not None,
                                  initial_state=initial_state, backend=self.backend)

    # ------------------------------------------------------------------ public API
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, L, d_model) -> (B, L, d_model); causal, zero initial state."""
        self._check_input(hidden_states)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, d_inner) each
        x = self._conv(F.pad(x, (0, 0, self.d_conv - 1, 0)))
        return self.out_proj(self._scan(x, z, None))

    def allocate_state(self, batch: int, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> MambaState:
        """Zero state: conv (batch, d_inner, d_conv), ssm (batch, d_inner, d_state)."""
        device = self.out_proj.weight.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return MambaState(conv=torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
                          ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=ssm_dtype))

    def stream(self, hidden_states: torch.Tensor, state: MambaState | None = None
               ) -> tuple[torch.Tensor, MambaState]:
        """hidden_states: (B, L, d_model), state from the previous chunk -> (y (B, L, d_model), new state)."""
        self._check_input(hidden_states)
        batch, _seqlen, _ = hidden_states.shape
        if state is None:
            state = self.allocate_state(batch, device=hidden_states.device, dtype=hidden_states.dtype)
        self._check_state(state, batch)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, d_inner)
        history = torch.cat([state.conv.to(x.dtype).transpose(1, 2), x], dim=1)  # (B, d_conv + L, d_inner)
        new_conv = history[:, -self.d_conv:].transpose(1, 2).contiguous()  # (B, d_inner, d_conv)
        y, last = self._scan(self._conv(history[:, 1:]), z, state.ssm)
        return self.out_proj(y), MambaState(conv=new_conv, ssm=last)

    def step(self, hidden_states: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token: hidden_states (B, 1, d_model), state -> (y (B, 1, d_model), new state)."""
        self._check_input(hidden_states, length=1)
        batch = hidden_states.shape[0]
        self._check_state(state, batch)
        xz = self.in_proj(hidden_states[:, 0])  # (B, 2 d_inner)
        x, z = xz.chunk(2, dim=-1)
        conv = torch.cat([state.conv[..., 1:], x.unsqueeze(-1).to(state.conv.dtype)], dim=-1)  # (B, Di, W)
        x = (conv * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = self.act(x)
        dt, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        cdt = state.ssm.dtype
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(cdt) + self.dt_proj.bias.to(cdt))  # (B, Di)
        dA = torch.exp(dt.unsqueeze(-1) * self._A().to(cdt))  # (B, Di, N)
        xc = x.to(cdt)
        ssm = state.ssm * dA + (dt * xc).unsqueeze(-1) * Bm.to(cdt).unsqueeze(1)
        y = torch.matmul(ssm, Cm.to(cdt).unsqueeze(-1)).squeeze(-1) + self.D.to(cdt) * xc
        y = (y * F.silu(z.to(cdt))).to(hidden_states.dtype)
        return self.out_proj(y).unsqueeze(1), MambaState(conv=conv, ssm=ssm)


class BiMamba(nn.Module):
    """Bidirectional Mamba (Vim-style): x (B, L, d_model) -> (B, L, d_model).

    ``mamba_fwd`` scans the sequence as given; ``mamba_bwd`` (its own parameters) scans the
    reversed sequence and its output is reversed back. ``merge="mean"`` averages the two (Vim's
    ``if_divide_out``), ``merge="sum"`` adds them. With ``bidirectional=False`` only ``mamba_fwd``
    exists and the block is causal. A bidirectional block sees future tokens, so it has no
    streaming form.
    """

    def __init__(self, d_model: int, bidirectional: bool = True, merge: str = "mean", d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto", dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if merge not in ("mean", "sum"):
            raise InputError(f"unknown merge {merge!r}", field="merge", expected="'mean' | 'sum'")
        self.bidirectional = bidirectional
        self.merge = merge
        kwargs = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "dt_rank": dt_rank,
                  "dt_min": dt_min, "dt_max": dt_max, "dt_init": dt_init, "dt_scale": dt_scale,
                  "dt_init_floor": dt_init_floor, "conv_bias": conv_bias, "bias": bias, "backend": backend,
                  "device": device, "dtype": dtype}
        self.mamba_fwd = Mamba(d_model, **kwargs)
        self.mamba_bwd = Mamba(d_model, **kwargs) if bidirectional else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, L, d_model) -> (B, L, d_model)."""
        out = self.mamba_fwd(hidden_states)
        if self.mamba_bwd is None:
            return out
        back = self.mamba_bwd(hidden_states.flip(1)).flip(1)
        out = out + back
        return out * 0.5 if self.merge == "mean" else out
