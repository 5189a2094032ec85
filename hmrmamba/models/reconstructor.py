"""Motion-guided Reconstruction Network (paper §3.4, eq. 6, 12-13).

Per clip: ``context = MotionAwareAttention(Fimg, P3D)`` (B, T, F); per frame: the co-evolution
decoder refines the coarse mesh (initialised at the nearest joints of P3D) under AdaLN conditioning on
``context``; the coarse mesh is upsampled to the full mesh through the mesh hierarchy and an
image-conditioned residual is added; joints are regressed from the vertices.

Motion representations (derived from P3D (B, T, J, 3)):

- explicit ``M_exp[t] = P3D[t] - P3D[t-1]``, ``M_exp[0] = 0`` (:func:`explicit_motion`);
- implicit ``M_imp``: the image features *corrected by the lifted pose* — the projected, normalised
  features are modulated feature-wise (FiLM) by an embedding of the frame's lifted pose:
  ``M_imp = LN(W_f Fimg) * (1 + gamma(m)) + beta(m)``, ``m = GELU(W_m P3D[t])``. It sees no frame
  differences: motion enters only through the attention over time, so ``em=False`` removes every
  explicit difference from the model (Table 3's GA+IM row).

Motion-aware attention (eq. 12), over time, ``num_heads`` heads::

    Q = W_Q LN(Fimg) + E_t            K = W_K LN([E(M_exp), M_imp]) + E_t        V = W_V LN([...])
    F_motion-aware = Fimg + W_O softmax(Q K^T / sqrt(d_k)) V        (W_O zero-initialised)

``em=False`` drops E(M_exp) from K/V, ``im=False`` drops M_imp; with both off the module is absent
and the context is Fimg itself. The context keeps Fimg's width so that the decoder's conditioning
and the residual head see it like PMCE's GRU feature.

Causal form (``causal=True``, for streaming): the motion-aware attention of frame t attends to
frames t-W+1..t only (W = ``max_frames``), with a learned embedding of each key's *age* t-s instead
of absolute time (``Q = W_Q LN(Fimg) + E_0``, ``K_s = W_K LN(src_s) + E_{t-s}``), so clips of any
length run and :meth:`MotionGuidedReconstructor.step` keeps only the last W frames' keys and values
(:class:`MotionState`). Everything else is per frame or uses the previous frame (M_exp).

Mesh assets (upsampling matrices, nearest-joint map, joint regressor) are constructor *tensors*
(:class:`MeshAssets`), made from :mod:`hmrmamba.body.mesh_sampling` by :func:`mesh_assets_from_hierarchy`
or at random for size/cost checks by :func:`random_mesh_assets`.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.models.coevolution import CoevolutionDecoder, init_coarse_vertices, nearest_joint_index
from hmrmamba.models.outputs import ReconOutput
from hmrmamba.models.template_pose import H36M17_FRAMES, TemplatePoser
from hmrmamba.skeleton import H36M17

__all__ = [
    "COARSE_INITS",
    "CONTEXTS",
    "RESIDUAL_MODES",
    "UPSAMPLE_MODES",
    "ImplicitMotion",
    "MeshAssets",
    "MeshUpsampler",
    "MotionAwareAttention",
    "MotionGuidedReconstructor",
    "MotionState",
    "explicit_motion",
    "mesh_assets_from_hierarchy",
    "random_mesh_assets",
]

CONTEXTS = ("motion", "gru", "none")
COARSE_INITS = ("template", "nearest")
UPSAMPLE_MODES = ("learnable", "fixed", "conv")
RESIDUAL_MODES = ("fine", "coarse", "none")


# ----------------------------------------------------------------------------------------------
# mesh assets


@dataclass
class MeshAssets:
    """Tensors the reconstructor is built from.

    upsample: coarse -> fine matrices, e.g. ((1723, 431), (6890, 1723)), dense or sparse COO;
    vertex_init: (Vc,) int64 nearest joint per coarse vertex, or (Vc, J) weights;
    joint_regressor: (J, V) from full-mesh vertices to joints;
    coarse_offsets: (Vc, 3) constant offsets added to the initial coarse mesh, or None;
    rest_coarse: (Vc, 3) the template's coarse vertices and rest_joints: (J, 3) its joints, metres,
    with the skeleton's ``parents`` (J,): what a ``coarse_init="template"`` reconstructor poses.
    """

    upsample: tuple[torch.Tensor, ...]
    vertex_init: torch.Tensor
    joint_regressor: torch.Tensor
    coarse_offsets: torch.Tensor | None = None
    rest_coarse: torch.Tensor | None = None
    rest_joints: torch.Tensor | None = None
    parents: tuple[int, ...] | None = None

    @property
    def num_coarse(self) -> int:
        return int(self.upsample[0].shape[1])

    @property
    def num_vertices(self) -> int:
        return int(self.upsample[-1].shape[0])

    def validate(self, num_joints: int) -> None:
        """Raise ``InputError`` unless the shapes chain: U_k (n_{k+1}, n_k), vertex_init (Vc,) / (Vc, J),
        joint_regressor (J, V), coarse_offsets (Vc, 3)."""
        if len(self.upsample) < 1:
            raise InputError("no upsampling matrices", field="upsample", expected="coarse -> fine matrices")
        for k, u in enumerate(self.upsample):
            if u.dim() != 2:
                raise InputError(f"shape {tuple(u.shape)}", field=f"upsample[{k}]", expected="a 2-D matrix")
            if k and u.shape[1] != self.upsample[k - 1].shape[0]:
                raise InputError(f"shape {tuple(u.shape)} does not follow {tuple(self.upsample[k - 1].shape)}",
                                 field=f"upsample[{k}]", expected=f"({'n'}, {self.upsample[k - 1].shape[0]})")
        vc, v = self.num_coarse, self.num_vertices
        vi = self.vertex_init
        if vi.dim() == 1:
            if vi.shape[0] != vc or vi.dtype not in (torch.int64, torch.int32) or (
                    vi.numel() and (int(vi.min()) < 0 or int(vi.max()) >= num_joints)):
                raise InputError(f"shape {tuple(vi.shape)} dtype {vi.dtype}", field="vertex_init",
                                 expected=f"({vc},) integer joint indices in [0, {num_joints})")
        elif tuple(vi.shape) != (vc, num_joints):
            raise InputError(f"shape {tuple(vi.shape)}", field="vertex_init",
                             expected=f"({vc},) indices or ({vc}, {num_joints}) weights")
        if tuple(self.joint_regressor.shape) != (num_joints, v):
            raise InputError(f"shape {tuple(self.joint_regressor.shape)}", field="joint_regressor",
                             expected=f"({num_joints}, {v})")
        if self.coarse_offsets is not None and tuple(self.coarse_offsets.shape) != (vc, 3):
            raise InputError(f"shape {tuple(self.coarse_offsets.shape)}", field="coarse_offsets",
                             expected=f"({vc}, 3)")
        if self.rest_coarse is not None and tuple(self.rest_coarse.shape) != (vc, 3):
            raise InputError(f"shape {tuple(self.rest_coarse.shape)}", field="rest_coarse", expected=f"({vc}, 3)")
        if self.rest_joints is not None and tuple(self.rest_joints.shape) != (num_joints, 3):
            raise InputError(f"shape {tuple(self.rest_joints.shape)}", field="rest_joints",
                             expected=f"({num_joints}, 3)")
        if self.parents is not None and len(self.parents) != num_joints:
            raise InputError(f"{len(self.parents)} parents", field="parents", expected=f"{num_joints}, -1 at the root")


def _scipy_to_torch(m) -> torch.Tensor:
    coo = m.tocoo()
    idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data, dtype=torch.float32), coo.shape,
                                   check_invariants=True).coalesce()


def random_mesh_assets(*, num_joints: int = 17, sizes: Sequence[int] = (6890, 1723, 431), nnz_per_row: int = 3,
                       seed: int = 0) -> MeshAssets:
    """Random assets with the real shapes (fine -> coarse ``sizes``): sparse U with ``nnz_per_row``
    convex weights per row, a row-normalised regressor, nearest-joint indices. For tests and counting."""
    g = torch.Generator().manual_seed(seed)
    mats = []
    for fine, coarse in itertools.pairwise(sizes):
        cols = torch.randint(0, coarse, (fine, nnz_per_row), generator=g)
        w = torch.rand(fine, nnz_per_row, generator=g) + 0.1
        w = w / w.sum(1, keepdim=True)
        rows = torch.arange(fine).repeat_interleave(nnz_per_row)
        mats.append(torch.sparse_coo_tensor(torch.stack([rows, cols.reshape(-1)]), w.reshape(-1),
                                            (fine, coarse), check_invariants=True).coalesce())
    reg = torch.rand(num_joints, sizes[0], generator=g) * (torch.rand(num_joints, sizes[0], generator=g) < 0.01)
    reg[:, 0] += 1e-3
    reg = reg / reg.sum(1, keepdim=True)
    vertex_init = torch.randint(0, num_joints, (sizes[-1],), generator=g)
    parents = H36M17.parents if num_joints == H36M17.num_joints else tuple(range(-1, num_joints - 1))
    rest_joints = torch.randn(num_joints, 3, generator=g) * 0.3
    rest_coarse = rest_joints[vertex_init] + torch.randn(sizes[-1], 3, generator=g) * 0.03
    return MeshAssets(upsample=tuple(reversed(mats)), vertex_init=vertex_init, joint_regressor=reg,
                      rest_coarse=rest_coarse, rest_joints=rest_joints, parents=tuple(parents))


def mesh_assets_from_hierarchy(hierarchy, template_vertices: np.ndarray, joint_regressor: np.ndarray, *,
                               with_offsets: bool = False, parents: Sequence[int] | None = None) -> MeshAssets:
    """Assets from a :class:`hmrmamba.body.mesh_sampling.MeshHierarchy`, the template (V, 3) metres and the
    joint regressor (J, V): U chain coarse -> fine, nearest joint of each coarse template vertex to the
    regressed template joints, (``with_offsets``) the coarse template minus its nearest joint, and the
    rest pose for template-shaped decoding (coarse template, template joints, ``parents``; default:
    H36M-17's when J = 17)."""
    hierarchy.validate()
    template = np.asarray(template_vertices, dtype=np.float64)
    reg = np.asarray(joint_regressor, dtype=np.float64)
    if template.shape != (hierarchy.sizes[0], 3):
        raise InputError(f"shape {template.shape}", field="template_vertices", expected=f"({hierarchy.sizes[0]}, 3)")
    if reg.ndim != 2 or reg.shape[1] != hierarchy.sizes[0]:
        raise InputError(f"shape {reg.shape}", field="joint_regressor", expected=f"(J, {hierarchy.sizes[0]})")
    coarse = template
    for d in hierarchy.D:
        coarse = d @ coarse
    joints = reg @ template
    coarse_t = torch.as_tensor(coarse, dtype=torch.float64)
    joints_t = torch.as_tensor(joints, dtype=torch.float64)
    nearest = nearest_joint_index(coarse_t, joints_t)
    offsets = (coarse_t - joints_t[nearest]).float() if with_offsets else None
    if parents is None and reg.shape[0] == H36M17.num_joints:
        parents = H36M17.parents
    return MeshAssets(upsample=tuple(_scipy_to_torch(u) for u in reversed(hierarchy.U)), vertex_init=nearest,
                      joint_regressor=torch.as_tensor(reg, dtype=torch.float32), coarse_offsets=offsets,
                      rest_coarse=coarse_t.float(), rest_joints=joints_t.float(),
                      parents=None if parents is None else tuple(int(p) for p in parents))


# ----------------------------------------------------------------------------------------------
# upsampling


#: CSR copies of the fixed upsampling matrices: id(COO buffer) -> (weak reference to it, CSR copy). Not a
#: module attribute (``copy.deepcopy`` cannot copy CSR tensors); an entry goes when its buffer is freed.
_CSR_OF: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def _csr_of(m: torch.Tensor) -> torch.Tensor:
    """The CSR form of the sparse COO matrix ``m`` (R, C), made once per buffer. Its product with a
    dense (C, K) adds the same terms in the same order (bit-identical to the COO product, tested), and
    one frame (K = 3) takes about a tenth of the COO product's time. Its backward sums in another
    order than the COO product's, so :class:`MeshUpsampler` uses it only where no gradient is taken
    (evaluation, the demo, the online step): training keeps its numerics bit for bit."""
    key = id(m)
    hit = _CSR_OF.get(key)
    if hit is not None and hit[0]() is m:
        return hit[1]
    with torch.inference_mode(False), warnings.catch_warnings():  # a plain tensor: usable under autograd later
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = m.to_sparse_csr()
    _CSR_OF[key] = (weakref.ref(m, lambda _ref, key=key: _CSR_OF.pop(key, None)), csr)
    return csr


class MeshUpsampler(nn.Module):
    """Coarse -> full mesh: x (N, Vc, 3) -> (N, V, 3).

    ``mode``: ``"fixed"`` applies the given matrices (sparse, not trained, not saved);
    ``"learnable"``: one linear layer per level (weight initialised to the dense matrix, bias 0);
    ``"conv"``: PMCE's ``Conv1d(Vc, V, kernel_size=3)`` over the xyz axis, the centre tap initialised
    to the product of the matrices and the side taps to 0.
    """

    def __init__(self, matrices: Sequence[torch.Tensor], mode: str = "learnable"):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise InputError(f"unknown upsample_mode {mode!r}", field="upsample_mode", expected=" | ".join(UPSAMPLE_MODES))
        self.mode = mode
        mats = [m.float().coalesce() if m.is_sparse else m.float() for m in matrices]
        self.num_coarse = int(mats[0].shape[1])
        self.num_vertices = int(mats[-1].shape[0])
        if mode == "learnable":
            self.levels = nn.ModuleList()
            for m in mats:
                lin = nn.Linear(m.shape[1], m.shape[0])
                with torch.no_grad():
                    lin.weight.copy_(m.to_dense() if m.is_sparse else m)
                    lin.bias.zero_()
                self.levels.append(lin)
        elif mode == "conv":
            prod = mats[0].to_dense() if mats[0].is_sparse else mats[0]
            for m in mats[1:]:
                prod = torch.sparse.mm(m, prod) if m.is_sparse else m @ prod
            self.conv = nn.Conv1d(self.num_coarse, self.num_vertices, kernel_size=3, padding=1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, :, 1].copy_(prod)
                self.conv.bias.zero_()
        else:
            for k, m in enumerate(mats):
                self.register_buffer(f"matrix_{k}", m if m.is_sparse else m.to_sparse().coalesce(), persistent=False)
            self.num_levels = len(matrices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, Vc, 3) -> (N, V, 3)."""
        if self.mode == "learnable":
            h = x.transpose(1, 2)  # (N, 3, Vc)
            for lin in self.levels:
                h = lin(h)
            return h.transpose(1, 2)
        if self.mode == "conv":
            return self.conv(x)
        n, vc, c = x.shape
        h = x.permute(1, 0, 2).reshape(vc, n * c)
        dtype = h.dtype
        for k in range(self.num_levels):
            m = getattr(self, f"matrix_{k}")  # dense in a model prepared for export (ONNX has no sparse mm)
            if m.is_sparse and not (torch.is_grad_enabled() and h.requires_grad):
                m = _csr_of(m)  # no gradient wanted: the faster CSR product, the same values
            h = m @ h.to(m.dtype)
        return h.to(dtype).view(-1, n, c).permute(1, 0, 2)


# ----------------------------------------------------------------------------------------------
# motion


def _frame_index(frames, length: int, device) -> torch.Tensor:
    """frames: (K,) integer indices into a T-frame window -> (K,) long on ``device``; refuses empty,
    out-of-range or non-integer indices with one line naming ``frames``."""
    idx = torch.as_tensor(frames, device=device)
    if idx.dim() != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise InputError(f"has shape {tuple(idx.shape)} and dtype {idx.dtype}", field="frames",
                         expected="a non-empty 1-D tensor of integer frame indices")
    if int(idx.min()) < 0 or int(idx.max()) >= length:
        raise InputError(f"indices {int(idx.min())}..{int(idx.max())}", field="frames",
                         expected=f"indices in 0..{length - 1} (the window has {length} frames)")
    return idx.long()


def explicit_motion(pose3d: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
    """M_exp: pose3d (B, T, J, 3) -> frame differences (B, T, J, 3); the first frame's is zero, or
    its difference to ``previous`` (B, J, 3), the frame before the clip (streaming)."""
    first = torch.zeros_like(pose3d[:, :1]) if previous is None else pose3d[:, :1] - previous.unsqueeze(1)
    return torch.cat([first, pose3d[:, 1:] - pose3d[:, :-1]], dim=1)


class ImplicitMotion(nn.Module):
    """M_imp: feats (B, T, F), pose3d (B, T, J, 3) -> (B, T, dim), image features corrected (FiLM) by the
    lifted pose of the same frame (per frame: no frame differences, no other frame)."""

    def __init__(self, *, num_joints: int, feat_dim: int, dim: int):
        super().__init__()
        self.feat_norm = nn.LayerNorm(feat_dim)
        self.feat_proj = nn.Linear(feat_dim, dim)
        self.motion_embed = nn.Linear(num_joints * 3, dim)
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, feats: torch.Tensor, pose3d: torch.Tensor, previous: torch.Tensor | None = None
                ) -> torch.Tensor:
        """feats (B, T, F), pose3d (B, T, J, 3)[, previous (B, J, 3): unused, kept for the streaming call]
        -> (B, T, dim)."""
        b, t = pose3d.shape[:2]
        m = F.gelu(self.motion_embed(pose3d.reshape(b, t, -1)))
        gamma, beta = self.film(m).chunk(2, dim=-1)
        f = self.feat_proj(self.feat_norm(feats))
        return F.layer_norm(f, f.shape[-1:]) * (1.0 + gamma) + beta


@dataclass
class MotionState:
    """Streaming state of a causal reconstructor for B clips after ``frames`` frames: the previous
    frame's pose (B, J, 3) (None before frame 0) and the last W frames' attention keys and values
    (B, heads, W, d), oldest first (zeros before frame 0; masked by ``frames``)."""

    frames: int
    previous: torch.Tensor | None
    keys: torch.Tensor | None
    values: torch.Tensor | None


class MotionAwareAttention(nn.Module):
    """Eq. 12: feats (B, T, F), pose3d (B, T, J, 3) -> F_motion-aware (B, T, F)."""

    def __init__(self, *, num_joints: int = 17, feat_dim: int = 2048, dim: int = 256, num_heads: int = 8,
                 max_frames: int = 16, em: bool = True, im: bool = True, causal: bool = False):
        super().__init__()
        self.causal = bool(causal)
        self.window = int(max_frames)
        if not (em or im):
            raise InputError("motion attention needs em or im", field="em/im", expected="at least one True")
        if dim % num_heads:
            raise InputError(f"motion_dim={dim} not divisible by motion_heads={num_heads}", field="motion_heads",
                             expected="a divisor of motion_dim")
        self.num_heads = num_heads
        self.query_norm = nn.LayerNorm(feat_dim)
        self.w_q = nn.Linear(feat_dim, dim)
        self.explicit = nn.Linear(num_joints * 3, dim) if em else None
        self.implicit = ImplicitMotion(num_joints=num_joints, feat_dim=feat_dim, dim=dim) if im else None
        src = dim * (int(em) + int(im))
        self.kv_norm = nn.LayerNorm(src)
        self.w_k = nn.Linear(src, dim)
        self.w_v = nn.Linear(src, dim)
        self.time_pos = nn.Parameter(torch.zeros(1, max_frames, dim))
        nn.init.trunc_normal_(self.time_pos, std=0.02)
        self.w_o = nn.Linear(dim, feat_dim)
        nn.init.zeros_(self.w_o.weight)
        nn.init.zeros_(self.w_o.bias)

    def _source(self, feats: torch.Tensor, pose3d: torch.Tensor, previous: torch.Tensor | None = None
                ) -> torch.Tensor:
        """LN([E(M_exp), M_imp]): feats (B, T, F), pose3d (B, T, J, 3)[, previous (B, J, 3)] -> (B, T, S)."""
        b, t = feats.shape[:2]
        parts = []
        if self.explicit is not None:
            parts.append(self.explicit(explicit_motion(pose3d, previous).reshape(b, t, -1)))
        if self.implicit is not None:
            parts.append(self.implicit(feats, pose3d, previous))
        return self.kv_norm(torch.cat(parts, -1))

    def _causal_scores(self, q: torch.Tensor, k: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        """q (B, h, Tq, d), k (B, h, Tk, d), ages (Tq, Tk) int64 (t - s; out of window: any) ->
        scaled scores (B, h, Tq, Tk) with the age embedding, -inf outside 0 <= age < W."""
        d = q.shape[-1]
        pos = self.time_pos[0, :self.window].view(self.window, self.num_heads, d).transpose(0, 1)  # (h, W, d)
        rel = torch.einsum("bhqd,hwd->bhqw", q, pos)  # (B, h, Tq, W)
        inside = (ages >= 0) & (ages < self.window)
        idx = ages.clamp(0, self.window - 1).expand(*rel.shape[:2], -1, -1)
        scores = (q @ k.transpose(-1, -2) + rel.gather(-1, idx)) * d ** -0.5
        return scores.masked_fill(~inside, float("-inf"))

    def forward(self, feats: torch.Tensor, pose3d: torch.Tensor) -> torch.Tensor:
        """feats (B, T, F), pose3d (B, T, J, 3) -> (B, T, F)."""
        b, t = feats.shape[:2]
        src = self._source(feats, pose3d)
        if self.causal:
            h = self.num_heads
            q = (self.w_q(self.query_norm(feats)) + self.time_pos[:, 0]).view(b, t, h, -1).transpose(1, 2)
            k = self.w_k(src).view(b, t, h, -1).transpose(1, 2)
            v = self.w_v(src).view(b, t, h, -1).transpose(1, 2)
            frame = torch.arange(t, device=feats.device)
            scores = self._causal_scores(q, k, frame[:, None] - frame[None, :])
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
            return feats + self.w_o(out)
        pos = self.time_pos[:, :t]
        h = self.num_heads
        q = (self.w_q(self.query_norm(feats)) + pos).view(b, t, h, -1).transpose(1, 2)
        k = (self.w_k(src) + pos).view(b, t, h, -1).transpose(1, 2)
        v = self.w_v(src).view(b, t, h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return feats + self.w_o(out)

    def step(self, feats: torch.Tensor, pose3d: torch.Tensor, state: MotionState
             ) -> tuple[torch.Tensor, MotionState]:
        """One frame of the causal form: feats (B, 1, F), pose3d (B, 1, J, 3), state -> ((B, 1, F), new state)."""
        if not self.causal:
            raise InputError("only the causal motion attention runs frame by frame", field="causal",
                             expected="MotionAwareAttention(causal=True)")
        b = feats.shape[0]
        h, w = self.num_heads, self.window
        src = self._source(feats, pose3d, state.previous)
        q = (self.w_q(self.query_norm(feats)) + self.time_pos[:, 0]).view(b, 1, h, -1).transpose(1, 2)
        k_new = self.w_k(src).view(b, 1, h, -1).transpose(1, 2)  # (B, h, 1, d)
        v_new = self.w_v(src).view(b, 1, h, -1).transpose(1, 2)
        if state.keys is None:
            keys = k_new.new_zeros(b, h, w, k_new.shape[-1])
            values = torch.zeros_like(keys)
        else:
            keys, values = state.keys, state.values
        keys = torch.cat([keys[:, :, 1:], k_new], dim=2)  # newest last
        values = torch.cat([values[:, :, 1:], v_new], dim=2)
        ages = torch.arange(w - 1, -1, -1, device=feats.device)
        ages = torch.where(ages <= state.frames, ages, torch.full_like(ages, -1))  # slots before frame 0
        scores = self._causal_scores(q, keys, ages.view(1, w))
        out = (scores.softmax(-1) @ values).transpose(1, 2).reshape(b, 1, -1)
        return feats + self.w_o(out), MotionState(frames=state.frames + 1, previous=pose3d[:, -1],
                                                  keys=keys, values=values)


# ----------------------------------------------------------------------------------------------
# the network


class MotionGuidedReconstructor(nn.Module):
    """Eq. 6: pose3d (B, T, J, 3) metres, feats (B, T, F) -> :class:`ReconOutput` with vertices
    (B, T, V, 3), joints (B, T, J, 3), coarse (B, T, Vc, 3) per frame."""

    def __init__(self, *, upsample: Sequence[torch.Tensor], vertex_init: torch.Tensor,
                 joint_regressor: torch.Tensor, coarse_offsets: torch.Tensor | None = None,
                 rest_coarse: torch.Tensor | None = None, rest_joints: torch.Tensor | None = None,
                 parents: Sequence[int] | None = None, coarse_init: str = "nearest", num_joints: int = 17, feat_dim: int = 2048, max_frames: int = 16, context: str = "motion",
                 em: bool = True, im: bool = True, motion_dim: int = 256, motion_heads: int = 8,
                 gru_hidden: int = 1024, gru_layers: int = 2, context_dim: int | None = None,
                 decoder_dim: int = 64, decoder_depth: int = 3, joint_heads: int = 8, vertex_heads: int = 2,
                 decoder_mlp_ratio: float = 4.0, drop_path: float = 0.1, upsample_mode: str = "learnable",
                 residual: str = "fine", causal: bool = False):
        super().__init__()
        if causal and context == "gru":
            raise InputError("the bidirectional GRU context reads future frames and has no causal form",
                             field="context", expected="'motion' or 'none' when causal=True")
        self.causal = bool(causal)
        if context not in CONTEXTS:
            raise InputError(f"unknown context {context!r}", field="context", expected=" | ".join(CONTEXTS))
        if residual not in RESIDUAL_MODES:
            raise InputError(f"unknown residual {residual!r}", field="residual", expected=" | ".join(RESIDUAL_MODES))
        if coarse_init not in COARSE_INITS:
            raise InputError(f"unknown coarse_init {coarse_init!r}", field="coarse_init",
                             expected=" | ".join(COARSE_INITS))
        assets = MeshAssets(tuple(upsample), vertex_init, joint_regressor, coarse_offsets, rest_coarse,
                            rest_joints, None if parents is None else tuple(parents))
        assets.validate(num_joints)
        if coarse_init == "template":
            if rest_coarse is None or rest_joints is None or parents is None:
                raise InputError("the mesh assets carry no rest pose", field="coarse_init",
                                 expected="assets with rest_coarse, rest_joints and parents, or coarse_init='nearest'")
            frames = H36M17_FRAMES if tuple(parents) == H36M17.parents else None
            self.template = TemplatePoser(rest_coarse, rest_joints, parents, frames=frames)
        else:
            self.template = None
        self.num_joints = num_joints
        self.feat_dim = feat_dim
        self.max_frames = max_frames
        self.num_coarse = assets.num_coarse
        self.num_vertices = assets.num_vertices

        if context == "motion" and (em or im):
            self.context = MotionAwareAttention(num_joints=num_joints, feat_dim=feat_dim, dim=motion_dim,
                                                num_heads=motion_heads, max_frames=max_frames, em=em, im=im,
                                                causal=self.causal)
            ctx_dim = feat_dim
        elif context == "gru":
            from hmrmamba.models.baselines import GRUContext

            self.context = GRUContext(feat_dim=feat_dim, hidden=gru_hidden, num_layers=gru_layers)
            ctx_dim = 2 * gru_hidden
        else:
            self.context = None
            ctx_dim = feat_dim
        if context_dim is not None and context_dim != ctx_dim:
            self.context_proj = nn.Sequential(nn.Linear(ctx_dim, context_dim), nn.GELU())
            ctx_dim = context_dim
        else:
            self.context_proj = None

        self.register_buffer("vertex_init", vertex_init.clone() if vertex_init.dim() == 1 else vertex_init.float())
        self.register_buffer("coarse_offsets", None if coarse_offsets is None else coarse_offsets.float().clone())
        reg = joint_regressor.to_dense() if joint_regressor.is_sparse else joint_regressor
        self.register_buffer("joint_regressor", reg.float().clone())
        self.decoder = CoevolutionDecoder(num_joints=num_joints, num_vertices=self.num_coarse, dim=decoder_dim,
                                          depth=decoder_depth, cond_dim=ctx_dim, joint_heads=joint_heads,
                                          vertex_heads=vertex_heads, mlp_ratio=decoder_mlp_ratio,
                                          drop_path=drop_path)
        self.upsampler = MeshUpsampler(assets.upsample, upsample_mode)
        self.residual_mode = residual
        if residual == "none":
            self.residual = None
        else:
            n = self.num_vertices if residual == "fine" else self.num_coarse
            self.residual = nn.Linear(ctx_dim, 3 * n)  # (x | y | z) blocks, like PMCE's three heads
            nn.init.zeros_(self.residual.weight)
            nn.init.zeros_(self.residual.bias)

    def _residual(self, cond: torch.Tensor, n_vertices: int) -> torch.Tensor:
        """cond (N, D) -> (N, n_vertices, 3)."""
        return self.residual(F.relu(cond)).view(-1, 3, n_vertices).transpose(1, 2)

    def contextualise(self, pose3d: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The per-frame condition: pose3d (B, T, J, 3), feats (B, T, F) -> (B, T, D)."""
        ctx = feats if self.context is None else self.context(feats, pose3d)
        return ctx if self.context_proj is None else self.context_proj(ctx)

    def _check(self, pose3d: torch.Tensor, feats: torch.Tensor, max_frames: int | None) -> None:
        if not isinstance(pose3d, torch.Tensor) or pose3d.dim() != 4 or pose3d.shape[2:] != (self.num_joints, 3) or not 1 <= pose3d.shape[1] <= (max_frames or pose3d.shape[1]):
            t = f"T<={max_frames}" if max_frames else "T"
            raise InputError(f"has shape {tuple(getattr(pose3d, 'shape', ()))}", field="pose3d",
                             expected=f"(B, {t}, {self.num_joints}, 3)")
        b, t = pose3d.shape[:2]
        if not isinstance(feats, torch.Tensor) or tuple(feats.shape) != (b, t, self.feat_dim):
            got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise InputError(f"has shape {got}", field="feats", expected=f"(B, T, F) = {(b, t, self.feat_dim)}")

    def forward(self, pose3d: torch.Tensor, feats: torch.Tensor, frames: torch.Tensor | None = None) -> ReconOutput:
        """pose3d (B, T, J, 3) metres, feats (B, T, F) -> ReconOutput (per-frame meshes).

        ``frames`` (K,) long, optional: decode only these frames of the window; the motion context
        still reads all T frames, and the decoder works frame by frame, so each decoded frame equals
        that frame of the full decode. The output then has K frames instead of T."""
        self._check(pose3d, feats, None if self.causal else self.max_frames)
        ctx = self.contextualise(pose3d, feats)
        if frames is not None:
            frames = _frame_index(frames, pose3d.shape[1], pose3d.device)
            pose3d, ctx = pose3d.index_select(1, frames), ctx.index_select(1, frames)
        return self.decode(pose3d, ctx)

    def init_state(self) -> MotionState:
        """The streaming state before frame 0 (a causal reconstructor only)."""
        if not self.causal:
            raise InputError("only a causal reconstructor runs frame by frame", field="causal",
                             expected="a model built with causal=True (e.g. variant 'tiny-online')")
        return MotionState(frames=0, previous=None, keys=None, values=None)

    def step(self, pose3d: torch.Tensor, feats: torch.Tensor, state: MotionState) -> tuple[ReconOutput, MotionState]:
        """One frame: pose3d (B, 1, J, 3) metres, feats (B, 1, F), state -> (ReconOutput of that frame, new state)."""
        if not self.causal:
            raise InputError("only a causal reconstructor runs frame by frame", field="causal",
                             expected="a model built with causal=True (e.g. variant 'tiny-online')")
        self._check(pose3d, feats, 1)
        if self.context is None:
            ctx = feats
            state = MotionState(frames=state.frames + 1, previous=pose3d[:, -1], keys=None, values=None)
        else:
            ctx, state = self.context.step(feats, pose3d, state)
        if self.context_proj is not None:
            ctx = self.context_proj(ctx)
        return self.decode(pose3d, ctx), state

    def decode(self, pose3d: torch.Tensor, ctx: torch.Tensor) -> ReconOutput:
        """Per-frame meshes from pose3d (B, T, J, 3) metres and the condition ctx (B, T, D) -> ReconOutput."""
        b, t = pose3d.shape[:2]
        n = b * t
        cond = ctx.reshape(n, -1)
        joints = pose3d.reshape(n, self.num_joints, 3)
        if self.template is not None:
            coarse0 = self.template(joints)
        else:
            coarse0 = init_coarse_vertices(joints, self.vertex_init, self.coarse_offsets)
        coevo_joints, coarse = self.decoder(joints, coarse0, cond)
        if self.residual_mode == "coarse":
            coarse = coarse + self._residual(cond, self.num_coarse)
        vertices = self.upsampler(coarse)
        if self.residual_mode == "fine":
            vertices = vertices + self._residual(cond, self.num_vertices)
        mesh_joints = torch.einsum("jv,nvc->njc", self.joint_regressor.to(vertices.dtype), vertices)
        return ReconOutput(vertices=vertices.view(b, t, self.num_vertices, 3),
                           joints=mesh_joints.view(b, t, self.num_joints, 3),
                           coarse=coarse.view(b, t, self.num_coarse, 3),
                           coevo_joints=coevo_joints.view(b, t, self.num_joints, 3), context=ctx)
