"""Export meshes and models: per-frame OBJ/PLY, a glTF-binary (GLB) animation, the body model
template, and the model itself as TorchScript or ONNX.

Mesh files use glTF's axes, y up: the model's camera frame (x right, y down, z forward) turned
180 degrees about x, ``(x, y, z) -> (x, -y, -z)``, a proper rotation, so triangle winding (outward
normals) is kept and the person stands upright, facing the viewer, in Blender and other viewers.

The GLB animation is one mesh whose frame-0 vertices are the base and whose other frames are morph
targets (Blender: shape keys); one animation channel drives the morph weights, one-hot at each
frame's time ``k / fps`` with linear interpolation in between. It is written here (JSON + one
binary buffer, glTF 2.0) because trimesh does not write morph targets; it reads back with trimesh
(base mesh) and pygltflib (everything).

Writes are atomic (:func:`hmrmamba.atomic.atomic_path`).
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrmamba.atomic import atomic_path, make_output_dir
from hmrmamba.errors import InputError, MissingFileError

__all__ = [
    "MESH_FORMATS",
    "MODEL_FORMATS",
    "ExportWrapper",
    "MeshSequence",
    "export_body_model",
    "export_meshes",
    "export_model",
    "glb_bytes",
    "read_meshes",
    "to_gltf_axes",
    "write_glb",
    "write_mesh_sequence",
    "write_obj",
    "write_ply",
]

MESH_FORMATS = ("obj", "ply", "glb")
MODEL_FORMATS = ("torchscript", "onnx")
_FLOAT, _UINT = 5126, 5125          # glTF componentType
_ARRAY, _ELEMENTS = 34962, 34963    # glTF bufferView target


def to_gltf_axes(vertices: np.ndarray) -> np.ndarray:
    """vertices (..., 3) camera frame (y down, z forward) -> (..., 3) y up, z towards the viewer."""
    v = np.asarray(vertices, dtype=np.float32)
    return v * np.array([1.0, -1.0, -1.0], dtype=np.float32)


def _check_mesh(vertices: np.ndarray, faces: np.ndarray, *, file: str | Path | None = None,
                sequence: bool = False) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices)
    f = np.asarray(faces)
    want = "(N, V, 3)" if sequence else "(V, 3)"
    if v.ndim != (3 if sequence else 2) or v.shape[-1] != 3 or v.dtype.kind != "f" or not np.isfinite(v).all():
        raise InputError(f"shape {v.shape} dtype {v.dtype}", file=file, field="vertices",
                         expected=f"{want} finite floats, metres")
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu" or (
            f.size and (f.min() < 0 or f.max() >= v.shape[-2])):
        raise InputError(f"shape {f.shape} dtype {f.dtype}", file=file, field="faces",
                         expected=f"(F, 3) integer indices below {v.shape[-2]}")
    return v.astype(np.float32), f.astype(np.int64)


class _ObjFaces:
    """The 'f ...' block of an OBJ for one face array, formatted once and reused for every frame."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._text = ""

    def text(self, faces: np.ndarray) -> str:
        key = (id(faces), faces.shape[0])
        if key != self._key:
            self._text = ("f %d %d %d\n" * len(faces)) % tuple((faces + 1).ravel().tolist())
            self._key = key
        return self._text


_OBJ_FACES = _ObjFaces()


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray, *, gltf_axes: bool = True) -> Path:
    """vertices (V, 3) metres, faces (F, 3) -> a Wavefront OBJ at ``path`` (y up unless ``gltf_axes=False``)."""
    v, f = _check_mesh(vertices, faces, file=path)
    if gltf_axes:
        v = to_gltf_axes(v)
    body = ("v %.5f %.5f %.5f\n" * len(v)) % tuple(v.ravel().tolist())
    with atomic_path(path, suffix=".obj") as tmp:
        tmp.write_text("# hmrmamba mesh, metres, y up\n" + body + _OBJ_FACES.text(f))
    return Path(path)


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray, *, gltf_axes: bool = True) -> Path:
    """vertices (V, 3) metres, faces (F, 3) -> a binary little-endian PLY at ``path``."""
    v, f = _check_mesh(vertices, faces, file=path)
    if gltf_axes:
        v = to_gltf_axes(v)
    header = ("ply\nformat binary_little_endian 1.0\ncomment hmrmamba mesh, metres, y up\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n").encode("ascii")
    tri = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    tri["n"] = 3
    tri["idx"] = f
    with atomic_path(path, suffix=".ply") as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(v.astype("<f4").tobytes())
        fh.write(tri.tobytes())
    return Path(path)


def write_mesh_sequence(out_dir: str | Path, vertices: np.ndarray, faces: np.ndarray, *, fmt: str = "obj",
                        prefix: str = "frame_") -> list[Path]:
    """vertices (N, V, 3), faces (F, 3) -> ``out_dir/<prefix>000000.<fmt>`` ... (obj or ply), one per frame."""
    if fmt not in ("obj", "ply"):
        raise InputError(f"format {fmt!r}", field="format", expected="'obj' or 'ply' for per-frame files")
    v, f = _check_mesh(vertices, faces, sequence=True)
    out_dir = make_output_dir(out_dir)
    writer = write_obj if fmt == "obj" else write_ply
    return [writer(out_dir / f"{prefix}{i:06d}.{fmt}", v[i], f) for i in range(len(v))]


# ----------------------------------------------------------------------------------------------
# glTF binary


class _Buffer:
    """One glTF binary buffer being built, with its bufferViews and accessors."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, array: np.ndarray, *, component: int, kind: str, target: int | None = None,
            bounds: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        view = {"buffer": 0, "byteOffset": self.size, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        pad = (-len(data)) % 4
        self.chunks.append(data + b"\0" * pad)
        self.size += len(data) + pad
        count = array.shape[0] if kind != "SCALAR" else array.size
        acc = {"bufferView": len(self.views) - 1, "componentType": component, "count": int(count), "type": kind}
        if bounds:
            a = array.reshape(count, -1)
            acc["min"] = [float(x) for x in a.min(0)]
            acc["max"] = [float(x) for x in a.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def write_glb(path: str | Path, vertices: np.ndarray, faces: np.ndarray, *, fps: float = 25.0,
              gltf_axes: bool = True, name: str = "body") -> Path:
    """vertices (N, V, 3) metres, faces (F, 3) -> a GLB: frame 0 as the mesh, frames 1..N-1 as morph
    targets, and (N > 1) an animation of the morph weights at ``fps``."""
    v, f = _check_mesh(vertices, faces, file=path, sequence=True)
    if not fps > 0:
        raise InputError(f"fps={fps}", file=path, field="fps", expected="a positive frame rate")
    if gltf_axes:
        v = to_gltf_axes(v)
    n = len(v)
    buf = _Buffer()
    base = buf.add(v[0], component=_FLOAT, kind="VEC3", target=_ARRAY, bounds=True)
    indices = buf.add(f.astype(np.uint32).ravel(), component=_UINT, kind="SCALAR", target=_ELEMENTS)
    targets = [{"POSITION": buf.add(v[k] - v[0], component=_FLOAT, kind="VEC3", target=_ARRAY, bounds=True)}
               for k in range(1, n)]
    primitive: dict[str, Any] = {"attributes": {"POSITION": base}, "indices": indices, "mode": 4}
    mesh: dict[str, Any] = {"name": name, "primitives": [primitive]}
    doc: dict[str, Any] = {"asset": {"version": "2.0", "generator": "hmrmamba"}, "scene": 0,
                           "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": name}], "meshes": [mesh]}
    if targets:
        primitive["targets"] = targets
        mesh["weights"] = [0.0] * len(targets)
        mesh["extras"] = {"targetNames": [f"frame_{k:06d}" for k in range(1, n)]}
        times = (np.arange(n, dtype=np.float32) / np.float32(fps))
        weights = np.zeros((n, n - 1), dtype=np.float32)
        weights[np.arange(1, n), np.arange(n - 1)] = 1.0
        t_acc = buf.add(times, component=_FLOAT, kind="SCALAR", bounds=True)
        w_acc = buf.add(weights.ravel(), component=_FLOAT, kind="SCALAR")
        doc["animations"] = [{"name": "motion", "samplers": [{"input": t_acc, "output": w_acc,
                                                              "interpolation": "LINEAR"}],
                              "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}]
    with atomic_path(path, suffix=".glb") as tmp:
        tmp.write_bytes(glb_bytes(doc, buf))
    return Path(path)


def glb_bytes(doc: dict[str, Any], buf: _Buffer) -> bytes:
    """A glTF document (without accessors, bufferViews, buffers) and its :class:`_Buffer` -> GLB bytes."""
    doc = {**doc, "accessors": buf.accessors, "bufferViews": buf.views, "buffers": [{"byteLength": buf.size}]}
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    binary = b"".join(buf.chunks)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
            + struct.pack("<I4s", len(binary), b"BIN\0") + binary)


# ----------------------------------------------------------------------------------------------
# meshes.npz and the command's entry points


@dataclass
class MeshSequence:
    """The demo's ``meshes.npz``: vertices (N, V, 3) and joints (N, 17, 3) metres, pelvis-relative,
    camera orientation; faces (F, 3); fps; detected (N,) bool; translation (N, 3) metres (NaN: unknown)."""

    vertices: np.ndarray
    joints: np.ndarray
    faces: np.ndarray
    fps: float
    detected: np.ndarray
    translation: np.ndarray


def read_meshes(path: str | Path) -> MeshSequence:
    """Read and check a ``meshes.npz`` written by ``hmrmamba demo``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("meshes file not found", file=path, expected="DIR/meshes.npz from `hmrmamba demo`")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - a broken zip raises one of several types
        raise InputError(f"cannot be read as npz ({type(exc).__name__})", file=path,
                         expected="meshes.npz from `hmrmamba demo`") from None
    for key in ("vertices", "faces", "fps"):
        if key not in arrays:
            raise InputError(f"has arrays {sorted(arrays)}", file=path, field=key,
                             expected="vertices (N, V, 3), joints, faces (F, 3), fps")
    v, f = _check_mesh(arrays["vertices"], arrays["faces"], file=path, sequence=True)
    n = len(v)
    if n == 0:
        raise InputError("has 0 frames", file=path, field="vertices", expected="(N, V, 3) with N >= 1 frames")
    fps = _scalar_fps(arrays["fps"], path)
    joints = arrays.get("joints", np.zeros((n, 0, 3), np.float32))
    detected = np.asarray(arrays.get("detected", np.ones(n, bool)), bool)
    translation = arrays.get("translation", np.full((n, 3), np.nan, np.float32))
    if detected.shape != (n,) or translation.shape != (n, 3) or joints.shape[0] != n:
        raise InputError(f"detected {detected.shape}, translation {translation.shape}, joints {joints.shape}",
                         file=path, field="detected/translation/joints", expected=f"{n} rows, one per frame")
    return MeshSequence(vertices=v, joints=joints.astype(np.float32), faces=f, fps=fps, detected=detected,
                        translation=translation.astype(np.float32))


def _scalar_fps(value: Any, path: Path) -> float:
    """The ``fps`` member as a float: one finite, positive number (not a vector, not a string)."""
    a = np.asarray(value)
    shown = repr(a.tolist()) if a.size <= 4 else f"an array of shape {a.shape}"
    if a.size != 1 or a.dtype.kind not in "fiu":
        raise InputError(f"fps is {shown} (dtype {a.dtype})", file=path, field="fps",
                         expected="one positive number (frames per second)")
    fps = float(a.reshape(()))
    if not (np.isfinite(fps) and 0 < fps <= 10_000):
        raise InputError(f"fps={fps}", file=path, field="fps", expected="a positive frame rate up to 10000")
    return fps


def export_meshes(meshes: str | Path, *, fmt: str, out: str | Path) -> list[Path]:
    """``meshes.npz`` -> per-frame OBJ/PLY files in the folder ``out``, or one GLB animation at ``out``."""
    if fmt not in MESH_FORMATS:
        raise InputError(f"format {fmt!r}", field="--format", expected=" | ".join(MESH_FORMATS))
    seq = read_meshes(meshes)
    if fmt == "glb":
        return [write_glb(out, seq.vertices, seq.faces, fps=seq.fps)]
    return write_mesh_sequence(out, seq.vertices, seq.faces, fmt=fmt)


def export_body_model(body_model: str | Path, out: str | Path) -> Path:
    """The SMPL-format body model's template mesh (v_template, f) -> OBJ, PLY or GLB by ``out``'s suffix."""
    from hmrmamba.body.body_model import load_body_arrays

    out = Path(out)
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in MESH_FORMATS:
        raise InputError(f"suffix '{out.suffix}'", file=out, field="--out", expected="a .obj, .ply or .glb path")
    arrays = load_body_arrays(body_model)
    v, f = arrays["v_template"].astype(np.float32), arrays["f"].astype(np.int64)
    # the template is in SMPL's world frame (y up): write it as is
    if suffix == "glb":
        return write_glb(out, v[None], f, gltf_axes=False)
    return (write_obj if suffix == "obj" else write_ply)(out, v, f, gltf_axes=False)


# ----------------------------------------------------------------------------------------------
# the model for CPU inference


class ExportWrapper(torch.nn.Module):
    """An HMRMamba returning plain tensors: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F)
    [, spatial (B, T, C, h, w) when the model's GA samples feature maps]
    -> (pose3d (B, T, J, 3), vertices (B, T, V, 3), joints (B, T, J, 3))."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor, feats: torch.Tensor,
                spatial: torch.Tensor | None = None):
        """See the class docstring."""
        out = self.model(kp2d, conf, feats, spatial)
        return out.pose3d, out.vertices, out.joints


def dense_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose sparse buffers (the fixed mesh upsampling) are dense: exporters have
    no sparse matrix product."""
    import copy

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_sparse:
                module._buffers[name] = buf.to_dense()
    return model


#: clip lengths an exported model may take
MAX_EXPORT_FRAMES = 10_000


def check_frames(frames: Any) -> int:
    """``--frames``: an integer in [1, :data:`MAX_EXPORT_FRAMES`]."""
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_EXPORT_FRAMES:
        raise InputError(f"frames={frames!r}", field="--frames",
                         expected=f"an integer clip length in [1, {MAX_EXPORT_FRAMES}]")
    return int(frames)


def export_model(model: torch.nn.Module, out: str | Path, *, fmt: str, frames: int = 16,
                 map_hw: tuple[int, int] | None = None) -> tuple[Path, str]:
    """Export ``model`` (an HMRMamba) for CPU inference on clips of ``frames`` frames -> (path, how).

    Graph: ``(kp2d (1, T, 17, 2), conf (1, T, 17), feats (1, T, F)[, spatial (1, T, C, h, w)])
    -> (pose3d, vertices, joints)``; ``spatial`` (with ``map_hw`` = (h, w), the features stage's map
    size) only for a model whose GA samples feature maps (``model.map_dim > 0``).
    ``torchscript``: ``torch.jit.trace``. ``onnx``: ``torch.onnx.export`` with the dynamo exporter, or,
    when that fails, the TorchScript-based one (``dynamo=False``). Under export the SSM runs its
    reference scan (:class:`hmrmamba.ssm.Mamba`) and the fixed mesh upsampling is made dense. The
    exported graph is run and compared with the eager model (1e-4) before the file is written
    (ONNX: with onnxruntime when it is installed). See docs/demo.md for what works.
    """
    if fmt not in MODEL_FORMATS:
        raise InputError(f"format {fmt!r}", field="format", expected=" | ".join(MODEL_FORMATS))
    frames = check_frames(frames)
    out = Path(out)
    wrapped = ExportWrapper(dense_copy(model)).eval()
    feat_dim = int(model.feat_mean.shape[0])
    map_dim = int(getattr(model, "map_dim", 0))
    if map_dim and (map_hw is None or len(map_hw) != 2 or min(int(x) for x in map_hw) < 1):
        raise InputError(f"map_hw={map_hw!r}", field="map_hw",
                         expected=f"the (h, w) of the {map_dim}-channel maps this model's GA samples")
    g = torch.Generator().manual_seed(0)
    example = (torch.rand(1, frames, 17, 2, generator=g) * 2 - 1, torch.rand(1, frames, 17, generator=g),
               torch.randn(1, frames, feat_dim, generator=g))
    inputs = ["kp2d", "conf", "feats"]
    if map_dim:
        example += (torch.randn(1, frames, map_dim, int(map_hw[0]), int(map_hw[1]), generator=g),)
        inputs.append("spatial")
    names = {"input_names": inputs, "output_names": ["pose3d", "vertices", "joints"]}
    with torch.no_grad():
        expected = wrapped(*example)
        if fmt == "torchscript":
            with warnings.catch_warnings():  # the unrolled reference scan makes many TracerWarnings
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(wrapped, example, check_trace=False)
            _check_export(expected, traced(*example), out)
            with atomic_path(out, suffix=".pt") as tmp:
                torch.jit.save(traced, str(tmp))
            return out, "torch.jit.trace"
        errors = []
        with atomic_path(out, suffix=".onnx") as tmp:
            how = None
            try:
                torch.onnx.export(wrapped, example, dynamo=True, **names).save(str(tmp))
                how = "torch.onnx.export(dynamo=True)"
            except Exception as exc:  # noqa: BLE001 - the exporter raises many types; keep the first line
                errors.append(f"dynamo: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
            if how is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", torch.jit.TracerWarning)
                        warnings.simplefilter("ignore", DeprecationWarning)
                        torch.onnx.export(wrapped, example, str(tmp), dynamo=False, **names)
                    how = "torch.onnx.export(dynamo=False)"
                except Exception as exc:  # noqa: BLE001 - as above
                    errors.append(f"torchscript-based: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
                    raise InputError("ONNX export failed (" + "; ".join(errors) + ")", field="--onnx",
                                     expected="ops the ONNX exporters support; --torchscript works") from None
            _check_onnx(tmp, example, expected, out)
        return out, how


def _check_onnx(path: Path, example, expected, out: Path) -> None:
    try:
        import onnxruntime as ort
    except ImportError:  # optional: the check needs onnxruntime
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), example)}
    _check_export(expected, [torch.as_tensor(y) for y in session.run(None, feeds)], out)


def _check_export(expected, got, out: Path) -> None:
    for name, a, b in zip(("pose3d", "vertices", "joints"), expected, got):
        if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise InputError(f"exported graph disagrees with the model on {name} "
                             f"(max |diff| {float((a - b).abs().max()):.3g})", file=out, field=name,
                             expected="the same outputs as the eager model")
