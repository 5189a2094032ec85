"""Template-shaped coarse mesh: the body template's rest shape, posed by the lifted joints.

The reconstructor regresses vertices (no SMPL parameters), but an untrained decoder that starts
from vertices piled on their nearest joints outputs a skeleton of spikes. Instead, the coarse mesh
starts from the template's coarse vertices carried along the bones of the lifted skeleton, and the
co-evolution decoder learns corrections to that.

Rest-pose binding (once, from the template): every coarse vertex ``v`` is bound to its ``k``
nearest bones ``b = (p -> c)`` with weights ``w_vb`` (a soft-min over the distance to each bone
segment), and is written in that bone's terms as ``v = J0[p] + s_vb (J0[c] - J0[p]) + r_vb``
(``s`` along the bone, ``r`` perpendicular to it).

Posing (every frame, differentiable in the joints)::

    v' = sum_b w_vb (J[p] + s_vb (J[c] - J[p]) + R_b r_vb)

``R_b`` is the rotation of bone ``b``: the rotation of its body part's reference frame (pelvis
frame from the hips and spine for the legs and the lower spine, thorax frame from the shoulders
and the upper spine for the arms, neck and head) followed by the smallest rotation ("swing") that
turns the part-rotated rest direction onto the posed bone. The part frame fixes the twist that a
swing alone leaves free (a body turned away from the camera keeps its front and back). Bone lengths
follow the lifted joints; widths stay the template's. With the lifted joints equal to the template
joints, the output is exactly the template's coarse mesh (a test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hmrmamba.errors import InputError

__all__ = ["BodyFrames", "H36M17_FRAMES", "TemplatePoser", "bind_to_bones", "swing_rotation"]


@dataclass(frozen=True)
class BodyFrames:
    """Which joints span the two body-part frames, and which bones each frame carries.

    A frame is built from an origin, a left and a right joint (its x axis, right -> left) and an
    "up" pair (from, to): x = left - right, y = up orthogonalised to x, z = x cross y.
    ``upper_children``: the bones (named by their child joint) that follow the thorax frame; all
    other bones follow the pelvis frame.
    """

    pelvis_left: int
    pelvis_right: int
    pelvis_up: tuple[int, int]
    thorax_left: int
    thorax_right: int
    thorax_up: tuple[int, int]
    upper_children: tuple[int, ...]


#: H36M-17: hips 4 (left) / 1 (right), spine 0 -> 7; shoulders 11 / 14, spine 7 -> thorax 8;
#: the thorax frame carries the neck, head, shoulders and arms.
H36M17_FRAMES = BodyFrames(pelvis_left=4, pelvis_right=1, pelvis_up=(0, 7), thorax_left=11, thorax_right=14,
                           thorax_up=(7, 8), upper_children=(9, 10, 11, 12, 13, 14, 15, 16))


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[:, index]`` for x (N, M, ...) and an integer index of any shape -> (N, *index.shape, ...).

    Through ``index_select``, whose backward adds the gradients of repeated indices in a fixed order;
    the backward of ``x[:, index]`` (``index_put_`` with accumulate) adds them with atomics across
    threads on the CPU, so two identical training runs on 2 threads drifted apart."""
    return x.index_select(1, index.reshape(-1)).view(x.shape[0], *index.shape, *x.shape[2:])


def _normalise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _frame(left: torch.Tensor, right: torch.Tensor, up_from: torch.Tensor, up_to: torch.Tensor) -> torch.Tensor:
    """Orthonormal frame (..., 3, 3), columns x, y, z, from points (..., 3)."""
    x = _normalise(left - right)
    up = up_to - up_from
    y = _normalise(up - (up * x).sum(-1, keepdim=True) * x)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def _quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).view(*q.shape[:-1], 3, 3)


def swing_rotation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The smallest rotation taking direction a onto direction b: a, b (..., 3) -> (..., 3, 3).

    Opposite directions (no unique smallest rotation) turn by pi about an axis perpendicular to a.
    """
    a, b = _normalise(a), _normalise(b)
    q = torch.cat([1.0 + (a * b).sum(-1, keepdim=True), torch.cross(a, b, dim=-1)], dim=-1)
    qn = q.norm(dim=-1, keepdim=True)
    ex = torch.zeros_like(a)
    ex[..., 0] = 1.0
    ey = torch.zeros_like(a)
    ey[..., 1] = 1.0
    perp = torch.cross(a, ex, dim=-1)
    perp = torch.where(perp.norm(dim=-1, keepdim=True) > 1e-3, perp, torch.cross(a, ey, dim=-1))
    flip = torch.cat([torch.zeros_like(qn), _normalise(perp)], dim=-1)
    q = torch.where(qn > eps, q / qn.clamp_min(eps), flip)
    return _quat_to_matrix(q)


def _segment_distance(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of each point to each segment, and the unclamped position along it.

    points (V, 3), start/end (B, 3) -> distance (V, B), s (V, B) with point ~ start + s (end - start) + r.
    """
    d = end - start  # (B, 3)
    rel = points[:, None] - start[None]  # (V, B, 3)
    s = (rel * d[None]).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)[None]
    closest = start[None] + s.clamp(0, 1)[..., None] * d[None]
    return (points[:, None] - closest).norm(dim=-1), s


def bind_to_bones(rest_vertices: torch.Tensor, rest_joints: torch.Tensor, parents: Sequence[int], *,
                  nearest: int = 3, sigma: float = 0.02) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bind rest vertices to their ``nearest`` bones.

    rest_vertices (V, 3), rest_joints (J, 3) metres, parents (J,) (-1 at the root)
    -> bone index (V, k) int64, weight (V, k) (rows sum to 1), s (V, k), r (V, k, 3).
    Weights: softmax of -(d_b - d_min) / sigma over the k nearest bone segments, zero for bones more
    than 3 sigma farther than the nearest (a hand is never pulled by the thigh it rests beside).
    """
    bones = [(p, c) for c, p in enumerate(parents) if p >= 0]
    if not bones:
        raise InputError("the skeleton has no bones", field="parents", expected="at least one joint with a parent")
    v = rest_vertices.double()
    j = rest_joints.double()
    start = j[[p for p, _ in bones]]
    end = j[[c for _, c in bones]]
    dist, s = _segment_distance(v, start, end)
    k = min(int(nearest), len(bones))
    d_k, idx = dist.topk(k, dim=1, largest=False)
    gap = d_k - d_k[:, :1]
    weight = torch.softmax(-gap / float(sigma), dim=1) * (gap <= 3.0 * float(sigma))  # far bones: no pull at all
    weight = weight / weight.sum(1, keepdim=True)
    s_k = s.gather(1, idx)
    r = v[:, None] - (start[idx] + s_k[..., None] * (end - start)[idx])
    return idx, weight.float(), s_k.float(), r.float()


class TemplatePoser(nn.Module):
    """Coarse template posed by joints: joints (N, J, 3) metres -> coarse vertices (N, V, 3).

    Built from the template's coarse vertices (V, 3), its joints (J, 3) and the skeleton's parents;
    ``frames`` gives the body-part reference frames (None: every bone swings from the rest pose in
    the world frame). The binding is recomputed from the template at every build, so the buffers are
    not saved in checkpoints.
    """

    def __init__(self, rest_vertices: torch.Tensor, rest_joints: torch.Tensor, parents: Sequence[int], *,
                 frames: BodyFrames | None = None, nearest: int = 3, sigma: float = 0.02):
        super().__init__()
        parents = tuple(int(p) for p in parents)
        n_joints = len(parents)
        if tuple(rest_joints.shape) != (n_joints, 3) or rest_vertices.dim() != 2 or rest_vertices.shape[1] != 3:
            raise InputError(f"rest_vertices {tuple(rest_vertices.shape)}, rest_joints {tuple(rest_joints.shape)}",
                             field="rest_joints", expected=f"(V, 3) vertices and ({n_joints}, 3) joints")
        bones = [(p, c) for c, p in enumerate(parents) if p >= 0]
        self.frames = frames
        idx, weight, s, r = bind_to_bones(rest_vertices, rest_joints, parents, nearest=nearest, sigma=sigma)
        self.register_buffer("bone_index", idx, persistent=False)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("along", s, persistent=False)
        self.register_buffer("perp", r, persistent=False)
        self.register_buffer("bone_parent", torch.tensor([p for p, _ in bones]), persistent=False)
        self.register_buffer("bone_child", torch.tensor([c for _, c in bones]), persistent=False)
        self.register_buffer("rest_joints", rest_joints.float().clone(), persistent=False)
        upper = set(frames.upper_children) if frames is not None else set()
        self.register_buffer("bone_upper", torch.tensor([c in upper for _, c in bones]), persistent=False)

    def _part_rotations(self, joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pelvis and thorax frame rotations rest -> posed: joints (N, J, 3) -> two (N, 3, 3)."""
        f = self.frames
        if f is None:
            eye = torch.eye(3, dtype=joints.dtype, device=joints.device).expand(joints.shape[0], 3, 3)
            return eye, eye
        rest = self.rest_joints.to(joints)

        def rot(js: torch.Tensor, left: int, right: int, up: tuple[int, int]) -> torch.Tensor:
            return _frame(js[..., left, :], js[..., right, :], js[..., up[0], :], js[..., up[1], :])

        pelvis = rot(joints, f.pelvis_left, f.pelvis_right, f.pelvis_up) @ rot(
            rest, f.pelvis_left, f.pelvis_right, f.pelvis_up).transpose(-1, -2)
        thorax = rot(joints, f.thorax_left, f.thorax_right, f.thorax_up) @ rot(
            rest, f.thorax_left, f.thorax_right, f.thorax_up).transpose(-1, -2)
        return pelvis, thorax

    def bone_rotations(self, joints: torch.Tensor) -> torch.Tensor:
        """joints (N, J, 3) -> per-bone rotations rest -> posed (N, B, 3, 3)."""
        pelvis, thorax = self._part_rotations(joints)
        dev = joints.device
        upper = self.bone_upper.to(dev)[None, :, None, None]
        part = torch.where(upper, thorax[:, None], pelvis[:, None])  # (N, B, 3, 3)
        child, parent = self.bone_child.to(dev), self.bone_parent.to(dev)
        rest = self.rest_joints.to(joints)
        rest_dir = (rest[child] - rest[parent])[None].expand(joints.shape[0], -1, -1)
        turned = (part @ rest_dir[..., None])[..., 0]
        posed_dir = _take(joints, child) - _take(joints, parent)
        return swing_rotation(turned, posed_dir) @ part

    def forward(self, joints: torch.Tensor) -> torch.Tensor:
        """joints (N, J, 3) metres -> coarse vertices (N, V, 3)."""
        dev = joints.device
        rot = self.bone_rotations(joints)  # (N, B, 3, 3)
        start = _take(joints, self.bone_parent.to(dev))  # (N, B, 3)
        vec = _take(joints, self.bone_child.to(dev)) - start
        idx = self.bone_index.to(dev)  # (V, k)
        r = torch.einsum("nvkij,vkj->nvki", _take(rot, idx), self.perp.to(joints))
        pos = _take(start, idx) + self.along.to(joints)[None, ..., None] * _take(vec, idx) + r  # (N, V, k, 3)
        return (self.weight.to(joints)[None, ..., None] * pos).sum(2)
