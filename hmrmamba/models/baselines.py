"""Baselines in the same framework, so the tables compare like with like.

- :class:`TransformerLifter`: the PMCE pose stream (spatial + temporal transformer blocks, dim 256,
  depth 3, MLP ratio 2, 8 heads, shared post-norms), predicting every frame of the clip.
- :class:`GRUContext`: PMCE's image-feature aggregation, a 2-layer bidirectional GRU 2048 -> 2 x 1024,
  used by the ``pmce`` variant as the reconstructor's per-frame context instead of motion attention.
- :class:`MLPLifter`: a trivial per-frame MLP (no temporal modelling) — the floor any lifter must beat.

All lifters share the signature ``forward(kp2d, conf=None, feats=None, spatial=None) -> (B, T, J, 3)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.models.dual_scan import DropPath, Mlp
from hmrmamba.models.lifter import JointHead, PoseEncoder, check_inputs

__all__ = ["GRUContext", "MLPLifter", "TransformerBlock", "TransformerLifter"]


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (timm ViT style): x (N, L, C) -> (N, L, C)."""

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise InputError(f"dim={dim} not divisible by heads={num_heads}", field="heads", expected="a divisor of dim")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention: x (N, L, C) -> (N, L, C)."""
        n, length, c = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, C/H)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, L, C) -> (N, L, C)."""
        x = x + self.drop_path(self.attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerLifter(nn.Module):
    """PMCE-like spatial/temporal transformer lifter: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F)
    -> P3D (B, T, J, 3)."""

    def __init__(self, *, num_joints: int = 17, feat_dim: int = 2048, max_frames: int = 16, dim: int = 256,
                 depth: int = 3, num_heads: int = 8, mlp_ratio: float = 2.0, drop_path: float = 0.2,
                 use_conf: bool = True, frame_pose: bool = False, feat_centre: bool = False,
                 feat_dropout: float = 0.0, feat_proj: int | None = None, head: str = "token"):
        super().__init__()
        if head not in ("token", "joint"):
            raise InputError(f"head={head!r}", field="head", expected="'token' or 'joint'")
        self.num_joints = num_joints
        self.feat_dim = feat_dim
        self.max_frames = max_frames
        # the same encoder options as the STA-Mamba lifter, so that the small baselines can be given the
        # same input treatment as `tiny` (a fair Table-1 comparison on the CPU demo)
        self.encoder = PoseEncoder(dim, num_joints=num_joints, feat_dim=feat_dim, max_frames=max_frames,
                                   use_conf=use_conf, frame_pose=frame_pose, feat_centre=feat_centre,
                                   feat_dropout=feat_dropout, feat_proj=feat_proj)
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.spatial_blocks = nn.ModuleList([TransformerBlock(dim, num_heads, mlp_ratio, r) for r in rates])
        self.temporal_blocks = nn.ModuleList([TransformerBlock(dim, num_heads, mlp_ratio, r) for r in rates])
        self.norm_s = nn.LayerNorm(dim, eps=1e-6)
        self.norm_t = nn.LayerNorm(dim, eps=1e-6)
        self.head = (nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 3)) if head == "token"
                     else nn.Sequential(nn.LayerNorm(dim), JointHead(dim, num_joints)))

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None = None, feats: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None) -> torch.Tensor:
        """kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F); spatial ignored -> (B, T, J, 3)."""
        check_inputs(kp2d, conf, feats, spatial, num_joints=self.num_joints, feat_dim=self.feat_dim,
                     max_frames=self.max_frames)
        x = self.encoder(kp2d, conf, feats)  # (B, T, J, C)
        b, t, j, c = x.shape
        for s_block, t_block in zip(self.spatial_blocks, self.temporal_blocks):
            x = self.norm_s(s_block(x.reshape(b * t, j, c))).view(b, t, j, c)
            x = x.transpose(1, 2).reshape(b * j, t, c)
            x = self.norm_t(t_block(x)).view(b, j, t, c).transpose(1, 2)
        return self.head(x)


class GRUContext(nn.Module):
    """PMCE's temporal image context: feats (B, T, F) -> (B, T, 2 * hidden), a bidirectional GRU."""

    def __init__(self, *, feat_dim: int = 2048, hidden: int = 1024, num_layers: int = 2):
        super().__init__()
        self.out_dim = 2 * hidden
        self.gru = nn.GRU(input_size=feat_dim, hidden_size=hidden, num_layers=num_layers, bidirectional=True,
                          batch_first=True)

    def forward(self, feats: torch.Tensor, pose3d: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, T, F) -> (B, T, 2 * hidden); ``pose3d`` is unused (same call as motion attention)."""
        return self.gru(feats)[0]


class MLPLifter(nn.Module):
    """Per-frame MLP lifter: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F) -> (B, T, J, 3); frames
    are independent."""

    def __init__(self, *, num_joints: int = 17, feat_dim: int = 2048, max_frames: int = 16, dim: int = 256,
                 depth: int = 2, use_conf: bool = True, use_feats: bool = True):
        super().__init__()
        if depth < 1:
            raise InputError(f"depth={depth}", field="depth", expected=">= 1")
        self.num_joints = num_joints
        self.feat_dim = feat_dim
        self.max_frames = max_frames
        self.use_conf = use_conf
        self.pose_in = nn.Linear(num_joints * (3 if use_conf else 2), dim)
        self.feat_in = nn.Linear(feat_dim, dim) if use_feats else None
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dim, num_joints * 3)

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None = None, feats: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None) -> torch.Tensor:
        """kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F) -> (B, T, J, 3)."""
        check_inputs(kp2d, conf, feats, spatial, num_joints=self.num_joints, feat_dim=self.feat_dim,
                     max_frames=self.max_frames, need_feats=self.feat_in is not None)
        b, t, j, _ = kp2d.shape
        x = kp2d
        if self.use_conf:
            c = torch.ones_like(kp2d[..., :1]) if conf is None else conf.unsqueeze(-1).to(kp2d.dtype)
            x = torch.cat([kp2d, c], -1)
        h = self.pose_in(x.reshape(b, t, -1))
        if self.feat_in is not None:
            h = h + self.feat_in(feats)
        return self.head(self.body(h)).view(b, t, j, 3)
