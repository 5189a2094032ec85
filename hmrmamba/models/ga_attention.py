"""Geometry-aware (GA) deformable attention, paper eq. 8.

Each joint token (frame t, joint j) has a reference point ``p_i = (t, keypoint_2d)``. Its query is
"the image feature query at location i": ``q_i = LN(x_i) + W_q LN(Fimg[t])`` (the normalised token
plus a projection of its frame's global image feature; ``image_query=False`` drops the second term).
From the query it predicts, for ``M`` heads and ``K`` points, offsets ``dp_mik`` and weights
``A_mik`` (softmax over k), samples projected image features at ``p_i + dp_mik`` with
``F.grid_sample`` and aggregates::

    F'[i] = sum_m W_m [ sum_k A_mik * W'_m v(p_i + dp_mik) ]

``W'_m`` is head m's slice of one ``value_proj: feat_dim -> dim``; ``W_m`` is ``output_proj``. The
block is residual: ``x + output_proj(sample(q))``.

Two value sources:

- global per-frame features ``feats (B, T, F)``: a 1-D signal over time; only the time offset is
  used, so the sampling is along time around frame t (between frames: linear interpolation);
- spatial feature maps ``spatial (B, T, F, h, w)`` when the features stage keeps them: 3-D
  sampling (x, y, t) around (keypoint, t), trilinear.

Units: the keypoints are normalised to [-1, 1] over the feature map's extent, ``grid_sample``'s
``align_corners=False`` convention (-1 is the left/top edge, pixel i's centre is (2i+1)/w - 1); the
frame t's centre is (2t+1)/T - 1 on the time axis. Offsets are predicted in *cells* (map pixels) and
*frames* and converted, so a zero offset samples exactly the reference and an offset of one frame
samples exactly the next frame. Samples outside the clip/map read zeros (as Deformable DETR).

Causal form (``lookback=L``): time offsets are clamped to ``[-L, 0]`` frames, so a token samples
only its own and the L previous frames (linear interpolation between frames, zeros before frame
0), global features only. Positions are absolute frame indices, independent of the clip length, so
:meth:`GeometryAwareAttention.step` with a ring buffer of the last L+1 frames' values gives the
same result as the whole clip. The offsets start with every head looking back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hmrmamba.errors import InputError

__all__ = ["GeometryAwareAttention", "MapProjection"]


class MapProjection(nn.Module):
    """The value projection of feature maps for several GA blocks at once: x (..., C) channels-last,
    weight (n*D, C), bias (n*D,) or None -> (..., n*D). It has no parameters (the GA blocks own the
    weights); it is a module so that cost counters book its multiply-adds to GA."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class GeometryAwareAttention(nn.Module):
    """GA block: x (B, T, J, C), keypoints (B, T, J, 2) in [-1, 1], feats (B, T, F) or
    spatial (B, T, F, h, w) -> (B, T, J, C)."""

    def __init__(self, dim: int, *, feat_dim: int = 2048, num_heads: int = 8, num_points: int = 4,
                 image_query: bool = True, time_offset_init: float = 1.0, space_offset_init: float = 1.0,
                 lookback: int | None = None, value_dim: int | None = None):
        super().__init__()
        if lookback is not None and (isinstance(lookback, bool) or int(lookback) < 0):
            raise InputError(f"lookback={lookback}", field="lookback", expected="None (non-causal) or >= 0 frames")
        #: causal look-back in frames (None: the non-causal block)
        self.lookback = None if lookback is None else int(lookback)
        if dim % num_heads:
            raise InputError(f"dim={dim} is not divisible by num_heads={num_heads}", field="ga_heads",
                             expected="a divisor of dim")
        if num_points < 1:
            raise InputError(f"num_points={num_points}", field="ga_points", expected=">= 1")
        self.dim = dim
        self.feat_dim = feat_dim
        self.num_heads = num_heads
        self.num_points = num_points
        self.norm = nn.LayerNorm(dim)
        if image_query:
            self.query_feat_norm = nn.LayerNorm(feat_dim)
            self.query_proj = nn.Linear(feat_dim, dim)
        else:
            self.query_feat_norm = self.query_proj = None
        #: channels of what is sampled: the global features (``feat_dim``), or feature maps of their own
        #: width (``value_dim``, e.g. ResNet layer3's 1024), which must then be passed as ``spatial``
        self.value_dim = int(value_dim) if value_dim else feat_dim
        self.value_proj = nn.Linear(self.value_dim, dim)
        self.sampling_offsets = nn.Linear(dim, num_heads * num_points * 3)  # (dx cells, dy cells, dt frames)
        self.attention_weights = nn.Linear(dim, num_heads * num_points)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters(time_offset_init, space_offset_init)

    def _reset_parameters(self, time_step: float, space_step: float) -> None:
        """Deformable-DETR style: offsets start on a fixed pattern (head m looks in direction
        theta_m in the image plane, points k = 1..K further out; in time, half of the heads look back
        and half forward, 0..K-1 frames), attention starts uniform."""
        m, k = self.num_heads, self.num_points
        theta = torch.arange(m, dtype=torch.float32) * (2.0 * math.pi / m)
        xy = torch.stack([theta.cos(), theta.sin()], -1)
        xy = xy / xy.abs().max(-1, keepdim=True)[0]  # (M, 2) on the unit square
        steps = torch.arange(1, k + 1, dtype=torch.float32)  # (K,)
        sign = torch.where(torch.arange(m) % 2 == 0, -1.0, 1.0)  # (M,)
        if self.lookback is not None:  # causal: every head looks back
            sign = -torch.ones(m)
        bias = torch.empty(m, k, 3)
        bias[..., :2] = xy[:, None, :] * steps[None, :, None] * space_step
        bias[..., 2] = sign[:, None] * (steps[None, :] - 1.0) * time_step
        with torch.no_grad():
            self.sampling_offsets.weight.zero_()
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
            self.attention_weights.weight.zero_()
            self.attention_weights.bias.zero_()
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    # ------------------------------------------------------------------ sampling
    def sample(self, query: torch.Tensor, keypoints: torch.Tensor, feats: torch.Tensor | None = None,
               spatial: torch.Tensor | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 8 without the residual: query (B, T, J, C), keypoints (B, T, J, 2) -> (B, T, J, C).

        Samples ``spatial`` (B, T, F, h, w) when given, otherwise ``feats`` (B, T, F) along time.
        ``values`` (B, T, h, w, C): the maps already projected by ``value_proj`` (the lifter projects
        them for all its GA blocks at once); given, it replaces ``spatial``.
        """
        if self.lookback is not None:
            return self._sample_causal(query, feats, spatial)
        b, t, j, c = query.shape
        m, k = self.num_heads, self.num_points
        ch = c // m
        offsets = self.sampling_offsets(query).view(b, t, j, m, k, 3)
        weights = self.attention_weights(query).view(b, t, j, m, k).softmax(-1)
        t_ref = (2.0 * torch.arange(t, device=query.device, dtype=query.dtype) + 1.0) / t - 1.0  # (T,)
        t_loc = t_ref.view(1, t, 1, 1, 1) + offsets[..., 2] * (2.0 / t)  # (B, T, J, M, K)
        if values is not None or spatial is not None:
            if values is None:
                values = self.value_proj(spatial.permute(0, 1, 3, 4, 2))  # (B, T, h, w, C)
            h, w = values.shape[2:4]
            value = values.view(b, t, h, w, m, ch).permute(0, 4, 5, 1, 2, 3).reshape(b * m, ch, t, h, w)
            x_loc = keypoints[..., 0, None, None] + offsets[..., 0] * (2.0 / w)
            y_loc = keypoints[..., 1, None, None] + offsets[..., 1] * (2.0 / h)
            grid = torch.stack([x_loc, y_loc, t_loc], -1)  # (B, T, J, M, K, 3)
            grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(b * m, t * j, k, 1, 3)
            sampled = F.grid_sample(value, grid.to(value.dtype), mode="bilinear", padding_mode="zeros",
                                    align_corners=False)[..., 0]  # (B*M, ch, T*J, K)
        else:
            if feats is None:
                raise InputError("GA needs image features", field="feats", expected="(B, T, F) or spatial maps")
            if self.value_dim != self.feat_dim:
                raise InputError(f"this GA block samples {self.value_dim}-channel feature maps", field="spatial",
                                 expected=f"(B, T, {self.value_dim}, h, w) maps")
            value = self.value_proj(feats)  # (B, T, C)
            value = value.view(b, t, m, ch).permute(0, 2, 3, 1).reshape(b * m, ch, 1, t)
            grid = torch.stack([t_loc, torch.zeros_like(t_loc)], -1)  # (B, T, J, M, K, 2)
            grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(b * m, t * j, k, 2)
            sampled = F.grid_sample(value, grid.to(value.dtype), mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (B*M, ch, T*J, K)
        attn = weights.permute(0, 3, 1, 2, 4).reshape(b * m, 1, t * j, k)
        out = (sampled * attn).sum(-1)  # (B*M, ch, T*J)
        out = out.view(b, m, ch, t, j).permute(0, 3, 4, 1, 2).reshape(b, t, j, c)
        return self.output_proj(out)

    # ------------------------------------------------------------------ causal sampling
    def _time_taps(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clamped time offsets of a causal block: query (B, T, J, C) -> floor (B, M, T, J*K) int64,
        fraction (B, M, T, J*K, 1) in [0, 1), attention weights (B, M, T, J*K, 1) (softmax over K)."""
        b, t, j, _ = query.shape
        m, k = self.num_heads, self.num_points
        dt = self.sampling_offsets(query).view(b, t, j, m, k, 3)[..., 2].clamp(-float(self.lookback), 0.0)
        weights = self.attention_weights(query).view(b, t, j, m, k).softmax(-1)
        d0 = torch.floor(dt)
        frac = dt - d0
        to_heads = (lambda x: x.permute(0, 3, 1, 2, 4).reshape(b, m, t, j * k))
        return to_heads(d0).long(), to_heads(frac).unsqueeze(-1), to_heads(weights).unsqueeze(-1)

    def _combine(self, v0: torch.Tensor, v1: torch.Tensor, frac: torch.Tensor, attn: torch.Tensor,
                 shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Interpolate and weight the taps: v0, v1 (B, M, T, J*K, ch) -> output_proj(...) (B, T, J, C)."""
        b, t, j, c = shape
        out = ((v0 * (1.0 - frac) + v1 * frac) * attn).view(b, self.num_heads, t, j, self.num_points, -1).sum(4)
        return self.output_proj(out.permute(0, 2, 3, 1, 4).reshape(b, t, j, c))

    def _sample_causal(self, query: torch.Tensor, feats: torch.Tensor | None,
                       spatial: torch.Tensor | None) -> torch.Tensor:
        """Causal eq. 8 on a whole clip: query (B, T, J, C), feats (B, T, F) -> (B, T, J, C)."""
        if spatial is not None or feats is None:
            raise InputError("a causal GA block samples global features over time only", field="feats",
                             expected="feats (B, T, F) and no spatial maps")
        b, t, j, c = query.shape
        m, lb = self.num_heads, self.lookback
        d0, frac, attn = self._time_taps(query)
        value = self.value_proj(feats).view(b, t, m, c // m).transpose(1, 2)  # (B, M, T, ch)
        value = F.pad(value, (0, 0, lb, 0))  # zeros for frames -lb..-1: (B, M, lb + T, ch)
        frame = torch.arange(t, device=query.device).view(1, 1, t, 1)
        i0 = (frame + d0 + lb).reshape(b, m, -1)  # row in the padded values
        i1 = torch.minimum(frame + d0 + 1, frame).add(lb).reshape(b, m, -1)  # never past frame t
        gather = (lambda idx: value.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, c // m))
                  .view(b, m, t, -1, c // m))
        return self._combine(gather(i0), gather(i1), frac, attn, (b, t, j, c))

    def allocate_state(self, batch: int, *, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zero value buffer (batch, lookback + 1, C) of a causal block: the frames before frame 0."""
        if self.lookback is None:
            raise InputError("only a causal GA block has a recurrent form", field="lookback",
                             expected="GeometryAwareAttention(lookback=L)")
        w = self.value_proj.weight
        return torch.zeros(batch, self.lookback + 1, self.dim, device=w.device if device is None else device,
                           dtype=w.dtype if dtype is None else dtype)

    def step(self, x: torch.Tensor, feats: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame: x (B, 1, J, C), feats (B, 1, F), values (B, L+1, C) the last frames' projected
        features (oldest first) -> (x + GA (B, 1, J, C), updated values)."""
        if self.lookback is None:
            raise InputError("only a causal GA block has a recurrent form", field="lookback",
                             expected="GeometryAwareAttention(lookback=L)")
        b, _, j, c = x.shape
        m, lb = self.num_heads, self.lookback
        values = torch.cat([values[:, 1:], self.value_proj(feats)], dim=1)  # (B, L+1, C), newest last
        query = self.query(x, feats)
        d0, frac, attn = self._time_taps(query)  # (B, M, 1, J*K)
        value = values.view(b, lb + 1, m, c // m).transpose(1, 2)  # (B, M, L+1, ch)
        i0 = (d0 + lb).reshape(b, m, -1)
        i1 = torch.minimum(d0 + 1, torch.zeros_like(d0)).add(lb).reshape(b, m, -1)
        gather = (lambda idx: value.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, c // m))
                  .view(b, m, 1, -1, c // m))
        return x + self._combine(gather(i0), gather(i1), frac, attn, (b, 1, j, c)), values

    def forward(self, x: torch.Tensor, keypoints: torch.Tensor, feats: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, J, C), keypoints (B, T, J, 2) in [-1, 1], feats (B, T, F) [, spatial (B, T, F, h, w)
        or its projection ``values`` (B, T, h, w, C)] -> x + GA(q), (B, T, J, C)."""
        return x + self.sample(self.query(x, feats), keypoints, feats=feats, spatial=spatial, values=values)

    def query(self, x: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        """q = LN(x) [+ W_q LN(Fimg[t])]: x (B, T, J, C), feats (B, T, F) or None -> (B, T, J, C)."""
        q = self.norm(x)
        if self.query_proj is not None and feats is not None:
            q = q + self.query_proj(self.query_feat_norm(feats)).unsqueeze(2)
        return q
