"""Geometry-Aware Lifting with STA-Mamba (paper §3.3, eq. 5, 7-9, 11).

``P3D = Head(LN(  [TemporalMamba(GA(SpatialMamba(.)))] x depth  (Encoder(P2D, conf, Fimg)) ))``

- Encoder: one token per (frame, joint): ``Linear([x, y, conf]) + Linear(Fimg[t])`` plus learnable
  joint and time position embeddings.
- Each of the ``depth`` layers: a spatial Dual-Scan Mamba block (over joints, per frame), the GA
  deformable attention (sampling image features around (t, keypoint)), and a temporal Dual-Scan Mamba
  block (over time). ``ga=False`` drops the GA modules; ``scan="bi"`` replaces the dual scan with a
  Vim bidirectional scan (the "vanilla" variant of Table 4).
- Head: LayerNorm, then an MLP ``dim -> dim -> 3`` per token.

The input checks shared by every lifter and the full model live here too (:func:`check_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.models.dual_scan import DualScanMambaBlock
from hmrmamba.models.ga_attention import GeometryAwareAttention
from hmrmamba.skeleton import get_joint_set

__all__ = ["GeometryAwareLifter", "PoseEncoder", "check_inputs"]


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_inputs(kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None,
                 spatial: torch.Tensor | None = None, *, num_joints: int, feat_dim: int, max_frames: int,
                 need_feats: bool = True) -> None:
    """Raise ``InputError`` (a ValueError) naming the expected shapes unless kp2d (B, T, J, 2),
    conf (B, T, J) or None, feats (B, T, F), spatial (B, T, F, h, w) or None are consistent and finite
    (values are not checked on the meta device, used for counting)."""
    want = f"(B, T<={max_frames}, J={num_joints}, 2)"
    if not isinstance(kp2d, torch.Tensor) or kp2d.dim() != 4 or kp2d.shape[2:] != (num_joints, 2):
        raise InputError(f"has shape {_shape(kp2d)}", field="kp2d", expected=want)
    b, t = kp2d.shape[:2]
    if b < 1 or not 1 <= t <= max_frames:
        raise InputError(f"has shape {_shape(kp2d)}", field="kp2d", expected=want)
    if conf is not None and (not isinstance(conf, torch.Tensor) or tuple(conf.shape) != (b, t, num_joints)):
        raise InputError(f"has shape {_shape(conf)}", field="conf", expected=f"(B, T, J) = {(b, t, num_joints)}")
    if feats is None:
        if need_feats:
            raise InputError("is missing", field="feats", expected=f"(B, T, F) = {(b, t, feat_dim)}")
    elif not isinstance(feats, torch.Tensor) or tuple(feats.shape) != (b, t, feat_dim):
        raise InputError(f"has shape {_shape(feats)}", field="feats", expected=f"(B, T, F) = {(b, t, feat_dim)}")
    if spatial is not None and (not isinstance(spatial, torch.Tensor) or spatial.dim() != 5
                                or tuple(spatial.shape[:3]) != (b, t, feat_dim)):
        raise InputError(f"has shape {_shape(spatial)}", field="spatial",
                         expected=f"(B, T, F, h, w) with (B, T, F) = {(b, t, feat_dim)}")
    for name, x in (("kp2d", kp2d), ("conf", conf), ("feats", feats), ("spatial", spatial)):
        if x is not None and x.numel() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
            raise InputError("contains NaN or Inf", field=name, expected="finite values")


class PoseEncoder(nn.Module):
    """Encoder of eq. 7: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F) -> tokens (B, T, J, C)."""

    def __init__(self, dim: int, *, num_joints: int = 17, feat_dim: int = 2048, max_frames: int = 16,
                 use_conf: bool = True, use_feats: bool = True):
        super().__init__()
        self.use_conf = use_conf
        self.joint_embed = nn.Linear(3 if use_conf else 2, dim)
        self.feat_embed = nn.Linear(feat_dim, dim) if use_feats else None
        self.joint_pos = nn.Parameter(torch.zeros(1, 1, num_joints, dim))
        self.time_pos = nn.Parameter(torch.zeros(1, max_frames, 1, dim))
        nn.init.trunc_normal_(self.joint_pos, std=0.02)
        nn.init.trunc_normal_(self.time_pos, std=0.02)

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None) -> torch.Tensor:
        """kp2d (B, T, J, 2) normalised, conf (B, T, J) or None (ones), feats (B, T, F) -> (B, T, J, C)."""
        t = kp2d.shape[1]
        if self.use_conf:
            c = torch.ones_like(kp2d[..., :1]) if conf is None else conf.unsqueeze(-1).to(kp2d.dtype)
            x = self.joint_embed(torch.cat([kp2d, c], -1))
        else:
            x = self.joint_embed(kp2d)
        if self.feat_embed is not None:
            x = x + self.feat_embed(feats).unsqueeze(2)
        return x + self.joint_pos + self.time_pos[:, :t]


class GeometryAwareLifter(nn.Module):
    """STA-Mamba lifter: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F)[, spatial (B, T, F, h, w)]
    -> P3D (B, T, J, 3)."""

    def __init__(self, *, num_joints: int = 17, joint_set: str = "h36m17", feat_dim: int = 2048,
                 max_frames: int = 16, dim: int = 256, depth: int = 3, scan: str = "dual", ga: bool = True,
                 ga_heads: int = 8, ga_points: int = 4, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 mlp_ratio: float = 4.0, fusion_kernel: int = 3, drop_path: float = 0.1,
                 use_conf: bool = True, backend: str = "auto", bidirectional: bool = False,
                 gate_bias: float = 0.0, use_feats: bool = True, feat_proj: int | None = None,
                 feat_dropout: float = 0.0, feat_noise: float = 0.0, feat_init_scale: float = 1.0):
        super().__init__()
        js = get_joint_set(joint_set)
        if js.num_joints != num_joints:
            raise InputError(f"joint set {joint_set!r} has {js.num_joints} joints, num_joints={num_joints}",
                             field="num_joints", expected=str(js.num_joints))
        if depth < 1:
            raise InputError(f"depth={depth}", field="depth", expected=">= 1")
        self.num_joints = num_joints
        self.feat_dim = feat_dim
        self.max_frames = max_frames
        self.use_feats = use_feats
        if not use_feats:
            ga = False
        self.feat_proj = nn.Linear(feat_dim, feat_proj) if (use_feats and feat_proj) else None
        inner_feat = feat_proj if self.feat_proj is not None else feat_dim
        self.feat_drop = nn.Dropout(feat_dropout)
        self.feat_noise = feat_noise
        self.encoder = PoseEncoder(dim, num_joints=num_joints, feat_dim=inner_feat, max_frames=max_frames,
                                   use_conf=use_conf, use_feats=use_feats)
        rates = [drop_path * i / max(1, 2 * depth - 1) for i in range(2 * depth)]  # stochastic depth, linear
        block_kw = {"scan": scan, "kinematic_order": js.scan_order, "d_state": d_state, "d_conv": d_conv,
                    "expand": expand, "mlp_ratio": mlp_ratio, "fusion_kernel": fusion_kernel, "backend": backend,
                    "bidirectional": bidirectional, "gate_bias": gate_bias}
        self.spatial_blocks = nn.ModuleList(
            [DualScanMambaBlock(dim, axis="spatial", drop_path=rates[2 * i], **block_kw) for i in range(depth)])
        self.ga_blocks = nn.ModuleList(
            [GeometryAwareAttention(dim, feat_dim=inner_feat, num_heads=ga_heads, num_points=ga_points)
             for _ in range(depth)]) if ga else None
        self.temporal_blocks = nn.ModuleList(
            [DualScanMambaBlock(dim, axis="temporal", drop_path=rates[2 * i + 1], **block_kw) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 3))
        if feat_init_scale != 1.0:
            with torch.no_grad():
                if self.encoder.feat_embed is not None:
                    self.encoder.feat_embed.weight.mul_(feat_init_scale)
                for g in (self.ga_blocks or []):
                    g.output_proj.weight.mul_(feat_init_scale)

    def prepare_feats(self, feats: torch.Tensor | None, spatial: torch.Tensor | None):
        """Feature path regularisation + bottleneck: feats (B, T, F), spatial (B, T, F, h, w) -> same with F'."""
        if not self.use_feats:
            return None, None
        if self.training and self.feat_noise > 0:
            feats = feats + self.feat_noise * torch.randn_like(feats)
        feats = self.feat_drop(feats)
        if self.feat_proj is not None:
            feats = self.feat_proj(feats)
            if spatial is not None:
                spatial = self.feat_proj(spatial.movedim(2, -1)).movedim(-1, 2)
        return feats, spatial

    def features(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor,
                 spatial: torch.Tensor | None = None) -> torch.Tensor:
        """F_temporal (eq. 9) after the final norm: inputs as ``forward`` -> (B, T, J, C)."""
        feats, spatial = self.prepare_feats(feats, spatial)
        x = self.encoder(kp2d, conf, feats)
        for i, (s_block, t_block) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            x = s_block(x)  # eq. 7
            if self.ga_blocks is not None:
                x = self.ga_blocks[i](x, kp2d, feats=feats, spatial=spatial)  # eq. 8
            x = t_block(x)  # eq. 9
        return self.norm(x)

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None = None, feats: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None) -> torch.Tensor:
        """kp2d (B, T, J, 2) in [-1, 1], conf (B, T, J), feats (B, T, F), spatial (B, T, F, h, w) or None
        -> P3D (B, T, J, 3) (eq. 11)."""
        check_inputs(kp2d, conf, feats, spatial, num_joints=self.num_joints, feat_dim=self.feat_dim,
                     max_frames=self.max_frames, need_feats=self.use_feats)
        return self.head(self.features(kp2d, conf, feats, spatial))
