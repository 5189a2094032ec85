"""Geometry-Aware Lifting with STA-Mamba (paper §3.3, eq. 5, 7-9, 11).

``P3D = Head(LN(  [TemporalMamba(GA(SpatialMamba(.)))] x depth  (Encoder(P2D, conf, Fimg)) ))``

- Encoder: one token per (frame, joint): ``Linear([x, y, conf]) + Linear(Fimg[t])`` plus learnable
  joint and time position embeddings; ``frame_pose=True`` adds ``Linear(all joints' [x, y, conf] of
  frame t)`` to every token of the frame, so each token starts with the whole 2D pose.
- Image-feature path (options, all off by default): ``use_feats=False`` ignores the features (and
  drops GA); ``feat_centre`` subtracts the clip's temporal mean from each feature channel (removes
  the per-sequence appearance offset: subject, scene, lighting), ``feat_dropout`` drops channels
  while training, ``feat_proj=k`` projects the features to ``k`` channels once, shared by the encoder
  and GA (a bottleneck against memorising frames by their features).
- Each of the ``depth`` layers: a spatial Dual-Scan Mamba block (over joints, per frame), the GA
  deformable attention (sampling image features around (t, keypoint)), and a temporal Dual-Scan Mamba
  block (over time). ``ga=False`` drops the GA modules; ``scan="bi"`` replaces the dual scan with a
  Vim bidirectional scan (the "vanilla" variant of Table 4). ``kinematic_scan`` picks the dual scan's
  local order (``"tree"``: the depth-first walk of the kinematic tree; ``"limbs"``: the first
  version's permutation, :mod:`hmrmamba.skeleton`); ``bidirectional`` makes both dual-scan branches
  scan forward and reversed (a causal lifter's temporal blocks stay forward-only). The defaults are
  the first version's, so configs saved without these keys rebuild the model they trained; the
  variant table sets the current choice (docs/model.md).
- Head: LayerNorm, then an MLP ``dim -> dim -> 3`` per token (``head="token"``, weights shared by
  all joints) or ``dim -> dim`` shared then a per-joint ``dim -> 3`` output layer (``head="joint"``).

Why the ``tiny`` variant turns these options on (measured on the synthetic CPU data set):
with a 32-wide shared head every joint must be decoded by one small MLP, with cross-joint
information arriving only through the causal, multiplicatively gated scans (their output starts at
~0.3 % of the residual stream); and per-frame global features of a few thousand training frames
are memorised (val worse than the mean pose), especially under a per-sequence appearance shift.

Causal form (``causal=True``, for streaming): no output depends on a later frame. The temporal
blocks scan forward only (:class:`DualScanMambaBlock` ``causal``), GA samples only the current and
the ``max_frames - 1`` previous frames, ``feat_centre`` subtracts the running mean of the frames so
far instead of the clip mean, and there is no time position embedding (the scans carry time), so
clips of any length are accepted. :meth:`GeometryAwareLifter.step` runs one frame from a
:class:`LifterState` and matches the whole-clip ``forward`` to float rounding.

The input checks shared by every lifter and the full model live here too (:func:`check_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.models.dual_scan import DualScanMambaBlock, TemporalScanState, UniformDropout
from hmrmamba.models.ga_attention import GeometryAwareAttention, MapProjection
from hmrmamba.skeleton import get_joint_set, kinematic_scan as kinematic_scan_order

__all__ = ["GeometryAwareLifter", "JointHead", "LifterState", "PoseEncoder", "check_inputs"]


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_inputs(kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None,
                 spatial: torch.Tensor | None = None, *, num_joints: int, feat_dim: int, max_frames: int | None,
                 need_feats: bool = True, map_dim: int = 0) -> None:
    """Raise ``InputError`` (a ValueError) naming the expected shapes unless kp2d (B, T, J, 2),
    conf (B, T, J) or None, feats (B, T, F), spatial (B, T, C, h, w) or None are consistent and finite
    (values are not checked on the meta device, used for counting). ``max_frames=None``: any T.
    ``map_dim > 0``: the maps are required and have C = map_dim channels (else C = F)."""
    want = f"(B, T<={max_frames}, J={num_joints}, 2)" if max_frames else f"(B, T, J={num_joints}, 2)"
    if not isinstance(kp2d, torch.Tensor) or kp2d.dim() != 4 or kp2d.shape[2:] != (num_joints, 2):
        raise InputError(f"has shape {_shape(kp2d)}", field="kp2d", expected=want)
    b, t = kp2d.shape[:2]
    if b < 1 or t < 1 or (max_frames is not None and t > max_frames):
        raise InputError(f"has shape {_shape(kp2d)}", field="kp2d", expected=want)
    if conf is not None and (not isinstance(conf, torch.Tensor) or tuple(conf.shape) != (b, t, num_joints)):
        raise InputError(f"has shape {_shape(conf)}", field="conf", expected=f"(B, T, J) = {(b, t, num_joints)}")
    if feats is None:
        if need_feats:
            raise InputError("is missing", field="feats", expected=f"(B, T, F) = {(b, t, feat_dim)}")
    elif not isinstance(feats, torch.Tensor) or tuple(feats.shape) != (b, t, feat_dim):
        raise InputError(f"has shape {_shape(feats)}", field="feats", expected=f"(B, T, F) = {(b, t, feat_dim)}")
    channels = map_dim or feat_dim
    if spatial is None and map_dim:
        raise InputError("is missing: this model's GA samples image feature maps at the joints", field="spatial",
                         expected=f"(B, T, C, h, w) with (B, T, C) = {(b, t, map_dim)} "
                                  "(features.keep_spatial: true, then rerun the features stage)")
    if spatial is not None and (not isinstance(spatial, torch.Tensor) or spatial.dim() != 5
                                or tuple(spatial.shape[:3]) != (b, t, channels)):
        raise InputError(f"has shape {_shape(spatial)}", field="spatial",
                         expected=f"(B, T, C, h, w) with (B, T, C) = {(b, t, channels)}")
    if torch.compiler.is_exporting():  # values are symbolic while exporting
        return
    for name, x in (("kp2d", kp2d), ("conf", conf), ("feats", feats), ("spatial", spatial)):
        if x is not None and x.numel() and x.device.type != "meta" and not all_finite(x):
            raise InputError("contains NaN or Inf", field=name, expected="finite values")


def all_finite(x: torch.Tensor) -> bool:
    """True when every element of ``x`` is finite, usually in one pass (the feature maps are the
    largest input).

    Any NaN or Inf makes the sum non-finite (Inf - Inf is NaN), so a finite sum proves every element
    finite. A non-finite sum can also come from overflow of large finite values, so only then does
    ``isfinite(x).all()`` (three elementwise passes) decide. float16 sums in float32, which cannot
    overflow (at most 65504 per element, 3.4e38 in all).
    """
    if not x.is_floating_point():
        return bool(torch.isfinite(x).all())
    total = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(x).all())


class PoseEncoder(nn.Module):
    """Encoder of eq. 7: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F) -> tokens (B, T, J, C)."""

    def __init__(self, dim: int, *, num_joints: int = 17, feat_dim: int = 2048, max_frames: int = 16,
                 use_conf: bool = True, use_feats: bool = True, frame_pose: bool = False,
                 feat_centre: bool = False, feat_dropout: float = 0.0, feat_proj: int | None = None,
                 causal: bool = False):
        super().__init__()
        self.causal = causal
        if not 0.0 <= feat_dropout < 1.0:
            raise InputError(f"feat_dropout={feat_dropout}", field="feat_dropout", expected="0 <= p < 1")
        if feat_proj is not None and feat_proj < 1:
            raise InputError(f"feat_proj={feat_proj}", field="feat_proj", expected="None or >= 1")
        self.use_conf = use_conf
        self.use_feats = use_feats
        self.feat_centre = feat_centre
        self.feat_drop = UniformDropout(feat_dropout) if use_feats and feat_dropout > 0 else None
        self.feat_proj = nn.Linear(feat_dim, feat_proj) if use_feats and feat_proj else None
        #: channels of the prepared features (what ``feat_embed`` and the GA blocks read)
        self.feat_out = feat_proj if self.feat_proj is not None else feat_dim
        self.joint_embed = nn.Linear(3 if use_conf else 2, dim)
        self.feat_embed = nn.Linear(self.feat_out, dim) if use_feats else None
        self.frame_embed = nn.Linear(num_joints * (3 if use_conf else 2), dim) if frame_pose else None
        self.joint_pos = nn.Parameter(torch.zeros(1, 1, num_joints, dim))
        nn.init.trunc_normal_(self.joint_pos, std=0.02)
        if causal:  # no absolute time: the causal scans carry it, and clips may be any length
            self.time_pos = None
        else:
            self.time_pos = nn.Parameter(torch.zeros(1, max_frames, 1, dim))
            nn.init.trunc_normal_(self.time_pos, std=0.02)

    def running_centre(self, feats: torch.Tensor, feat_sum: torch.Tensor | None = None, count: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal centring: feats (B, T, F) minus the mean of all frames up to each one, continuing
        from ``feat_sum`` (B, F) over ``count`` earlier frames -> (centred (B, T, F), new sum (B, F))."""
        total = torch.cumsum(feats, dim=1)
        if feat_sum is not None:
            total = total + feat_sum.unsqueeze(1)
        n = torch.arange(count + 1, count + 1 + feats.shape[1], device=feats.device, dtype=feats.dtype)
        return feats - total / n.view(1, -1, 1), total[:, -1]

    def prepare_feats(self, feats: torch.Tensor | None, spatial: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The image-feature path, shared by the encoder and GA: feats (B, T, F), spatial (B, T, F, h, w)
        or None -> (B, T, F'), (B, T, F', h, w) or None with F' = ``feat_out``; (None, None) when the
        encoder was built with ``use_feats=False``."""
        if not self.use_feats:
            return None, None
        if self.feat_centre and self.causal:
            feats = self.running_centre(feats)[0]
            if spatial is not None:
                raise InputError("a causal encoder takes global features only", field="spatial", expected="None")
        elif self.feat_centre:  # per clip and channel: keep the change over time, drop the offset
            feats = feats - feats.mean(1, keepdim=True)
            if spatial is not None:
                spatial = spatial - spatial.mean(1, keepdim=True)
        if self.feat_drop is not None:
            feats = self.feat_drop(feats)
            if spatial is not None:
                spatial = self.feat_drop(spatial)
        if self.feat_proj is not None:
            feats = self.feat_proj(feats)
            if spatial is not None:
                spatial = self.feat_proj(spatial.movedim(2, -1)).movedim(-1, 2)
        return feats, spatial

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None,
                spatial: torch.Tensor | None = None, *, return_feats: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """kp2d (B, T, J, 2) normalised, conf (B, T, J) or None (ones), feats (B, T, F) or None (ignored
        when built with ``use_feats=False``) -> tokens (B, T, J, C); with ``return_feats`` also the
        prepared features (:meth:`prepare_feats` of feats and ``spatial``) for the GA blocks."""
        feats, spatial = self.prepare_feats(feats, spatial)
        x = self.embed(kp2d, conf, feats)
        return (x, feats, spatial) if return_feats else x

    def embed(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None) -> torch.Tensor:
        """Tokens from kp2d (B, T, J, 2), conf (B, T, J) or None and *prepared* feats (B, T, F') or None
        -> (B, T, J, C)."""
        t = kp2d.shape[1]
        inp = kp2d
        if self.use_conf:
            c = torch.ones_like(kp2d[..., :1]) if conf is None else conf.unsqueeze(-1).to(kp2d.dtype)
            inp = torch.cat([kp2d, c], -1)
        x = self.joint_embed(inp)
        if self.frame_embed is not None:
            x = x + self.frame_embed(inp.flatten(2)).unsqueeze(2)
        if self.feat_embed is not None:
            x = x + self.feat_embed(feats).unsqueeze(2)
        x = x + self.joint_pos
        return x if self.time_pos is None else x + self.time_pos[:, :t]


class JointHead(nn.Module):
    """Lifting head with a per-joint output layer: tokens (B, T, J, C) -> (B, T, J, 3).

    ``Linear(C, C) + GELU`` shared by all joints, then joint j's own ``(C -> 3)`` layer (initialised
    like ``nn.Linear``), so a narrow model need not decode 17 different joints through one layer.
    """

    def __init__(self, dim: int, num_joints: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        bound = dim ** -0.5
        self.weight = nn.Parameter(torch.empty(num_joints, dim, 3).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_joints, 3).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, J, C) -> (B, T, J, 3)."""
        return torch.einsum("btjc,jcd->btjd", self.hidden(x), self.weight) + self.bias


@dataclass
class LifterState:
    """Recurrent state of a causal lifter for B clips after ``frames`` frames: one
    :class:`TemporalScanState` and one GA value buffer (B, L+1, C) (or None) per layer, and the
    running feature sum (B, F') for causal centring (or None)."""

    frames: int
    temporal: list[TemporalScanState]
    ga_values: list[torch.Tensor | None]
    feat_sum: torch.Tensor | None


class GeometryAwareLifter(nn.Module):
    """STA-Mamba lifter: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F)[, spatial (B, T, C, h, w)]
    -> P3D (B, T, J, 3)."""

    def __init__(self, *, num_joints: int = 17, joint_set: str = "h36m17", feat_dim: int = 2048,
                 max_frames: int = 16, dim: int = 256, depth: int = 3, scan: str = "dual", ga: bool = True,
                 ga_heads: int = 8, ga_points: int = 4, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 mlp_ratio: float = 4.0, fusion_kernel: int = 3, drop_path: float = 0.1,
                 use_conf: bool = True, backend: str = "auto", frame_pose: bool = False, head: str = "token",
                 use_feats: bool = True, feat_centre: bool = False, feat_dropout: float = 0.0,
                 feat_proj: int | None = None, causal: bool = False, map_dim: int = 0,
                 kinematic_scan: str = "limbs", bidirectional: bool = False):
        super().__init__()
        js = get_joint_set(joint_set)
        if js.num_joints != num_joints:
            raise InputError(f"joint set {joint_set!r} has {js.num_joints} joints, num_joints={num_joints}",
                             field="num_joints", expected=str(js.num_joints))
        if depth < 1:
            raise InputError(f"depth={depth}", field="depth", expected=">= 1")
        if head not in ("token", "joint"):
            raise InputError(f"unknown head {head!r}", field="head", expected="token | joint")
        self.num_joints = num_joints
        self.feat_dim = feat_dim  # input width; the encoder and GA see ``feat_proj`` channels if set
        self.max_frames = max_frames
        self.use_feats = use_feats
        self.causal = bool(causal)
        if self.causal and scan != "dual":
            raise InputError(f"scan={scan!r} reads future frames and has no causal form", field="scan",
                             expected="'dual' when causal=True")
        ga = ga and use_feats  # GA samples image features: nothing to sample without them
        if isinstance(map_dim, bool) or int(map_dim) < 0:
            raise InputError(f"map_dim={map_dim}", field="map_dim", expected="0 (no maps) or the maps' channels")
        if self.causal and map_dim:
            raise InputError("a causal GA block samples global features over time only", field="map_dim",
                             expected="0 when causal=True")
        #: channels of the feature maps GA samples at the joints (0: GA samples global features over
        #: time only); only GA reads the maps, so without GA there are none
        self.map_dim = int(map_dim) if ga else 0
        if self.map_dim:  # per-channel standardisation of the maps, set from the training split
            self.register_buffer("map_mean", torch.zeros(self.map_dim))
            self.register_buffer("map_std", torch.ones(self.map_dim))
        self.encoder = PoseEncoder(dim, num_joints=num_joints, feat_dim=feat_dim, max_frames=max_frames,
                                   use_conf=use_conf, use_feats=use_feats, frame_pose=frame_pose,
                                   feat_centre=feat_centre, feat_dropout=feat_dropout, feat_proj=feat_proj,
                                   causal=self.causal)
        rates = [drop_path * i / max(1, 2 * depth - 1) for i in range(2 * depth)]  # stochastic depth, linear
        order = kinematic_scan_order(js, kinematic_scan)
        both = bool(bidirectional) and scan == "dual"  # scan="bi" is bidirectional already
        block_kw = {"scan": scan, "kinematic_order": order, "d_state": d_state, "d_conv": d_conv,
                    "expand": expand, "mlp_ratio": mlp_ratio, "fusion_kernel": fusion_kernel, "backend": backend}
        self.spatial_blocks = nn.ModuleList(
            [DualScanMambaBlock(dim, axis="spatial", drop_path=rates[2 * i], bidirectional=both, **block_kw)
             for i in range(depth)])
        self.ga_blocks = nn.ModuleList(
            [GeometryAwareAttention(dim, feat_dim=self.encoder.feat_out, num_heads=ga_heads, num_points=ga_points,
                                    lookback=max_frames - 1 if self.causal else None,
                                    value_dim=self.map_dim or None)
             for _ in range(depth)]) if ga else None
        #: the maps' projection for all GA blocks in one matmul (their weights; no parameters of its own)
        self.ga_map_projection = MapProjection() if self.map_dim else None
        self.temporal_blocks = nn.ModuleList(
            [DualScanMambaBlock(dim, axis="temporal", drop_path=rates[2 * i + 1], causal=self.causal,
                                bidirectional=both and not self.causal, **block_kw)
             for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = (nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 3)) if head == "token"
                     else JointHead(dim, num_joints))

    def features(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None,
                 spatial: torch.Tensor | None = None) -> torch.Tensor:
        """F_temporal (eq. 9) after the final norm: inputs as ``forward`` -> (B, T, J, C)."""
        spatial = spatial if self.ga_blocks is not None else None  # only GA reads maps
        values = [None] * len(self.spatial_blocks)
        if self.map_dim:  # maps of their own width: standardised and projected by every GA block at once
            x, feats, _ = self.encoder(kp2d, conf, feats, None, return_feats=True)
            values, spatial = self.map_values(spatial), None
        else:  # maps with the global features' channels go through the encoder's feature path
            x, feats, spatial = self.encoder(kp2d, conf, feats, spatial, return_feats=True)
        for i, (s_block, t_block) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            x = s_block(x)  # eq. 7
            if self.ga_blocks is not None:
                x = self.ga_blocks[i](x, kp2d, feats=feats, spatial=spatial, values=values[i])  # eq. 8
            x = t_block(x)  # eq. 9
        return self.norm(x)

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None = None, feats: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None) -> torch.Tensor:
        """kp2d (B, T, J, 2) in [-1, 1], conf (B, T, J), feats (B, T, F), spatial (B, T, C, h, w) or None
        (required with C = ``map_dim`` when ``map_dim > 0``) -> P3D (B, T, J, 3) (eq. 11)."""
        check_inputs(kp2d, conf, feats, spatial if self.ga_blocks is not None else None,  # only GA reads maps
                     num_joints=self.num_joints, feat_dim=self.feat_dim,
                     max_frames=None if self.causal else self.max_frames, need_feats=self.use_feats,
                     map_dim=self.map_dim)
        return self.head(self.features(kp2d, conf, feats, spatial))

    @torch.no_grad()
    def set_map_stats(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-3) -> None:
        """mean, std: (C,) per-channel statistics of the training split's feature maps."""
        if not self.map_dim:
            raise InputError("this lifter samples no feature maps", field="map_dim", expected="map_dim > 0")
        self.map_mean.copy_(torch.as_tensor(mean, dtype=self.map_mean.dtype))
        self.map_std.copy_(torch.as_tensor(std, dtype=self.map_std.dtype).clamp_min(eps))

    def prepare_maps(self, spatial: torch.Tensor) -> torch.Tensor:
        """GA's feature maps: (B, T, C, h, w) any float dtype -> (B, T, C, h, w) in the buffers' dtype:
        standardised per channel, clip-centred over time when the encoder centres its features, and in
        training the encoder's feature dropout rate applied per (frame, channel) to all its cells. GA's
        value projection then maps C to the model width."""
        # Few passes over the maps (they are the largest tensor of a batch): the per-channel scale
        # 1/std and the dropout mask are folded into one (B, T, C, 1, 1) factor, and with clip centring
        # the channel mean cancels, so it is never subtracted: (x - mean_t x) / std.
        x = spatial.to(self.map_mean.dtype)
        scale = (1.0 / self.map_std).view(1, 1, -1, 1, 1)
        drop = self.encoder.feat_drop
        if drop is not None and self.training and drop.p > 0:  # a channel is dropped in all cells of a frame
            keep = torch.rand(x.shape[:3] + (1, 1), device=x.device, dtype=x.dtype) >= drop.p
            scale = scale * keep.to(x.dtype) / (1.0 - drop.p)
        if self.encoder.feat_centre:
            return (x - x.mean(1, keepdim=True)) * scale
        return (x - self.map_mean.view(-1, 1, 1)) * scale

    def map_values(self, spatial: torch.Tensor) -> list[torch.Tensor]:
        """Every GA block's value projection of the prepared maps: spatial (B, T, C, h, w) any float dtype
        -> one (B, T, h, w, D) per GA block, equal to ``blk.value_proj`` of :meth:`prepare_maps` in the
        maps' cells (the same dropout draws in training).

        The maps are the largest tensor of a batch, so they are read as few times as the definition
        allows: one pass turns them channels-last in the buffers' dtype (centred and with the dropout
        mask in training), and one matmul projects them for all GA blocks (their weights stacked). The
        per-channel 1/std is folded into the weights; without dropout the centring (or the channel
        mean) is applied after the projection, where it commutes with it, on D instead of C channels.
        """
        blocks = list(self.ga_blocks)
        dtype = self.map_mean.dtype
        weight = torch.cat([blk.value_proj.weight for blk in blocks]) / self.map_std  # (n D, C)
        bias = torch.cat([blk.value_proj.bias for blk in blocks])  # (n D,)
        b, t, c, h, w = spatial.shape
        cells_last = spatial.permute(0, 1, 3, 4, 2)  # (B, T, h, w, C) view
        buf = torch.empty((b, t, h, w, c), dtype=dtype, device=spatial.device)
        drop = self.encoder.feat_drop
        if drop is not None and self.training and drop.p > 0:  # a channel is dropped in all cells of a frame
            keep = torch.rand((b, t, c, 1, 1), device=spatial.device, dtype=dtype) >= drop.p
            factor = (keep.to(dtype) / (1.0 - drop.p)).view(b, t, 1, 1, c)
            buf.copy_(cells_last)  # the one strided pass (and the cast); the rest is in place
            centre = buf.mean(1, keepdim=True) if self.encoder.feat_centre else self.map_mean
            values = self.ga_map_projection(buf.sub_(centre).mul_(factor), weight, bias)
        else:
            buf.copy_(cells_last)
            values = self.ga_map_projection(buf, weight)
            if self.encoder.feat_centre:  # (x - mean_t x) W' = x W' - mean_t (x W'): the channel mean cancels
                values = values - values.mean(1, keepdim=True) + bias
            else:
                values = values + (bias - weight @ self.map_mean)
        return list(values.split([blk.value_proj.out_features for blk in blocks], dim=-1))

    # ------------------------------------------------------------------ streaming (causal only)
    def init_state(self, batch: int = 1, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> LifterState:
        """The state before frame 0 of ``batch`` clips (a causal lifter only)."""
        if not self.causal:
            raise InputError("only a causal lifter runs frame by frame", field="causal",
                             expected="a model built with causal=True (e.g. variant 'tiny-online')")
        kw = {"device": device, "dtype": dtype}
        ga = ([blk.allocate_state(batch, **kw) for blk in self.ga_blocks] if self.ga_blocks is not None
              else [None] * len(self.temporal_blocks))
        return LifterState(frames=0, temporal=[blk.allocate_state(batch, self.num_joints, **kw)
                                               for blk in self.temporal_blocks],
                           ga_values=ga, feat_sum=None)

    def step(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None,
             state: LifterState) -> tuple[torch.Tensor, LifterState]:
        """One frame: kp2d (B, 1, J, 2), conf (B, 1, J), feats (B, 1, F), state -> (P3D (B, 1, J, 3), new state)."""
        if not self.causal:
            raise InputError("only a causal lifter runs frame by frame", field="causal",
                             expected="a model built with causal=True (e.g. variant 'tiny-online')")
        check_inputs(kp2d, conf, feats, None, num_joints=self.num_joints, feat_dim=self.feat_dim, max_frames=1,
                     need_feats=self.use_feats)
        enc = self.encoder
        feat_sum = state.feat_sum
        prepared = None
        if enc.use_feats:
            prepared = feats
            if enc.feat_centre:
                prepared, feat_sum = enc.running_centre(feats, feat_sum, state.frames)
            if enc.feat_drop is not None:
                prepared = enc.feat_drop(prepared)
            if enc.feat_proj is not None:
                prepared = enc.feat_proj(prepared)
        x = enc.embed(kp2d, conf, prepared)
        temporal, ga_values = [], []
        for i, (s_block, t_block) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            x = s_block(x)
            values = state.ga_values[i]
            if self.ga_blocks is not None:
                x, values = self.ga_blocks[i].step(x, prepared, values)
            ga_values.append(values)
            x, t_state = t_block.step(x, state.temporal[i])
            temporal.append(t_state)
        pose = self.head(self.norm(x))
        return pose, LifterState(frames=state.frames + 1, temporal=temporal, ga_values=ga_values, feat_sum=feat_sum)
