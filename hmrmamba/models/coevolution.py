"""PMCE-style pose-mesh co-evolution decoder on the coarse (431-vertex) mesh.

Per frame, a joint stream (J tokens) and a vertex stream (V tokens) of width ``dim`` exchange
information with cross-attention (joints <- vertices, vertices <- joints), then refine themselves with
self-attention; every LayerNorm is an *adaptive* LayerNorm whose scale and shift come from a per-frame
condition vector (the motion-aware image feature), and every block predicts coordinate residuals::

    joints', vertices' = joints + Linear(joint_feat), vertices + Linear(vertex_feat)

The coarse vertices start from the template posed by the joints
(:class:`hmrmamba.models.template_pose.TemplatePoser`), or at their nearest joints
(:func:`nearest_joint_index`) optionally plus a constant template offset. The output layers are
zero-initialised, so an untrained decoder returns its starting mesh. Blocks are chained (each block refines the previous block's joints and
vertices); PMCE feeds the input joints to every block instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.models.dual_scan import DropPath, Mlp

__all__ = ["AdaLayerNorm", "CoevolutionBlock", "CoevolutionDecoder", "init_coarse_vertices", "nearest_joint_index"]


def nearest_joint_index(coarse_vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """Index of the nearest joint per vertex: coarse_vertices (V, 3), joints (J, 3) -> (V,) int64."""
    return torch.cdist(coarse_vertices.double(), joints.double()).argmin(dim=1)


def init_coarse_vertices(joints: torch.Tensor, vertex_init: torch.Tensor,
                         offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Initial coarse mesh: joints (N, J, 3); vertex_init (V,) nearest-joint index or (V, J) weights;
    offsets (V, 3) or None -> (N, V, 3)."""
    if vertex_init.dim() == 1:
        v = joints.index_select(1, vertex_init)
    else:
        v = torch.einsum("vj,njc->nvc", vertex_init.to(joints.dtype), joints)
    return v if offsets is None else v + offsets.to(v.dtype)


class AdaLayerNorm(nn.Module):
    """LayerNorm with condition-dependent scale/shift: x (N, L, C), cond (N, D) -> (N, L, C).

    ``(1 + gamma(cond)) * LN(x) + beta(cond)`` with gamma, beta zero-initialised, so it starts as a
    plain LayerNorm (PMCE's AdaLayerNorm uses ``gamma * LN(x) + beta`` with random gamma).
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.mlp_gamma = nn.Linear(cond_dim, dim)
        self.mlp_beta = nn.Linear(cond_dim, dim)
        for lin in (self.mlp_gamma, self.mlp_beta):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (N, L, C), cond (N, D) -> (N, L, C)."""
        h = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return h * (1.0 + self.mlp_gamma(cond).unsqueeze(1)) + self.mlp_beta(cond).unsqueeze(1)


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, length, c = x.shape
    return x.view(b, length, n, c // n).transpose(1, 2)


class _Attention(nn.Module):
    """Multi-head attention: q (N, Lq, C), k (N, Lk, C), v (N, Lk, Cv) -> (N, Lq, C)."""

    def __init__(self, dim: int, num_heads: int, v_dim: int | None = None, self_attention: bool = False):
        super().__init__()
        if dim % num_heads:
            raise InputError(f"dim={dim} not divisible by heads={num_heads}", field="num_heads",
                             expected="a divisor of dim")
        v_dim = dim if v_dim is None else v_dim
        self.num_heads = num_heads
        self.self_attention = self_attention
        if self_attention:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.wq = nn.Linear(dim, dim)
            self.wk = nn.Linear(dim, dim)
            self.wv = nn.Linear(v_dim, v_dim)
        self.proj = nn.Linear(v_dim, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """q (N, Lq, C) [, k (N, Lk, C), v (N, Lk, Cv)] -> (N, Lq, C)."""
        if self.self_attention:
            q, k, v = self.qkv(q).chunk(3, dim=-1)
        else:
            q, k, v = self.wq(q), self.wk(k), self.wv(v)
        h = self.num_heads
        out = F.scaled_dot_product_attention(_heads(q, h), _heads(k, h), _heads(v, h))
        n, _, lq, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(n, lq, -1))


class _CrossBlock(nn.Module):
    """q + Attn(AdaLN q, AdaLN k, AdaLN v); then + MLP(AdaLN): q (N, Lq, C), k (N, Lk, C), v (N, Lk, C)."""

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm_q = AdaLayerNorm(dim, cond_dim)
        self.norm_k = AdaLayerNorm(dim, cond_dim)
        self.norm_v = AdaLayerNorm(dim, cond_dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = AdaLayerNorm(dim, cond_dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, q, k, v, cond):
        q = q + self.drop_path(self.attn(self.norm_q(q, cond), self.norm_k(k, cond), self.norm_v(v, cond)))
        return q + self.drop_path(self.mlp(self.norm2(q, cond)))


class _SelfBlock(nn.Module):
    """x + SelfAttn(AdaLN x); then + MLP(AdaLN x): x (N, L, C), cond (N, D) -> (N, L, C)."""

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = AdaLayerNorm(dim, cond_dim)
        self.attn = _Attention(dim, num_heads, self_attention=True)
        self.norm2 = AdaLayerNorm(dim, cond_dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, cond):
        x = x + self.drop_path(self.attn(self.norm1(x, cond)))
        return x + self.drop_path(self.mlp(self.norm2(x, cond)))


class CoevolutionBlock(nn.Module):
    """One co-evolution block: joints (N, J, 3), vertices (N, V, 3), cond (N, D) -> refined joints, vertices."""

    def __init__(self, *, num_joints: int, num_vertices: int, dim: int = 64, cond_dim: int = 2048,
                 joint_heads: int = 8, vertex_heads: int = 2, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.joint_proj = nn.Linear(3, dim)
        self.vertex_proj = nn.Linear(3, dim)
        self.joint_pos = nn.Parameter(torch.zeros(1, num_joints, dim))
        self.vertex_pos = nn.Parameter(torch.zeros(1, num_vertices, dim))
        self.joint_query = nn.Parameter(torch.zeros(1, num_joints, dim))
        self.vertex_query = nn.Parameter(torch.zeros(1, num_vertices, dim))
        self.v2j = nn.Linear(dim, dim)
        self.j2v = nn.Linear(dim, dim)
        self.v2j_key = nn.Parameter(torch.zeros(1, num_vertices, dim))
        self.j2v_key = nn.Parameter(torch.zeros(1, num_joints, dim))
        for p in (self.joint_pos, self.vertex_pos, self.joint_query, self.vertex_query, self.v2j_key, self.j2v_key):
            nn.init.trunc_normal_(p, std=0.02)
        self.joint_cross = _CrossBlock(dim, joint_heads, cond_dim, mlp_ratio, drop_path)
        self.vertex_cross = _CrossBlock(dim, vertex_heads, cond_dim, mlp_ratio, drop_path)
        self.joint_self = _SelfBlock(dim, joint_heads, cond_dim, mlp_ratio, drop_path)
        self.vertex_self = _SelfBlock(dim, vertex_heads, cond_dim, mlp_ratio, drop_path)
        # zero-initialised: an untrained block returns its input joints and vertices unchanged, so the
        # decoder starts from the (template-shaped) coarse mesh and learns corrections to it
        self.joint_out = nn.Linear(dim, 3)
        self.vertex_out = nn.Linear(dim, 3)
        for lin in (self.joint_out, self.vertex_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, joints: torch.Tensor, vertices: torch.Tensor, cond: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """joints (N, J, 3), vertices (N, V, 3), cond (N, D) -> joints (N, J, 3), vertices (N, V, 3)."""
        jf = self.joint_proj(joints) + self.joint_pos
        vf = self.vertex_proj(vertices) + self.vertex_pos
        jf, vf = (self.joint_cross(jf + self.joint_query, self.v2j(vf) + self.v2j_key, vf, cond),
                  self.vertex_cross(vf + self.vertex_query, self.j2v(jf) + self.j2v_key, jf, cond))
        jf, vf = self.joint_self(jf, cond), self.vertex_self(vf, cond)
        return joints + self.joint_out(jf), vertices + self.vertex_out(vf)


class CoevolutionDecoder(nn.Module):
    """``depth`` chained co-evolution blocks: joints (N, J, 3), vertices (N, V, 3), cond (N, D)
    -> joints (N, J, 3), vertices (N, V, 3)."""

    def __init__(self, *, num_joints: int = 17, num_vertices: int = 431, dim: int = 64, depth: int = 3,
                 cond_dim: int = 2048, joint_heads: int = 8, vertex_heads: int = 2, mlp_ratio: float = 4.0,
                 drop_path: float = 0.1):
        super().__init__()
        if depth < 1:
            raise InputError(f"depth={depth}", field="decoder_depth", expected=">= 1")
        self.num_joints = num_joints
        self.num_vertices = num_vertices
        self.blocks = nn.ModuleList([
            CoevolutionBlock(num_joints=num_joints, num_vertices=num_vertices, dim=dim, cond_dim=cond_dim,
                             joint_heads=joint_heads, vertex_heads=vertex_heads, mlp_ratio=mlp_ratio,
                             drop_path=drop_path) for _ in range(depth)])

    def forward(self, joints: torch.Tensor, vertices: torch.Tensor, cond: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """joints (N, J, 3), vertices (N, V, 3), cond (N, D) -> joints (N, J, 3), vertices (N, V, 3)."""
        for block in self.blocks:
            joints, vertices = block(joints, vertices, cond)
        return joints, vertices
