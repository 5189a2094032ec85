"""Procedural SMPL motions and joint limits: sign conventions by forward kinematics, limits,
smoothness, determinism and the characteristic features of each motion kind."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hmrmamba.data.synthetic.joint_limits import (
    EULER_ORDERS,
    LIMITS_HIGH,
    LIMITS_LOW,
    clamp_to_limits,
    euler_to_matrix,
    euler_to_pose,
    pose_to_euler,
    within_limits,
)
from hmrmamba.data.synthetic.motion import (
    MOTION_KINDS,
    REST_JOINTS,
    MotionClip,
    generate_motion,
    random_motion,
    resample_clip,
    sample_betas,
    sample_style,
)
from hmrmamba.errors import InputError
from hmrmamba.skeleton import SMPL24

J = {n: i for i, n in enumerate(SMPL24.names)}
FPS = 30.0
MAX_RAD_PER_S = 25.0  # generous bound on any joint's angular speed
MAX_M_PER_S = 8.0     # bound on the root speed


def fk(pose: np.ndarray) -> np.ndarray:
    """A tiny independent forward kinematics on the generic rest joints: (T, 72) -> (T, 24, 3)."""
    pose = np.atleast_2d(pose)
    T = len(pose)
    rot = Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix().reshape(T, 24, 3, 3)
    glob = np.zeros_like(rot)
    pos = np.zeros((T, 24, 3))
    for j, p in enumerate(SMPL24.parents):
        if p < 0:
            glob[:, j], pos[:, j] = rot[:, j], REST_JOINTS[j]
        else:
            glob[:, j] = glob[:, p] @ rot[:, j]
            pos[:, j] = pos[:, p] + np.einsum("tab,b->ta", glob[:, p], REST_JOINTS[j] - REST_JOINTS[p])
    return pos


def single(joint: str, rotvec) -> np.ndarray:
    pose = np.zeros(72)
    pose[3 * J[joint]:3 * J[joint] + 3] = rotvec
    return pose


def frame_angles(pose: np.ndarray) -> np.ndarray:
    """(T, 72) -> (T-1, 24) geodesic angle between consecutive frames, radians."""
    R = Rotation.from_rotvec(pose.reshape(-1, 3).astype(np.float64)).as_matrix().reshape(len(pose), 24, 3, 3)
    rel = np.einsum("tjba,tjbc->tjac", R[:-1], R[1:])
    return np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1, 1))


# ----------------------------------------------------------------------------- conventions


def test_sign_conventions_by_forward_kinematics():
    rest = fk(np.zeros(72))[0]
    # hip flexion is negative x: the left knee moves forward (+z)
    p = fk(single("left_hip", [-0.5, 0, 0]))[0]
    assert p[J["left_knee"], 2] > rest[J["left_knee"], 2] + 0.15
    # knee flexion is positive x: the ankle moves backward (-z) and up
    p = fk(single("left_knee", [1.0, 0, 0]))[0]
    assert p[J["left_ankle"], 2] < rest[J["left_ankle"], 2] - 0.3
    assert p[J["left_ankle"], 1] > rest[J["left_ankle"], 1] + 0.15
    # the left arm is lowered by a negative z rotation, the right one by a positive one
    for side, sgn in (("left", -1), ("right", 1)):
        p = fk(single(f"{side}_shoulder", [0, 0, sgn * np.pi / 2]))[0]
        d = p[J[f"{side}_elbow"]] - p[J[f"{side}_shoulder"]]
        np.testing.assert_allclose(d / np.linalg.norm(d), [0, -1, 0], atol=1e-6)
    # left elbow flexion is negative y: the forearm swings forward (+z)
    p = fk(single("left_elbow", [0, -np.pi / 2, 0]))[0]
    d = p[J["left_wrist"]] - p[J["left_elbow"]]
    np.testing.assert_allclose(d / np.linalg.norm(d), [0, 0, 1], atol=1e-6)
    # spine flexion is positive x: the neck moves forward
    p = fk(single("spine1", [0.4, 0, 0]))[0]
    assert p[J["neck"], 2] > rest[J["neck"], 2] + 0.1
    # the root turns about +y: a positive yaw turns the facing direction (+z) toward +x
    p = fk(single("pelvis", [0, np.pi / 2, 0]))[0]
    assert p[J["left_hip"], 2] < -0.07  # the left hip (+x at rest) ends behind


def test_limits_tables_are_mirrored_and_unique():
    for name in SMPL24.names:
        if name.startswith("left_"):
            left, right = J[name], J["right_" + name[5:]]
            assert EULER_ORDERS[left] == EULER_ORDERS[right]
            np.testing.assert_array_equal(LIMITS_LOW[right], [LIMITS_LOW[left][0], -LIMITS_HIGH[left][1],
                                                              -LIMITS_HIGH[left][2]])
    # middle axis of every order within (-pi/2, pi/2): Euler decomposition is unique inside the box
    for j in range(1, 24):
        mid = "XYZ".index(EULER_ORDERS[j][1])
        assert -np.pi / 2 < LIMITS_LOW[j, mid] and LIMITS_HIGH[j, mid] < np.pi / 2
    assert np.isinf(LIMITS_LOW[0]).all() and np.isinf(LIMITS_HIGH[0]).all()


def test_euler_round_trip_inside_limits():
    rng = np.random.default_rng(0)
    lo = np.where(np.isinf(LIMITS_LOW), -np.pi, LIMITS_LOW)
    hi = np.where(np.isinf(LIMITS_HIGH), np.pi, LIMITS_HIGH)
    eul = rng.uniform(lo, hi, size=(50, 24, 3))
    eul[:, 0] = rng.uniform(-1.2, 1.2, size=(50, 3))  # keep the root away from its gimbal lock
    back = pose_to_euler(euler_to_pose(eul))
    np.testing.assert_allclose(back, eul, atol=1e-9)
    # orders matter: the elbow composes y, z, x
    e = np.zeros((24, 3))
    e[J["left_elbow"]] = (0.3, -1.0, 0.2)
    Ry, Rz, Rx = (Rotation.from_euler(a, v).as_matrix() for a, v in (("y", -1.0), ("z", 0.2), ("x", 0.3)))
    np.testing.assert_allclose(euler_to_matrix(e)[J["left_elbow"]], Ry @ Rz @ Rx, atol=1e-12)


def test_clamp_and_within_limits():
    bad = single("left_knee", [-0.8, 0, 0]) + single("right_elbow", [0, -1.0, 0])  # hyperextension
    mask = within_limits(bad)
    assert not mask[J["left_knee"]] and not mask[J["right_elbow"]] and mask.sum() == 22
    fixed = clamp_to_limits(bad)
    assert within_limits(fixed).all()
    np.testing.assert_allclose(fixed[3 * J["left_knee"]:3 * J["left_knee"] + 3], [-0.1, 0, 0], atol=1e-9)
    # in-range poses and the root pass through unchanged; batches keep their shape and dtype
    one = single("left_hip", [-1.0, 0.2, 0.1]) + single("pelvis", [3.0, 0, 0])
    ok = np.stack([one] * 3).astype(np.float32)
    out = clamp_to_limits(ok)
    assert out.dtype == np.float32 and out.shape == ok.shape
    np.testing.assert_array_equal(out, ok)
    with pytest.raises(InputError, match="72"):
        within_limits(np.zeros((4, 69)))


# ----------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", MOTION_KINDS)
def test_every_kind_is_finite_smooth_within_limits(kind):
    for seed in range(4):
        clip = generate_motion(kind, num_frames=150, fps=FPS, rng=np.random.default_rng(seed))
        assert clip.pose.shape == (150, 72) and clip.trans.shape == (150, 3)
        assert clip.pose.dtype == np.float32 and clip.trans.dtype == np.float32
        assert clip.kind == kind and clip.fps == FPS
        assert np.isfinite(clip.pose).all() and np.isfinite(clip.trans).all()
        assert within_limits(clip.pose).all(), f"{kind} seed {seed} leaves the joint limits"
        assert frame_angles(clip.pose).max() < MAX_RAD_PER_S / FPS
        assert np.linalg.norm(np.diff(clip.trans, axis=0), axis=1).max() < MAX_M_PER_S / FPS
        assert np.abs(clip.trans[:, 1]).max() < 0.8  # stays near the floor


@pytest.mark.parametrize("kind", MOTION_KINDS)
def test_every_kind_is_deterministic_and_seed_dependent(kind):
    a = generate_motion(kind, num_frames=90, fps=FPS, rng=np.random.default_rng(7))
    b = generate_motion(kind, num_frames=90, fps=FPS, rng=np.random.default_rng(7))
    c = generate_motion(kind, num_frames=90, fps=FPS, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a.pose, b.pose)
    np.testing.assert_array_equal(a.trans, b.trans)
    assert np.abs(a.pose - c.pose).max() > 0.05


def test_smoothness_is_in_time_not_per_frame():
    """At double the frame rate the per-frame change halves: the motion is continuous in time."""
    def worst(kind: str, n: int, fps: float) -> float:
        clips = [generate_motion(kind, num_frames=n, fps=fps, rng=np.random.default_rng(s)) for s in range(3)]
        return max(frame_angles(c.pose).max() for c in clips)

    for kind in ("run", "kick", "punch"):
        slow, fast = worst(kind, 120, 30.0), worst(kind, 240, 60.0)
        assert fast < 0.6 * slow


def test_one_frame_clip_and_bad_arguments():
    clip = generate_motion("walk", num_frames=1, fps=FPS, rng=np.random.default_rng(0))
    assert clip.pose.shape == (1, 72) and np.isfinite(clip.pose).all()
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="kind"):
        generate_motion("moonwalk", num_frames=10, fps=FPS, rng=rng)
    with pytest.raises(InputError, match="num_frames"):
        generate_motion("walk", num_frames=0, fps=FPS, rng=rng)
    with pytest.raises(InputError, match="fps"):
        generate_motion("walk", num_frames=10, fps=0.0, rng=rng)
    with pytest.raises(InputError, match="speed"):
        generate_motion("walk", num_frames=10, fps=FPS, rng=rng, speed=10.0)


# ----------------------------------------------------------------------------- kind features


def hip_flexion(pose: np.ndarray, side: str) -> np.ndarray:
    return -pose_to_euler(pose)[:, J[f"{side}_hip"], 0]


def test_walk_gait_coupling():
    for seed in range(4):
        clip = generate_motion("walk", num_frames=240, fps=FPS, rng=np.random.default_rng(seed))
        eul = pose_to_euler(clip.pose)
        left, right = hip_flexion(clip.pose, "left"), hip_flexion(clip.pose, "right")
        assert np.corrcoef(left, right)[0, 1] < -0.8  # legs alternate
        arm_forward = -eul[:, J["left_shoulder"], 0]
        assert np.corrcoef(left, arm_forward)[0, 1] < -0.8  # the left arm swings with the right leg
        # the knee flexes while the hip swings forward (swing phase)
        assert np.corrcoef(eul[:, J["left_knee"], 0], np.gradient(left))[0, 1] > 0.4
        # the pelvis bobs twice per gait cycle
        f = np.fft.rfftfreq(len(left), 1 / FPS)
        f_gait = f[np.abs(np.fft.rfft(left - left.mean())).argmax()]
        y = clip.trans[:, 1]
        f_bob = f[np.abs(np.fft.rfft(y - y.mean())).argmax()]
        assert abs(f_bob - 2 * f_gait) <= 2 * f[1]
        assert 0.01 < np.ptp(y) < 0.15


def test_locomotion_moves_forward_at_plausible_speed():
    for kind, (vmin, vmax) in (("walk", (0.6, 2.2)), ("run", (1.5, 6.0))):
        for seed in range(6):
            rng = np.random.default_rng(seed)
            style = sample_style(rng)
            if style.trajectory == "in_place":
                continue
            clip = generate_motion(kind, num_frames=150, fps=FPS, rng=rng, style=style)
            vel = np.diff(clip.trans[:, [0, 2]], axis=0) * FPS
            facing = Rotation.from_rotvec(clip.pose[1:, :3].astype(np.float64)).apply([0, 0, 1])[:, [0, 2]]
            along = (vel * facing).sum(1)
            assert vmin < along.mean() < vmax
            assert (along > 0).mean() > 0.95


def test_in_place_walk_does_not_travel():
    rng = np.random.default_rng(3)
    style = sample_style(rng)
    style = type(style)(**{**style.__dict__, "trajectory": "in_place"})
    clip = generate_motion("walk", num_frames=120, fps=FPS, rng=rng, style=style)
    np.testing.assert_allclose(clip.trans[:, [0, 2]], 0.0, atol=1e-6)
    assert np.corrcoef(hip_flexion(clip.pose, "left"), hip_flexion(clip.pose, "right"))[0, 1] < -0.8


def test_jump_has_a_flight_phase_mid_clip():
    for seed in range(6):
        clip = generate_motion("jump", num_frames=120, fps=FPS, rng=np.random.default_rng(seed))
        y = clip.trans[:, 1]
        assert y[60] > y[0] + 0.08  # the central jump's apex is mid-clip
        assert y[60] >= y[40:80].max() - 0.02


@pytest.mark.parametrize("kind", ["squat", "sit"])
def test_squat_and_sit_lower_the_pelvis_with_hip_and_knee_flexion(kind):
    for seed in range(4):
        clip = generate_motion(kind, num_frames=300, fps=FPS, rng=np.random.default_rng(seed))
        eul = pose_to_euler(clip.pose)
        flex = hip_flexion(clip.pose, "left")
        knee = eul[:, J["left_knee"], 0]
        y = clip.trans[:, 1]
        low = flex.argmax()
        assert flex[low] > 0.7 and knee[low] > 0.7
        assert y[low] < y.max() - 0.15
        assert np.corrcoef(flex, y)[0, 1] < -0.8


def test_turn_rotates_the_root_about_y():
    for seed in range(4):
        clip = generate_motion("turn", num_frames=240, fps=FPS, rng=np.random.default_rng(seed))
        R = Rotation.from_rotvec(clip.pose[:, :3].astype(np.float64))
        up = R.apply([0, 1, 0])
        assert up[:, 1].min() > 0.95  # stays upright
        fwd = R.apply([0, 0, 1])
        yaw = np.unwrap(np.arctan2(fwd[:, 0], fwd[:, 2]))
        assert np.ptp(yaw) > 0.9 * np.pi / 2 * 0.7


def test_reach_and_wave_raise_the_hands():
    for kind in ("reach", "wave"):
        heights = []
        for seed in range(4):
            clip = generate_motion(kind, num_frames=240, fps=FPS, rng=np.random.default_rng(seed))
            p = fk(clip.pose.astype(np.float64))
            wrist = np.maximum(p[:, J["left_wrist"], 1], p[:, J["right_wrist"], 1]) - p[:, J["pelvis"], 1]
            heights.append(np.ptp(wrist))
        assert np.mean(heights) > 0.4


def test_random_motion_blends_and_respects_kinds():
    seen = set()
    for seed in range(30):
        clip = random_motion(np.random.default_rng(seed), num_frames=150, fps=FPS,
                             kinds=("walk", "squat", "wave"))
        parts = clip.kind.split("+")
        assert set(parts) <= {"walk", "squat", "wave"} and len(parts) in (1, 2)
        seen.add(len(parts))
        assert within_limits(clip.pose).all()
        assert frame_angles(clip.pose).max() < MAX_RAD_PER_S / FPS
        assert np.linalg.norm(np.diff(clip.trans, axis=0), axis=1).max() < MAX_M_PER_S / FPS
    assert seen == {1, 2}
    with pytest.raises(InputError, match="moonwalk"):
        random_motion(np.random.default_rng(0), num_frames=10, fps=FPS, kinds=("walk", "moonwalk"))


def test_sample_betas():
    b = sample_betas(np.random.default_rng(0), num=10, scale=2.0)
    assert b.shape == (10,) and b.dtype == np.float32 and np.abs(b).max() <= 6.0
    np.testing.assert_array_equal(b, sample_betas(np.random.default_rng(0), num=10, scale=2.0))
    many = sample_betas(np.random.default_rng(1), num=4000, scale=0.5)
    assert abs(many.std() - 0.5) < 0.03


def test_resample_clip_keeps_exact_frames_and_slerps_between():
    rng = np.random.default_rng(0)
    pose = rng.normal(0, 0.3, size=(9, 72)).astype(np.float32)
    trans = rng.normal(size=(9, 3)).astype(np.float32)
    clip = MotionClip(pose=pose, trans=trans, fps=120.0, kind="x")
    down = resample_clip(clip, 30.0)
    assert down.num_frames == 3 and down.fps == 30.0
    np.testing.assert_allclose(down.pose, pose[[0, 4, 8]], atol=1e-5)
    np.testing.assert_allclose(down.trans, trans[[0, 4, 8]], atol=1e-6)
    up = resample_clip(clip, 240.0)
    assert up.num_frames == 17
    mid = Rotation.from_rotvec(up.pose[1].reshape(24, 3).astype(np.float64))
    r0 = Rotation.from_rotvec(pose[0].reshape(24, 3).astype(np.float64))
    r1 = Rotation.from_rotvec(pose[1].reshape(24, 3).astype(np.float64))
    np.testing.assert_allclose((r0.inv() * mid).magnitude(), (mid.inv() * r1).magnitude(), atol=1e-5)
    np.testing.assert_allclose(up.trans[1], (trans[0] + trans[1]) / 2, atol=1e-6)
