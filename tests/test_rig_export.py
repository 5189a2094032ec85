"""The animated rig (hmrmamba.demo.rig_export, ``hmrmamba fit``): the skinned GLB re-skinned from
its own matrices gives the fitted meshes back, it passes the Khronos glTF validator, the BVH read
by the project's BVH reader gives the fitted joints back, and bad input leaves the folder as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch

from hmrmamba.atomic import write_npz
from hmrmamba.body.body_model import save_body_model
from hmrmamba.body.fitting import BodyModel
from hmrmamba.body.procedural import build_procedural_smpl
from hmrmamba.cli import main
from hmrmamba.data.mocap.bvh import bvh_forward_kinematics, read_bvh
from hmrmamba.demo.export import to_gltf_axes
from hmrmamba.demo.rig_export import BVH_FILE, FIT_ARRAYS, GLB_FILE, fit_and_export, top_weights
from hmrmamba.geometry import axis_angle_to_matrix
from hmrmamba.skeleton import SMPL24

FPS = 25.0
N = 12


@pytest.fixture(scope="module")
def body_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("body") / "body_model.npz"
    save_body_model(path, build_procedural_smpl(seed=0))
    return path


@pytest.fixture(scope="module")
def body(body_path) -> BodyModel:
    return BodyModel.from_path(body_path)


def demo_meshes(folder: Path, body: BodyModel, *, nan_translation: int | None = None) -> dict[str, np.ndarray]:
    """A meshes.npz as ``hmrmamba demo`` writes it, made by the body model from a known motion."""
    rng = np.random.default_rng(0)
    t = np.arange(N) / FPS
    pose = rng.normal(scale=0.2, size=(24, 3)) + 0.3 * np.sin(2 * np.pi * t[:, None, None] + rng.uniform(0, 6, (24, 3)))
    pose[:, 0] = [0.0, 0.4, 0.0]
    trans = np.stack([0.3 * t, 0 * t, -3.0 + 0 * t], 1)
    with torch.no_grad():
        v, _ = body(axis_angle_to_matrix(torch.tensor(pose, dtype=torch.float32)),
                    torch.tensor(rng.normal(size=10), dtype=torch.float32), torch.tensor(trans, dtype=torch.float32))
    world = v.numpy()
    h36m_pelvis = world.mean(1, keepdims=True)          # any per-frame reference point will do
    cam = to_gltf_axes(world)                           # its own inverse: y up -> camera frame
    cam_root = to_gltf_axes(h36m_pelvis)
    translation = cam_root[:, 0].copy()
    if nan_translation is not None:
        translation[nan_translation] = np.nan
    arrays = {"vertices": (cam - cam_root).astype(np.float32),
              "joints": np.repeat((cam_root - cam_root), 17, axis=1).astype(np.float32),
              "faces": body.faces, "fps": np.float32(FPS), "detected": np.ones(N, bool),
              "translation": translation.astype(np.float32), "keypoints": np.zeros((N, 17, 2), np.float32)}
    folder.mkdir(parents=True, exist_ok=True)
    write_npz(folder / "meshes.npz", **arrays)
    return {"world": world, **arrays}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, body):
    folder = tmp_path_factory.mktemp("out")
    made = demo_meshes(folder, body)
    result = fit_and_export(folder, body)
    return folder, made, result


def _accessor(doc: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = doc.accessors[index]
    view = doc.bufferViews[acc.bufferView]
    dtype = {5126: np.float32, 5125: np.uint32, 5121: np.uint8}[acc.componentType]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    return np.frombuffer(blob, dtype=dtype, count=acc.count * width, offset=start).reshape(acc.count, width)


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def reskin(path: Path, frame: int) -> np.ndarray:
    """Pose the GLB's rig at keyframe ``frame`` from the file alone (glTF 2.0 skinning) -> (V, 3)."""
    doc = pygltflib.GLTF2().load(str(path))
    blob = doc.binary_blob()
    mesh_node = next(n for n in doc.nodes if n.mesh is not None)
    skin = doc.skins[mesh_node.skin]
    prim = doc.meshes[mesh_node.mesh].primitives[0]
    pos = _accessor(doc, blob, prim.attributes.POSITION).astype(np.float64)
    ids = _accessor(doc, blob, prim.attributes.JOINTS_0).astype(np.int64)
    w = _accessor(doc, blob, prim.attributes.WEIGHTS_0).astype(np.float64)
    ibm = _accessor(doc, blob, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major
    local = {}
    for i, node in enumerate(doc.nodes):
        m = np.eye(4)
        m[:3, 3] = node.translation or [0, 0, 0]
        if node.rotation:
            m[:3, :3] = _quat_matrix(np.asarray(node.rotation))
        local[i] = m
    anim = doc.animations[0]
    for ch in anim.channels:
        sampler = anim.samplers[ch.sampler]
        times = _accessor(doc, blob, sampler.input)[:, 0]
        assert sampler.interpolation == "LINEAR" and np.isclose(times[frame], frame / FPS)
        value = _accessor(doc, blob, sampler.output)[frame].astype(np.float64)
        if ch.target.path == "rotation":
            local[ch.target.node][:3, :3] = _quat_matrix(value)
        else:
            local[ch.target.node][:3, 3] = value
    parent = {c: i for i, n in enumerate(doc.nodes) for c in (n.children or [])}
    world = {}
    for i in range(len(doc.nodes)):       # joints are listed parents first
        world[i] = local[i] if i not in parent else world[parent[i]] @ local[i]
    joint_mats = np.stack([world[j] @ ibm[k] for k, j in enumerate(skin.joints)])
    skin_mat = np.einsum("vk,vkab->vab", w, joint_mats[ids])
    return (skin_mat[:, :3, :3] @ pos[..., None])[..., 0] + skin_mat[:, :3, 3]


def test_fit_recovers_the_demo_meshes(exported):
    _, made, result = exported
    assert result.fit.converged.all() and result.fit.error_mm.mean() < 5.0 and result.fit.error_mm.max() < 8.0
    # y up, placed where the camera saw it
    assert np.linalg.norm(result.fit.vertices - made["world"], axis=-1).mean() < 0.005


def test_glb_rig_reskinned_from_the_file_gives_the_fitted_meshes(exported):
    folder, _, result = exported
    doc = pygltflib.GLTF2().load(str(folder / GLB_FILE))
    assert [n.name for n in doc.nodes[:24]] == list(SMPL24.names)
    assert len(doc.skins) == 1 and doc.skins[0].joints == list(range(24))
    assert {c.target.path for c in doc.animations[0].channels} == {"rotation", "translation"}
    for k in (0, N // 2, N - 1):
        np.testing.assert_allclose(reskin(folder / GLB_FILE, k), result.fit.vertices[k], atol=2e-4)


def test_top_weights_are_four_normalised_largest():
    w = np.array([[0.1, 0.5, 0.05, 0.2, 0.15, 0.0], [0, 0, 1.0, 0, 0, 0]])
    ids, top = top_weights(w)
    assert ids[0].tolist() == [1, 3, 4, 0] and np.allclose(top.sum(1), 1)
    assert ids[1].tolist() == [2, 0, 0, 0] and top[1].tolist() == [1, 0, 0, 0]   # unused slots: joint 0
    np.testing.assert_allclose(top[0], np.array([0.5, 0.2, 0.15, 0.1]) / 0.95, rtol=1e-6)


def _validator() -> Path:
    """The Khronos glTF validator (npm gltf-validator) in a cache folder, installed when npm is there."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (the Khronos glTF validator is a node package)")
    cache = Path(os.environ.get("HMRMAMBA_NPM_CACHE", Path.home() / ".cache" / "hmrmamba" / "npm"))
    module = cache / "node_modules" / "gltf-validator"
    if not module.is_dir():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed and gltf-validator is not cached")
        try:
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache),
                            "gltf-validator@2.0.0-dev.3.10"], check=True, capture_output=True, timeout=240)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"could not install gltf-validator from npm: {type(exc).__name__}")
    return cache / "node_modules"


def test_glb_passes_the_khronos_validator(exported):
    folder, _, _ = exported
    modules = _validator()
    script = ("const v=require('gltf-validator');const fs=require('fs');"
              "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[1])))"
              ".then(r=>console.log(JSON.stringify(r.issues)))"
              ".catch(e=>{console.error(e);process.exit(3);});")
    run = subprocess.run(["node", "-e", script, str(folder / GLB_FILE)], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "NODE_PATH": str(modules)})
    assert run.returncode == 0, run.stderr
    issues = json.loads(run.stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"][:5]


def test_bvh_read_back_gives_the_fitted_joints(exported):
    folder, _, result = exported
    clip = read_bvh(folder / BVH_FILE)
    assert sorted(clip.names) == sorted(SMPL24.names) and np.isclose(clip.fps, FPS)   # depth-first order
    assert clip.channels[0] == ("Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation")
    positions, _ = bvh_forward_kinematics(clip)
    order = [clip.names.index(name) for name in SMPL24.names]
    np.testing.assert_allclose(positions[:, order], result.fit.joints, atol=1e-4)


def test_meshes_npz_keeps_its_arrays_and_gains_the_fit(exported):
    folder, made, result = exported
    with np.load(folder / "meshes.npz", allow_pickle=False) as z:
        for key in ("vertices", "joints", "faces", "translation", "keypoints"):
            np.testing.assert_array_equal(z[key], made[key])
        assert set(FIT_ARRAYS) <= set(z.files)
        assert z["fit_pose"].shape == (N, 24, 3) and z["fit_converged"].all()
        np.testing.assert_allclose(z["fit_error_mm"], result.fit.error_mm)


def test_fit_command(tmp_path, body, body_path, capsys):
    made = demo_meshes(tmp_path / "out", body, nan_translation=3)
    assert main(["fit", str(tmp_path / "out"), "--body-model", str(body_path), "--bvh"]) == 0
    out = capsys.readouterr().out
    assert "fitted 12 frames" in out and "all frames converged" in out and "1 frames had no camera" in out
    assert (tmp_path / "out" / BVH_FILE).is_file() and not (tmp_path / "out" / GLB_FILE).exists()
    with np.load(tmp_path / "out" / "meshes.npz") as z:
        assert np.isnan(z["translation"][3]).all()     # the meshes are kept as they were
        np.testing.assert_array_equal(z["vertices"], made["vertices"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_bad_input_is_one_line_and_leaves_the_folder_untouched(tmp_path, body, body_path, capsys):
    missing = tmp_path / "empty"
    missing.mkdir()
    assert main(["fit", str(missing), "--body-model", str(body_path)]) == 2
    assert "meshes.npz" in capsys.readouterr().err and not any(missing.iterdir())

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "meshes.npz").write_bytes(b"PK\x03\x04 not a zip")
    before = _snapshot(corrupt)
    assert main(["fit", str(corrupt), "--body-model", str(body_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "meshes.npz" in err and _snapshot(corrupt) == before

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    write_npz(wrong / "meshes.npz", vertices=np.zeros((3, 100, 3), np.float32), faces=np.zeros((1, 3), np.int64),
              fps=np.float32(25), joints=np.zeros((3, 17, 3), np.float32))
    before = _snapshot(wrong)
    assert main(["fit", str(wrong), "--body-model", str(body_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "100 vertices" in err and "6890" in err
    assert _snapshot(wrong) == before

    good = tmp_path / "good"
    demo_meshes(good, body)
    before = _snapshot(good)
    assert main(["fit", str(good), "--body-model", str(tmp_path / "no_such_model.npz")]) == 2
    assert "no_such_model.npz" in capsys.readouterr().err and _snapshot(good) == before


BLENDER_SCRIPT = """
import json, sys
import bpy
glb, bvh, frame, fps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.fps, scene.render.fps_base = fps, 1.0
bpy.ops.import_scene.gltf(filepath=glb)
arm = [o for o in bpy.data.objects if o.type == "ARMATURE"][0]
body = [o for o in bpy.data.objects if o.type == "MESH" and o.find_armature() is arm][0]
scene.frame_set(frame)
ev = body.evaluated_get(bpy.context.evaluated_depsgraph_get())
verts = [list(body.matrix_world @ v.co) for v in ev.to_mesh().vertices]
bpy.ops.import_anim.bvh(filepath=bvh)
bvh_arm = [o for o in bpy.data.objects if o.type == "ARMATURE" and o is not arm][0]
print("JSON" + json.dumps({"bones": len(arm.data.bones), "verts": verts, "bvh_bones": len(bvh_arm.data.bones)}))
"""


@pytest.mark.slow
def test_blender_imports_the_rig_and_the_bvh(request, tmp_path):
    """Needs Blender as a Python module (``pip install bpy`` in another venv, ~370 MB; not a dependency):
    set HMRMAMBA_BPY_PYTHON to that venv's python."""
    python = os.environ.get("HMRMAMBA_BPY_PYTHON")
    if not python:
        pytest.skip("HMRMAMBA_BPY_PYTHON is not set (a python with `bpy` installed)")
    folder, _, result = request.getfixturevalue("exported")
    script = tmp_path / "check.py"
    script.write_text(BLENDER_SCRIPT)
    k = N // 2
    run = subprocess.run([python, str(script), str(folder / GLB_FILE), str(folder / BVH_FILE), str(k), str(int(FPS))],
                         capture_output=True, text=True, timeout=300, check=False)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("JSON")), None)
    assert line is not None, run.stderr[-2000:]
    got = json.loads(line[4:])
    assert got["bones"] == 24 and got["bvh_bones"] == 24
    blender = np.asarray(got["verts"])
    fitted = result.fit.vertices[k]
    # Blender is z up: (x, y, z) glTF -> (x, -z, y)
    np.testing.assert_allclose(blender, np.stack([fitted[:, 0], -fitted[:, 2], fitted[:, 1]], 1), atol=1e-3)


def test_a_fit_that_does_not_converge_is_said_and_the_meshes_kept(tmp_path, body, body_path, capsys):
    made = demo_meshes(tmp_path / "out", body)
    scrambled = made["vertices"][:, np.random.default_rng(0).permutation(body.num_vertices)]
    arrays = {k: v for k, v in made.items() if k != "world"}
    write_npz(tmp_path / "out" / "meshes.npz", **{**arrays, "vertices": scrambled})
    assert main(["fit", str(tmp_path / "out"), "--body-model", str(body_path), "--gltf"]) == 0
    assert f"NOT CONVERGED in {N} of {N} frames" in capsys.readouterr().out
    with np.load(tmp_path / "out" / "meshes.npz") as z:
        np.testing.assert_array_equal(z["vertices"], scrambled)
        assert not z["fit_converged"].any() and (z["fit_error_mm"] > 40).all()
    assert (tmp_path / "out" / GLB_FILE).is_file()
