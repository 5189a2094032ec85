"""Motion sources for the synthetic dataset (hmrmamba.data.mocap.sources): the joint maps on real CMU
mocap renamed to each convention, the file-disjoint split assignment, and ``prepare`` on a folder of
BVH files and on a mix, checked against the mocap (joint angles) and the body (bone lengths).

The BVH files are excerpts of the CMU clips in Debian's assimp-testmodels (tests/fixtures/mocap/README.md).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from hmrmamba.data.mocap.bvh import (
    ASF_TO_SMPL,
    JOINT_MAPS,
    bvh_forward_kinematics,
    bvh_to_smpl,
    guess_joint_map,
    parse_bvh,
    read_bvh,
)
from hmrmamba.data.mocap.sources import bvh_map, deal, load_motion_file, mocap_options, plan_motion

ROOT = Path(__file__).resolve().parents[1]
MOCAP = ROOT / "tests" / "fixtures" / "mocap"
CMU_FILES = ("cmu_01_01_f0600.bvh", "cmu_01_01_f1800.bvh", "cmu_01_03_f1200.bvh")

#: the cgspeed conversion's joints under the original CMU ASF bone names (the conversion came from them)
CMU_TO_ASF = {"Hips": "root", "LowerBack": "lowerback", "Spine": "upperback", "Spine1": "thorax",
              "Neck": "lowerneck", "Neck1": "upperneck", "Head": "head"}
for _side, _s in (("Left", "l"), ("Right", "r")):
    CMU_TO_ASF.update({f"{_side}UpLeg": f"{_s}femur", f"{_side}Leg": f"{_s}tibia", f"{_side}Foot": f"{_s}foot",
                       f"{_side}ToeBase": f"{_s}toes", f"{_side}Shoulder": f"{_s}clavicle",
                       f"{_side}Arm": f"{_s}humerus", f"{_side}ForeArm": f"{_s}radius",
                       f"{_side}Hand": f"{_s}wrist", f"{_side}FingerBase": f"{_s}hand"})
CMU_TO_ASF.update({"LHipJoint": "lhipjoint", "RHipJoint": "rhipjoint", "LFingers": "lfingers",
                   "RFingers": "rfingers", "LThumb": "lthumb", "RThumb": "rthumb"})
#: ... and under Mixamo's (one more spine joint name, hands' middle finger, the rig prefix)
CMU_TO_MIXAMO = {"LowerBack": "Spine", "Spine": "Spine1", "Spine1": "Spine2",
                 "LeftFingerBase": "LeftHandMiddle1", "RightFingerBase": "RightHandMiddle1"}


def renamed(text: str, names: dict[str, str], prefix: str = "") -> str:
    """BVH text with its ROOT/JOINT names replaced (others get ``prefix`` too)."""
    return re.sub(r"^(\s*(?:ROOT|JOINT)\s+)(\S+)", lambda m: m.group(1) + prefix + names.get(m.group(2), m.group(2)),
                  text, flags=re.MULTILINE)


@pytest.mark.parametrize("convention, names, prefix", [("asf", CMU_TO_ASF, ""),
                                                       ("mixamo", CMU_TO_MIXAMO, "mixamorig:")])
def test_joint_maps_retarget_the_same_mocap_alike(convention, names, prefix):
    text = (MOCAP / CMU_FILES[0]).read_text()
    ref = bvh_to_smpl(parse_bvh(text), JOINT_MAPS["cmu"])
    clip = parse_bvh(renamed(text, names, prefix), source=f"{convention}.bvh")
    assert guess_joint_map(clip.names) is JOINT_MAPS[convention]
    out = bvh_to_smpl(clip, JOINT_MAPS[convention])
    np.testing.assert_allclose(out.pose, ref.pose, atol=1e-5)
    np.testing.assert_allclose(out.trans, ref.trans, atol=1e-5)
    # a user's own mapping, given in params: the ASF table spelled out under other names
    own = {f"my_{b}": ASF_TO_SMPL[b] for b in ASF_TO_SMPL}
    user = parse_bvh(renamed(renamed(text, CMU_TO_ASF), {}, "my_"))
    opts = mocap_options({"joint_map": own})
    np.testing.assert_allclose(bvh_to_smpl(user, bvh_map(opts, user.names)).pose, ref.pose, atol=1e-5)


def test_named_map_that_does_not_fit_names_the_joints(tmp_path):
    path = tmp_path / "mixamo.bvh"
    path.write_text(renamed((MOCAP / CMU_FILES[0]).read_text(), CMU_TO_MIXAMO, "mixamorig:"))
    # the CMU table finds the limbs (same names) but Mixamo's spine sits one joint lower: still placeable
    load_motion_file(path, "bvh", fps=25, opts=mocap_options({"joint_map": "cmu"}))
    with pytest.raises(Exception, match=r"mixamo.bvh: field 'HIERARCHY': the biovision joint map .* "
                                        r"left_hip \(no BVH joint 'LeftHip'\)"):
        load_motion_file(path, "bvh", fps=25, opts=mocap_options({"joint_map": "biovision"}))


def test_files_are_dealt_to_one_split_each_deterministically():
    files = [(Path(f"/m/{k:02d}.bvh"), f"{k:02d}.bvh") for k in range(20)]
    shares = {"train": 40.0, "val": 3.0, "test": 12.0}
    a = deal(files, shares, seed=0)
    assert a == deal(list(reversed(files)), shares, seed=0)  # order of listing does not matter
    labels = [lab for s in a.values() for _, lab in s]
    assert sorted(labels) == [lab for _, lab in files]  # every file once
    assert [len(a[s]) for s in shares] == [15, 1, 4]  # proportional, at least one each
    b = deal(files, shares, seed=1)
    assert {lab for _, lab in b["test"]} != {lab for _, lab in a["test"]}  # the seed reshuffles


def test_clips_are_resampled_to_the_dataset_rate_and_windows_follow_the_file(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    for f in CMU_FILES:
        shutil.copy(MOCAP / f, shared / f)
    syn = {"splits": {"train": {"sequences": 4, "subjects": 1}, "test": {"sequences": 2, "subjects": 1}},
           "motion_source": "bvh", "mocap": {"bvh_dir": str(shared)}}
    plan = plan_motion(syn, tmp_path, fps=25, min_frames=16, seed=0)
    files = {s: {f.label for fs in p.files.values() for f in fs} for s, p in plan.items()}
    assert files["train"].isdisjoint(files["test"]) and len(files["train"] | files["test"]) == 3
    f = next(iter(plan["train"].files.values()))[0]
    assert f.clip.fps == 25 and f.clip.num_frames == 25  # 120 frames at 120 fps -> 1 s
    clip = plan["train"].clip(0, 3, 16)
    name, start = re.fullmatch(r"bvh:(.+)@(\d+)", clip.kind).groups()
    assert name in files["train"] and clip.num_frames == 16
    full = bvh_to_smpl(read_bvh(shared / name), target_fps=25)
    np.testing.assert_allclose(clip.pose, full.pose[int(start):int(start) + 16])
    # a split's own folder: all its files, none shared
    held = tmp_path / "held"
    held.mkdir()
    shutil.move(shared / CMU_FILES[2], held / CMU_FILES[2])
    syn["splits"]["test"]["motion_source"] = f"bvh:{held}"
    plan = plan_motion(syn, tmp_path, fps=25, min_frames=16, seed=0)
    assert [f.label for fs in plan["test"].files.values() for f in fs] == [CMU_FILES[2]]
    assert sorted(f.label for fs in plan["train"].files.values() for f in fs) == list(CMU_FILES[:2])


# ----------------------------------------------------------------------------- prepare end to end


def knee_and_elbow_angles(points: np.ndarray, idx: dict[str, int], names: tuple[str, ...]) -> np.ndarray:
    """points (T, J, 3) -> (T, 4) angles in degrees at the two knees and elbows (``names``: 12 joints)."""
    p = [points[:, idx[n]] for n in names]
    out = []
    for a, b, c in zip(p[0::3], p[1::3], p[2::3], strict=True):
        u, v = a - b, c - b
        out.append(np.degrees(np.arccos((u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1))))
    return np.stack(out, -1)


H36M_LIMBS = ("right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
              "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist")
BVH_LIMBS = {"cmu": ("RightUpLeg", "RightLeg", "RightFoot", "LeftUpLeg", "LeftLeg", "LeftFoot",
                     "RightArm", "RightForeArm", "RightHand", "LeftArm", "LeftForeArm", "LeftHand"),
             "biovision": ("RightHip", "RightKnee", "RightAnkle", "LeftHip", "LeftKnee", "LeftAnkle",
                           "RightShoulder", "RightElbow", "RightWrist", "LeftShoulder", "LeftElbow", "LeftWrist")}


@pytest.mark.integration
def test_prepare_renders_mocap_with_the_bodys_bones(tmp_path):
    import torch

    from hmrmamba.body.body_model import load_body_arrays, load_smpl
    from hmrmamba.data.h5schema import read_split
    from hmrmamba.layout import Layout
    from hmrmamba.profiles import compose, write_params
    from hmrmamba.skeleton import H36M17
    from hmrmamba.stages import body_model, prepare
    from hmrmamba.stages.common import execute

    shared, held = tmp_path / "mocap", tmp_path / "held"
    shared.mkdir()
    held.mkdir()
    for f in CMU_FILES[:2]:
        shutil.copy(MOCAP / f, shared / f)
    for f in (CMU_FILES[2], "biovision_boxing_f0500.bvh"):
        shutil.copy(MOCAP / f, held / f)
    root = tmp_path / "project"
    root.mkdir()
    params = compose(ROOT, "default", [
        "synthetic.splits.train.sequences=3", "synthetic.splits.train.subjects=2",
        "synthetic.splits.val.sequences=1", "synthetic.splits.val.subjects=1",
        "synthetic.splits.test.sequences=2", "synthetic.splits.test.subjects=1",
        "synthetic.frames=[16,20]", "synthetic.image_size=64",
        "synthetic.motion_source={procedural: 0.5, bvh: 0.5}", f"synthetic.mocap.bvh_dir={shared}",
        f"+synthetic.splits.test.motion_source=bvh:{held}"])
    write_params(root, params)
    for mod in (body_model, prepare):
        execute(mod.STAGE, mod.run, root=root, params=params, log_to_mlflow=False)
    lay = Layout(root)
    smpl = load_smpl(lay.body_model)
    j_h36m = torch.as_tensor(load_body_arrays(lay.body_model)["J_regressor_h36m"], dtype=torch.float32)
    hidx = {n: i for i, n in enumerate(H36M17.names)}
    used: dict[str, set[str]] = {}
    mocap_seqs = 0
    for split in ("train", "val", "test"):
        sp = read_split(lay.prepared(split))
        for i, motion in enumerate(sp.seqs["motion"]):
            motion = motion.decode() if isinstance(motion, bytes) else str(motion)
            if not motion.startswith("bvh:"):
                assert split != "test"
                continue
            mocap_seqs += 1
            name, start = re.fullmatch(r"bvh:(.+)@(\d+)", motion).groups()
            used.setdefault(name, set()).add(split)
            s0, n = int(sp.seqs["seq_start"][i]), int(sp.seqs["seq_len"][i])
            joints = sp.frames["joints3d"][s0:s0 + n]
            # the mocap's joint angles reappear in the rendered person's 3D joints: the same motion
            # (within 2 degrees about the mean) and the same angles within the two rest poses' difference
            clip = read_bvh((held if split == "test" else shared) / name)
            pos, _ = bvh_forward_kinematics(clip)
            frame = np.rint((int(start) + np.arange(n)) / 25 * clip.fps).astype(int)
            bidx = {b: k for k, b in enumerate(clip.names)}
            ours = knee_and_elbow_angles(joints, hidx, H36M_LIMBS)
            theirs = knee_and_elbow_angles(pos[frame], bidx, BVH_LIMBS[
                "biovision" if "LeftKnee" in bidx else "cmu"])
            assert np.ptp(theirs, axis=0).max() > 15  # the clip moves
            assert np.abs((ours - ours.mean(0)) - (theirs - theirs.mean(0))).max() < 2.5, name
            assert np.abs(ours - theirs).max() < 7, name
            # bone lengths are the subject's body's, not the actor's (up to the skinning's few
            # centimetres under flexion: H36M joints are regressed from the skinned vertices)
            betas = torch.as_tensor(sp.frames["smpl_betas"][s0:s0 + 1])
            rest = torch.einsum("jv,bvc->bjc", j_h36m, smpl(betas=betas).vertices)[0].detach().numpy()
            for a, b in (("left_hip", "left_knee"), ("right_knee", "right_ankle"), ("left_shoulder", "left_elbow")):
                bone = np.linalg.norm(joints[:, hidx[a]] - joints[:, hidx[b]], axis=-1)
                assert np.abs(bone - np.linalg.norm(rest[hidx[a]] - rest[hidx[b]])).max() < 0.025
    # disjoint by file; every mocap file of the held-out folder only in test
    assert mocap_seqs >= 3 and all(len(s) == 1 for s in used.values())
    assert {n for n, s in used.items() if s == {"test"}} <= {CMU_FILES[2], "biovision_boxing_f0500.bvh"}
    metrics = yaml.safe_load((root / "metrics/prepare.json").read_text())
    test_files = set(next(iter(metrics["test"]["motion"]["files"].values())))
    assert test_files == {CMU_FILES[2], "biovision_boxing_f0500.bvh"}


def test_amass_folder_gives_its_poses_at_the_dataset_rate(tmp_path):
    from hmrmamba.data.mocap.amass import read_amass

    rng = np.random.default_rng(0)
    for k in range(2):
        T = 100
        t = np.arange(T)[:, None] / 50.0
        poses = np.zeros((T, 156))
        poses[:, 3:66] = 0.3 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6, 63))  # smooth body motion
        np.savez(tmp_path / f"clip{k}.npz", poses=poses, trans=np.c_[0.5 * t, 0 * t, 0 * t], betas=np.zeros(16),
                 mocap_framerate=np.array(50.0))
    syn = {"splits": {"train": {"sequences": 3, "subjects": 1}, "test": {"sequences": 1, "subjects": 1}},
           "motion_source": {"amass": 1.0, "procedural": 0.0}, "mocap": {"amass_dir": str(tmp_path)}}
    plan = plan_motion(syn, tmp_path, fps=25, min_frames=16, seed=0)
    assert [e.label.split(":")[0] for e in plan["train"].entries] == ["amass"]  # weight 0 dropped
    clip = plan["train"].clip(0, 0, 20)
    name, start = re.fullmatch(r"amass:(.+)@(\d+)", clip.kind).groups()
    ref = read_amass(tmp_path / name, target_fps=25)  # 100 frames at 50 fps -> 50 at 25 fps
    assert ref.num_frames == 50 and clip.num_frames == 20
    np.testing.assert_allclose(clip.pose, ref.pose[int(start):int(start) + 20], atol=1e-6)
    assert clip.pelvis_height is None  # AMASS root paths stay in metres
    other = {f.label for fs in plan["test"].files.values() for f in fs}
    assert other == {"clip0.npz", "clip1.npz"} - {name}


def test_mocap_root_paths_are_scaled_to_the_subject(tmp_path):
    from hmrmamba.body.body_model import save_body_model
    from hmrmamba.body.procedural import build_procedural_smpl
    from hmrmamba.data.synthetic.maker import SplitSpec, SyntheticConfig, SyntheticMaker
    from hmrmamba.data.synthetic.motion import MotionClip

    path = tmp_path / "body.npz"
    save_body_model(path, build_procedural_smpl(seed=0))
    maker = SyntheticMaker(SyntheticConfig(splits=(SplitSpec("train", 1, 1),)), path)
    tall, short = np.zeros(10, np.float32), np.zeros(10, np.float32)
    tall[0], short[0] = 2.0, -2.0
    h_tall, h_short = maker.standing_pelvis_height(tall), maker.standing_pelvis_height(short)
    assert h_tall > 1.05 * h_short  # beta 0 is height in the procedural body
    trans = np.c_[np.linspace(0, 1, 5), np.full(5, 0.9), np.zeros(5)].astype(np.float32) + [2.0, 0.0, 1.0]
    pose = np.zeros((5, 72), np.float32)
    amass = MotionClip(pose=pose, trans=trans, fps=25.0, kind="amass", betas=tall)
    got = maker.scaled_root_path(amass, short)  # a shorter subject takes shorter strides from the same start
    np.testing.assert_allclose(got[0], trans[0], atol=1e-6)
    np.testing.assert_allclose(got - got[0], (trans - trans[0]) * (h_short / h_tall), rtol=1e-5, atol=1e-6)
    bvh = MotionClip(pose=pose, trans=trans, fps=25.0, kind="bvh", pelvis_height=2 * h_short)
    np.testing.assert_allclose(maker.scaled_root_path(bvh, short), trans / 2, rtol=1e-5)
    procedural = MotionClip(pose=pose, trans=trans, fps=25.0, kind="walk")
    assert maker.scaled_root_path(procedural, short) is trans
