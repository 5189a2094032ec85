"""An animated rig from the demo's meshes: body-model parameters fitted to ``meshes.npz``
(:mod:`hmrmamba.body.fitting`), exported as BVH and as a skinned glTF binary.

Axes and units (both files, and the ``fit_*`` arrays in ``meshes.npz``): metres, y up, glTF's
axes: the camera frame (x right, y down, z forward) turned 180 degrees about x
(:func:`hmrmamba.demo.export.to_gltf_axes`), so the camera sits at the origin looking down -z and
the person stands upright facing it (+z). The fitted target of frame k is the camera-frame mesh
``vertices[k] - joints[k, 0] + translation[k]``; frames whose translation is unknown (NaN) take it
interpolated from their neighbours (all unknown: the mesh stays pelvis-relative at the origin).

BVH (:func:`bvh_text`): the skeleton is the fitted body's rest joints (SMPL's 24, named as in
:data:`hmrmamba.skeleton.SMPL24`), each OFFSET the rest position minus its parent's; the root has
channels ``Xposition Yposition Zposition Zrotation Xrotation Yrotation``, every other joint
``Zrotation Xrotation Yrotation``, meaning the local rotation ``Rz @ Rx @ Ry`` (degrees); leaves
end in an End Site half their bone long; Frame Time is 1 / fps.

Skinned glTF (:func:`rigged_glb_bytes`): one node per joint in the kinematic tree (rest
translation = offset from the parent), a skin whose inverse bind matrices undo the rest joint
positions, the fitted body's rest mesh (betas applied) with JOINTS_0 / WEIGHTS_0 = each vertex's
four largest skinning weights renormalised, and one animation: a rotation channel (unit
quaternions, x y z w) per joint and a translation channel on the root, LINEAR samplers at times
k / fps. glTF skinning has no pose correctives: with a user's SMPL whose posedirs are non-zero the
rig omits them (the procedural body has none).

:func:`fit_and_export` is what ``hmrmamba fit`` (and the demo) call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from hmrmamba.atomic import atomic_path
from hmrmamba.body.fitting import BodyFit, BodyModel, FitSettings, fit_body
from hmrmamba.demo.export import (
    _ARRAY,
    _ELEMENTS,
    _FLOAT,
    _UINT,
    _Buffer,
    glb_bytes,
    read_meshes,
    to_gltf_axes,
)
from hmrmamba.errors import InputError
from hmrmamba.skeleton import SMPL24

__all__ = ["BVH_FILE", "FIT_ARRAYS", "GLB_FILE", "FitExport", "bvh_text", "fit_and_export", "fit_targets",
           "rigged_glb_bytes", "top_weights"]

BVH_FILE = "animation.bvh"
GLB_FILE = "animation_rig.glb"
#: arrays added to meshes.npz: (N, 24, 3) axis-angle, (B,), (N, 3) m, (N,) mm x 3, (N,) bool
#: (:class:`hmrmamba.body.fitting.BodyFit`; glTF axes, y up)
FIT_ARRAYS = ("fit_pose", "fit_betas", "fit_trans", "fit_error_mm", "fit_max_error_mm", "fit_path_error_mm",
              "fit_converged")
_UBYTE = 5121
_BVH_ORDER = "ZXY"


def fit_targets(vertices: np.ndarray, joints: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, int]:
    """vertices (N, V, 3), joints (N, J, 3) pelvis-relative camera frame, translation (N, 3) (NaN:
    unknown) -> (N, V, 3) y-up glTF-axes meshes to fit, and how many translations were filled in."""
    n = len(vertices)
    trans = np.asarray(translation, dtype=np.float64).copy()
    known = np.isfinite(trans).all(1)
    if not known.any():
        trans[:] = 0.0
    elif not known.all():
        idx = np.arange(n)
        for c in range(3):
            trans[~known, c] = np.interp(idx[~known], idx[known], trans[known, c])
    root = joints[:, :1] if joints.shape[1] else 0.0
    return to_gltf_axes(vertices - root + trans[:, None].astype(np.float32)), int((~known).sum())


# ---------------------------------------------------------------------------------------------- BVH


def _children(parents: list[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0:
            kids[p].append(j)
    return kids


def bvh_text(fit: BodyFit, body: BodyModel, fps: float, names: tuple[str, ...] = SMPL24.names) -> str:
    """The fitted clip as BVH text (see the module docstring for skeleton, channels and axes)."""
    import torch

    rest = body.shaped(torch.as_tensor(fit.betas))[1].numpy().astype(np.float64)   # (24, 3)
    parents, kids = body.parents, _children(body.parents)
    order: list[int] = []
    lines = ["HIERARCHY"]

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        p = parents[j]
        offset = rest[j] - (rest[p] if p >= 0 else 0.0)
        lines.append(f"{pad}{'ROOT' if p < 0 else 'JOINT'} {names[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        chans = "Zrotation Xrotation Yrotation"
        lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition {chans}" if p < 0 else
                     f"{pad}  CHANNELS 3 {chans}")
        order.append(j)
        for c in kids[j]:
            emit(c, depth + 1)
        if not kids[j]:
            end = 0.5 * offset if np.linalg.norm(offset) > 1e-6 else np.array([0.0, 0.05, 0.0])
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}",
                      f"{pad}  }}"])
        lines.append(f"{pad}}}")

    emit(0, 0)
    n = len(fit.pose)
    euler = Rotation.from_rotvec(fit.pose.reshape(-1, 3).astype(np.float64)).as_euler(
        _BVH_ORDER, degrees=True).reshape(n, -1, 3)
    root_pos = rest[0] + fit.trans.astype(np.float64)
    lines += ["MOTION", f"Frames: {n}", f"Frame Time: {1.0 / fps:.8f}"]
    for k in range(n):
        values = list(root_pos[k]) + [a for j in order for a in euler[k, j]]
        lines.append(" ".join(f"{x:.6f}" for x in values))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- glTF


def top_weights(weights: np.ndarray, count: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """weights (V, J) -> joint ids (V, count) uint8 and weights (V, count) float32 summing to 1:
    each vertex's ``count`` largest weights, renormalised (slots of weight 0 name joint 0)."""
    w = np.asarray(weights, dtype=np.float64)
    ids = np.argsort(-w, axis=1)[:, :count]
    top = np.take_along_axis(w, ids, 1)
    top = np.clip(top, 0.0, None)
    top /= top.sum(1, keepdims=True)
    top = top.astype(np.float32)
    top[:, 0] += 1.0 - top.sum(1)          # exact unit sums in float32
    ids[top == 0] = 0                       # glTF: a slot of zero weight names joint 0
    return ids.astype(np.uint8), top


def _quaternions(pose: np.ndarray) -> np.ndarray:
    """pose (N, J, 3) axis-angle -> (N, J, 4) unit quaternions x y z w, sign-continuous over frames."""
    n, j = pose.shape[:2]
    q = Rotation.from_rotvec(pose.reshape(-1, 3).astype(np.float64)).as_quat().reshape(n, j, 4)
    for k in range(1, n):
        flip = (q[k] * q[k - 1]).sum(-1) < 0
        q[k, flip] *= -1
    return q.astype(np.float32)


def rigged_glb_bytes(fit: BodyFit, body: BodyModel, fps: float, names: tuple[str, ...] = SMPL24.names,
                     name: str = "body") -> bytes:
    """The fitted clip as a skinned, animated glTF binary (see the module docstring)."""
    import torch

    v_rest, j_rest = (a.numpy().astype(np.float32) for a in body.shaped(torch.as_tensor(fit.betas)))
    parents, kids = body.parents, _children(body.parents)
    nj = len(parents)
    buf = _Buffer()
    position = buf.add(v_rest, component=_FLOAT, kind="VEC3", target=_ARRAY, bounds=True)
    ids, w = top_weights(body.weights.numpy())
    joints0 = buf.add(ids, component=_UBYTE, kind="VEC4", target=_ARRAY)
    weights0 = buf.add(w, component=_FLOAT, kind="VEC4", target=_ARRAY)
    indices = buf.add(body.faces.astype(np.uint32).ravel(), component=_UINT, kind="SCALAR", target=_ELEMENTS)
    ibm = np.tile(np.eye(4, dtype=np.float32), (nj, 1, 1))
    ibm[:, :3, 3] = -j_rest
    ibm_acc = buf.add(np.ascontiguousarray(ibm.transpose(0, 2, 1)), component=_FLOAT, kind="MAT4")  # column-major

    nodes: list[dict[str, Any]] = []
    for j in range(nj):
        p = parents[j]
        node: dict[str, Any] = {"name": names[j],
                                "translation": [float(x) for x in (j_rest[j] - (j_rest[p] if p >= 0 else 0.0))]}
        if kids[j]:
            node["children"] = kids[j]
        nodes.append(node)
    nodes.append({"name": name, "mesh": 0, "skin": 0})
    n = len(fit.pose)
    times = np.arange(n, dtype=np.float32) / np.float32(fps)
    t_acc = buf.add(times, component=_FLOAT, kind="SCALAR", bounds=True)
    quats = _quaternions(fit.pose)
    samplers, channels = [], []
    for j in range(nj):
        out = buf.add(np.ascontiguousarray(quats[:, j]), component=_FLOAT, kind="VEC4")
        samplers.append({"input": t_acc, "output": out, "interpolation": "LINEAR"})
        channels.append({"sampler": j, "target": {"node": j, "path": "rotation"}})
    root = buf.add((j_rest[0] + fit.trans).astype(np.float32), component=_FLOAT, kind="VEC3")
    samplers.append({"input": t_acc, "output": root, "interpolation": "LINEAR"})
    channels.append({"sampler": nj, "target": {"node": 0, "path": "translation"}})
    doc: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "hmrmamba fit"}, "scene": 0,
        "scenes": [{"nodes": [0, nj]}], "nodes": nodes,
        "meshes": [{"name": name, "primitives": [{
            "attributes": {"POSITION": position, "JOINTS_0": joints0, "WEIGHTS_0": weights0},
            "indices": indices, "mode": 4}]}],
        "skins": [{"name": "skeleton", "joints": list(range(nj)), "skeleton": 0, "inverseBindMatrices": ibm_acc}],
        "animations": [{"name": "motion", "samplers": samplers, "channels": channels}],
    }
    return glb_bytes(doc, buf)


# ---------------------------------------------------------------------------------------------- command


@dataclass
class FitExport:
    """What :func:`fit_and_export` did: the fit, the files written, translations filled in."""

    fit: BodyFit
    files: list[Path] = field(default_factory=list)
    filled_translations: int = 0

    def summary(self) -> str:
        return self.fit.summary()


def _raw_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def fit_and_export(out_dir: str | Path, body_model: str | Path | BodyModel, *, settings: FitSettings | None = None,
                   bvh: bool = True, gltf: bool = True, log: Callable[[str], None] | None = None) -> FitExport:
    """Fit the body model to ``out_dir/meshes.npz``, add ``fit_*`` arrays to it and write
    ``animation.bvh`` / ``animation_rig.glb`` next to it.

    Everything is read and checked (meshes, body model, vertex counts) and fitted before anything is
    written; the three files are written to temporaries and replace their destinations only when
    all three are complete, so on an error the folder is untouched. A fit that does not converge is
    not an error: ``fit_converged`` says which frames, and the meshes are kept as they were.
    """
    out_dir = Path(out_dir)
    meshes_path = out_dir / "meshes.npz"
    seq = read_meshes(meshes_path)
    body = body_model if isinstance(body_model, BodyModel) else BodyModel.from_path(body_model)
    v_count, b_count = seq.vertices.shape[1], body.num_vertices
    if v_count != b_count:
        raise InputError(f"meshes have {v_count} vertices, the body model {body.source or ''} has {b_count}",
                         file=meshes_path, field="vertices",
                         expected="meshes in the body model's topology (the model the demo's checkpoint used)")
    if len(body.parents) != len(SMPL24.names):
        raise InputError(f"{len(body.parents)} joints", file=body.source, field="kintree_table",
                         expected=f"{len(SMPL24.names)} SMPL joints")
    arrays = _raw_arrays(meshes_path)
    target, filled = fit_targets(seq.vertices, seq.joints, seq.translation)
    fit = fit_body(target, body, settings, log=log)
    arrays.update(fit_pose=fit.pose, fit_betas=fit.betas, fit_trans=fit.trans, fit_error_mm=fit.error_mm,
                  fit_max_error_mm=fit.max_error_mm, fit_path_error_mm=fit.path_error_mm,
                  fit_converged=fit.converged)
    outputs: list[tuple[Path, Callable[[Path], None]]] = [
        (meshes_path, lambda tmp: _savez(tmp, arrays))]
    if bvh:
        text = bvh_text(fit, body, seq.fps)
        outputs.append((out_dir / BVH_FILE, lambda tmp: tmp.write_text(text)))
    if gltf:
        data = rigged_glb_bytes(fit, body, seq.fps)
        outputs.append((out_dir / GLB_FILE, lambda tmp: tmp.write_bytes(data)))
    with contextlib.ExitStack() as stack:   # all written to temporaries first; replaced together on exit
        for path, write in outputs:
            write(stack.enter_context(atomic_path(path, suffix=path.suffix)))
    return FitExport(fit=fit, files=[p for p, _ in outputs], filled_translations=filled)
