"""Body-model parameters fitted to a clip of meshes: per-frame pose and translation, one shape.

The demo's network predicts vertices in the body model's topology, not SMPL parameters; a mesh
sequence alone does not animate a rig. :func:`fit_body` finds, for a clip of N meshes, the
parameters of the SMPL-format body model (:mod:`hmrmamba.body.body_model`) that reproduce them:

- pose: (N, 24, 3) local joint rotations, axis-angle (optimised as 6D, Zhou et al. 2019);
- betas: (B,) one shape for the whole clip (a person does not change shape);
- trans: (N, 3) metres, added to every vertex (SMPL's ``transl``).

Objective, each term a mean of squared metres: vertices (a fixed, evenly spread subset of
:attr:`FitSettings.vertex_subset` vertices) + ``joint_weight`` x the 24 joints regressed from
the target vertices + ``smooth_weight`` x the squared acceleration (second difference over
frames) of the fitted subset vertices (the temporal prior: noise that changes from frame to frame
is not followed) + ``betas_weight`` x mean squared betas.

Start: every joint's global rotation by a Kabsch fit of its skinned part of the rest mesh (the
vertices whose largest skinning weight is that joint) onto the target, made local along the
kinematic tree; with those rotations the posed vertices are affine in the betas, so betas and
translations come from one least-squares solve; the rotations are fitted again on that shape and
the betas solved again. Then L-BFGS (strong Wolfe line search) on all parameters, in rounds of
``steps_per_round`` iterations, until a round lowers the loss by less than ``tol`` (relative).

Reported per frame: the mean and max per-vertex distance (mm, all vertices) between fitted and
target mesh, each centred on its mean vertex (pose and shape error), and apart from it the distance
between the two centres (the path, which the temporal prior smooths on purpose). A frame is
*converged* when the loss stayed finite and did not end above its starting value *and* its mean
vertex error is at most :attr:`FitSettings.converged_mm` (40 mm: the demo network's meshes are
not exactly body-model meshes; on the test clip of docs/demo.md they fit to about 25 mm).
A fit that does not converge is flagged, never raised.

The LBS here is SMPL's (v_template + shapedirs betas + posedirs (R - I), linear blend skinning
over the kinematic tree); :func:`BodyModel.forward` equals ``smplx.SMPL`` on the same arrays
(tests/test_fitting.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrmamba.errors import InputError
from hmrmamba.geometry import matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix

__all__ = ["BodyFit", "BodyModel", "FitSettings", "acceleration_mm", "fit_body", "kabsch_rotations"]

NUM_JOINTS = 24


@dataclass(frozen=True)
class FitSettings:
    """How :func:`fit_body` fits. Distances in metres, errors in mm."""

    #: L-BFGS rounds at most, each of ``steps_per_round`` iterations (strong Wolfe line search)
    rounds: int = 5
    steps_per_round: int = 20
    #: weight of the 24 regressed joints against the vertices
    joint_weight: float = 1.0
    #: weight of the vertices' squared acceleration (per frame^2) against their squared error
    smooth_weight: float = 0.5
    betas_weight: float = 1e-6
    #: shape components fitted (at most the model's)
    num_betas: int = 10
    #: vertices in the objective (evenly spread; all vertices for the reported error)
    vertex_subset: int = 300
    #: stop when a round lowered the loss by less than ``tol`` (relative)
    tol: float = 0.02
    #: a frame is converged when its mean vertex error is at most this
    converged_mm: float = 40.0

    def __post_init__(self) -> None:
        checks = {"rounds": self.rounds >= 1, "steps_per_round": self.steps_per_round >= 1, "joint_weight": self.joint_weight >= 0,
                  "smooth_weight": self.smooth_weight >= 0, "betas_weight": self.betas_weight >= 0,
                  "num_betas": self.num_betas >= 0, "vertex_subset": self.vertex_subset >= 24,
                  "tol": self.tol >= 0, "converged_mm": self.converged_mm > 0}
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r}", field=f"fit.{name}",
                                 expected="a positive number (non-negative for weights and tol)")


class BodyModel:
    """An SMPL-format body model as float tensors, posed by its own LBS (no smplx).

    From :func:`hmrmamba.body.body_model.load_body_arrays` arrays (procedural or a user's SMPL).
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, num_betas: int = 10, source: str | Path | None = None):
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))
        self.source = None if source is None else str(source)
        self.v_template = f32(arrays["v_template"])                        # (V, 3)
        nb = min(int(num_betas), arrays["shapedirs"].shape[2])
        self.shapedirs = f32(arrays["shapedirs"][:, :, :nb])                # (V, 3, B)
        self.posedirs = f32(arrays["posedirs"])                             # (V, 3, 207)
        self.has_posedirs = bool(np.abs(arrays["posedirs"]).max() > 0)
        self.J_regressor = f32(arrays["J_regressor"])                      # (24, V)
        self.weights = f32(arrays["weights"])                               # (V, 24)
        self.faces = np.asarray(arrays["f"], dtype=np.int64)                # (F, 3)
        self.parents = [-1] + [int(p) for p in np.asarray(arrays["kintree_table"])[0, 1:]]
        self.J_template = self.J_regressor @ self.v_template                # (24, 3)
        self.J_shapedirs = torch.einsum("jv,vcb->jcb", self.J_regressor, self.shapedirs)  # (24, 3, B)

    @classmethod
    def from_path(cls, path: str | Path, *, num_betas: int = 10) -> BodyModel:
        """Read a body model ``.npz`` (:func:`hmrmamba.body.body_model.load_body_arrays`)."""
        from hmrmamba.body.body_model import load_body_arrays

        return cls(load_body_arrays(path), num_betas=num_betas, source=path)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[2])

    def shaped(self, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """betas (B,) -> rest vertices (V, 3) and rest joints (24, 3) of that shape, metres."""
        return (self.v_template + self.shapedirs @ betas,
                self.J_template + self.J_shapedirs @ betas)

    def global_transforms(self, rotmats: torch.Tensor, rest_joints: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """rotmats (N, 24, 3, 3) local, rest_joints (24, 3) -> global rotations (N, 24, 3, 3) and
        joint positions (N, 24, 3) (root joint at its rest position; add ``trans``)."""
        rots: list[torch.Tensor] = []
        pos: list[torch.Tensor] = []
        for j, p in enumerate(self.parents):
            if p < 0:
                rots.append(rotmats[:, j])
                pos.append(rest_joints[j].expand(rotmats.shape[0], 3))
            else:
                rots.append(rots[p] @ rotmats[:, j])
                pos.append(pos[p] + (rots[p] @ (rest_joints[j] - rest_joints[p])[:, None])[..., 0])
        return torch.stack(rots, 1), torch.stack(pos, 1)

    def forward(self, rotmats: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor,
                vertices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """rotmats (N, 24, 3, 3) local rotations, betas (B,), trans (N, 3)
        -> vertices (N, V', 3) and joints (N, 24, 3), metres; ``vertices`` (V',) long picks a subset."""
        v_shaped, rest_j = self.shaped(betas)
        weights, posedirs = self.weights, self.posedirs
        if vertices is not None:
            v_shaped, weights, posedirs = v_shaped[vertices], weights[vertices], posedirs[vertices]
        n = rotmats.shape[0]
        v = v_shaped.expand(n, -1, -1)
        if self.has_posedirs:
            eye = torch.eye(3, dtype=rotmats.dtype)
            feature = (rotmats[:, 1:] - eye).reshape(n, -1)                  # (N, 207)
            v = v + torch.einsum("vck,nk->nvc", posedirs, feature)
        g_rot, g_pos = self.global_transforms(rotmats, rest_j)
        # skinning transform of joint j: x -> G_j (x - J_j) + p_j
        offset = g_pos - (g_rot @ rest_j[None, :, :, None])[..., 0]        # (N, 24, 3)
        per_joint = torch.cat([g_rot.reshape(n, NUM_JOINTS, 9), offset], -1)  # (N, 24, 12)
        blend = torch.matmul(weights, per_joint)                           # (N, V', 12)
        rot = blend[..., :9].unflatten(-1, (3, 3))
        verts = (rot * v[:, :, None, :]).sum(-1) + blend[..., 9:] + trans[:, None]
        return verts, g_pos + trans[:, None]

    __call__ = forward


@dataclass
class BodyFit:
    """The result of :func:`fit_body`, numpy, in the frame of the target meshes (metres).

    pose (N, 24, 3) local axis-angle; betas (B,); trans (N, 3); vertices (N, V, 3) and joints
    (N, 24, 3) of the fitted model; error_mm / max_error_mm (N,) mean / max per-vertex distance to
    the target, both meshes centred on their mean vertex; path_error_mm (N,) distance between the
    two centres (the temporal prior smooths the path on purpose); converged (N,) bool; iterations: L-BFGS rounds run; seconds of wall time; stopped_early:
    the loss stopped improving before the rounds ran out.
    """

    pose: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    vertices: np.ndarray
    joints: np.ndarray
    error_mm: np.ndarray
    max_error_mm: np.ndarray
    path_error_mm: np.ndarray
    converged: np.ndarray
    iterations: int
    seconds: float
    stopped_early: bool
    settings: FitSettings

    @property
    def rotmats(self) -> np.ndarray:
        """(N, 24, 3, 3) local rotation matrices."""
        from hmrmamba.geometry import axis_angle_to_matrix

        return axis_angle_to_matrix(torch.as_tensor(self.pose, dtype=torch.float64)).numpy()

    def summary(self) -> str:
        """One line: frames, error mean/max, converged count, time."""
        n = len(self.error_mm)
        bad = int((~self.converged).sum())
        state = "all frames converged" if bad == 0 else (
            f"NOT CONVERGED in {bad} of {n} frames (mean vertex error > {self.settings.converged_mm:g} mm"
            + ("" if np.isfinite(self.error_mm).all() else " or non-finite") + ")")
        return (f"fitted {n} frames in {self.seconds:.1f} s ({self.iterations} L-BFGS rounds): vertex error "
                f"mean {float(np.mean(self.error_mm)):.1f} mm (worst frame {float(np.max(self.error_mm)):.1f}), "
                f"max {float(np.max(self.max_error_mm)):.1f} mm, path off by {float(np.mean(self.path_error_mm)):.1f} mm "
                f"on average; {state}")


def kabsch_rotations(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """source (P, 3), target (N, P, 3) -> (N, 3, 3) rotations R minimising |R (s - mean) - (t - mean)|."""
    src = source - source.mean(0)
    tgt = target - target.mean(1, keepdim=True)
    h = torch.einsum("pc,npd->ncd", src, tgt)                               # (N, 3, 3)
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return vh.transpose(1, 2) @ fix @ u.transpose(1, 2)


def _initial_rotations(body: BodyModel, target: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """target (N, V, 3), rest (V, 3) -> (N, 24, 3, 3) local rotations from per-part Kabsch fits of
    the rest mesh (each vertex belongs to the joint of its largest skinning weight)."""
    part = body.weights.argmax(1)
    n = target.shape[0]
    glob: list[torch.Tensor] = []
    for j in range(NUM_JOINTS):
        idx = torch.nonzero(part == j).squeeze(1)
        if len(idx) >= 4:
            glob.append(kabsch_rotations(rest[idx], target[:, idx]))
        else:  # a joint without its own skin (a tiny part): follow its parent
            p = body.parents[j]
            glob.append(glob[p] if p >= 0 else torch.eye(3).expand(n, 3, 3))
    g = torch.stack(glob, 1)
    local = [g[:, 0]] + [g[:, p].transpose(1, 2) @ g[:, j] for j, p in enumerate(body.parents) if p >= 0]
    return torch.stack(local, 1)


def _subset(num_vertices: int, count: int) -> torch.Tensor:
    return torch.as_tensor(np.unique(np.linspace(0, num_vertices - 1, min(count, num_vertices)).astype(np.int64)))


def acceleration_mm(points: np.ndarray) -> float:
    """points (N, P, 3) metres -> mean |second difference over frames| in mm/frame^2 (0 for N < 3)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return 0.0
    return float(np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean() * 1000)


#: frames posed at once outside the optimisation (bounds memory: CHUNK x V x 12 floats)
CHUNK = 128


def _solve_betas(body: BodyModel, rotmats: torch.Tensor, target: torch.Tensor, sub: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """rotmats (N, 24, 3, 3), target (N, V, 3) -> betas (B,), trans (N, 3): least squares over ``sub``.

    With the rotations fixed, posed vertices are affine in the betas (rest vertices and rest joints
    both are), so the betas and the per-frame translations solve one linear system (normal
    equations accumulated over chunks of frames, translations eliminated by centring)."""
    n, nb = rotmats.shape[0], body.num_betas
    ata = torch.zeros(nb, nb, dtype=torch.float64)
    aty = torch.zeros(nb, dtype=torch.float64)
    parts = []
    for lo in range(0, n, CHUNK):
        rot = rotmats[lo:lo + CHUNK]
        zero = torch.zeros(rot.shape[0], 3)
        base, _ = body(rot, torch.zeros(nb), zero, vertices=sub)             # (n', S, 3)
        y = target[lo:lo + CHUNK, sub] - base
        cols = torch.stack([body(rot, torch.eye(nb)[k], zero, vertices=sub)[0] - base for k in range(nb)], -1) \
            if nb else y.new_zeros(y.shape + (0,))
        a_c = (cols - cols.mean(1, keepdim=True)).reshape(-1, nb).double()
        y_c = (y - y.mean(1, keepdim=True)).reshape(-1).double()
        ata += a_c.T @ a_c
        aty += a_c.T @ y_c
        parts.append((y, cols))
    betas = torch.linalg.lstsq(ata, aty[:, None]).solution[:, 0].float() if nb else torch.zeros(0)
    trans = torch.cat([(y - cols @ betas).mean(1) for y, cols in parts])
    return betas, trans


def _initial_guess(body: BodyModel, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """target (N, V, 3) -> local rotations (N, 24, 3, 3), betas (B,), trans (N, 3): Kabsch per part on
    the mean shape, betas and translation by least squares, Kabsch again on that shape, betas again."""
    sub = _subset(body.num_vertices, 1500)
    rot = _initial_rotations(body, target, body.v_template)
    betas, _ = _solve_betas(body, rot, target, sub)
    rot = _initial_rotations(body, target, body.shaped(betas)[0])
    betas, trans = _solve_betas(body, rot, target, sub)
    return rot, betas, trans


def fit_body(target_vertices: np.ndarray, body: BodyModel, settings: FitSettings | None = None,
             *, log: Any = None) -> BodyFit:
    """target_vertices (N, V, 3) metres, y up, in ``body``'s topology -> :class:`BodyFit`.

    Never raises on a poor fit: frames whose error stays above ``settings.converged_mm`` (or a
    loss that turns non-finite, in which case the best parameters seen are kept) are flagged.
    """
    s = settings or FitSettings()
    t0 = time.perf_counter()
    tv = np.asarray(target_vertices)
    if tv.ndim != 3 or tv.shape[2] != 3 or tv.shape[1] != body.num_vertices or len(tv) == 0:
        raise InputError(f"vertices of shape {tv.shape} for a body model of {body.num_vertices} vertices",
                         file=body.source, field="vertices",
                         expected=f"(N >= 1, {body.num_vertices}, 3): meshes in the body model's topology")
    if not np.isfinite(tv).all():
        raise InputError("non-finite target vertices", field="vertices", expected="finite metres")
    target = torch.as_tensor(tv, dtype=torch.float32)
    n = target.shape[0]
    sub = _subset(body.num_vertices, s.vertex_subset)
    target_sub = target[:, sub]
    target_joints = torch.einsum("jv,nvc->njc", body.J_regressor, target)

    with torch.no_grad():
        rot0, betas0, trans0 = _initial_guess(body, target)
    rot6d = matrix_to_rot6d(rot0).clone().requires_grad_(True)
    betas = betas0.clone().requires_grad_(True)
    trans = trans0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([rot6d, betas, trans], lr=1.0, max_iter=s.steps_per_round, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

    def objective() -> torch.Tensor:
        verts, joints = body(rot6d_to_matrix(rot6d), betas, trans, vertices=sub)
        loss = ((verts - target_sub) ** 2).sum(-1).mean()
        loss = loss + s.joint_weight * ((joints - target_joints) ** 2).sum(-1).mean()
        if s.smooth_weight > 0 and n >= 3:
            acc = verts[2:] - 2 * verts[1:-1] + verts[:-2]
            loss = loss + s.smooth_weight * (acc ** 2).sum(-1).mean()
        if betas.numel():
            loss = loss + s.betas_weight * (betas ** 2).mean()
        return loss

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = objective()
        if torch.isfinite(loss):
            loss.backward()
        return loss

    def snapshot(value: float):
        return (value, rot6d.detach().clone(), betas.detach().clone(), trans.detach().clone())

    with torch.no_grad():
        best = snapshot(float(objective()))
    start_value = best[0]
    stopped_early, finite, rounds = False, True, 0
    for rounds in range(1, s.rounds + 1):
        opt.step(closure)
        with torch.no_grad():
            value = float(objective())
        if not np.isfinite(value):
            finite = False
            break
        previous = best[0]
        if value < previous:
            best = snapshot(value)
        if log is not None:
            log(f"fit round {rounds}: loss {value:.4g}")
        if previous - value <= s.tol * abs(previous):
            stopped_early = True
            break

    _, r6, b, tr = best
    with torch.no_grad():
        rotmats = rot6d_to_matrix(r6)
        posed = [body(rotmats[lo:lo + CHUNK], b, tr[lo:lo + CHUNK]) for lo in range(0, n, CHUNK)]
        verts, joints = torch.cat([v for v, _ in posed]), torch.cat([j for _, j in posed])
        centre_fit, centre_target = verts.mean(1, keepdim=True), target.mean(1, keepdim=True)
        dist = torch.linalg.norm((verts - centre_fit) - (target - centre_target), dim=-1) * 1000  # (N, V) mm
        err, worst = dist.mean(1).numpy(), dist.max(1).values.numpy()
        path = (torch.linalg.norm(centre_fit - centre_target, dim=-1)[:, 0] * 1000).numpy()
        pose = matrix_to_axis_angle(rotmats)
    converged = np.isfinite(err) & (err <= s.converged_mm) & finite & (best[0] <= start_value)
    return BodyFit(pose=pose.numpy().astype(np.float32), betas=b.numpy().astype(np.float32),
                   trans=tr.numpy().astype(np.float32), vertices=verts.numpy(), joints=joints.numpy(),
                   error_mm=err.astype(np.float32), max_error_mm=worst.astype(np.float32),
                   path_error_mm=path.astype(np.float32),
                   converged=converged, iterations=rounds, seconds=time.perf_counter() - t0,
                   stopped_early=stopped_early, settings=s)
