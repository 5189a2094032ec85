"""Mesh and model export: OBJ/PLY/GLB read back with independent readers, the body model template,
TorchScript/ONNX graphs that agree with the eager model, and the ``hmrmamba export`` command."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh

from hmrmamba.cli import main
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.demo.export import (
    export_body_model,
    export_meshes,
    export_model,
    read_meshes,
    to_gltf_axes,
    write_glb,
    write_mesh_sequence,
    write_obj,
    write_ply,
)
from hmrmamba.models import build, random_mesh_assets


def _box() -> tuple[np.ndarray, np.ndarray]:
    box = trimesh.creation.box(extents=(0.4, 1.0, 0.2))
    return np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.int64)


def _sequence(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    v, f = _box()
    steps = np.linspace(0.0, 0.5, n, dtype=np.float32)
    return np.stack([v + [s, 0.1 * s, -s] for s in steps]).astype(np.float32), f


@pytest.mark.parametrize("writer, suffix", [(write_obj, "obj"), (write_ply, "ply")])
def test_obj_and_ply_round_trip(tmp_path, writer, suffix):
    v, f = _box()
    v = v + np.array([0.1, 0.2, 3.0], np.float32)  # camera frame, in front of the camera
    path = writer(tmp_path / f"m.{suffix}", v, f)
    back = trimesh.load(path, process=False)
    np.testing.assert_allclose(back.vertices, v * [1, -1, -1], atol=1e-5)  # y up, facing the viewer
    np.testing.assert_array_equal(back.faces, f)
    assert back.is_watertight and back.volume > 0  # winding kept: outward normals
    raw = writer(tmp_path / f"raw.{suffix}", v, f, gltf_axes=False)
    np.testing.assert_allclose(trimesh.load(raw, process=False).vertices, v, atol=1e-5)


def test_mesh_writers_refuse_bad_meshes(tmp_path):
    v, f = _box()
    with pytest.raises(InputError, match="faces"):
        write_obj(tmp_path / "x.obj", v, f + 100)
    bad = v.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="vertices"):
        write_ply(tmp_path / "x.ply", bad, f)
    assert not list(tmp_path.iterdir())


def test_per_frame_files(tmp_path):
    seq, f = _sequence(3)
    paths = write_mesh_sequence(tmp_path / "obj", seq, f, fmt="obj")
    assert [p.name for p in paths] == ["frame_000000.obj", "frame_000001.obj", "frame_000002.obj"]
    np.testing.assert_allclose(trimesh.load(paths[2], process=False).vertices, to_gltf_axes(seq[2]), atol=1e-5)


def _glb_parts(path):
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    jlen, jtype = struct.unpack_from("<I4s", data, 12)
    doc = json.loads(data[20:20 + jlen])
    blen, btype = struct.unpack_from("<I4s", data, 20 + jlen)
    assert (jtype, btype) == (b"JSON", b"BIN\0")
    return doc, data[28 + jlen:28 + jlen + blen]


def test_glb_animation_reads_back(tmp_path):
    seq, f = _sequence(5)
    path = write_glb(tmp_path / "anim.glb", seq, f, fps=10.0)
    base = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_allclose(base.vertices, to_gltf_axes(seq[0]), atol=1e-6)
    np.testing.assert_array_equal(base.faces, f)
    pygltflib = pytest.importorskip("pygltflib")
    g = pygltflib.GLTF2().load(str(path))
    blob = g.binary_blob()

    def read(index, width):
        acc = g.accessors[index]
        view = g.bufferViews[acc.bufferView]
        return np.frombuffer(blob, np.float32, acc.count * width, view.byteOffset).reshape(acc.count, width)

    prim = g.meshes[0].primitives[0]
    targets = [t["POSITION"] if isinstance(t, dict) else t.POSITION for t in prim.targets]
    assert len(targets) == 4
    for k, acc in enumerate(targets, start=1):
        np.testing.assert_allclose(read(prim.attributes.POSITION, 3) + read(acc, 3), to_gltf_axes(seq[k]), atol=1e-6)
    sampler = g.animations[0].samplers[0]
    np.testing.assert_allclose(read(sampler.input, 1)[:, 0], np.arange(5) / 10.0, atol=1e-7)
    weights = read(sampler.output, 1).reshape(5, 4)
    np.testing.assert_array_equal(weights, np.vstack([np.zeros(4), np.eye(4)]))


def test_glb_of_one_frame_has_no_animation(tmp_path):
    v, f = _box()
    doc, binary = _glb_parts(write_glb(tmp_path / "one.glb", v[None], f))
    assert "animations" not in doc and "targets" not in doc["meshes"][0]["primitives"][0]
    assert doc["buffers"][0]["byteLength"] == len(binary)


def _meshes_npz(path, n=4):
    seq, f = _sequence(n)
    np.savez(path, vertices=seq, joints=seq[:, :3], faces=f.astype(np.int32), fps=np.float32(25),
             detected=np.ones(n, bool), translation=np.zeros((n, 3), np.float32))
    return seq, f


def test_export_meshes_and_the_command(tmp_path):
    seq, _ = _meshes_npz(tmp_path / "meshes.npz")
    assert len(export_meshes(tmp_path / "meshes.npz", fmt="ply", out=tmp_path / "ply")) == 4
    assert main(["export", "--meshes", str(tmp_path / "meshes.npz"), "--format", "glb",
                 "--out", str(tmp_path / "a.glb")]) == 0
    assert trimesh.load(tmp_path / "a.glb", force="mesh").vertices.shape == seq.shape[1:]
    assert main(["export", "--meshes", str(tmp_path / "meshes.npz"), "--format", "obj",
                 "--out", str(tmp_path / "objs")]) == 0
    assert len(list((tmp_path / "objs").glob("*.obj"))) == 4


def test_read_meshes_errors(tmp_path):
    with pytest.raises(MissingFileError):
        read_meshes(tmp_path / "none.npz")
    np.savez(tmp_path / "bad.npz", vertices=np.zeros((2, 8, 3), np.float32))
    with pytest.raises(InputError, match="faces"):
        read_meshes(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="npz"):
        read_meshes(tmp_path / "junk.npz")
    seq, f = _sequence(3)
    np.savez(tmp_path / "short.npz", vertices=seq, faces=f, fps=25.0, detected=np.ones(2, bool))
    with pytest.raises(InputError, match="one per frame"):
        read_meshes(tmp_path / "short.npz")


def test_export_body_model(tmp_path):
    from hmrmamba.body.body_model import save_body_model
    from hmrmamba.body.procedural import build_procedural_smpl

    arrays = build_procedural_smpl()
    save_body_model(tmp_path / "bm.npz", arrays)
    mesh = trimesh.load(export_body_model(tmp_path / "bm.npz", tmp_path / "body.obj"), process=False)
    np.testing.assert_allclose(mesh.vertices, arrays["v_template"], atol=1e-5)
    assert mesh.is_watertight and len(mesh.faces) == 13776
    with pytest.raises(InputError, match="suffix"):
        export_body_model(tmp_path / "bm.npz", tmp_path / "body.stl")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build("tiny", assets=random_mesh_assets(seed=2)).eval()


def test_torchscript_export_agrees_with_the_model(tmp_path, tiny_model):
    path, how = export_model(tiny_model, tmp_path / "m.pt", fmt="torchscript", frames=4, map_hw=(6, 6))
    assert how == "torch.jit.trace"
    loaded = torch.jit.load(str(path))
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(1, 4, 17, 2, generator=g) * 2 - 1, torch.rand(1, 4, 17, generator=g),
         torch.randn(1, 4, 2048, generator=g), torch.randn(1, 4, 1024, 6, 6, generator=g))
    with torch.no_grad():
        ref = tiny_model(*x)
        pose, verts, _ = loaded(*x)
    torch.testing.assert_close(verts, ref.vertices, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pose, ref.pose3d, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_export_agrees_with_the_model(tmp_path, tiny_model):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, how = export_model(tiny_model, tmp_path / "m.onnx", fmt="onnx", frames=8, map_hw=(6, 6))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(6)
    x = (torch.rand(1, 8, 17, 2, generator=g) * 2 - 1, torch.rand(1, 8, 17, generator=g),
         torch.randn(1, 8, 2048, generator=g), torch.randn(1, 8, 1024, 6, 6, generator=g))
    out = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), x)})
    with torch.no_grad():
        ref = tiny_model(*x)
    np.testing.assert_allclose(out[1], ref.vertices.numpy(), atol=1e-4)
    assert how.startswith("torch.onnx.export")


def test_export_of_a_maps_model_needs_the_map_size(tmp_path, tiny_model):
    with pytest.raises(InputError, match="map_hw"):
        export_model(tiny_model, tmp_path / "m.pt", fmt="torchscript", frames=4)
    assert not (tmp_path / "m.pt").exists()


def test_export_model_rejects_unknown_format(tmp_path, tiny_model):
    with pytest.raises(InputError, match="torchscript"):
        export_model(tiny_model, tmp_path / "m.x", fmt="tflite")
