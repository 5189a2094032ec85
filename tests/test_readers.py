"""Real-benchmark readers (Human3.6M / 3DPW / MPI-INF-3DHP) on fabricated files in the exact formats."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hmrmamba.data.real import h36m_cameras as hc
from fabricate import (
    H36M_METADATA,
    _ShellCommand,
    save_object_npz,
    write_evil_pickle,
    write_mini_3dhp,
    write_mini_3dpw,
    write_mini_h36m,
)
from hmrmamba.data.h5schema import read_split, write_split
from hmrmamba.data.real.h36m import (
    DETECTION_FILES,
    H36M32_TO_17,
    H36MConfig,
    build_h36m,
    h36m_detections,
    keypoints_to_h36m17,
    project,
    read_npz_object,
    world_to_camera,
)
from hmrmamba.data.real.mpi3dhp import CAMERAS, MPI3DHPConfig, build_3dhp
from hmrmamba.data.real.pw3d import OPENPOSE18, PW3DConfig, build_pw3d, pw3d_openpose, smpl24_to_h36m17
from hmrmamba.data.real.dispatch import build_real, prepare_real, real_splits
from hmrmamba.detect.sources import coco17_to_h36m17
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.layout import Layout
from hmrmamba.skeleton import COCO17, H36M17, MPI_INF_3DHP17, MPI_TO_H36M

SMALL = {"train_subjects": ["S1", "S5"]}  # most mini copies here hold S1, S5, S9, S11 only


@pytest.fixture(scope="module")
def mini_h36m(tmp_path_factory):
    return write_mini_h36m(
        tmp_path_factory.mktemp("h36m"), subjects=("S1", "S5", "S9", "S11"), detectors=("gt", "cpn", "sh")
    )


@pytest.fixture(scope="module")
def h36m_splits(mini_h36m):
    return build_h36m(mini_h36m.root, H36MConfig.from_params(SMALL))


@pytest.fixture(scope="module")
def body_model(tmp_path_factory):
    from hmrmamba.body.body_model import save_body_model
    from hmrmamba.body.procedural import build_procedural_smpl

    path = tmp_path_factory.mktemp("body") / "body_model.npz"
    save_body_model(path, build_procedural_smpl(seed=0))
    return path


def _smpl_forward(path, pose, betas, trans):
    from hmrmamba.body.body_model import load_smpl

    smpl = load_smpl(path)
    f = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
    with torch.no_grad():
        out = smpl(global_orient=f(pose[:, :3]), body_pose=f(pose[:, 3:]), betas=f(betas), transl=f(trans))
    return out.vertices.double().numpy()


# =============================================================================================
# Human3.6M: cameras
# =============================================================================================


def test_camera_transform_puts_known_world_points_at_known_camera_points():
    cam = hc.h36m_camera("S9", 3)
    Q = Rotation.from_quat(np.roll(cam.orientation, -1)).as_matrix()  # scipy wants (x, y, z, w)
    centre = np.array(hc.EXTRINSICS["S9"][3][1]) / 1000.0
    pts = np.stack(
        [
            centre,
            centre + 5.0 * Q[:, 2],
            centre + 2.0 * Q[:, 0] + 3.0 * Q[:, 2],
            centre - 1.5 * Q[:, 1] + 4.0 * Q[:, 2],
        ]
    )
    np.testing.assert_allclose(
        world_to_camera(pts, cam), [[0, 0, 0], [0, 0, 5], [2, 0, 3], [0, -1.5, 4]], atol=1e-9
    )
    fx, fy, cx, cy = hc.FOCAL_LENGTHS[3] + hc.CENTERS[3]
    np.testing.assert_allclose(
        project(np.array([[0.0, 0.0, 5.0], [1.0, 0.5, 5.0]]), cam, distort=False),
        [[cx, cy], [fx * 0.2 + cx, fy * 0.1 + cy]],
        atol=1e-9,
    )
    # on the optical axis distortion does nothing; off it, radial k1 < 0 pulls points inwards
    px = project(np.array([[0.0, 0.0, 5.0], [1.0, 0.5, 5.0]]), cam)
    np.testing.assert_allclose(px[0], [cx, cy], atol=1e-9)
    assert 0 < px[1, 0] - cx < fx * 0.2


@pytest.mark.parametrize("subject", hc.SUBJECTS)
def test_published_calibration_is_a_rig_looking_at_the_capture_area(subject):
    """A transcription slip in the tables would break these: rotations, heights, view of the stage."""
    for c in range(hc.NUM_CAMERAS):
        cam = hc.h36m_camera(subject, c)
        np.testing.assert_allclose(np.linalg.norm(cam.orientation), 1.0, atol=1e-6)
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(cam.R) == pytest.approx(1.0)
        assert 1.3 < cam.position[2] < 1.7 and 4.0 < np.linalg.norm(cam.position[:2]) < 6.0
        p = world_to_camera(np.array([[0.0, 0.0, 0.9], [0.0, 0.0, 1.8], [0.0, 0.0, 0.0]]), cam)
        assert (p[:, 2] > 3.0).all()
        uv = project(p, cam)
        w, h = cam.resolution
        assert ((uv > 0) & (uv < [w, h])).all()
        assert uv[1, 1] < uv[0, 1] < uv[2, 1]  # head above hips above feet: z up, y down


def test_unknown_subject_or_camera_is_refused():
    with pytest.raises(InputError, match="S2"):
        hc.h36m_camera("S2", 0)
    with pytest.raises(InputError, match="camera index 4"):
        hc.h36m_camera("S1", 4)


# =============================================================================================
# Human3.6M: reading VideoPose3D files
# =============================================================================================


def test_joint_order_camera_frame_and_25fps(mini_h36m, h36m_splits):
    train = h36m_splits["train"]
    seqs, frames = train.seqs, train.frames
    i = list(seqs["seq_name"]).index("S5/Walking/58860488")
    a, n = seqs["seq_start"][i], seqs["seq_len"][i]
    world = mini_h36m.positions_3d["S5"]["Walking"].astype(np.float64)
    assert (
        n == (world.shape[0] + 1) // 2
        and seqs["fps"][i] == 25.0
        and seqs["source_frames"][i] == world.shape[0]
    )
    q, t = hc.EXTRINSICS["S5"][2]
    expect = (
        Rotation.from_quat(np.roll(q, -1))
        .inv()
        .apply((world[::2][:, H36M32_TO_17] - np.array(t) / 1000.0).reshape(-1, 3))
        .reshape(n, 17, 3)
    )
    np.testing.assert_allclose(frames["joints3d"][a : a + n], expect, atol=1e-5)
    # by name: H36M-17 left wrist is mocap joint 19, right shoulder 25, head 15
    for name, mocap in (("left_wrist", 19), ("right_shoulder", 25), ("head", 15)):
        k = H36M17.index(name)
        np.testing.assert_allclose(
            frames["joints3d"][a + 3, k],
            Rotation.from_quat(np.roll(q, -1)).inv().apply(world[6, mocap] - np.array(t) / 1000),
            atol=1e-5,
        )
    np.testing.assert_allclose(seqs["camera"][i], hc.FOCAL_LENGTHS[2] + hc.CENTERS[2], rtol=1e-6)
    # joints2d is the gt file, subsampled alike, and equals the projection of joints3d
    gt = mini_h36m.positions_2d["gt"]["S5"]["Walking"][2][: world.shape[0]][::2]
    np.testing.assert_allclose(frames["joints2d"][a : a + n], gt, atol=1e-4)
    np.testing.assert_allclose(project(frames["joints3d"][a : a + n], hc.h36m_camera("S5", 2)), gt, atol=2e-2)


def test_splits_subjects_cameras_and_schema_round_trip(tmp_path, h36m_splits):
    train, test, val = h36m_splits["train"], h36m_splits["test"], h36m_splits["val"]
    assert set(train.seqs["subject"]) == {"S1", "S5"} and set(test.seqs["subject"]) == {"S9", "S11"}
    assert sorted(set(train.seqs["camera_index"])) == [0, 1, 2, 3]
    assert set(test.seqs["camera_index"]) == {3} and all(
        s.endswith("/60457274") for s in test.seqs["seq_name"]
    )
    np.testing.assert_array_equal(val.frames["joints3d"], test.frames["joints3d"])
    assert train.attrs["has_smpl"] is False and not train.frames["smpl_pose"].any()
    write_split(tmp_path / "test.h5", test.frames, test.seqs, test.attrs)
    back = read_split(tmp_path / "test.h5")
    np.testing.assert_array_equal(back.frames["joints3d"], test.frames["joints3d"])
    assert list(back.seqs["seq_name"]) == list(test.seqs["seq_name"])
    assert back.attrs["image_size"] == 1002 and back.attrs["dataset"] == "h36m"


def test_test_cameras_option_and_stride(mini_h36m):
    sp = build_h36m(
        mini_h36m.root,
        H36MConfig.from_params({**SMALL, "test_cameras": [0, 2], "stride": 1, "val_subjects": []}),
    )
    assert set(sp) == {"train", "test"}
    assert sorted(set(sp["test"].seqs["camera_index"])) == [0, 2]
    n = mini_h36m.positions_3d["S9"]["Walking"].shape[0]
    assert n in set(sp["test"].seqs["seq_len"]) and set(sp["test"].seqs["fps"]) == {50.0}
    with pytest.raises(InputError, match="test_cameras"):
        H36MConfig.from_params({"test_cameras": [4]})


def test_detection_files_line_up_with_the_split(mini_h36m, h36m_splits):
    test = h36m_splits["test"]

    class _Split:  # what read_split returns, minus the file
        frames, seqs, attrs, path = test.frames, test.seqs, test.attrs, "test.h5"

    cfg = H36MConfig.from_params(SMALL)
    det = h36m_detections(mini_h36m.root, cfg, data=_Split, source="cpn")
    i = list(test.seqs["seq_name"]).index("S11/Walking/60457274")
    a, n = test.seqs["seq_start"][i], test.seqs["seq_len"][i]
    cpn = mini_h36m.positions_2d["cpn"]["S11"]["Walking"][3]
    np.testing.assert_allclose(det.kp[a : a + n], cpn[: test.seqs["source_frames"][i]][::2], atol=1e-4)
    assert det.kp.shape == (test.num_frames, 17, 2) and (det.conf == 1).all()
    sh = h36m_detections(mini_h36m.root, cfg, data=_Split, source="sh")  # 16 joints -> 17
    np.testing.assert_allclose(sh.kp[:, 9], 0.5 * (sh.kp[:, 8] + sh.kp[:, 10]), atol=1e-4)
    assert np.abs(sh.kp - test.frames["joints2d"]).mean() > np.abs(det.kp - test.frames["joints2d"]).mean()
    # the file is in MPII order: its pelvis (6) and left wrist (15) land on H36M's pelvis and left wrist
    raw = mini_h36m.positions_2d["sh"]["S11"]["Walking"][3][: test.seqs["source_frames"][i]][::2]
    assert raw.shape[1] == 16
    for h36m_name, mpii in (("pelvis", 6), ("left_wrist", 15), ("right_ankle", 0), ("head", 9)):
        np.testing.assert_allclose(sh.kp[a : a + n, H36M17.index(h36m_name)], raw[:, mpii], atol=1e-4)
    # and every joint but the filled neck/nose is the ground truth plus the file's ~9 px noise
    err = np.linalg.norm(sh.kp - test.frames["joints2d"], axis=-1).mean(axis=0)
    assert np.delete(err, H36M17.index("neck")).max() < 25.0, err.round(1)
    with pytest.raises(MissingFileError, match=DETECTION_FILES["detectron"]):
        h36m_detections(mini_h36m.root, cfg, data=_Split, source="detectron")


def test_coco_layout_goes_through_coco17_to_h36m17(tmp_path):
    kp = np.random.default_rng(0).uniform(0, 1000, size=(5, 17, 2))
    xy, conf = keypoints_to_h36m17(
        kp, metadata={"layout_name": "coco", "num_joints": 17}, file=tmp_path, fld="k"
    )
    np.testing.assert_allclose(xy, coco17_to_h36m17(kp)[0])
    l_hip, r_hip = COCO17.index("left_hip"), COCO17.index("right_hip")
    np.testing.assert_allclose(xy[:, 0], 0.5 * (kp[:, l_hip] + kp[:, r_hip]))
    assert conf.shape == (5, 17) and (conf == 1).all()


def test_stacked_hourglass_mpii_order_goes_to_h36m17(tmp_path):
    """A known pose in MPII order (VideoPose3D's SH file, 3d-pose-baseline's SH_NAMES) lands on the
    H36M-17 joints of the same names; neck/nose, which MPII lacks, is the thorax-head midpoint."""
    mpii = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
            "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
            "left_shoulder", "left_elbow", "left_wrist")
    # MPII's thorax / upper neck / head top are H36M's spine / thorax / head (SH_TO_GT_PERM)
    as_h36m = {"thorax": "spine", "upper_neck": "thorax", "head_top": "head"}
    kp = np.random.default_rng(0).uniform(0, 1000, size=(4, 16, 2))
    meta = {"num_joints": 16, "keypoints_symmetry": [[3, 4, 5, 13, 14, 15], [0, 1, 2, 10, 11, 12]]}
    xy, conf = keypoints_to_h36m17(kp, metadata=meta, file=tmp_path, fld="k")
    for i, name in enumerate(mpii):
        np.testing.assert_array_equal(xy[:, H36M17.index(as_h36m.get(name, name))], kp[:, i], err_msg=name)
    nose = H36M17.index("neck")
    np.testing.assert_allclose(xy[:, nose], 0.5 * (kp[:, 8] + kp[:, 9]))  # upper neck, head top
    assert conf.shape == (4, 17) and (conf == 1).all()
    # symmetry metadata pairs left/right joints that the mapping sends to H36M's flipped pairs
    left, right = meta["keypoints_symmetry"]
    order = [H36M17.index(as_h36m.get(mpii[j], mpii[j])) for j in range(16)]
    assert [H36M17.flip[order[j]] for j in left] == [order[j] for j in (2, 1, 0, 12, 11, 10)]
    assert all(mpii[j].startswith("left") for j in left) and all(mpii[j].startswith("right") for j in right)
    xy2, _ = keypoints_to_h36m17(kp, metadata={**meta, "layout_name": "mpii"}, file=tmp_path, fld="k")
    np.testing.assert_array_equal(xy2, xy)
    with pytest.raises(InputError, match="layout 'h36m' with 16 joints"):
        keypoints_to_h36m17(kp, metadata={**meta, "layout_name": "h36m"}, file=tmp_path, fld="k")


def test_2d_longer_than_mocap_is_trimmed_like_videopose3d(tmp_path):
    mini = write_mini_h36m(tmp_path, subjects=("S1", "S9"), actions=("Walking",), extra_2d_frames=3)
    sp = build_h36m(tmp_path, H36MConfig.from_params({"train_subjects": ["S1"], "test_subjects": ["S9"]}))
    assert sp["train"].metrics["trimmed_2d"] == 4 and sp["test"].metrics["trimmed_2d"] == 1
    n = mini.positions_3d["S9"]["Walking"].shape[0]
    np.testing.assert_allclose(
        sp["test"].frames["joints2d"], mini.positions_2d["gt"]["S9"]["Walking"][3][:n][::2], atol=1e-4
    )


# ---------------------------------------------------------------------------------------------
# Human3.6M: bad input -> clear errors, nothing written
# ---------------------------------------------------------------------------------------------


def _h36m_params(root, **opts):
    return {"dataset": {"name": "h36m", "root": str(root)}, "datasets": {"h36m": {**SMALL, **opts}}}


def _rewrite(mini, det: str, mutate):
    """Rewrite one of the mini dataset's files after ``mutate(positions)`` edits a copy."""
    from hmrmamba.data.real.h36m import POSITIONS_3D_FILE

    if det == "3d":
        pos = {s: dict(a) for s, a in mini.positions_3d.items()}
        mutate(pos)
        save_object_npz(mini.root / POSITIONS_3D_FILE, positions_3d=pos)
    else:
        pos = {s: {a: list(v) for a, v in acts.items()} for s, acts in mini.positions_2d[det].items()}
        mutate(pos)
        save_object_npz(mini.root / DETECTION_FILES[det], positions_2d=pos, metadata=H36M_METADATA)


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_subject", r"data_3d_h36m\.npz: field 'positions_3d/S9': missing subject"),
        ("missing_action", r"data_2d_h36m_gt\.npz: field 'positions_2d/S1/Walking': missing action"),
        (
            "short_2d",
            (
                r"data_2d_h36m_gt\.npz: field 'positions_2d/S5/Walking\[1\]': "
                r"30 frames but the 3D sequence has 41"
            ),
        ),
        ("three_cameras", r"positions_2d/S11/Walking': 3 camera streams"),
        ("mocap_31_joints", r"positions_3d/S1/Walking': shape \(41, 31, 3\)"),
        ("2d_16_joints_says_17", r"positions_2d/S1/Walking\[0\]': 16 joints but metadata.num_joints is 17"),
        ("unknown_action", r"positions_3d/S1/Jumping': missing action 'Jumping'"),
    ],
)
def test_bad_h36m_input_names_file_and_key_and_writes_nothing(tmp_path, case, match):
    mini = write_mini_h36m(tmp_path / "raw", subjects=("S1", "S5", "S9", "S11"), detectors=("gt",))
    opts = {}
    if case == "missing_subject":
        _rewrite(mini, "3d", lambda p: p.pop("S9"))
    elif case == "missing_action":
        _rewrite(mini, "gt", lambda p: p["S1"].pop("Walking"))
    elif case == "short_2d":
        _rewrite(mini, "gt", lambda p: p["S5"]["Walking"].__setitem__(1, p["S5"]["Walking"][1][:30]))
    elif case == "three_cameras":
        _rewrite(mini, "gt", lambda p: p["S11"]["Walking"].pop())
    elif case == "mocap_31_joints":
        _rewrite(mini, "3d", lambda p: p["S1"].__setitem__("Walking", p["S1"]["Walking"][:, :31]))
    elif case == "2d_16_joints_says_17":
        _rewrite(mini, "gt", lambda p: p["S1"]["Walking"].__setitem__(0, p["S1"]["Walking"][0][:, :16]))
    elif case == "unknown_action":
        opts = {"actions": ["Walking", "Jumping"]}
    lay = Layout(tmp_path / "project")
    with pytest.raises(InputError, match=match):
        prepare_real(_h36m_params(mini.root, **opts), lay)
    assert not (tmp_path / "project" / "data").exists()


def test_absent_dataset_fails_early_listing_expected_files(tmp_path):
    with pytest.raises(
        MissingFileError, match=r"h36m: 1 expected file\(s\) missing: .*nowhere/data_3d_h36m\.npz"
    ):
        prepare_real(_h36m_params(tmp_path / "nowhere"), Layout(tmp_path))
    with pytest.raises(
        MissingFileError, match=r"3dhp: 6 expected file\(s\) missing: .*TS1/annot_data\.mat.*TS6"
    ):
        prepare_real({"dataset": {"name": "3dhp", "root": str(tmp_path / "nowhere")}}, Layout(tmp_path))
    with pytest.raises(InputError, match="dataset.name"):
        prepare_real({"dataset": {"name": "coco"}}, Layout(tmp_path))
    assert not (tmp_path / "data").exists()


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = save_object_npz(
        tmp_path / "data_3d_h36m.npz",
        positions_3d={"S1": {"Walking": np.zeros((2, 32, 3))}, "x": _ShellCommand(f"touch {marker}")},
    )
    with pytest.raises(
        InputError, match=r"data_3d_h36m\.npz: field 'positions_3d': refused to unpickle 'posix.system'"
    ):
        read_npz_object(path, "positions_3d")
    assert not marker.exists()


def test_truncated_npz_is_a_clear_error(tmp_path, mini_h36m):
    from hmrmamba.data.real.h36m import POSITIONS_3D_FILE

    data = (mini_h36m.root / POSITIONS_3D_FILE).read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"cut\.npz: field 'positions_3d': not a readable \.npz"):
            read_npz_object(tmp_path / "cut.npz", "positions_3d")


# ---------------------------------------------------------------------------------------------
# Human3.6M: SMPL fits
# ---------------------------------------------------------------------------------------------


def test_smpl_fits_npz_become_camera_frame_parameters_of_the_same_mesh(tmp_path, body_model):
    mini = write_mini_h36m(tmp_path, subjects=("S1", "S9"), actions=("Walking",), frames=9)
    rng = np.random.default_rng(3)
    n = mini.positions_3d["S9"]["Walking"].shape[0]
    pose = rng.normal(0, 0.3, size=(n, 72))
    betas = rng.normal(0, 1.0, size=10)
    trans = rng.normal(0, 0.3, size=(n, 3)) + [0, 0, 0.9]
    np.savez(
        tmp_path / "fits.npz",
        **{"S9/Walking/pose": pose, "S9/Walking/betas": betas, "S9/Walking/trans": trans},
    )
    cfg = H36MConfig.from_params({"train_subjects": ["S1"], "test_subjects": ["S9"], "val_subjects": []})
    sp = build_h36m(tmp_path, cfg, smpl_fits=tmp_path / "fits.npz", body_model=body_model)
    test, train = sp["test"], sp["train"]
    assert test.attrs["has_smpl"] and test.attrs["has_mesh_gt"] and test.frames["smpl_valid"].all()
    assert not train.attrs["has_smpl"] and not train.frames["smpl_valid"].any()
    f = test.frames
    v_cam = _smpl_forward(body_model, f["smpl_pose"], f["smpl_betas"], f["smpl_trans"])
    v_world = _smpl_forward(body_model, pose[::2], np.tile(betas, (len(f["smpl_pose"]), 1)), trans[::2])
    cam = hc.h36m_camera("S9", 3)
    np.testing.assert_allclose(v_cam, world_to_camera(v_world, cam), atol=2e-4)


def test_neuralannot_subactions_are_matched_by_trajectory(tmp_path, body_model):
    from hmrmamba.data.real.h36m import rest_pelvis_fn

    mini = write_mini_h36m(tmp_path, subjects=("S1", "S9"), actions=("Walking", "Walking 1"), frames=12)
    j0 = rest_pelvis_fn(body_model)(np.zeros((1, 10)))[0]
    fits_dir = tmp_path / "neuralannot"
    fits_dir.mkdir()
    subs = {}
    for sub, name in (("1", "Walking 1"), ("2", "Walking")):  # deliberately "reversed"
        pelvis = mini.positions_3d["S9"][name][:, 0].astype(np.float64)
        subs[sub] = {
            str(f): {"pose": [0.0] * 72, "shape": [0.0] * 10, "trans": (pelvis[f] - j0).tolist()}
            for f in range(0, len(pelvis), 3)
        }  # fits on every 3rd frame only
    (fits_dir / "Human36M_subject9_SMPL_NeuralAnnot.json").write_text(json.dumps({"14": subs}))
    cfg = H36MConfig.from_params(
        {"train_subjects": ["S1"], "test_subjects": ["S9"], "val_subjects": [], "stride": 1}
    )
    sp = build_h36m(tmp_path, cfg, smpl_fits=fits_dir, body_model=body_model)
    report = sp["test"].metrics["smpl_fit_matching"]["S9"]
    assert report["Walking"]["subaction"] == 2 and report["Walking 1"]["subaction"] == 1
    assert report["Walking"]["trajectory_rms_mm"] < 1.0
    test = sp["test"]
    np.testing.assert_array_equal(
        test.frames["smpl_valid"][: test.seqs["seq_len"][0]], np.arange(test.seqs["seq_len"][0]) % 3 == 0
    )
    # SMPL pelvis (j0 + trans, rotated into the camera) lands on the mocap pelvis
    ok = test.frames["smpl_valid"]
    np.testing.assert_allclose(test.frames["smpl_trans"][ok] + j0, test.frames["joints3d"][ok, 0], atol=1e-5)


# =============================================================================================
# 3DPW
# =============================================================================================


@pytest.fixture(scope="module")
def mini_3dpw(tmp_path_factory):
    return write_mini_3dpw(tmp_path_factory.mktemp("3dpw"))


def test_3dpw_camera_frame_joints_masking_and_smpl_parameters(mini_3dpw):
    sp = build_pw3d(mini_3dpw.root, PW3DConfig())
    assert set(sp) == {"train", "val", "test"}
    test = sp["test"]
    names = list(test.seqs["seq_name"])
    assert names == ["downtown_walking_00/0", "outdoors_walking_01/0", "outdoors_walking_01/1"]
    d = mini_3dpw.sequences["outdoors_walking_01"]
    a, n = test.seqs["seq_start"][2], test.seqs["seq_len"][2]
    R, t = d["cam_poses"][:, :3, :3], d["cam_poses"][:, :3, 3]
    j24 = d["jointPositions"][1].reshape(n, 24, 3)
    j24_cam = np.einsum("nij,nkj->nki", R, j24) + t[:, None]
    np.testing.assert_allclose(test.frames["joints3d"][a : a + n], smpl24_to_h36m17(j24_cam), atol=1e-5)
    # documented mapping: thorax = SMPL neck (12), spine = spine2 (6), right knee = 5
    np.testing.assert_allclose(
        test.frames["joints3d"][a : a + n, H36M17.index("thorax")], j24_cam[:, 12], atol=1e-5
    )
    np.testing.assert_allclose(
        test.frames["joints3d"][a : a + n, H36M17.index("right_knee")], j24_cam[:, 5], atol=1e-5
    )
    K = d["cam_intrinsics"]
    uv = test.frames["joints3d"][a : a + n] @ K.T
    np.testing.assert_allclose(test.frames["joints2d"][a : a + n], uv[..., :2] / uv[..., 2:], atol=1e-2)
    assert test.seqs["fps"][2] == 30.0 and list(test.seqs["gender"]) == ["m", "m", "f"]
    # person 0 has campose_valid = 0 at frames 3 and 4
    v = test.frames["valid"][test.seqs["seq_start"][1] : test.seqs["seq_start"][1] + n]
    assert list(np.nonzero(~v)[0]) == [3, 4] and test.frames["valid"][a : a + n].all()
    # SMPL root in the camera frame: the posed pelvis j0 + trans moves like a point
    j0 = j24[:, 0] - d["trans"][1]
    np.testing.assert_allclose(test.frames["smpl_trans"][a : a + n] + j0, j24_cam[:, 0], atol=1e-5)
    root_c = Rotation.from_rotvec(test.frames["smpl_pose"][a : a + n, :3]).as_matrix()
    np.testing.assert_allclose(root_c, R @ Rotation.from_rotvec(d["poses"][1][:, :3]).as_matrix(), atol=1e-5)
    np.testing.assert_allclose(test.frames["smpl_pose"][a : a + n, 3:], d["poses"][1][:, 3:], atol=1e-6)
    assert (
        test.attrs["has_smpl"]
        and not test.attrs["has_mesh_gt"]
        and "MPVPE unavailable" in test.attrs["mesh_gt_note"]
    )


def test_3dpw_with_gendered_smpl_regresses_joints_from_the_mesh(tmp_path, body_model):
    mini = write_mini_3dpw(tmp_path, splits={"test": (2,)}, frames=6, body_model=body_model)
    sp = build_pw3d(
        tmp_path, PW3DConfig(splits={"test": "test"}), smpl_male=body_model, smpl_female=body_model
    )
    test = sp["test"]
    assert test.attrs["has_mesh_gt"] and test.metrics["smpl_pelvis_vs_jointPositions_mm"] < 0.5
    d = next(iter(mini.sequences.values()))
    reg = np.load(body_model)["J_regressor_h36m"]
    n = 6
    for p in range(2):
        v_world = _smpl_forward(body_model, d["poses"][p], np.tile(d["betas"][p], (n, 1)), d["trans"][p])
        v_cam = np.einsum("nij,nvj->nvi", d["cam_poses"][:, :3, :3], v_world) + d["cam_poses"][:, None, :3, 3]
        np.testing.assert_allclose(
            test.frames["joints3d"][p * n : (p + 1) * n], np.einsum("jv,nvc->njc", reg, v_cam), atol=3e-4
        )


def test_3dpw_openpose_detections_map_coco18_to_h36m17(mini_3dpw):
    test = build_pw3d(mini_3dpw.root, PW3DConfig(splits={"test": "test"}))["test"]

    class _Split:
        frames, seqs, attrs, path = test.frames, test.seqs, test.attrs, "test.h5"

    det = pw3d_openpose(mini_3dpw.root, PW3DConfig(), data=_Split)
    raw = mini_3dpw.sequences["outdoors_walking_01"]["poses2d"][1].transpose(0, 2, 1)  # (n, 18, 3)
    a, n = test.seqs["seq_start"][2], test.seqs["seq_len"][2]
    lh, rh = OPENPOSE18.index("left_hip"), OPENPOSE18.index("right_hip")
    np.testing.assert_allclose(det.kp[a : a + n, 0], 0.5 * (raw[:, lh, :2] + raw[:, rh, :2]), atol=1e-3)
    np.testing.assert_allclose(det.conf[a : a + n, 0], np.minimum(raw[:, lh, 2], raw[:, rh, 2]), atol=1e-6)
    np.testing.assert_allclose(
        det.kp[a : a + n, H36M17.index("left_wrist")], raw[:, OPENPOSE18.index("left_wrist"), :2], atol=1e-3
    )
    # the head averages eyes and ears; one ear is undetected (confidence 0) -> head confidence 0
    assert (det.conf[a : a + n, H36M17.index("head")] == 0).all()


def test_3dpw_openpose_reads_a_split_written_to_file(tmp_path, mini_3dpw):
    """detect2d gets the split from disk: every string field (source_dir, gender, names) is text
    again, so the sequence file is found and the detections match the in-memory ones."""
    test = build_pw3d(mini_3dpw.root, PW3DConfig(splits={"test": "test"}))["test"]
    write_split(tmp_path / "test.h5", test.frames, test.seqs, test.attrs)
    back = read_split(tmp_path / "test.h5")
    det = pw3d_openpose(mini_3dpw.root, PW3DConfig(), data=back)  # was sequenceFiles/b'test'/...: missing
    for k in ("seq_name", "subject", "motion", "gender", "source_dir"):
        assert back.seqs[k].dtype.kind == "U" and list(back.seqs[k]) == [str(v) for v in test.seqs[k]], k
    assert back.attrs["dataset"] == "3dpw" and isinstance(back.attrs["joints3d_source"], str)

    class _Split:
        frames, seqs, attrs, path = test.frames, test.seqs, test.attrs, "test.h5"

    ref = pw3d_openpose(mini_3dpw.root, PW3DConfig(), data=_Split)
    np.testing.assert_array_equal(det.kp, ref.kp)
    np.testing.assert_array_equal(det.conf, ref.conf)


def test_3dpw_pickle_with_foreign_class_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    write_evil_pickle(tmp_path / "raw/sequenceFiles/test/evil_00.pkl", marker)
    params = {
        "dataset": {"name": "3dpw", "root": str(tmp_path / "raw")},
        "datasets": {"pw3d": {"splits": {"test": "test"}}},
    }
    with pytest.raises(InputError, match=r"evil_00\.pkl: refused to unpickle 'posix.system'"):
        prepare_real(params, Layout(tmp_path / "project"))
    assert not marker.exists() and not (tmp_path / "project" / "data").exists()


def test_3dpw_missing_key_and_wrong_joint_count(tmp_path):
    mini = write_mini_3dpw(tmp_path, splits={"test": (1,)}, frames=5)
    path, d = next(iter(mini.files.values())), next(iter(mini.sequences.values()))
    bad = dict(d, jointPositions=[d["jointPositions"][0][:, :69]])
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(InputError, match=r"field 'jointPositions\[0\]': shape \(5, 69\)"):
        build_pw3d(tmp_path, PW3DConfig(splits={"test": "test"}))
    path.write_bytes(pickle.dumps({k: v for k, v in d.items() if k != "campose_valid"}, protocol=2))
    with pytest.raises(InputError, match=r"\.pkl: field 'campose_valid': missing key"):
        build_pw3d(tmp_path, PW3DConfig(splits={"test": "test"}))


# =============================================================================================
# MPI-INF-3DHP
# =============================================================================================


@pytest.mark.parametrize("layout", ["h5py", "matlab", "v5"])
def test_3dhp_both_matlab_layouts_give_the_same_h36m_joints(tmp_path, layout):
    mini = write_mini_3dhp(tmp_path, layout=layout)
    sp = build_3dhp(tmp_path, MPI3DHPConfig(sequences=("TS1", "TS5"), joints3d="annot3"))["test"]
    for i, seq in enumerate(("TS1", "TS5")):
        a, n = sp.seqs["seq_start"][i], sp.seqs["seq_len"][i]
        np.testing.assert_allclose(sp.frames["joints3d"][a : a + n], mini.joints3d_h36m[seq], atol=1e-6)
        np.testing.assert_allclose(sp.frames["joints2d"][a : a + n], mini.joints2d_h36m[seq], atol=1e-3)
        np.testing.assert_array_equal(sp.frames["valid"][a : a + n], mini.valid[seq])
        np.testing.assert_allclose(sp.seqs["camera"][i], CAMERAS[seq], rtol=1e-6)
    assert list(sp.seqs["fps"]) == [25.0, 50.0] and sp.attrs["has_mesh_gt"] is False
    assert list(sp.frames["activity"][:6]) == [1, 1, 1, 1, 1, 2]


def test_3dhp_joint_order_follows_mpi_to_h36m(tmp_path):
    """Read the raw file independently: H36M pelvis is MPI joint 14, head top MPI 0, in mm."""
    import h5py

    write_mini_3dhp(tmp_path, sequences=("TS2",))
    path = tmp_path / "mpi_inf_3dhp_test_set/TS2/annot_data.mat"
    with h5py.File(path, "r") as h5:
        raw = h5["annot3"][()]
    assert raw.shape == (20, 1, 17, 3)
    sp = build_3dhp(tmp_path, MPI3DHPConfig(sequences=("TS2",), joints3d="annot3"))["test"]
    pairs = {
        "pelvis": "pelvis",
        "head": "head_top",
        "left_wrist": "left_wrist",
        "neck": "head",
        "thorax": "neck",
    }
    for h36m_name, mpi_name in pairs.items():
        np.testing.assert_allclose(
            sp.frames["joints3d"][:, H36M17.index(h36m_name)],
            raw[:, 0, MPI_INF_3DHP17.index(mpi_name)] / 1000.0,
            atol=1e-6,
        )
    assert [MPI_TO_H36M[H36M17.index(k)] for k in ("pelvis", "head")] == [14, 0]


def test_3dhp_scores_univ_annot3_by_default_and_refuses_metres(tmp_path):
    """PMCE/VIBE's protocol scores against ``univ_annot3``; the 3D fields are millimetres, and a file
    already in metres is refused (it passed before, giving a body 0.8 mm tall)."""
    import h5py

    mini = write_mini_3dhp(tmp_path, sequences=("TS2",))
    assert MPI3DHPConfig().joints3d == MPI3DHPConfig.from_params({}).joints3d == "univ_annot3"
    path = mini.files["TS2"]
    with h5py.File(path, "r") as h5:
        univ = h5["univ_annot3"][()][:, 0]
    sp = build_3dhp(tmp_path, MPI3DHPConfig(sequences=("TS2",)))["test"]
    np.testing.assert_allclose(sp.frames["joints3d"], univ[:, list(MPI_TO_H36M)] / 1000.0, atol=1e-6)
    assert sp.attrs["joints3d_source"].startswith("univ_annot3")
    for key in ("univ_annot3", "annot3"):
        with h5py.File(path, "r+") as h5:
            mm = h5[key][()]
            del h5[key]
            h5[key] = mm / 1000.0  # already metres
        msg = rf"TS2/annot_data\.mat: field '{key}': median body extent [0-9.]+ mm .*already metres"
        with pytest.raises(InputError, match=msg):
            build_3dhp(tmp_path, MPI3DHPConfig(sequences=("TS2",), joints3d=key))
        with h5py.File(path, "r+") as h5:
            del h5[key]
            h5[key] = mm


def test_split_unit_check_is_two_sided(tmp_path):
    from hmrmamba.data.h5schema import check_units

    j = np.zeros((5, 17, 3))
    j[:, 10, 1] = -0.7  # head top 0.7 m above the pelvis
    check_units(j, file="x", field="joints3d")
    check_units(j * 1000, file="x", field="annot3", unit="mm")
    with pytest.raises(InputError, match=r"x: field 'joints3d': median body extent 700 m.*millimetres\?"):
        check_units(j * 1000, file="x")
    with pytest.raises(InputError, match=r"field 'joints3d': median body extent 0.0007 m"):
        check_units(j / 1000, file="x")
    with pytest.raises(InputError, match=r"field 'annot3': median body extent 0.7 mm .*already metres"):
        check_units(j, file="x", field="annot3", unit="mm")
    bad = j.copy()
    bad[:3] *= 1000  # only the frames marked valid count
    check_units(bad, file="x", valid=np.array([0, 0, 0, 1, 1], bool))


def test_3dhp_bad_files(tmp_path):
    write_mini_3dhp(tmp_path / "a", sequences=("TS3",), drop=("univ_annot3",))
    with pytest.raises(InputError, match=r"TS3/annot_data\.mat: field 'univ_annot3': missing field"):
        build_3dhp(tmp_path / "a", MPI3DHPConfig(sequences=("TS3",)))
    import h5py

    write_mini_3dhp(tmp_path / "b", sequences=("TS4",))
    path = tmp_path / "b/mpi_inf_3dhp_test_set/TS4/annot_data.mat"
    with h5py.File(path, "r+") as h5:
        a3 = h5["annot3"][()]
        del h5["annot3"]
        h5["annot3"] = a3[:, :, :16]
    with pytest.raises(InputError, match=r"field 'annot3': shape \(20, 1, 16, 3\)"):
        build_3dhp(tmp_path / "b", MPI3DHPConfig(sequences=("TS4",), joints3d="annot3"))
    with h5py.File(path, "r+") as h5:
        a3[2, 0, 5] = np.nan  # frame 2 is invalid: tolerated, zeroed
        del h5["annot3"]
        h5["annot3"] = a3
    sp = build_3dhp(tmp_path / "b", MPI3DHPConfig(sequences=("TS4",), joints3d="annot3"))["test"]
    assert not sp.frames["valid"][2] and np.isfinite(sp.frames["joints3d"]).all()
    with h5py.File(path, "r+") as h5:
        a3[3, 0, 5] = np.nan  # frame 3 is valid: refused
        del h5["annot3"]
        h5["annot3"] = a3
    with pytest.raises(InputError, match="non-finite joints at valid frame 3"):
        build_3dhp(tmp_path / "b", MPI3DHPConfig(sequences=("TS4",), joints3d="annot3"))


# =============================================================================================
# the stages on a fabricated mini Human3.6M
# =============================================================================================


def test_prepare_and_detect2d_stages_on_mini_h36m(tmp_path, tiny_params):
    from hmrmamba.data.h5schema import Field, read_table
    from hmrmamba.stages import detect2d, prepare
    from hmrmamba.stages.common import execute

    mini = write_mini_h36m(tmp_path / "raw", subjects=("S1", "S5", "S9", "S11"), detectors=("gt", "cpn"))
    params = dict(tiny_params)
    params["dataset"] = {"name": "h36m", "root": "raw"}
    params["datasets"] = {
        **params.get("datasets", {}),
        "h36m": {**(params.get("datasets") or {}).get("h36m", {}), **SMALL},
    }
    params["detect2d"] = {**params["detect2d"], "sources": ["gt", "cpn", "sh"]}
    assert detect2d.splits_of(params) == real_splits(params) == ["train", "val", "test"]
    metrics = execute(prepare.STAGE, prepare.run, root=tmp_path, params=params, log_to_mlflow=False)
    assert metrics["test"]["frames"] == build_real(params, tmp_path)["test"].num_frames
    lay = Layout(tmp_path)
    with pytest.raises(MissingFileError, match="data_2d_h36m_sh_pt_mpii.npz"):  # never silently simulated
        execute(detect2d.STAGE, detect2d.run, root=tmp_path, params=params, log_to_mlflow=False)
    params["detect2d"]["sources"] = ["gt", "cpn", "detectron"]
    params["datasets"]["h36m"]["detections"] = {
        "gt": "data_2d_h36m_gt.npz",
        "cpn": "data_2d_h36m_cpn_ft_h36m_dbb.npz",
    }
    det_metrics = execute(detect2d.STAGE, detect2d.run, root=tmp_path, params=params, log_to_mlflow=False)
    test = read_split(lay.prepared("test"))
    det, _ = read_table(lay.detections("test"), {"cpn/keypoints": Field((17, 2), "f")}, rows=test.num_frames)
    i = list(test.seqs["seq_name"]).index("S9/Walking/60457274")
    a, n = test.seqs["seq_start"][i], test.seqs["seq_len"][i]
    np.testing.assert_allclose(
        det["cpn/keypoints"][a : a + n], mini.positions_2d["cpn"]["S9"]["Walking"][3][::2], atol=1e-4
    )
    assert det_metrics["test"]["gt"]["mean_px"] == 0.0
    assert det_metrics["test"]["detectron"]["mean_px"] > 0  # no file configured: simulated


def test_default_config_runs_on_the_default_mini_h36m(tmp_path, tiny_params):
    """All seven subjects and all four 2D files: the shipped datasets.h36m options work unchanged."""
    from hmrmamba.stages import detect2d, prepare
    from hmrmamba.stages.common import execute

    mini = write_mini_h36m(tmp_path / "raw", frames=8)
    params = dict(tiny_params, dataset={"name": "h36m", "root": "raw"})
    params["detect2d"] = {**params["detect2d"], "sources": ["gt", "sh", "detectron", "cpn"]}
    prep = execute(prepare.STAGE, prepare.run, root=tmp_path, params=params, log_to_mlflow=False)
    assert prep["train"]["sequences"] == 5 * 2 * 4 and prep["test"]["sequences"] == 2 * 2 * 1
    det = execute(detect2d.STAGE, detect2d.run, root=tmp_path, params=params, log_to_mlflow=False)
    err = {s: det["test"][s]["mean_px"] for s in ("gt", "cpn", "detectron", "sh")}
    assert err["gt"] == 0.0 and 0 < err["cpn"] < err["detectron"] < err["sh"]  # the files' noise levels
    assert len(mini.positions_3d) == 7


@pytest.mark.parametrize("module, cls, section", [("h36m", "H36MConfig", "h36m"), ("pw3d", "PW3DConfig", "pw3d"),
                                                   ("mpi3dhp", "MPI3DHPConfig", "mpi3dhp")])
def test_reader_options_refuse_unknown_keys(module, cls, section):
    import importlib

    from hmrmamba.errors import InputError

    config = getattr(importlib.import_module(f"hmrmamba.data.real.{module}"), cls)
    with pytest.raises(InputError, match=rf"datasets\.{section}.*unknown option\(s\) \['bogus'\]"):
        config.from_params({"bogus": 1})
