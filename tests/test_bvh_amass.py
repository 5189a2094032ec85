"""BVH parsing and retargeting to SMPL, and AMASS .npz import, on fabricated files with known
answers (plus the CMU clips of Debian's assimp-testmodels when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hmrmamba.data.mocap.amass import read_amass
from hmrmamba.data.mocap.bvh import (
    BIOVISION_TO_SMPL,
    CMU_TO_SMPL,
    bvh_forward_kinematics,
    bvh_local_rotations,
    bvh_to_smpl,
    guess_joint_map,
    read_bvh,
)
from hmrmamba.data.synthetic.joint_limits import within_limits
from hmrmamba.data.synthetic.motion import REST_JOINTS
from hmrmamba.errors import InputError
from hmrmamba.skeleton import SMPL24

J = {n: i for i, n in enumerate(SMPL24.names)}
CMU_NAME = {v: k for k, v in CMU_TO_SMPL.items()}  # SMPL joint -> CMU BVH joint
DEBIAN_BVH = Path("/usr/share/assimp/models/BVH")


# ----------------------------------------------------------------------------- fabricated BVH


def dfs_order(parents) -> list[int]:
    """The order in which a BVH file lists the joints (depth first, children in index order)."""
    kids = {j: [c for c, p in enumerate(parents) if p == j] for j in range(len(parents))}
    out, stack = [], [0]
    while stack:
        j = stack.pop()
        out.append(j)
        stack.extend(reversed(kids[j]))
    return out


ROOT_CHANNELS = "Xposition Yposition Zposition Zrotation Xrotation Yrotation"


def bvh_text(names, parents, offsets, frames, *, ends=None, root_channels=ROOT_CHANNELS,
             channels="Zrotation Xrotation Yrotation", frame_time=0.01) -> str:
    """Write a BVH hierarchy and its frames. frames: (T, C) with the channels of the joints in
    index order (root first); they are written in the file's depth-first joint order."""
    ends = ends or {}
    kids = {j: [c for c, p in enumerate(parents) if p == j] for j in range(len(names))}
    lines = ["HIERARCHY"]

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if parents[j] < 0 else 'JOINT'} {names[j]}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {offsets[j][0]:.6f} {offsets[j][1]:.6f} {offsets[j][2]:.6f}")
        chans = root_channels if parents[j] < 0 else channels
        lines.append(f"{pad}  CHANNELS {len(chans.split())} {chans}")
        for c in kids[j]:
            emit(c, depth + 1)
        if not kids[j]:
            e = ends.get(j, (0.0, 5.0, 0.0))
            lines.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {e[0]} {e[1]} {e[2]}",
                          pad + "  }"])
        lines.append(pad + "}")

    emit(0, 0)
    lines += ["MOTION", f"Frames: {len(frames)}", f"Frame Time: {frame_time}"]
    nr = len(root_channels.split())
    cols = list(range(nr)) + [nr + 3 * (j - 1) + k for j in dfs_order(parents)[1:] for k in range(3)]
    lines += [" ".join(f"{v:.6f}" for v in row[cols]) for row in np.asarray(frames)]
    return "\n".join(lines) + "\n"


def smpl_like_bvh(frames: np.ndarray) -> str:
    """A BVH with SMPL's tree, CMU names and the generic SMPL rest joints in centimetres.
    frames: (T, 6 + 23 * 3) root position (cm) and ZXY rotations (degrees) per joint."""
    has_parent = (np.array(SMPL24.parents) >= 0)[:, None]
    offsets = (REST_JOINTS - REST_JOINTS[list(SMPL24.parents)] * has_parent) * 100
    offsets[0] = 0.0
    names = [CMU_NAME[n] for n in SMPL24.names]
    ends = {J["left_foot"]: (0.0, -1.0, 5.0), J["right_foot"]: (0.0, -1.0, 5.0)}
    return bvh_text(names, SMPL24.parents, offsets, frames, ends=ends)


def zero_frames(T: int) -> np.ndarray:
    f = np.zeros((T, 6 + 23 * 3))
    f[:, 1] = 95.0  # pelvis 95 cm above the floor: the soles (-94 - 1 cm) touch y = 0
    return f


def channel(joint: str, axis: str) -> int:
    """Column of a joint's rotation channel in smpl_like_bvh frames."""
    return 6 + 3 * (J[joint] - 1) + "ZXY".index(axis)


def test_bvh_left_arm_rotation_gives_smpl_left_shoulder(tmp_path):
    frames = zero_frames(2)
    frames[1, channel("left_shoulder", "Z")] = -90.0  # LeftArm down by 90 degrees about z
    frames[1, 0], frames[1, 2] = 100.0, 50.0           # root moves 1 m in x, 0.5 m in z
    path = tmp_path / "arm.bvh"
    path.write_text(smpl_like_bvh(frames))
    clip = read_bvh(path)
    assert clip.num_frames == 2 and clip.fps == pytest.approx(100.0) and len(clip.names) == 24
    smpl = bvh_to_smpl(clip)  # auto units: centimetres
    pose = smpl.pose.reshape(2, 24, 3)
    np.testing.assert_allclose(pose[1, J["left_shoulder"]], [0, 0, -np.pi / 2], atol=1e-5)
    others = np.delete(pose, J["left_shoulder"], axis=1)
    np.testing.assert_allclose(others, 0.0, atol=1e-5)
    np.testing.assert_allclose(pose[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(smpl.trans[0], [0, 0, 0], atol=1e-5)  # standing on the floor
    np.testing.assert_allclose(smpl.trans[1] - smpl.trans[0], [1.0, 0.0, 0.5], atol=1e-5)
    assert smpl.kind == "bvh" and smpl.fps == pytest.approx(100.0)


def test_bvh_channel_order_composes_as_listed(tmp_path):
    frames = zero_frames(1)
    frames[0, channel("left_knee", "Z")] = 30.0
    frames[0, channel("left_knee", "X")] = 40.0
    frames[0, channel("left_knee", "Y")] = -50.0
    path = tmp_path / "order.bvh"
    path.write_text(smpl_like_bvh(frames))
    clip = read_bvh(path)
    R = bvh_local_rotations(clip)[0, clip.names.index("LeftLeg")]
    Rz, Rx, Ry = (Rotation.from_euler(a, d, degrees=True).as_matrix()
                  for a, d in (("z", 30), ("x", 40), ("y", -50)))
    np.testing.assert_allclose(R, Rz @ Rx @ Ry, atol=1e-12)


def test_bvh_same_skeleton_round_trips_rotations(tmp_path):
    rng = np.random.default_rng(0)
    frames = zero_frames(5)
    frames[:, 3:] = rng.uniform(-60, 60, size=(5, 3 + 23 * 3))
    path = tmp_path / "random.bvh"
    path.write_text(smpl_like_bvh(frames))
    clip = read_bvh(path)
    smpl = bvh_to_smpl(clip, units="cm")
    got = Rotation.from_rotvec(smpl.pose.reshape(-1, 3).astype(np.float64)).as_matrix().reshape(5, 24, 3, 3)
    want = bvh_local_rotations(clip)[:, [clip.names.index(CMU_NAME[n]) for n in SMPL24.names]]
    np.testing.assert_allclose(got, want, atol=1e-5)


def aposed_zup_inch_bvh(frames_rng: np.random.Generator, T: int):
    """A differently built skeleton: Biovision names, arms in an A-pose, the body facing -z,
    z-up coordinates, inches, an extra zero-length hip joint and no spine2 or hands."""
    keep = [n for n in SMPL24.names if n not in ("spine2", "left_hand", "right_hand")]
    bio = {v: k for k, v in BIOVISION_TO_SMPL.items() if k not in ("Abdomen", "LeftToe", "RightToe")}
    rest = REST_JOINTS.copy() * 1.1
    for side, sgn in (("left", 1), ("right", -1)):  # lower the arms by 40 degrees about the shoulder
        s = J[f"{side}_shoulder"]
        R = Rotation.from_euler("z", -sgn * 40, degrees=True).as_matrix()
        for n in ("elbow", "wrist"):
            rest[J[f"{side}_{n}"]] = rest[s] + R @ (rest[J[f"{side}_{n}"]] - rest[s])
    rest = rest @ Rotation.from_euler("y", 180, degrees=True).as_matrix().T  # face -z
    names, parents, pos = [], [], []
    for n in keep:
        p = SMPL24.parents[J[n]]
        while p >= 0 and SMPL24.names[p] not in keep:
            p = SMPL24.parents[p]
        names.append(bio[n])
        parents.append(-1 if p < 0 else names.index(bio[SMPL24.names[p]]))
        pos.append(rest[J[n]])
    names.append("LHipJoint")  # an unmapped zero-length joint between Hips and LeftHip
    parents.append(0)
    pos.append(rest[0])
    parents[names.index("LeftHip")] = len(names) - 1
    order = sorted(range(len(names)), key=lambda j: (depth(parents, j), j))
    new = {old: k for k, old in enumerate(order)}
    names = [names[o] for o in order]
    parents = [-1 if parents[o] < 0 else new[parents[o]] for o in order]
    pos = np.array([pos[o] for o in order])
    to_zup = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)  # y-up -> z-up
    pos_z = pos @ to_zup.T / 0.0254
    offsets = pos_z - np.where(np.array(parents)[:, None] >= 0, pos_z[np.maximum(parents, 0)], 0.0)
    frames = np.zeros((T, 6 + 3 * (len(names) - 1)))
    frames[:, 3:] = frames_rng.uniform(-45, 45, size=(T, 3 + 3 * (len(names) - 1)))
    frames[:, names.index("LHipJoint") * 3 + 3:names.index("LHipJoint") * 3 + 6] = 0.0
    frames[:, :3] = frames_rng.normal(0, 20, size=(T, 3))
    return bvh_text(names, parents, offsets, frames), to_zup


def depth(parents, j):
    d = 0
    while parents[j] >= 0:
        j, d = parents[j], d + 1
    return d


def smpl_fk(pose: np.ndarray) -> np.ndarray:
    T = len(pose)
    rot = Rotation.from_rotvec(pose.reshape(-1, 3).astype(np.float64)).as_matrix().reshape(T, 24, 3, 3)
    glob, pos = np.zeros_like(rot), np.zeros((T, 24, 3))
    for j, p in enumerate(SMPL24.parents):
        if p < 0:
            glob[:, j] = rot[:, j]
        else:
            glob[:, j] = glob[:, p] @ rot[:, j]
            pos[:, j] = pos[:, p] + glob[:, p] @ (REST_JOINTS[j] - REST_JOINTS[p])
    return pos


def test_bvh_retarget_matches_global_bone_directions_across_rest_poses(tmp_path):
    text, to_zup = aposed_zup_inch_bvh(np.random.default_rng(1), T=6)
    path = tmp_path / "apose.bvh"
    path.write_text(text)
    clip = read_bvh(path)
    assert guess_joint_map(clip.names) is BIOVISION_TO_SMPL
    smpl = bvh_to_smpl(clip, up="z")  # auto units: inches
    bpos, _ = bvh_forward_kinematics(clip)
    bpos = bpos @ to_zup  # z-up -> y-up (to_zup is orthogonal)
    spos = smpl_fk(smpl.pose)
    idx = {SMPL24.names[J[v]]: clip.names.index(k) for k, v in BIOVISION_TO_SMPL.items() if k in clip.names}
    bones = [("left_hip", "left_knee"), ("right_knee", "right_ankle"), ("left_ankle", "left_foot"),
             ("spine1", "spine3"), ("spine3", "neck"), ("neck", "head"), ("left_collar", "left_shoulder"),
             ("left_shoulder", "left_elbow"), ("right_elbow", "right_wrist"),
             ("right_shoulder", "right_elbow")]
    for a, b in bones:
        ds = spos[:, J[b]] - spos[:, J[a]]
        db = bpos[:, idx[b]] - bpos[:, idx[a]]
        cos = (ds * db).sum(-1) / np.linalg.norm(ds, axis=-1) / np.linalg.norm(db, axis=-1)
        assert cos.min() > 1 - 1e-6, (a, b, cos)
    # hips: the root frame follows the BVH's (left hip line and facing direction)
    lat_s = spos[:, J["left_hip"]] - spos[:, J["right_hip"]]
    lat_b = bpos[:, idx["left_hip"]] - bpos[:, idx["right_hip"]]
    cos = (lat_s * lat_b).sum(-1) / np.linalg.norm(lat_s, axis=-1) / np.linalg.norm(lat_b, axis=-1)
    assert cos.min() > 0.999
    # root translation: inches -> metres in a y-up world
    d_s = np.diff(smpl.trans, axis=0)
    d_b = np.diff(bpos[:, 0], axis=0) * 0.0254
    np.testing.assert_allclose(d_s, d_b, atol=1e-5)


@pytest.mark.skipif(not (DEBIAN_BVH / "01_01.bvh").is_file(), reason="assimp-testmodels not installed")
def test_debian_cmu_bvh_clip():
    clip = read_bvh(DEBIAN_BVH / "01_01.bvh")
    assert clip.num_frames == 2752 and len(clip.names) == 31 and clip.fps == pytest.approx(120.0, rel=1e-4)
    assert guess_joint_map(clip.names) is CMU_TO_SMPL
    smpl = bvh_to_smpl(clip, target_fps=30.0)
    assert smpl.fps == 30.0 and smpl.num_frames == 688
    assert np.isfinite(smpl.pose).all() and np.isfinite(smpl.trans).all()
    # CMU units were recognised: a standing pelvis is near its rest height, the walk spans metres
    assert abs(np.median(smpl.trans[:, 1])) < 0.2
    assert 0.5 < np.ptp(smpl.trans[:, [0, 2]], axis=0).max() < 20
    full = bvh_to_smpl(clip)
    bpos, _ = bvh_forward_kinematics(clip)
    spos = smpl_fk(full.pose[::8])
    bpos = bpos[::8]
    n = {name: clip.names.index(name) for name in clip.names}
    for (a, b), (ba, bb) in {("left_hip", "left_knee"): ("LeftUpLeg", "LeftLeg"),
                             ("right_knee", "right_ankle"): ("RightLeg", "RightFoot"),
                             ("left_shoulder", "left_elbow"): ("LeftArm", "LeftForeArm"),
                             ("right_elbow", "right_wrist"): ("RightForeArm", "RightHand")}.items():
        ds, db = spos[:, J[b]] - spos[:, J[a]], bpos[:, n[bb]] - bpos[:, n[ba]]
        cos = (ds * db).sum(-1) / np.linalg.norm(ds, axis=-1) / np.linalg.norm(db, axis=-1)
        assert cos.min() > 1 - 1e-6
    # real mocap stays mostly inside the joint limits
    assert within_limits(smpl.pose).mean() > 0.9


def test_bvh_bad_input_names_file_field_and_expectation(tmp_path):
    good = smpl_like_bvh(zero_frames(2))

    def fails(text: str, *match: str) -> InputError:
        path = tmp_path / "bad.bvh"
        path.write_text(text)
        with pytest.raises(InputError) as err:
            read_bvh(path)
        msg = str(err.value)
        assert str(path) in msg and all(m in msg for m in match), msg
        return err.value

    fails(good.replace("HIERARCHY", "HIERARCHI", 1), "HIERARCHY")
    fails(good.split("MOTION")[0], "MOTION", "expected")
    lines = good.splitlines()
    lines[-1] = lines[-1] + " 1.0"
    e = fails("\n".join(lines) + "\n", "MOTION", "has 76 values", "75 channel values")
    assert e.field == "MOTION"
    fails(good.replace("Frames: 2", "Frames: 3"), "Frames", "3 rows")
    fails(good.replace("Frame Time: 0.01", "Frame Time: 0"), "Frame Time", "positive")
    fails(good.replace("Zrotation Xrotation Yrotation", "Zrotation Xrotation Wrotation", 1),
          "CHANNELS of", "distinct names")
    fails(good.replace("OFFSET", "OFFSET x", 1), "'x' is not a number")
    fails(good.rstrip().rsplit("\n", 1)[0] + "\n" + "0 " * 74 + "nan\n", "non-finite")
    with pytest.raises(InputError, match="not found"):
        read_bvh(tmp_path / "missing.bvh")


def test_bvh_without_mappable_root(tmp_path):
    text = bvh_text(["Root", "Thing"], [-1, 0], np.array([[0, 0, 0], [0, 10, 0.0]]), np.zeros((1, 9)))
    path = tmp_path / "unknown.bvh"
    path.write_text(text)
    clip = read_bvh(path)
    with pytest.raises(InputError) as err:
        bvh_to_smpl(clip)
    assert str(path) in str(err.value) and "pelvis" in str(err.value) and err.value.field == "HIERARCHY"
    smpl = bvh_to_smpl(clip, joint_map={"Root": "pelvis"}, units="cm")  # an explicit map works
    assert smpl.pose.shape == (1, 72)
    with pytest.raises(InputError, match="joint_map"):
        bvh_to_smpl(clip, joint_map={"Root": "tail"})


# ----------------------------------------------------------------------------- AMASS


Q = Rotation.from_euler("x", -90, degrees=True).as_matrix()


def amass_arrays(T: int = 9, width: int = 156, rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    return {"poses": rng.normal(0, 0.4, size=(T, width)), "trans": rng.normal(0, 1.0, size=(T, 3)),
            "betas": rng.normal(size=16), "mocap_framerate": np.array(120.0), "gender": np.array("female")}


def test_amass_values_and_axis_conversion(tmp_path):
    arrays = amass_arrays()
    path = tmp_path / "clip_poses.npz"
    np.savez(path, **arrays)
    clip = read_amass(path, rest_pelvis=(0.0, 0.0, 0.0))
    assert clip.pose.shape == (9, 72) and clip.kind == "amass" and clip.fps == 120.0
    assert clip.gender == "female" and clip.betas.shape == (10,)
    np.testing.assert_allclose(clip.betas, arrays["betas"][:10], atol=1e-6)
    np.testing.assert_allclose(clip.pose[:, 3:66], arrays["poses"][:, 3:66], atol=1e-6)
    np.testing.assert_array_equal(clip.pose[:, 66:], 0.0)  # SMPL hand joints: zero
    root = Rotation.from_rotvec(clip.pose[:, :3].astype(np.float64)).as_matrix()
    np.testing.assert_allclose(root, Q @ Rotation.from_rotvec(arrays["poses"][:, :3]).as_matrix(), atol=1e-5)
    x, y, z = arrays["trans"].T
    np.testing.assert_allclose(clip.trans, np.stack([x, z, -y], 1), atol=1e-5)  # z up -> y up


def test_amass_upright_body_becomes_identity_root(tmp_path):
    arrays = amass_arrays(T=2)
    arrays["poses"][:, :3] = [np.pi / 2, 0, 0]  # how AMASS stands an upright SMPL body in its z-up world
    path = tmp_path / "upright.npz"
    np.savez(path, **arrays)
    np.testing.assert_allclose(read_amass(path).pose[:, :3], 0.0, atol=1e-6)


def test_amass_translation_keeps_the_posed_body(tmp_path):
    """With the pelvis J0, SMPL's R (v - J0) + J0 + t in z-up, turned to y-up, equals the
    converted parameters applied in y-up."""
    arrays = amass_arrays(T=3)
    path = tmp_path / "j0.npz"
    np.savez(path, **arrays)
    j0 = np.array([0.01, -0.22, 0.03])
    clip = read_amass(path, rest_pelvis=j0)
    v = np.array([0.3, 0.5, -0.1])
    R = Rotation.from_rotvec(arrays["poses"][:, :3]).as_matrix()
    want = (np.einsum("tab,b->ta", R, v - j0) + j0 + arrays["trans"]) @ Q.T
    R2 = Rotation.from_rotvec(clip.pose[:, :3].astype(np.float64)).as_matrix()
    got = np.einsum("tab,b->ta", R2, v - j0) + j0 + clip.trans
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_amass_resampling_and_smplx_layout(tmp_path):
    arrays = amass_arrays(T=9, width=165)
    arrays["mocap_frame_rate"] = arrays.pop("mocap_framerate")
    path = tmp_path / "smplx.npz"
    np.savez(path, **arrays)
    clip = read_amass(path, target_fps=30.0, rest_pelvis=(0, 0, 0))
    assert clip.fps == 30.0 and clip.num_frames == 3
    np.testing.assert_allclose(clip.pose[:, 3:66], arrays["poses"][[0, 4, 8], 3:66], atol=1e-5)
    x, y, z = arrays["trans"][[0, 4, 8]].T
    np.testing.assert_allclose(clip.trans, np.stack([x, z, -y], 1), atol=1e-5)


@pytest.mark.parametrize("case, field", [
    ("missing_trans", "trans"), ("nan_poses", "poses"), ("bad_width", "poses"), ("short_trans", "trans"),
    ("no_rate", "mocap_framerate"), ("object_gender", "gender"), ("zero_rate", "mocap_framerate"),
])
def test_amass_bad_input(tmp_path, case, field):
    arrays = amass_arrays()
    allow_pickle = False
    if case == "missing_trans":
        del arrays["trans"]
    elif case == "nan_poses":
        arrays["poses"][3, 10] = np.nan
    elif case == "bad_width":
        arrays["poses"] = arrays["poses"][:, :100]
    elif case == "short_trans":
        arrays["trans"] = arrays["trans"][:5]
    elif case == "no_rate":
        del arrays["mocap_framerate"]
    elif case == "object_gender":
        arrays["gender"] = np.array(["female", None], dtype=object)
        allow_pickle = True
    elif case == "zero_rate":
        arrays["mocap_framerate"] = np.array(0.0)
    path = tmp_path / f"{case}.npz"
    np.savez(path, allow_pickle=allow_pickle, **arrays)
    with pytest.raises(InputError) as err:
        read_amass(path)
    assert err.value.field == field and str(path) in str(err.value)
