"""``hmrmamba demo`` end to end on a short video rendered by the synthetic maker (so its 2D keypoints
are known), its camera geometry, the MediaPipe mapping, and every bad input named in issue 8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml

from hmrmamba.demo import (
    default_camera,
    estimate_translation,
    fill_undetected,
    load_keypoints,
    mediapipe33_to_h36m17,
    run_demo,
)
from hmrmamba.demo.camera import project as project_px
from hmrmamba.demo.keypoints import KeypointTrack, MediaPipePoseDetector
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.layout import Layout
from hmrmamba.data.video import VideoReader, write_video

FRAMES = 20


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with tiny params and the body model stage run."""
    from hmrmamba.profiles import compose
    from hmrmamba.stages import body_model
    from hmrmamba.stages.common import execute

    root = tmp_path_factory.mktemp("demo_project")
    params = compose(Path(__file__).resolve().parents[1], "default", ["synthetic.image_size=64"])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    execute(body_model.STAGE, body_model.run, root=root, params=params, log_to_mlflow=False)
    return root


@pytest.fixture(scope="module")
def clip(project, tmp_path_factory) -> dict:
    """A rendered 20-frame 96 px sequence: video, keypoints npz (ground-truth 2D), camera and 3D joints."""
    from hmrmamba.data.synthetic.maker import SplitSpec, SyntheticConfig, SyntheticMaker

    out = tmp_path_factory.mktemp("clip")
    cfg = SyntheticConfig(splits=(SplitSpec("demo", 1, 1),), frames=(FRAMES, FRAMES), image_size=96,
                          occluder_prob=0.0, blur_prob=0.0, seed=7)
    seq = next(SyntheticMaker(cfg, Layout(project).body_model).sequences(cfg.splits[0], ["S90"]))
    frames = seq["frames"]
    write_video(out / "clip.mp4", frames["image"], fps=25.0, lossless=True)
    np.savez(out / "kp.npz", keypoints=frames["joints2d"])
    return {"video": out / "clip.mp4", "keypoints": out / "kp.npz", "joints2d": frames["joints2d"],
            "joints3d": frames["joints3d"], "camera": seq["seq"]["camera"], "dir": out}


def _save(project: Path, variant: str, path: Path, stage: str = "train_mesh", lift_only: bool = False) -> Path:
    from hmrmamba.models import build, resolve_config
    from hmrmamba.train.checkpoint import save_checkpoint
    from hmrmamba.train.experiment import load_mesh_assets

    torch.manual_seed(0)
    assets = None if lift_only else load_mesh_assets(Layout(project))[0]
    model = build(variant, assets=assets, lift_only=lift_only)
    if not lift_only:  # an untrained but body-shaped model: the template's joints, the coarse mesh on them
        from hmrmamba.body.body_model import load_body_arrays

        body = load_body_arrays(Layout(project).body_model)
        joints = body["J_regressor_h36m"] @ body["v_template"]
        joints = (joints - joints[:1]) * [1.0, -1.0, -1.0]  # SMPL's y up -> the camera's y down
        with torch.no_grad():
            model.lifter.head.weight.mul_(0.01)
            model.lifter.head.bias.copy_(torch.as_tensor(joints, dtype=torch.float32))
            for name, p in model.named_parameters():
                if name.split(".")[-2] in ("joint_out", "vertex_out"):
                    p.mul_(0.01)
    save_checkpoint(path, model=model, epoch=0, step=0,
                    config={"model": resolve_config(variant), "stage": stage, "train": {"window": 8}})
    return path


@pytest.fixture(scope="module")
def checkpoints(project, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return {"tiny": _save(project, "tiny", d / "tiny.pt"),
            "tiny-online": _save(project, "tiny-online", d / "tiny_online.pt"),
            "lift": _save(project, "tiny", d / "lift.pt", stage="train_lift", lift_only=True)}


@pytest.fixture(scope="module")
def loaded(project, checkpoints) -> dict:
    """Models and backbones loaded once for the module (loading is not what these tests time)."""
    from hmrmamba.demo.inference import load_inference

    return {k: load_inference(checkpoints[k], root=project) for k in ("tiny", "tiny-online")}


@pytest.fixture(scope="module")
def offline_run(project, clip, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "offline"
    result = run_demo(clip["video"], out, checkpoint=checkpoints["tiny"], keypoints=clip["keypoints"], root=project,
                      ply=True, render_size=96, progress=False)
    return result, out


# ---------------------------------------------------------------------------------------------- outputs


def test_features_are_aligned_to_the_training_split_and_the_fit_writes_the_animation(project, clip, checkpoints,
                                                                                      tmp_path):
    """With the project's training features present, the video's features are moved to their moments
    (summary.json says so, the meshes change); without them or with align_features=False they are not.
    fit=True adds the body-model fit and the BVH / skinned GLB."""
    import h5py
    import json
    import shutil

    root = tmp_path / "project"
    shutil.copytree(project, root)
    train = Layout(root).features("train")
    train.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(train, "w") as fh:  # training features far from what the backbone gives on this clip
        fh["features"] = np.random.default_rng(0).normal(5.0, 0.1, size=(64, 2048)).astype(np.float16)
    runs = {}
    for align in (True, False):
        out = tmp_path / f"align_{align}"
        runs[align] = run_demo(clip["video"], out, checkpoint=checkpoints["tiny"], keypoints=clip["keypoints"],
                               root=root, pictures=False, obj=False, progress=False, align_features=align,
                               fit=align)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["feature_alignment"] == ("training-split moments (64 frames)" if align else "off")
    with np.load(tmp_path / "align_True" / "meshes.npz") as a, np.load(tmp_path / "align_False" / "meshes.npz") as b:
        assert np.abs(a["vertices"] - b["vertices"]).max() > 1e-4  # the model reads the moved features
        assert a["fit_pose"].shape == (FRAMES, 24, 3) and a["fit_error_mm"].shape == (FRAMES,)
        assert "fit_pose" not in b.files
    assert runs[True].fit and "vertex error" in runs[True].fit and runs[False].fit is None
    assert {"animation.bvh", "animation_rig.glb"} <= set(runs[True].files)
    assert (tmp_path / "align_True" / "animation_rig.glb").stat().st_size > 0




def test_demo_writes_meshes_files_and_pictures(offline_run, project):
    result, out = offline_run
    assert result.frames == FRAMES and result.detected == FRAMES and result.fps > 0
    from hmrmamba.body.body_model import load_body_arrays

    faces = load_body_arrays(Layout(project).body_model)["f"]
    with np.load(out / "meshes.npz", allow_pickle=False) as m:
        assert m["vertices"].shape == (FRAMES, 6890, 3) and m["joints"].shape == (FRAMES, 17, 3)
        np.testing.assert_array_equal(m["faces"], faces)
        assert float(m["fps"]) == pytest.approx(25.0) and m["detected"].all()
        assert np.isfinite(m["translation"]).all() and (m["translation"][:, 2] > 0).all()
        vertices = m["vertices"]
    objs = sorted(out.glob("frame_*.obj"))
    assert len(objs) == FRAMES and len(list(out.glob("frame_*.ply"))) == FRAMES
    mesh = trimesh.load(objs[3], process=False)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_allclose(mesh.vertices, vertices[3] * [1, -1, -1], atol=1e-4)
    video = VideoReader(out / "overlay.mp4")
    assert video.num_frames == FRAMES and video.size == (96, 192)  # overlay | side view
    import imageio.v3 as iio

    sheet, side = iio.imread(out / "contact_sheet.png"), iio.imread(out / "side_view.png")
    assert sheet.shape == (4 * 96 + 3 * 4, 3 * 192 + 2 * 4, 3)  # 12 panels, 3 per row, 4 px gutters
    assert side.shape == (96, 6 * 96 + 5 * 4, 3) and side.std() > 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["mode"] == "offline" and set(summary["seconds"]) >= {
        "decode", "features", "model", "render", "write"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_panels_draw_the_mesh_where_it_projects():
    """Front panel: the frame changes only inside the projected box; side panel: the box turned; a frame
    without a mesh keeps its pixels and gets the corner mark."""
    from hmrmamba.demo.pictures import MARK, PanelRenderer

    box = trimesh.creation.box(extents=(0.4, 0.8, 0.4))
    verts = np.asarray(box.vertices, np.float32) + [0.2, 0.0, 4.0]
    camera = default_camera((120, 160), focal=200.0)
    renderer = PanelRenderer(np.asarray(box.faces), camera, (120, 160), render_size=80)  # half size
    frames = np.full((2, 120, 160, 3), 30, np.uint8)
    panels = renderer.render(frames, [verts, None])
    assert panels.shape == (2, 60, 160, 3)
    changed = (panels[0, :, :80] != 30).any(-1)
    uv = (project_px(verts, camera) + 0.5) * 0.5 - 0.5
    rows, cols = np.nonzero(changed)
    assert rows.min() >= np.floor(uv[:, 1].min()) and rows.max() <= np.ceil(uv[:, 1].max())
    assert cols.min() >= np.floor(uv[:, 0].min()) and cols.max() <= np.ceil(uv[:, 0].max())
    assert changed.sum() > 0.5 * (np.ptp(uv[:, 0]) * np.ptp(uv[:, 1]))
    assert (panels[0, :, 80:] != 200).any(-1).sum() > 50  # the side view shows the box
    assert (panels[1, 0, 0] == MARK).all() and (panels[1, 30, 40] == 30).all()


def test_online_demo_equals_the_causal_model_offline(loaded, clip, tmp_path):
    """The streaming path (Tracker, one step per frame) gives the meshes of the whole-sequence run."""
    kw = {"inference": loaded["tiny-online"], "keypoints": clip["keypoints"], "pictures": False, "progress": False,
          "obj": False}
    run_demo(clip["video"], tmp_path / "off", **kw)
    on = run_demo(clip["video"], tmp_path / "on", online=True, **kw)
    assert on.frames == FRAMES and json.loads((tmp_path / "on/summary.json").read_text())["mode"] == "online"
    with np.load(tmp_path / "off/meshes.npz") as a, np.load(tmp_path / "on/meshes.npz") as b:
        np.testing.assert_allclose(b["vertices"], a["vertices"], atol=1e-4)
        np.testing.assert_allclose(b["translation"], a["translation"], atol=1e-3)


def test_undetected_frames_are_flagged_not_filled(loaded, clip, tmp_path):
    kp = clip["joints2d"].copy()
    conf = np.ones(kp.shape[:2], np.float32)
    kp[:3] = np.nan  # no person in the first frames
    conf[10] = 0.0   # nor in frame 10
    np.savez(tmp_path / "kp.npz", keypoints=kp, confidence=conf)
    result = run_demo(clip["video"], tmp_path / "out", inference=loaded["tiny"], keypoints=tmp_path / "kp.npz",
                      pictures=False, progress=False, obj=False)
    assert result.detected == FRAMES - 4
    with np.load(tmp_path / "out/meshes.npz") as m:
        assert m["detected"].tolist() == [i not in (0, 1, 2, 10) for i in range(FRAMES)]
        assert np.isnan(m["translation"][[0, 1, 2, 10]]).all() and np.isfinite(m["translation"][3:10]).all()
        assert np.isnan(m["keypoints"][:3]).all()  # stored as detected, not filled


# ---------------------------------------------------------------------------------------------- geometry


def test_translation_known_answer():
    g = np.random.default_rng(0)
    joints = g.normal(scale=0.3, size=(6, 17, 3))
    joints -= joints[:, :1]
    t_true = np.stack([g.uniform(-0.5, 0.5, 6), g.uniform(-0.3, 0.3, 6), g.uniform(3, 8, 6)], -1)
    camera = default_camera((480, 640), focal=700.0)
    kp = project_px(joints + t_true[:, None], camera)
    np.testing.assert_allclose(estimate_translation(joints, kp, np.ones((6, 17)), camera), t_true, rtol=1e-4)
    kp[:, 4] += 80.0  # an outlier joint with zero weight changes nothing
    w = np.ones((6, 17))
    w[:, 4] = 0.0
    np.testing.assert_allclose(estimate_translation(joints, kp, w, camera), t_true, rtol=1e-4)
    assert np.isnan(estimate_translation(joints[:1], kp[:1], np.zeros((1, 17)), camera)).all()


def test_ground_truth_joints_project_onto_the_keypoints(clip):
    """With the true focal length, the camera fit puts the rendered clip's 3D joints on its 2D joints."""
    j3d, camera = clip["joints3d"], clip["camera"]
    rel = j3d - j3d[:, :1]
    trans = estimate_translation(rel, clip["joints2d"], np.ones(rel.shape[:2]), camera)
    np.testing.assert_allclose(trans, j3d[:, 0], atol=1e-3)
    assert np.abs(project_px(rel + trans[:, None], camera) - clip["joints2d"]).max() < 0.05


def test_mediapipe_mapping_known_answer():
    lm = np.zeros((33, 2))
    vis = np.full(33, 0.9)
    named = {0: (50, 10), 2: (48, 8), 5: (52, 8), 7: (46, 9), 8: (54, 9), 11: (40, 20), 12: (60, 20),
             13: (38, 30), 14: (62, 30), 15: (36, 40), 16: (64, 40), 23: (45, 50), 24: (55, 50),
             25: (45, 65), 26: (55, 65), 27: (45, 80), 28: (55, 80)}
    for i, xy in named.items():
        lm[i] = xy
    vis[24] = 0.2  # right hip barely visible
    kp, conf = mediapipe33_to_h36m17(lm, vis)
    from hmrmamba.skeleton import H36M17

    j = {name: kp[i] for i, name in enumerate(H36M17.names)}
    c = {name: conf[i] for i, name in enumerate(H36M17.names)}
    np.testing.assert_allclose(j["pelvis"], [50, 50])
    np.testing.assert_allclose(j["thorax"], [50, 20])
    np.testing.assert_allclose(j["spine"], [50, 35])
    np.testing.assert_allclose(j["neck"], [50, 10])
    np.testing.assert_allclose(j["head"], [50, 8.5])
    np.testing.assert_allclose(j["right_hip"], [55, 50])  # the person's right: MediaPipe's right_hip (24)
    np.testing.assert_allclose(j["left_wrist"], [36, 40])
    assert c["pelvis"] == pytest.approx(0.2) and c["right_hip"] == pytest.approx(0.2)
    assert c["left_hip"] == pytest.approx(0.9)


def test_mediapipe_detector_glue(monkeypatch):
    """The detector turns MediaPipe's normalised landmarks into pixels; no person -> NaN, confidence 0."""

    class Landmark:
        def __init__(self, x, y, v):
            self.x, self.y, self.visibility = x, y, v

    class Pose:
        calls = 0

        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def process(self, frame):
            Pose.calls += 1
            if Pose.calls == 2:
                return types.SimpleNamespace(pose_landmarks=None)
            pts = [Landmark(0.25 + 0.01 * i, 0.5, 0.8) for i in range(33)]
            return types.SimpleNamespace(pose_landmarks=types.SimpleNamespace(landmark=pts))

        def close(self):
            pass

    fake = types.ModuleType("mediapipe")
    fake.solutions = types.SimpleNamespace(pose=types.SimpleNamespace(Pose=Pose))
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    with MediaPipePoseDetector() as det:
        kp, conf = det(np.zeros((100, 200, 3), np.uint8))
        assert kp.shape == (17, 2) and np.allclose(conf, 0.8)
        np.testing.assert_allclose(kp[16], [(0.25 + 0.16) * 200, 50])  # right wrist = landmark 16
        kp, conf = det(np.zeros((100, 200, 3), np.uint8))
        assert np.isnan(kp).all() and (conf == 0).all()


def test_fill_undetected_holds_the_nearest_detection():
    kp = np.arange(5 * 17 * 2, dtype=np.float32).reshape(5, 17, 2)
    det = np.array([False, True, False, True, False])
    track = KeypointTrack(keypoints=kp, confidence=np.ones((5, 17), np.float32), detected=det)
    filled, conf = fill_undetected(track)
    np.testing.assert_array_equal(filled[[0, 1, 2, 3, 4]], kp[[1, 1, 1, 3, 3]])
    assert (conf[~det] == 0).all() and (conf[det] == 1).all()


# ---------------------------------------------------------------------------------------------- bad input


def _fails_cleanly(tmp_path, match, **kwargs):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match):
        run_demo(out=out, progress=False, **kwargs)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unreadable_and_empty_videos(project, clip, checkpoints, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    kw = {"checkpoint": checkpoints["tiny"], "keypoints": clip["keypoints"], "root": project}
    _fails_cleanly(tmp_path, "video", video=bad, **kw)
    (tmp_path / "frames").mkdir()
    _fails_cleanly(tmp_path, "no frames", video=tmp_path / "frames", **kw)
    with pytest.raises(MissingFileError):
        run_demo(tmp_path / "missing.mp4", tmp_path / "out", **kw)


def test_no_person(project, clip, checkpoints, tmp_path):
    np.savez(tmp_path / "none.npz", keypoints=np.full((FRAMES, 17, 2), np.nan, np.float32))
    _fails_cleanly(tmp_path, "no person detected", video=clip["video"], checkpoint=checkpoints["tiny"],
                   keypoints=tmp_path / "none.npz", root=project)


def test_keypoints_file_errors(clip, tmp_path):
    np.savez(tmp_path / "short.npz", keypoints=np.zeros((3, 17, 2)))
    with pytest.raises(InputError, match="one per video frame"):
        load_keypoints(tmp_path / "short.npz", num_frames=FRAMES)
    np.savez(tmp_path / "coco.npz", keypoints=np.zeros((FRAMES, 33, 2)))
    with pytest.raises(InputError, match="H36M-17"):
        load_keypoints(tmp_path / "coco.npz")
    np.savez(tmp_path / "noconf.npz", points=np.zeros((FRAMES, 17, 2)))
    with pytest.raises(InputError, match="keypoints"):
        load_keypoints(tmp_path / "noconf.npz")


@pytest.mark.parametrize("which, online, match", [
    ("lift", False, "stage-1"),
    ("tiny", True, "not causal"),
    ("mismatch", False, "do not fit"),
])
def test_wrong_checkpoints(project, clip, checkpoints, tmp_path, which, online, match):
    path = checkpoints.get(which)
    if which == "mismatch":  # config says tiny, weights are tiny-online's (no time embedding)
        from hmrmamba.models import resolve_config
        from hmrmamba.train.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(checkpoints["tiny-online"])
        path = tmp_path / "mismatch.pt"
        from hmrmamba.models import build, random_mesh_assets

        save_checkpoint(path, model=build("tiny-online", assets=random_mesh_assets()), epoch=0, step=0,
                        config={**ckpt["config"], "model": resolve_config("tiny")})
    _fails_cleanly(tmp_path, match, video=clip["video"], checkpoint=path, keypoints=clip["keypoints"],
                   root=project, online=online)


def test_missing_detector_extra(project, clip, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import fails as if not installed
    _fails_cleanly(tmp_path, r"install hmrmamba\[demo\]", video=clip["video"], checkpoint=checkpoints["tiny"],
                   detector="mediapipe", root=project)


def test_refuses_to_replace_a_foreign_folder(project, clip, checkpoints, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not an earlier demo output"):
        run_demo(clip["video"], out, checkpoint=checkpoints["tiny"], keypoints=clip["keypoints"], root=project,
                 progress=False)
    assert (out / "thesis.tex").read_text() == "precious"


def test_cli_demo(project, clip, checkpoints, tmp_path, capsys, monkeypatch):
    from hmrmamba.cli import main

    monkeypatch.chdir(project)
    assert main(["demo", str(clip["video"]), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoints["tiny"]),
                 "--keypoints", str(clip["keypoints"]), "--no-obj", "--no-pictures", "--quiet"]) == 0
    assert "frames/s" in capsys.readouterr().out
    before = (tmp_path / "o/meshes.npz").stat().st_ino
    assert main(["demo", str(clip["video"]), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoints["tiny"]),
                 "--keypoints", str(clip["keypoints"]), "--no-pictures", "--quiet"]) == 0  # replaces its own output
    assert (tmp_path / "o/meshes.npz").stat().st_ino != before and len(list((tmp_path / "o").glob("*.obj"))) == FRAMES
    assert main(["demo", str(clip["video"]), "--out", str(tmp_path / "p"), "--checkpoint",
                 str(checkpoints["tiny"]), "--keypoints", str(tmp_path / "nope.npz"), "--quiet"]) == 2


# ---------------------------------------------------------------------------------------------- real video


def _sports2d_video(cache: Path) -> Path:
    """``Demo/demo.mp4`` from the sports2d wheel on PyPI (BSD-3), downloaded once into ``cache``."""
    target = cache / "sports2d_demo.mp4"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "sports2d==0.8.34",
                    "-d", str(cache)], check=True, timeout=600)
    wheel = next(cache.glob("sports2d-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith("Demo/demo.mp4"))
        target.write_bytes(zf.read(name))
    return target


@pytest.mark.slow
def test_real_video_with_mediapipe(project, checkpoints, tmp_path):
    try:
        import mediapipe  # noqa: F401
        MediaPipePoseDetector().close()
    except (ImportError, InputError) as exc:
        pytest.skip(f"MediaPipe Pose unavailable ({exc}); install hmrmamba[demo] to run on the real video")
    cache = Path(os.environ.get("HMRMAMBA_TEST_CACHE", Path.home() / ".cache" / "hmrmamba-tests"))
    try:
        video = _sports2d_video(cache)
    except (subprocess.SubprocessError, OSError, StopIteration) as exc:
        pytest.skip(f"cannot fetch sports2d's demo video ({exc})")
    result = run_demo(video, tmp_path / "real", checkpoint=checkpoints["tiny"], detector="mediapipe", root=project,
                      obj=False, render_size=320, progress=False)
    assert result.detected > 0.8 * result.frames
    with np.load(tmp_path / "real/meshes.npz") as m:
        det = m["detected"]
        # the camera fit puts the mesh's regressed joints near MediaPipe's keypoints (px, 1768 x 994 frames)
        rel = m["joints"] - m["joints"][:, :1]
        uv = project_px(rel + m["translation"][:, None], m["camera"])
        err = np.nanmedian(np.linalg.norm(uv[det] - m["keypoints"][det], axis=-1))
        assert err < 0.15 * max(m["image_size"])
    assert VideoReader(tmp_path / "real/overlay.mp4").num_frames == result.frames


@pytest.mark.parametrize("keep, n", [(None, 21), (8, 21), (8, 5), (4, 16), (1, 3)])
def test_offline_windows_cover_every_frame_once_in_order(keep, n):
    """Each frame's mesh comes from a window that holds it with context on both sides."""
    from hmrmamba.demo.inference import Inference, SequenceInputs, predict_offline
    from hmrmamba.models.outputs import HMROutput

    seen_context = []

    class Echo(torch.nn.Module):  # pose3d = (frame index, its position in the window, 0)
        causal = False

        def forward(self, kp2d, conf, feats, spatial=None, lift_only=False, decode_frames=None):
            b, t = kp2d.shape[:2]
            pos = torch.arange(t, dtype=torch.float32).view(1, t, 1).expand(b, t, 17)
            pose = torch.stack([kp2d[..., 0], pos, torch.zeros_like(pos)], -1)
            seen_context.append(t)
            mesh = pose if decode_frames is None else pose[:, decode_frames]  # only the decoded frames
            return HMROutput(pose3d=pose, joints=mesh, vertices=mesh[:, :, :5])

    inf = Inference(model=Echo(), checkpoint=Path("x.pt"), variant="echo", window=16, backbone=None, crop_size=32,
                    bbox_scale=1.2, faces=np.zeros((1, 3), np.int64), vertex_colors=np.zeros((5, 3)),
                    weights_note="")
    idx = np.arange(n, dtype=np.float32)
    kp = np.repeat(idx[:, None, None], 17, 1).repeat(2, 2)
    pred = predict_offline(inf, SequenceInputs(kp2d=kp, conf=np.ones((n, 17), np.float32),
                                               feats=np.zeros((n, 2048), np.float32), boxes=np.zeros((n, 4))),
                           keep=keep)
    np.testing.assert_array_equal(pred.pose3d[:, 0, 0], idx)
    np.testing.assert_array_equal(pred.joints, pred.pose3d)  # meshes from the same frames as the poses
    np.testing.assert_array_equal(pred.vertices, pred.pose3d[:, :5])
    positions = pred.pose3d[:, 0, 1]
    half = (16 - (keep or 1)) // 2
    assert positions.min() >= half and positions.max() <= 15 - half
    assert set(seen_context) == {16}


# ---------------------------------------------------------------------------------------------- BlazePose


REAL_CLIP = Path(__file__).resolve().parent / "data" / "real_video" / "sports2d_demo_640x360_15fps.mp4"


def test_ssd_anchors_follow_the_detector_layout():
    from hmrmamba.demo.blazepose import ssd_anchors

    a = ssd_anchors()
    assert a.shape == (2254, 2)  # 28^2 x 2 + 14^2 x 2 + 7^2 x 6: the detector's output rows
    np.testing.assert_allclose(a[0], a[1])
    np.testing.assert_allclose(a[0], [0.5 / 28, 0.5 / 28])
    np.testing.assert_allclose(a[2], [1.5 / 28, 0.5 / 28])  # x first along a row
    np.testing.assert_allclose(a[2 * 28 * 28], [0.5 / 14, 0.5 / 14])
    np.testing.assert_allclose(a[-6:], np.full((6, 2), 6.5 / 7))


def test_roi_crop_and_back_projection_agree():
    """A bright dot found in a turned crop maps back, through Roi.to_image, to where it is in the image."""
    from PIL import Image

    from hmrmamba.demo.blazepose import Roi, roi_from_points

    img = np.zeros((200, 300, 3), np.uint8)
    img[118:121, 169:172] = 255  # the dot's centre: pixel (170, 119)
    for rotation in (0.0, 0.6, -2.0):
        roi = Roi(150.0, 100.0, 120.0, rotation)
        crop = roi.crop(Image.fromarray(img), 96)[..., 0]
        v, u = np.unravel_index(np.argmax(crop), crop.shape)
        back = roi.to_image(np.array([(u + 0.5) / 96, (v + 0.5) / 96]))
        assert np.linalg.norm(back - [170.5, 119.5]) < 1.6, (rotation, back)
    upright = roi_from_points(np.array([100.0, 200.0]), np.array([100.0, 100.0]))
    assert upright.rotation == pytest.approx(0.0) and upright.size == pytest.approx(250.0)
    lying = roi_from_points(np.array([100.0, 200.0]), np.array([200.0, 200.0]))  # head to the right
    assert lying.rotation == pytest.approx(np.pi / 2)
    # the crop's "up" (unit y = 0) lands on the circle point's side
    assert lying.to_image(np.array([0.5, 0.0]))[0] > 100.0


def test_weighted_nms_merges_overlapping_detections():
    from hmrmamba.demo.blazepose import weighted_nms

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    kps = np.stack([np.full((4, 2), v) for v in (0.0, 3.0, 55.0)])
    out = weighted_nms(boxes, kps, np.array([0.9, 0.3, 0.6]))
    assert len(out) == 2 and out[0][2] == pytest.approx(0.9) and out[1][2] == pytest.approx(0.6)
    np.testing.assert_allclose(out[0][1], 0.75)  # (0.9 x 0 + 0.3 x 3) / 1.2
    np.testing.assert_allclose(out[0][0], [0.25, 0, 10.25, 10])


def _people(n=10, size=(100, 200)):
    """Two fake tracks: 0 big and central for all frames, 1 small at the edge for half of them."""
    from hmrmamba.demo.blazepose import Person, Roi

    frames = []
    for t in range(n):
        people = []
        for track, (cx, h, present) in {0: (100.0, 80.0, True), 1: (185.0, 30.0, t % 2 == 0)}.items():
            if not present:
                continue
            lm = np.zeros((33, 2))
            lm[:, 0] = cx + np.linspace(-5, 5, 33)
            lm[:, 1] = 50 + np.linspace(-h / 2, h / 2, 33)
            box = np.concatenate([lm.min(0), lm.max(0)])
            people.append(Person(track, lm, np.ones(33), 1.0, box, Roi(cx, 50.0, h, 0.0)))
        frames.append(people)
    return frames, size


def test_person_ranking_selection_and_jumps():
    from hmrmamba.demo.people import PeopleTracks, jump_frames, rank_tracks, select_person

    frames, size = _people()
    people = PeopleTracks.from_frames(frames, size)
    ranking = rank_tracks(people)
    assert [s.track for s in ranking] == [0, 1] and ranking[0].frames == 10 and ranking[1].frames == 5
    np.testing.assert_array_equal(people.count, [2, 1] * 5)
    track, _, rank = select_person(people)
    assert rank == 0 and track.detected.all()
    other, _, _ = select_person(people, 1)
    np.testing.assert_array_equal(other.detected, [True, False] * 5)
    assert np.nanmean(other.keypoints[..., 0]) > 180  # the edge person's keypoints
    with pytest.raises(InputError, match="--person"):
        select_person(people, 2)
    assert not jump_frames(track).any()
    moved = KeypointTrack(track.keypoints.copy(), track.confidence, track.detected)
    moved.keypoints[6:] += [60.0, 0.0]  # 60 px in one frame for an 80 px tall person
    np.testing.assert_array_equal(np.flatnonzero(jump_frames(moved)), [6])


def test_pose_model_files_are_checked(tmp_path):
    from hmrmamba.demo.blazepose import BlazePose
    from hmrmamba.demo.pose_models import MODEL_FILES, check_model_dir, fetch_models

    with pytest.raises(MissingFileError, match="pose_detection.tflite"):
        check_model_dir(tmp_path)
    for name in MODEL_FILES:
        (tmp_path / name).write_bytes(b"not a model")
    with pytest.raises(InputError, match="SHA-256"):
        BlazePose(tmp_path)
    with pytest.raises(InputError, match="not a TFLite model"):
        BlazePose(tmp_path, verify=False)
    bad = tmp_path / "pkg.tgz"
    bad.write_bytes(b"\x1f\x8b not the package")
    with pytest.raises(InputError, match="integrity"):
        fetch_models(tmp_path / "dest", tarball=bad)
    assert not (tmp_path / "dest").exists()


@pytest.fixture(scope="module")
def pose_models():
    """The installed BlazePose models (make install), else fetched once into the test cache with npm."""
    from hmrmamba.demo.pose_models import check_model_dir, fetch_models, find_model_dir

    found = find_model_dir()
    if found is not None:
        return check_model_dir(found)
    cache = Path(os.environ.get("HMRMAMBA_TEST_CACHE", Path.home() / ".cache" / "hmrmamba-tests")) / "mediapipe-pose"
    try:
        return check_model_dir(cache)
    except InputError:
        pass
    try:
        return fetch_models(cache)
    except InputError as exc:
        pytest.skip(f"BlazePose models not installed and not fetchable ({exc})")


def test_blazepose_sees_the_same_body_in_a_turned_frame(pose_models):
    """Landmarks on a real frame and on the frame turned 90 degrees are the same points of the body."""
    from hmrmamba.demo.blazepose import PoseTracker

    frame = next(iter(VideoReader(REAL_CLIP)))
    found = {}
    for k in (0, 1):
        img = np.ascontiguousarray(np.rot90(frame, k))
        people = PoseTracker(model_dir=pose_models, tile=img.shape[0] if k == 0 else img.shape[1])(img)
        assert people, f"nobody found in the frame turned {90 * k} degrees"
        best = max(people, key=lambda p: p.box[3] - p.box[1] if k == 0 else p.box[2] - p.box[0])
        found[k] = best
    w = frame.shape[1]
    turned = found[1].landmarks  # np.rot90 (counter-clockwise): (x, y) -> (y, w - 1 - x)
    back = np.stack([w - 1 - turned[:, 1], turned[:, 0]], -1)
    height = found[0].box[3] - found[0].box[1]
    vis = (found[0].visibility > 0.5) & (found[1].visibility > 0.5)
    assert vis.sum() >= 15 and height > 60
    err = np.linalg.norm(back[vis] - found[0].landmarks[vis], axis=-1)
    assert np.median(err) < 0.05 * height, (np.median(err), height)


@pytest.fixture(scope="module")
def real_people(pose_models):
    """Everyone the tracker finds in the committed real clip."""
    from hmrmamba.demo.blazepose import PoseTracker
    from hmrmamba.demo.people import PeopleTracks

    reader = VideoReader(REAL_CLIP)
    tracker = PoseTracker(model_dir=pose_models)
    return PeopleTracks.from_frames([tracker(f) for f in reader], reader.size)


def test_real_clip_people_are_tracked_and_ranked(real_people):
    """Two people: the man on the box from frame 0, the woman walking in from the right later."""
    from hmrmamba.demo.people import rank_tracks, select_person

    ranking = rank_tracks(real_people)
    n = real_people.num_frames
    assert len(ranking) >= 2 and ranking[0].frames >= 0.9 * n and ranking[1].frames >= 10  # measured: 45, 21
    assert real_people.count.max() >= 2
    first, _, _ = select_person(real_people)
    second, _, _ = select_person(real_people, 1)
    both = first.detected & second.detected
    gap = np.nanmedian(np.linalg.norm(np.nanmean(first.keypoints[both] - second.keypoints[both], axis=1), axis=-1))
    assert gap > 100  # two different people, far apart in the 640 px frame
    with pytest.raises(InputError, match="--person"):
        select_person(real_people, len(ranking))
    # the keypoints are a standing body in H36M-17 order: head above thorax above pelvis above the ankles
    for track in (first, second):
        kp = track.keypoints[track.detected]
        ys = {j: kp[:, j, 1] for j in (10, 8, 0, 3, 6)}  # head, thorax, pelvis, right and left ankle
        upright = (ys[10] < ys[8]) & (ys[8] < ys[0]) & (ys[0] < np.minimum(ys[3], ys[6]))
        assert upright.mean() >= 0.9, upright.mean()


def test_real_video_demo_with_blazepose(project, checkpoints, pose_models, tmp_path, capsys, monkeypatch):
    """The committed real clip through `hmrmamba demo` with the real detector: detections, finite meshes,
    stable bones, every output file."""
    from hmrmamba.cli import main
    from hmrmamba.skeleton import H36M17

    monkeypatch.chdir(project)
    out = tmp_path / "real"
    args = ["demo", str(REAL_CLIP), "--checkpoint", str(checkpoints["tiny"]), "--detector-model", str(pose_models),
            "--render-size", "96", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "people tracked" in printed and "<- followed" in printed
    n = VideoReader(REAL_CLIP).num_frames
    with np.load(out / "meshes.npz") as m:
        det, track = m["detected"], m["person_track"]
        assert len(det) == n and det.mean() >= 0.9  # measured: 45 of 45
        assert np.isfinite(m["vertices"]).all() and np.isfinite(m["translation"][det]).all()
        assert len(set(track[det].tolist())) == 1 and (track[~det] == -1).all() and not m["person_jump"].any()
        assert m["people_count"].max() >= 2
        joints, kp, camera = m["joints"], m["keypoints"], m["camera"]
        uv = project_px(joints - joints[:, :1] + m["translation"][:, None], camera)
        err = np.nanmedian(np.linalg.norm(uv[det] - kp[det], axis=-1))
        assert err < 0.15 * max(m["image_size"])
    parent, child = np.array(H36M17.bones).T
    bones = np.linalg.norm(joints[det][:, child] - joints[det][:, parent], axis=-1)  # (T, 16) m
    assert bones.std(0).max() < 0.010  # bone lengths stable over time: < 10 mm std
    assert len(list(out.glob("frame_*.obj"))) == n and VideoReader(out / "overlay.mp4").num_frames == n
    summary = json.loads((out / "summary.json").read_text())
    assert summary["detector"] == "blazepose" and summary["detected_frames"] == int(det.sum())
    assert main([*args, "--out", str(out), "--person", "-1"]) == 2  # refused before any work
    assert main([*args, "--out", str(out), "--person", "1", "--online"]) == 2  # online cannot rank a whole video
    assert (out / "meshes.npz").is_file()


def test_streaming_follower_keeps_its_person_and_flags_a_change():
    """FollowOne (--online) keeps the track it picked; when that track ends it picks again, and the
    change of person is flagged in person_jump."""
    from hmrmamba.demo.blazepose import FollowOne
    from hmrmamba.demo.keypoints import make_track
    from hmrmamba.demo.pipeline import _person_fields

    frames, (h, w) = _people(n=8)
    frames = [[p for p in people if not (p.track == 0 and t >= 5)] for t, people in enumerate(frames)]
    frames[0] = [p for p in frames[0] if p.track == 1]  # at first only the small one is there
    feed = iter(frames)
    follower = FollowOne(lambda frame: next(feed))
    out = [follower(np.zeros((h, w, 3), np.uint8)) for _ in frames]
    # frame 0: only track 1 (the small one, there on even frames); frame 1: track 1 is gone, so the
    # most prominent present (0) is taken and kept while it lives (to frame 4); frame 5: nobody; 6: track 1
    assert follower.followed == [1, 0, 0, 0, 0, -1, 1, -1]
    track = make_track(np.stack([k for k, _ in out]), np.stack([c for _, c in out]), image_size=(h, w))
    person_track, jump, count = _person_fields(track, None, None, follower)
    np.testing.assert_array_equal(person_track, follower.followed)
    np.testing.assert_array_equal(count, person_track >= 0)  # no tracker counts given: the detected frames
    assert np.flatnonzero(jump).tolist() == [1, 6]


def test_smooth_runs_filters_within_detected_runs_only():
    from hmrmamba.demo.smoothing import detected_runs, smooth_runs

    valid = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    assert detected_runs(valid) == [(0, 3), (4, 8), (9, 10)]
    x = np.zeros((10, 2))
    x[5] = 10.0  # a spike inside the second run
    x[3] = 99.0  # an undetected frame: neither smoothed nor leaking into its neighbours
    y = smooth_runs(x, valid, 1.0)
    assert y[3, 0] == 99.0 and np.allclose(y[:3], 0.0) and y[9, 0] == 0.0
    assert 0.0 < y[7, 0] < y[4, 0] < y[5, 0] < 10.0  # the spike spread over its run, nearest first
    np.testing.assert_array_equal(smooth_runs(x, valid, 0), x)
    for bad in (-1, 31, "2", True):
        with pytest.raises(InputError, match="--smooth"):
            smooth_runs(x, valid, bad)


def test_demo_smooth_equals_smoothing_its_unsmoothed_output(offline_run, project, clip, checkpoints, loaded,
                                                            tmp_path):
    """`--smooth 2` writes what smooth_runs makes of the unsmoothed output, with less jitter; the quality
    report's re-smoothing agrees; `--smooth` with `--online` is refused before any work."""
    from hmrmamba.demo.quality import output_quality
    from hmrmamba.demo.smoothing import smooth_runs

    _, plain = offline_run
    out = tmp_path / "smooth"
    run_demo(clip["video"], out, inference=loaded["tiny"], keypoints=clip["keypoints"], root=project,
             obj=False, pictures=False, progress=False, smooth=2.0)
    with np.load(plain / "meshes.npz") as a, np.load(out / "meshes.npz") as b:
        for key in ("vertices", "joints", "translation"):
            np.testing.assert_allclose(b[key], smooth_runs(a[key], a["detected"], 2.0), atol=1e-5)
    body = Layout(project).body_model
    q0, q2 = output_quality(plain, body), output_quality(out, body)
    assert q2["jitter_camera_mm"] < q0["jitter_camera_mm"]
    assert output_quality(plain, body, smooth=2.0)["jitter_mm"] == pytest.approx(q2["jitter_mm"], rel=1e-4)
    assert json.loads((out / "summary.json").read_text())["smooth"] == 2.0
    _fails_cleanly(tmp_path, "--smooth", video=clip["video"], checkpoint=checkpoints["tiny-online"],
                   keypoints=clip["keypoints"], root=project, online=True, smooth=1.0)


@pytest.mark.slow
def test_real_video_online_with_blazepose(project, checkpoints, pose_models, tmp_path):
    """--online with the real detector: the follower's track per frame and its changes land in meshes.npz."""
    result = run_demo(REAL_CLIP, tmp_path / "online", checkpoint=checkpoints["tiny-online"], detector="blazepose",
                      detector_model=pose_models, online=True, root=project, obj=False, pictures=False,
                      progress=False)
    assert result.detected >= 0.9 * result.frames
    with np.load(tmp_path / "online" / "meshes.npz") as m:
        det, track, jump = m["detected"], m["person_track"], m["person_jump"]
        assert np.isfinite(m["vertices"]).all() and (track[~det] == -1).all() and (track[det] >= 0).all()
        changes = np.flatnonzero(det[1:] & det[:-1] & (track[1:] != track[:-1])) + 1
        assert set(changes.tolist()) <= set(np.flatnonzero(jump).tolist())  # every change of person is flagged


def test_blazepose_bad_inputs(project, loaded, pose_models, tmp_path):
    """No person anywhere: one clear error, nothing written; a person in one frame only: that frame is
    the detection, the rest flagged; model files that are not models: refused before any work."""
    frames = np.full((4, 96, 128, 3), 127, np.uint8)
    write_video(tmp_path / "empty.mp4", frames, fps=10.0, lossless=True)
    kw = {"inference": loaded["tiny"], "detector": "blazepose", "detector_model": pose_models, "root": project}
    _fails_cleanly(tmp_path, "no person detected", video=tmp_path / "empty.mp4", **kw)
    real = next(iter(VideoReader(REAL_CLIP)))
    once = np.stack([real] + [np.full_like(real, 127)] * 3)
    write_video(tmp_path / "once.mp4", once, fps=10.0, lossless=True)
    result = run_demo(tmp_path / "once.mp4", tmp_path / "once", obj=False, pictures=False, progress=False, **kw)
    with np.load(tmp_path / "once" / "meshes.npz") as m:
        np.testing.assert_array_equal(m["detected"], [True, False, False, False])
        assert np.isfinite(m["vertices"]).all() and np.isnan(m["translation"][1:]).all()
    assert result.detected == 1 and any("<- followed" in line for line in result.people)
    junk = tmp_path / "junk_models"
    junk.mkdir()
    from hmrmamba.demo.pose_models import MODEL_FILES

    for name in MODEL_FILES:
        (junk / name).write_bytes(b"\x00" * 64)
    _fails_cleanly(tmp_path, "SHA-256", video=tmp_path / "once.mp4", **{**kw, "detector_model": junk})


def test_tracker_keeps_a_lost_id_through_an_unconfirmed_revival():
    """A lost person re-detected in a frame where the landmarks still miss them stays lost (same id
    later), not forgotten; a person far from where one was lost gets a new id."""
    from hmrmamba.demo.blazepose import PoseTracker, Roi

    class ScriptedPose:  # detections and presence per frame, the two networks' interface
        def __init__(self, script):
            self.script, self.t = script, -1

        def detect(self, image, tile=None):
            self.t += 1
            return [(Roi(x, 50.0, 40.0, 0.0), 0.9) for x in self.script[self.t][0]]

        def landmarks(self, image, roi):
            pts = np.stack([np.full(33, roi.cx), np.linspace(35.0, 65.0, 33)], -1)
            return pts, np.ones(33), self.script[self.t][1], roi

    # frame: (detections' x, presence of every landmark run)
    script = [([50.0], 1.0), ([], 0.0), ([52.0], 0.0), ([54.0], 1.0), ([54.0], 0.0), ([], 0.0), ([150.0], 1.0)]
    tracker = PoseTracker(ScriptedPose(script), detect_every=1, keep_lost=10, tile=None)
    ids = [[p.track for p in tracker(np.zeros((100, 200, 3), np.uint8))] for _ in script]
    assert ids == [[0], [], [], [0], [], [], [1]]


def test_info_names_the_detector(pose_models, project, loaded, tmp_path, capsys, monkeypatch):
    """`hmrmamba info` says which detector is ready; without the models, it and the demo say how to get them."""
    from hmrmamba.cli import main
    from hmrmamba.demo.pose_models import ENV_VAR, model_status

    monkeypatch.setenv(ENV_VAR, str(pose_models))
    assert main(["info"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("2d detector"))
    assert "blazepose (MediaPipe Pose" in line and str(pose_models) in line
    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # an empty folder: says so, and how to install
    assert model_status().startswith("blazepose unavailable") and "python -m hmrmamba.demo.pose_models" in model_status()
    (tmp_path / "run").mkdir()
    _fails_cleanly(tmp_path / "run", "not installed.*python -m hmrmamba.demo.pose_models", video=REAL_CLIP,
                   inference=loaded["tiny"], detector="blazepose", root=project)
