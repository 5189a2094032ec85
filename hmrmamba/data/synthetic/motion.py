"""Procedural SMPL motion clips: walks, runs, jumps, squats, reaches, turns, sits, waves, ...

A clip is a :class:`MotionClip`: ``pose (T, 72)`` SMPL axis-angle (global orientation first) and
``trans (T, 3)`` metres in a y-up world. Poses follow SMPL's conventions (rest T-pose facing +z,
left on +x; see :mod:`hmrmamba.data.synthetic.joint_limits` for the signs of flexion per joint).

How a clip is made. Every kind writes per-joint Euler angles (by axis, in each joint's order of
:mod:`~hmrmamba.data.synthetic.joint_limits`) as smooth functions of time: periodic gaits from a gait phase
(left and right legs half a cycle apart, arms in counter phase, knee flexion in swing), and
event-based kinds (reach, wave, kick, ...) from key poses joined by C2 "smootherstep" blends. All
right-side angles are written in the left side's anatomical convention and mirrored at the end
(``(x, y, z) -> (x, -y, -z)``). A per-clip :class:`MotionStyle` adds per-joint offsets, slow
smooth noise, the root trajectory and the initial heading. The angles are clipped into the joint
limits, so every generated pose is within :func:`~hmrmamba.data.synthetic.joint_limits.within_limits`.

Vertical root motion comes from contact: forward kinematics on a generic 1.7 m skeleton
(:data:`REST_JOINTS`) finds the lowest heel/toe point and keeps it on the floor (plus a
ballistic flight for jumps). Locomotion integrates speed along a heading path; the other kinds
keep the stance feet planted in x/z. ``trans`` is therefore relative to the rest pose standing on
the floor: ``trans == 0`` is the rest pose, the floor is the rest pose's sole height.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.transform import Rotation

from hmrmamba.data.synthetic.joint_limits import clamp_euler, clamp_to_limits, euler_to_matrix
from hmrmamba.errors import InputError
from hmrmamba.skeleton import SMPL24

MOTION_KINDS = ("walk", "run", "jump", "squat", "reach", "turn", "sit", "wave", "kick", "stretch",
                "lunge", "punch", "jumping_jack", "idle")
TRAJECTORIES = ("straight", "curved", "wavy", "in_place")

#: Generic rest joints of a ~1.7 m SMPL-like body: (24, 3) metres, pelvis at the origin, y up,
#: facing +z, left on +x. Arms lie exactly along x, the legs nearly along -y.
REST_JOINTS = np.array([
    [0.00, 0.00, 0.00],    # pelvis
    [0.08, -0.08, 0.00],   # left_hip
    [-0.08, -0.08, 0.00],  # right_hip
    [0.00, 0.10, -0.02],   # spine1
    [0.09, -0.48, 0.00],   # left_knee
    [-0.09, -0.48, 0.00],  # right_knee
    [0.00, 0.23, -0.01],   # spine2
    [0.09, -0.88, -0.03],  # left_ankle
    [-0.09, -0.88, -0.03],  # right_ankle
    [0.00, 0.29, 0.00],    # spine3
    [0.10, -0.94, 0.10],   # left_foot (ball of the foot)
    [-0.10, -0.94, 0.10],  # right_foot
    [0.00, 0.50, -0.02],   # neck
    [0.07, 0.41, -0.01],   # left_collar
    [-0.07, 0.41, -0.01],  # right_collar
    [0.00, 0.58, 0.03],    # head
    [0.18, 0.44, -0.02],   # left_shoulder
    [-0.18, 0.44, -0.02],  # right_shoulder
    [0.44, 0.44, -0.02],   # left_elbow
    [-0.44, 0.44, -0.02],  # right_elbow
    [0.70, 0.44, -0.02],   # left_wrist
    [-0.70, 0.44, -0.02],  # right_wrist
    [0.78, 0.44, -0.02],   # left_hand
    [-0.78, 0.44, -0.02],  # right_hand
])
REST_JOINTS.flags.writeable = False
PARENTS = np.asarray(SMPL24.parents)
_HEEL = np.array([0.0, -0.06, -0.05])  # in the ankle's frame, from the ankle joint
_TOE = np.array([0.0, -0.01, 0.04])    # in the foot's frame, from the foot joint
_J = {n: i for i, n in enumerate(SMPL24.names)}
_MIRROR = np.ones((24, 3))
_MIRROR[[i for i, n in enumerate(SMPL24.names) if n.startswith("right_")], 1:] = -1.0
_LEG_LENGTH = 0.86  # hip to sole of REST_JOINTS, metres
_G = 9.81
#: Generated motions (sampled speed) stay below this joint angular speed, rad/s.
MAX_ANGULAR_SPEED = 25.0


@dataclass
class MotionClip:
    """A motion: pose (T, 72) float32 axis-angle, trans (T, 3) float32 metres (y up), fps.

    ``kind`` names the source (a motion kind, ``"a+b"`` for a blend, ``"bvh"``, ``"amass"``).
    ``betas`` and ``gender`` are set when the source has them (AMASS). ``pelvis_height``: the
    source subject's standing pelvis height above the soles in metres (BVH), so that a body of
    other proportions can scale ``trans`` to its own legs.
    """

    pose: np.ndarray
    trans: np.ndarray
    fps: float
    kind: str
    betas: np.ndarray | None = None
    gender: str | None = None
    pelvis_height: float | None = None

    @property
    def num_frames(self) -> int:
        return int(self.pose.shape[0])


@dataclass(frozen=True)
class MotionStyle:
    """Per-clip style. offsets: (24, 3) radians added to every frame (anatomical, left convention
    for right joints); jitter: std of slow smooth per-joint noise, radians; trajectory: one of
    :data:`TRAJECTORIES`; curvature: 1/m (constant for "curved", peak for "wavy"); heading:
    initial yaw about +y, radians; lead: +1 left side acts first, -1 right side."""

    offsets: np.ndarray
    jitter: float
    trajectory: str
    curvature: float
    heading: float
    lead: int


# ----------------------------------------------------------------------------- small helpers


def smootherstep(u: np.ndarray) -> np.ndarray:
    """u: (...) -> (...) C2 ramp 0 -> 1 on [0, 1] (clipped outside)."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (u * (6.0 * u - 15.0) + 10.0)


def _vm(phase: np.ndarray, mu: float, kappa: float) -> np.ndarray:
    """Periodic bump in [0, 1], peak 1 at ``mu``, width ~ 1/sqrt(kappa) radians."""
    return np.exp(kappa * (np.cos(phase - mu) - 1.0))


def _bump(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sigma) ** 2)


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, shape: tuple[int, ...], *,
                  fmin: float = 0.05, fmax: float = 0.6, n: int = 3) -> np.ndarray:
    """Unit-std sum of ``n`` slow sinusoids per channel: (T, *shape)."""
    f = rng.uniform(fmin, fmax, size=(n,) + shape)
    ph = rng.uniform(0, 2 * np.pi, size=(n,) + shape)
    out = np.zeros((len(t),) + shape)
    for k in range(n):
        out += np.sin(2 * np.pi * f[k][None] * t.reshape((-1,) + (1,) * len(shape)) + ph[k][None])
    return out * np.sqrt(2.0 / n)


def _interp_keys(times: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Key values (K, D) at increasing times (K,) -> (T, D), C2 smootherstep between keys."""
    if len(times) == 1:
        return np.repeat(values[:1], len(t), axis=0)
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    u = smootherstep((t - times[i]) / (times[i + 1] - times[i]))
    return values[i] + (values[i + 1] - values[i]) * u[:, None]


def forward_kinematics(local_rot: np.ndarray, offsets: np.ndarray, parents) -> tuple[np.ndarray, np.ndarray]:
    """local_rot: (T, J, 3, 3); offsets: (J, 3) or (T, J, 3) bone offsets from the parent (the root's
    is its position); parents: (J,) with parents before children -> positions (T, J, 3), global
    rotations (T, J, 3, 3)."""
    T, J = local_rot.shape[:2]
    offsets = np.broadcast_to(offsets, (T, J, 3))
    pos = np.empty((T, J, 3))
    glob = np.empty((T, J, 3, 3))
    for j in range(J):
        p = int(parents[j])
        if p < 0:
            glob[:, j] = local_rot[:, j]
            pos[:, j] = offsets[:, j]
        else:
            glob[:, j] = glob[:, p] @ local_rot[:, j]
            pos[:, j] = pos[:, p] + np.einsum("tab,tb->ta", glob[:, p], offsets[:, j])
    return pos, glob


def rest_offsets(rest_joints: np.ndarray = REST_JOINTS) -> np.ndarray:
    """rest_joints: (24, 3) -> (24, 3) offsets from each joint's parent (root: its position)."""
    off = np.array(rest_joints, dtype=np.float64)
    off[1:] = off[1:] - off[PARENTS[1:]]
    return off


def contact_points(local_rot: np.ndarray) -> np.ndarray:
    """local_rot: (T, 24, 3, 3) root at the origin -> (T, 4, 3) left heel, left toe, right heel,
    right toe on the generic skeleton, metres."""
    pos, glob = forward_kinematics(local_rot, rest_offsets(), PARENTS)
    pts = []
    for ankle, foot in ((_J["left_ankle"], _J["left_foot"]), (_J["right_ankle"], _J["right_foot"])):
        pts.append(pos[:, ankle] + glob[:, ankle] @ _HEEL)
        pts.append(pos[:, foot] + glob[:, foot] @ _TOE)
    return np.stack(pts, axis=1)


_SOFTMIN_TAU = 0.012  # metres: the floor contact is a smooth minimum over heel/toe heights


def _soft_lowest(y: np.ndarray) -> np.ndarray:
    """y: (T, K) heights -> (T,) smooth minimum (within tau * log K of the true minimum)."""
    m = y.min(axis=1, keepdims=True)
    return m[:, 0] - _SOFTMIN_TAU * np.log(np.exp(-(y - m) / _SOFTMIN_TAU).sum(axis=1))


_FLOOR_Y = float(_soft_lowest(contact_points(np.broadcast_to(np.eye(3), (1, 24, 3, 3)))[..., 1])[0])


def _gaussian_smooth(x: np.ndarray, *, sigma: float) -> np.ndarray:
    """x: (T, ...) -> (T, ...) Gaussian-filtered along time (sigma in frames, edges replicated)."""
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.concatenate([np.repeat(x[:1], r, 0), x, np.repeat(x[-1:], r, 0)])
    flat = pad.reshape(len(pad), -1)
    out = np.stack([np.convolve(flat[:, i], k, mode="valid") for i in range(flat.shape[1])], axis=1)
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------- style and betas


def sample_betas(rng: np.random.Generator, num: int = 10, scale: float = 1.0) -> np.ndarray:
    """-> (num,) float32 SMPL shape coefficients ~ N(0, scale^2), clipped to +-3 scale."""
    if num < 1 or scale < 0:
        raise InputError(f"num={num}, scale={scale}", field="betas", expected="num >= 1, scale >= 0")
    return np.clip(rng.normal(0.0, scale, size=num), -3 * scale, 3 * scale).astype(np.float32)


def sample_style(rng: np.random.Generator) -> MotionStyle:
    """Random per-clip style: joint offsets, noise level, root trajectory, heading, lead side."""
    off = np.zeros((24, 3))
    sym = {  # name -> per-axis std, shared by left and right with a small asymmetric part
        "spine1": (0.05, 0.04, 0.03), "spine2": (0.04, 0.03, 0.03), "spine3": (0.04, 0.03, 0.03),
        "neck": (0.08, 0.05, 0.04), "head": (0.08, 0.05, 0.04), "collar": (0.04, 0.05, 0.06),
        "shoulder": (0.06, 0.1, 0.08), "wrist": (0.15, 0.1, 0.15), "hand": (0.1, 0.1, 0.15),
        "hip": (0.03, 0.06, 0.04), "ankle": (0.04, 0.06, 0.04), "foot": (0.05, 0.0, 0.0),
    }
    for name, std in sym.items():
        shared = rng.normal(0, std)
        names = [name] if name in _J else [f"left_{name}", f"right_{name}"]
        for n in names:
            off[_J[n]] = shared + rng.normal(0, 0.3 * np.asarray(std))
    elbow = -abs(rng.normal(0, 0.15))
    knee = abs(rng.normal(0, 0.04))
    for side in ("left", "right"):
        off[_J[f"{side}_elbow"], 1] += elbow - abs(rng.normal(0, 0.04))
        off[_J[f"{side}_knee"], 0] += knee
    traj = str(rng.choice(TRAJECTORIES, p=[0.35, 0.3, 0.2, 0.15]))
    return MotionStyle(offsets=off, jitter=float(rng.uniform(0.01, 0.04)), trajectory=traj,
                       curvature=float(rng.uniform(0.1, 0.45) * rng.choice([-1, 1])),
                       heading=float(rng.uniform(-np.pi, np.pi)), lead=int(rng.choice([-1, 1])))


# ----------------------------------------------------------------------------- the clip builder

_ARM_DOWN = -1.35  # left shoulder z of relaxed hanging arms
_BASE = np.zeros((24, 3))  # anatomical standing pose: arms hanging, slightly bent elbows
for _s in ("left", "right"):
    _BASE[_J[f"{_s}_shoulder"]] = (0.0, 0.0, _ARM_DOWN)
    _BASE[_J[f"{_s}_elbow"]] = (0.0, -0.2, 0.0)
    _BASE[_J[f"{_s}_knee"]] = (0.04, 0.0, 0.0)
    _BASE[_J[f"{_s}_hand"]] = (0.0, 0.0, -0.25)
    _BASE[_J[f"{_s}_collar"]] = (0.0, 0.0, -0.05)


class _Builder:
    """Accumulates anatomical Euler deltas, root angles, lift and the path of one clip."""

    def __init__(self, num_frames: int, fps: float, rng: np.random.Generator, speed: float,
                 amp: float, style: MotionStyle):
        self.T, self.fps, self.rng, self.speed, self.amp, self.style = num_frames, fps, rng, speed, amp, style
        self.t = np.arange(num_frames) / fps
        self.duration = (num_frames - 1) / fps
        self.A = np.zeros((num_frames, 24, 3))    # anatomical Euler deltas (by axis)
        self.air = np.zeros((num_frames, 24, 3))  # deltas ignored when finding the floor contact
        self.pitch = np.zeros(num_frames)         # root pitch (+ leans forward), radians
        self.yaw = np.zeros(num_frames)           # root yaw on top of the heading
        self.roll = np.zeros(num_frames)          # root roll (+ lowers the left side)
        self.heading = np.full(num_frames, style.heading)
        self.lift = np.zeros(num_frames)          # extra height (flight), metres
        self.path: np.ndarray | None = None       # (T, 2) x/z for locomotion; None: planted feet
        self.anchor = np.zeros((num_frames, 2))   # planted kinds: where the stance feet go (x, z)
        self.contact_smooth = 0.04                # seconds of temporal smoothing of the floor height

    def add(self, joint: str, *, x=0.0, y=0.0, z=0.0, air: bool = False) -> None:
        target = self.air if air else self.A
        target[:, _J[joint]] += np.stack(np.broadcast_arrays(x, y, z, np.zeros(self.T))[:3], axis=-1)

    def leg(self, side: str, *, thigh=0.0, shin=0.0, foot=0.0) -> None:
        """Flat-foot leg from global segment angles: thigh forward, shin backward (knee ahead of
        the ankle), foot toes-down, all radians, given the current root pitch."""
        self.add(f"{side}_hip", x=-(thigh + self.pitch))
        self.add(f"{side}_knee", x=thigh + shin)
        self.add(f"{side}_ankle", x=foot - shin)

    def phase(self, f0: float, *, drift: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
        """Cycle phase (radians) and frequency (Hz) with slow tempo drift around f0."""
        f = f0 * (1.0 + drift * _smooth_noise(self.rng, self.t, (), fmax=0.3))
        cycles = np.concatenate([[0.0], np.cumsum(f[:-1]) / self.fps])
        ph = self.rng.uniform(0, 2 * np.pi) + 2 * np.pi * cycles
        return ph, f

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def integrate_path(self, v: np.ndarray) -> None:
        """Move along the style's trajectory at speed v (T,) m/s; the heading follows the path."""
        st = self.style
        if st.trajectory == "in_place":
            self.path = np.zeros((self.T, 2))
            return
        ds = v / self.fps
        s = np.concatenate([[0.0], np.cumsum(ds[:-1])])
        if st.trajectory == "curved":
            kappa = np.full(self.T, st.curvature)
        elif st.trajectory == "wavy":
            kappa = st.curvature * np.sin(2 * np.pi * s / self.u(4.0, 10.0) + self.u(0, 2 * np.pi))
        else:
            kappa = np.zeros(self.T)
        self.heading = st.heading + np.concatenate([[0.0], np.cumsum((kappa * ds)[:-1])])
        step = ds[:, None] * np.stack([np.sin(self.heading), np.cos(self.heading)], axis=-1)
        self.path = np.concatenate([np.zeros((1, 2)), np.cumsum(step[:-1], axis=0)])

    def play_keys(self, events: Callable[[], list[tuple[float, _Key]]], *, lead_in: float,
                  start: _Key | None = None) -> np.ndarray:
        """Chain events (each a list of (duration, key pose) steps, usually ending where they
        began) from ``start`` (neutral by default) at a random time up to ``lead_in`` seconds
        before the clip until its end. Applies the interpolated keys and returns the interpolated
        scalars (T, 6): flat-leg thigh/shin left, thigh/shin right, and two auxiliary weights."""
        times, keys = [-self.u(0.0, lead_in)], [start or _Key()]
        while times[-1] < self.duration:
            for dt, key in events():
                times.append(times[-1] + max(dt, 1e-3))
                keys.append(key)
        vals = _interp_keys(np.asarray(times), np.stack([k.vec() for k in keys]), self.t)
        self.A += vals[:, :72].reshape(self.T, 24, 3)
        self.pitch += vals[:, 72]
        self.yaw += vals[:, 73]
        self.roll += vals[:, 74]
        return vals[:, 75:]

    def flat_legs(self, legs: np.ndarray) -> None:
        """Apply interpolated flat-foot leg scalars (T, 4) with the final root pitch."""
        self.leg("left", thigh=legs[:, 0], shin=legs[:, 1])
        self.leg("right", thigh=legs[:, 2], shin=legs[:, 3])


class _Key:
    """A key pose: anatomical Euler deltas (24, 3), root (pitch, yaw, roll), flat-leg scalars
    (left thigh, left shin, right thigh, right shin) and two auxiliary weights (left, right)."""

    def __init__(self):
        self.A = np.zeros((24, 3))
        self.root = np.zeros(3)
        self.legs = np.zeros(4)
        self.aux = np.zeros(2)

    def set(self, joint: str, x=None, y=None, z=None) -> _Key:
        for k, v in enumerate((x, y, z)):
            if v is not None:
                self.A[_J[joint], k] = v
        return self

    def vec(self) -> np.ndarray:
        return np.concatenate([self.A.ravel(), self.root, self.legs, self.aux])


def _side(lead: int) -> tuple[str, str]:
    return ("left", "right") if lead > 0 else ("right", "left")


# ----------------------------------------------------------------------------- the kinds


def _gait(b: _Builder, *, run: bool) -> None:
    a, u = b.amp, b.u
    f0 = (u(1.15, 1.4) if run else u(0.8, 1.0)) * b.speed  # gait cycles (two steps) per second
    ph, f = b.phase(f0)
    A_h = a * (u(0.5, 0.62) if run else u(0.3, 0.42))
    h0 = 0.3 if run else 0.12
    k_swing = min(a * (u(1.4, 1.8) if run else u(0.9, 1.15)), 1.9)
    k_stance = u(0.35, 0.6) if run else u(0.12, 0.3)
    lean = u(0.08, 0.22) if run else u(-0.02, 0.08)
    b.pitch += lean + 0.02 * np.sin(2 * ph)
    rot, tilt = a * (u(0.08, 0.14) if run else u(0.05, 0.1)), u(0.03, 0.06)
    b.yaw += -rot * np.sin(ph)
    b.roll += -tilt * np.cos(ph)
    for side, off in (("left", 0.0), ("right", np.pi)):
        p = ph + off
        b.leg(side, thigh=h0 + A_h * np.sin(p))
        b.add(f"{side}_knee", x=k_swing * _vm(p, -0.35, 2.5) + k_stance * _vm(p, np.pi / 2 + 0.6, 4.0))
        b.add(f"{side}_ankle", x=0.35 * a * _vm(p, -np.pi / 2 - 0.3, 5.0) - 0.15 * _vm(p, 0.3, 2.0))
        b.add(f"{side}_foot", x=-0.35 * _vm(p, -np.pi / 2 - 0.2, 6.0))
        b.add(f"{side}_hip", z=0.05 * _vm(p, 0.0, 2.0))
        # the arm on this side swings with the opposite leg (x < 0 is forward)
        arm = a * (u(0.45, 0.7) if run else u(0.25, 0.45))
        b.add(f"{side}_shoulder", x=arm * np.sin(p), z=-0.12 if run else 0.0)
        b.add(f"{side}_elbow", y=-(1.3 if run else 0.05) - (0.35 if run else 0.2) * (1 - np.sin(p)) / 2)
    for name, w in (("spine2", 0.4), ("spine3", 0.5)):
        b.add(name, y=w * rot * np.sin(ph))
    b.add("spine1", x=0.5 * lean)
    b.add("neck", x=-0.6 * lean)
    if run:  # flight phases: the floor height is only a smooth guide, plus a bounce
        b.lift += a * u(0.03, 0.08) * (1 - np.cos(2 * ph)) / 2
        b.contact_smooth = 0.1
    stride = 2 * _LEG_LENGTH * (np.sin(h0 + A_h) + np.sin(A_h - h0)) * (u(1.2, 1.5) if run else 1.0)
    b.integrate_path(stride * f)


def _jump(b: _Builder) -> None:
    a, u = b.amp, b.u
    height = a * u(0.15, 0.4)
    flight = 2 * np.sqrt(2 * height / _G)
    period = max(u(1.5, 2.3) / b.speed, flight + 1.1)
    crouch, tuck = a * u(0.6, 1.0), u(0.2, 0.8)
    dist = 0.0 if b.style.trajectory == "in_place" else a * u(0.0, 0.6)
    spin = float(b.rng.choice([0.0, 0.0, 0.0, np.pi / 2, -np.pi / 2]))
    mid = b.duration / 2
    ks = range(-int(mid / period) - 1, int(mid / period) + 2)
    # the central jump always; the others only when the whole jump fits in the clip
    apexes = [mid + k * period for k in ks if k == 0 or (
        mid + k * period - flight / 2 - 0.6 >= 0 and mid + k * period + flight / 2 + 0.5 <= b.duration)]
    t = b.t
    c = np.zeros(b.T)  # crouch depth over time
    arms_back, arms_up, plantar, tuckw = (np.zeros(b.T) for _ in range(4))
    for ap in apexes:
        t0, t1 = ap - flight / 2, ap + flight / 2
        c += crouch * (_bump(t, t0 - 0.25 / b.speed, 0.15 / b.speed) + 0.7 * _bump(t, t1 + 0.15, 0.12))
        arms_back += _bump(t, t0 - 0.25 / b.speed, 0.12 / b.speed)
        arms_up += _bump(t, t0 + 0.05, 0.16)
        plantar += _bump(t, t0, 0.08) + 0.6 * _bump(t, ap, flight / 3)
        tuckw += _bump(t, ap, flight / 4)
        inside = np.abs(t - ap) < flight / 2
        b.lift[inside] += height - 0.5 * _G * (t[inside] - ap) ** 2
        ramp = smootherstep((t - t0) / flight)
        h = b.heading[int(np.clip(round(t0 * b.fps), 0, b.T - 1))]
        b.anchor += dist * ramp[:, None] * np.array([np.sin(h), np.cos(h)])
        b.heading = b.heading + spin * ramp
    b.pitch += 0.45 * c
    for side in ("left", "right"):
        b.leg(side, thigh=1.4 * c, shin=0.5 * c, foot=0.55 * plantar)
        b.add(f"{side}_foot", x=-0.3 * plantar)
        b.add(f"{side}_hip", x=-0.6 * tuck * tuckw, air=True)
        b.add(f"{side}_knee", x=1.0 * tuck * tuckw, air=True)
        b.add(f"{side}_shoulder", x=0.6 * arms_back - a * u(1.6, 2.4) * arms_up, z=-0.1 * arms_back)
        b.add(f"{side}_elbow", y=-0.4 * arms_up)
    b.add("spine1", x=0.2 * c)
    b.add("neck", x=-0.3 * c)


def _squat(b: _Builder) -> None:
    a, u = b.amp, b.u
    period = u(2.0, 3.5) / b.speed
    s = (1 - np.cos(2 * np.pi * b.t / period + u(0, 2 * np.pi))) / 2
    s = s ** u(1.0, 1.6)  # longer time near the top
    d = min(a * u(0.55, 1.0), 1.1)
    b.pitch += 0.45 * d * s
    for side in ("left", "right"):
        b.leg(side, thigh=1.35 * d * s, shin=0.55 * d * s)
    b.add("spine1", x=0.12 * d * s)
    b.add("neck", x=-0.35 * d * s)
    arms = int(b.rng.integers(3))
    for side in ("left", "right"):
        if arms == 0:  # arms forward for balance
            b.add(f"{side}_shoulder", x=-1.4 * d * s)
        elif arms == 1:  # hands at the chest
            b.add(f"{side}_shoulder", x=-0.6, z=0.2)
            b.add(f"{side}_elbow", y=-1.8)


def _reach_event(b: _Builder) -> list[tuple[float, _Key]]:
    a, u, sp = b.amp, b.u, b.speed
    key = _Key()
    sides = [str(b.rng.choice(["left", "right"]))] if b.rng.random() < 0.75 else ["left", "right"]
    target = str(b.rng.choice(["forward", "up", "side", "down", "high_forward"]))
    for side in sides:
        sh, el = f"{side}_shoulder", f"{side}_elbow"
        if target == "forward":
            key.set(sh, x=-a * u(1.2, 1.6), y=u(-0.2, 0.2))
        elif target == "high_forward":
            key.set(sh, x=-min(a * u(2.0, 2.6), 2.9))
        elif target == "up":
            key.set(sh, z=min(a * u(2.2, 2.7), 2.9), y=u(-0.3, 0.1))
        elif target == "side":
            key.set(sh, z=a * u(1.0, 1.5), y=u(-0.5, 0.1))
        else:  # down: bend over and reach low in front
            key.set(sh, x=-a * u(0.6, 1.1))
        key.set(el, y=u(0.0, 0.15))
    if target == "down":
        key.root[0] = a * u(0.35, 0.7)
        key.set("spine1", x=u(0.2, 0.45)).set("spine2", x=u(0.1, 0.3)).set("neck", x=-0.2)
        key.legs[:] = a * np.array([u(0.3, 0.8), u(0.2, 0.5), u(0.3, 0.8), u(0.2, 0.5)])
    elif target in ("up", "high_forward"):
        key.set("neck", x=-0.3).set("spine2", x=-0.1)
        for s in ("left", "right"):
            key.set(f"{s}_ankle", x=u(0.0, 0.5))  # rise on the toes
    if len(sides) == 1:  # turn the trunk toward the reaching arm
        sgn = 1.0 if sides[0] == "left" else -1.0
        for name in ("spine1", "spine2", "spine3"):
            key.A[_J[name], 1] += -sgn * u(0.05, 0.15)
        if target == "side":
            key.set("spine2", z=-sgn * u(0.05, 0.2)).set("neck", y=sgn * u(0.2, 0.6))
    return [(u(0.6, 1.1) / sp, key), (u(0.2, 0.8) / sp, key), (u(0.5, 1.0) / sp, _Key()),
            (u(0.0, 0.6) / sp, _Key())]


def _reach(b: _Builder) -> None:
    legs = b.play_keys(lambda: _reach_event(b), lead_in=2.0)
    b.flat_legs(legs)


def _wave_event(b: _Builder) -> list[tuple[float, _Key]]:
    u, sp = b.u, b.speed
    both = b.rng.random() < 0.2
    lead = b.style.lead if b.rng.random() < 0.7 else -b.style.lead
    sides = ["left", "right"] if both else [_side(lead)[0]]
    key = _Key()
    for side in sides:
        # twist the raised upper arm so that elbow flexion lifts the forearm up
        key.set(f"{side}_shoulder", x=-u(1.3, 1.57), y=-u(0.1, 0.4), z=-_ARM_DOWN + u(-0.15, 0.15))
        key.set(f"{side}_elbow", y=-u(1.3, 1.9))
        key.set(f"{side}_wrist", z=u(-0.2, 0.3))
    key.set("neck", y=u(-0.3, 0.3))
    key.aux[:] = [s in sides for s in ("left", "right")]
    hold = u(1.0, 3.0) / sp
    return [(u(0.5, 0.8) / sp, key), (hold, key), (u(0.5, 0.8) / sp, _Key()), (u(0.3, 1.5) / sp, _Key())]


def _wave(b: _Builder) -> None:
    keys = b.play_keys(lambda: _wave_event(b), lead_in=2.5)
    b.flat_legs(keys)
    f = b.u(1.5, 2.8) * min(b.speed, 1.2)
    osc = np.sin(2 * np.pi * f * b.t)
    for k, side in enumerate(("left", "right")):
        raised = keys[:, 4 + k]  # 0 at rest, 1 while this arm is up
        b.add(f"{side}_elbow", y=0.3 * b.amp * osc * raised)
        b.add(f"{side}_shoulder", x=0.15 * osc * raised)


def _kick_event(b: _Builder, state: dict) -> list[tuple[float, _Key]]:
    a, u, sp = b.amp, b.u, b.speed
    side = state["side"]
    state["side"] = ("right" if side == "left" else "left") if b.rng.random() < 0.6 else side
    other = "right" if side == "left" else "left"
    kind = str(b.rng.choice(["front", "front", "side", "back"]))
    guard = _Key()
    for s in ("left", "right"):
        guard.set(f"{s}_shoulder", x=-0.6, z=0.1).set(f"{s}_elbow", y=-1.9)
    chamber, extend = _Key(), _Key()
    for k in (chamber, extend):
        k.A[:] = guard.A
        k.legs[[0, 1] if other == "left" else [2, 3]] = (0.15, 0.15)
    hip, knee, ankle = f"{side}_hip", f"{side}_knee", f"{side}_ankle"
    if kind == "front":
        chamber.set(hip, x=-a * u(0.9, 1.2)).set(knee, x=u(1.5, 1.9))
        extend.set(hip, x=-a * u(1.2, 1.6)).set(knee, x=u(0.05, 0.3)).set(ankle, x=u(0.3, 0.7))
        extend.root[0] = -u(0.05, 0.2)
    elif kind == "side":
        sgn = 1.0 if side == "left" else -1.0
        chamber.set(hip, x=-0.8, z=a * u(0.3, 0.6)).set(knee, x=u(1.5, 1.9))
        extend.set(hip, x=-0.3, z=a * u(0.8, 1.2), y=-0.3).set(knee, x=u(0.05, 0.3))
        extend.root[2] = sgn * u(0.15, 0.35)
    else:  # back kick
        chamber.set(hip, x=-0.6).set(knee, x=u(1.6, 2.0))
        extend.set(hip, x=a * u(0.4, 0.7)).set(knee, x=u(0.1, 0.4))
        extend.root[0] = u(0.2, 0.45)
    rest = _Key()
    return [(u(0.3, 0.5) / sp, guard), (u(0.25, 0.35) / sp, chamber), (u(0.3, 0.4) / sp, extend),
            (u(0.1, 0.3) / sp, extend), (u(0.3, 0.4) / sp, chamber), (u(0.3, 0.4) / sp, guard),
            (u(0.2, 0.6) / sp, guard if b.rng.random() < 0.5 else rest)]


def _kick(b: _Builder) -> None:
    state = {"side": _side(b.style.lead)[0]}
    legs = b.play_keys(lambda: _kick_event(b, state), lead_in=1.5)
    b.flat_legs(legs)


def _stretch_event(b: _Builder) -> list[tuple[float, _Key]]:
    a, u, sp = b.amp, b.u, b.speed
    key = _Key()
    kind = str(b.rng.choice(["overhead", "side_bend", "fold", "twist", "quad", "arm_across"]))
    sgn = float(b.rng.choice([-1.0, 1.0]))
    if kind in ("overhead", "side_bend"):
        for s in ("left", "right"):
            key.set(f"{s}_shoulder", z=min(a * u(2.4, 2.75), 2.9)).set(f"{s}_elbow", y=0.15)
        key.set("spine2", x=-0.1).set("neck", x=-0.2)
        if kind == "side_bend":
            for name in ("spine1", "spine2", "spine3"):
                key.set(name, z=sgn * a * u(0.15, 0.3))
    elif kind == "fold":
        p = a * u(0.6, 1.1)
        key.root[0] = p
        key.set("spine1", x=u(0.2, 0.5)).set("spine2", x=u(0.1, 0.4)).set("spine3", x=u(0.1, 0.3))
        for s in ("left", "right"):
            key.set(f"{s}_shoulder", x=-min(p + 0.5, 1.6))
        key.legs[:] = (0.0, 0.0, 0.0, 0.0)
    elif kind == "twist":
        for name in ("spine1", "spine2", "spine3"):
            key.set(name, y=sgn * a * u(0.15, 0.3))
        key.set("neck", y=sgn * u(0.1, 0.4))
        for s in ("left", "right"):
            key.set(f"{s}_shoulder", z=u(1.0, 1.25)).set(f"{s}_elbow", y=-u(0.2, 0.8))
    elif kind == "quad":
        side = "left" if sgn > 0 else "right"
        key.set(f"{side}_knee", x=a * u(1.9, 2.4)).set(f"{side}_hip", x=u(0.0, 0.3))
        key.set(f"{side}_shoulder", x=u(0.5, 0.9)).set(f"{side}_elbow", y=-0.2)
    else:  # arm across the chest, the other arm pressing
        side, other = ("left", "right") if sgn > 0 else ("right", "left")
        key.set(f"{side}_shoulder", z=-_ARM_DOWN, y=-u(0.9, 1.3)).set(f"{side}_elbow", y=0.1)
        key.set(f"{other}_shoulder", x=-u(0.9, 1.3), y=-0.3).set(f"{other}_elbow", y=-u(1.2, 1.6))
        key.set("spine3", y=-0.2 * sgn)
    return [(u(1.0, 2.0) / sp, key), (u(1.0, 2.5) / sp, key), (u(1.0, 1.6) / sp, _Key()),
            (u(0.3, 1.0) / sp, _Key())]


def _stretch(b: _Builder) -> None:
    legs = b.play_keys(lambda: _stretch_event(b), lead_in=3.0)
    b.flat_legs(legs)


def _sit_event(b: _Builder) -> list[tuple[float, _Key]]:
    a, u, sp = b.amp, b.u, b.speed
    sit, lean = _Key(), _Key()
    thigh, shin, back = u(1.35, 1.55), u(-0.25, 0.3), u(-0.15, 0.2)
    sit.root[0] = back
    sit.legs[:] = (thigh, shin, thigh + u(-0.1, 0.1), shin + u(-0.15, 0.15))
    for s in ("left", "right"):
        sit.set(f"{s}_shoulder", x=-u(0.3, 0.7)).set(f"{s}_elbow", y=-u(0.6, 1.2))
    sit.set("spine1", x=u(-0.1, 0.2)).set("neck", x=u(-0.1, 0.2))
    lean.A[:] = sit.A
    lean.legs[:] = sit.legs * 0.6
    lean.root[0] = a * u(0.5, 0.8)
    lean.set("neck", x=-0.3)
    return [(u(0.5, 0.9) / sp, lean), (u(0.4, 0.7) / sp, sit), (u(1.0, 3.0) / sp, sit),
            (u(0.5, 0.8) / sp, lean), (u(0.5, 0.9) / sp, _Key()), (u(0.5, 2.0) / sp, _Key())]


def _sit(b: _Builder) -> None:
    legs = b.play_keys(lambda: _sit_event(b), lead_in=4.0)
    b.flat_legs(legs)


def _lunge_event(b: _Builder, state: dict) -> list[tuple[float, _Key]]:
    a, u, sp = b.amp, b.u, b.speed
    front = state["side"]
    state["side"] = "right" if front == "left" else "left"
    fi, bi = ([0, 1], [2, 3]) if front == "left" else ([2, 3], [0, 1])
    split, low = _Key(), _Key()
    split.legs[fi] = (0.4, -0.1)
    split.legs[bi] = (-0.35, 0.1)
    split.set(f"{state['side']}_foot", x=-0.3)
    d = min(a * u(0.7, 1.0), 1.1)
    low.legs[fi] = (0.4 + 0.9 * d, -0.1 + 0.45 * d)
    low.legs[bi] = (-0.35 + 0.3 * d, 0.1 + 1.45 * d)
    low.set(f"{state['side']}_foot", x=-0.6)
    low.set(f"{state['side']}_ankle", x=0.5 * d)
    for k in (split, low):
        for s in ("left", "right"):
            k.set(f"{s}_shoulder", z=0.1, x=-0.2).set(f"{s}_elbow", y=-1.4)
    return [(u(0.5, 0.8) / sp, split), (u(0.7, 1.0) / sp, low), (u(0.1, 0.4) / sp, low),
            (u(0.7, 1.0) / sp, split), (u(0.5, 0.8) / sp, _Key()), (u(0.2, 0.8) / sp, _Key())]


def _lunge(b: _Builder) -> None:
    state = {"side": _side(b.style.lead)[0]}
    legs = b.play_keys(lambda: _lunge_event(b, state), lead_in=2.0)
    b.flat_legs(legs)


def _guard_key() -> _Key:
    k = _Key()
    for s in ("left", "right"):
        k.set(f"{s}_shoulder", x=-0.7, z=0.05).set(f"{s}_elbow", y=-1.9).set(f"{s}_wrist", x=-0.5)
    k.legs[:] = (0.2, 0.2, 0.2, 0.2)
    k.set("neck", x=0.1)
    return k


def _punch_event(b: _Builder) -> list[tuple[float, _Key]]:
    a, u, sp = b.amp, b.u, b.speed
    side = str(b.rng.choice(["left", "right"]))
    sgn = 1.0 if side == "left" else -1.0
    guard, hit = _guard_key(), _guard_key()
    high = u(-0.2, 0.25)
    hit.set(f"{side}_shoulder", x=-a * u(1.3, 1.6) - high, z=u(0.0, 0.2))
    hit.set(f"{side}_elbow", y=-u(0.05, 0.3))
    hit.set(f"{side}_wrist", x=-1.0)
    for name in ("spine1", "spine2", "spine3"):
        hit.A[_J[name], 1] = -sgn * u(0.08, 0.15)
    hit.root[1] = -sgn * u(0.05, 0.2)
    return [(u(0.28, 0.4) / sp, hit), (u(0.05, 0.15) / sp, hit), (u(0.3, 0.45) / sp, guard),
            (u(0.1, 0.8) / sp, guard)]


def _punch(b: _Builder) -> None:
    legs = b.play_keys(lambda: _punch_event(b), lead_in=1.0, start=_guard_key())
    b.flat_legs(legs)
    bounce = (1 - np.cos(2 * np.pi * b.u(1.2, 2.0) * b.t)) / 2
    for side in ("left", "right"):
        b.leg(side, thigh=0.1 * bounce, shin=0.1 * bounce)


def _jumping_jack(b: _Builder) -> None:
    a, u = b.amp, b.u
    ph, _ = b.phase(u(0.8, 1.2) * b.speed, drift=0.04)
    s = (1 - np.cos(ph)) / 2  # 0 closed, 1 open
    arms = min((0.7 + 0.3 * a) * u(2.4, 2.9), 2.95)
    for side in ("left", "right"):
        b.add(f"{side}_shoulder", z=arms * s)
        b.add(f"{side}_elbow", y=0.15 * s)
        b.add(f"{side}_hip", z=0.3 * a * s)
        b.add(f"{side}_ankle", z=-0.3 * a * s)
        b.add(f"{side}_knee", x=0.25 * (1 - np.sin(ph) ** 2))
    b.lift += a * u(0.04, 0.1) * np.sin(ph) ** 2


def _turn(b: _Builder) -> None:
    a, u, sp = b.amp, b.u, b.speed
    times, yaws = [-u(0.0, 2.0)], [0.0]
    while times[-1] < b.duration:
        delta = float(b.rng.choice([-1.0, 1.0])) * a * u(np.pi / 2, 1.5 * np.pi)
        omega = u(1.2, 2.4) * sp
        times.append(times[-1] + 1.875 * abs(delta) / omega)  # smootherstep peak rate = omega
        yaws.append(yaws[-1] + delta)
        times.append(times[-1] + u(0.3, 1.5) / sp)  # pause
        yaws.append(yaws[-1])
    yaw = _interp_keys(np.asarray(times), np.asarray(yaws)[:, None], b.t)[:, 0]
    b.heading = b.heading + yaw
    rate = np.gradient(yaw, b.t) if b.T > 1 else np.zeros(1)
    env = np.clip(np.abs(rate) / 1.0, 0, 1)
    sgn = np.sign(rate)
    ph, _ = b.phase(u(0.9, 1.2) * sp)
    for side, off in (("left", 0.0), ("right", np.pi)):
        p = ph + off
        b.leg(side, thigh=0.25 * env * np.sin(p))
        b.add(f"{side}_knee", x=0.6 * env * _vm(p, -0.35, 2.5))
        b.add(f"{side}_hip", y=0.15 * env * sgn * np.sin(p) * (1 if side == "left" else -1))
        b.add(f"{side}_shoulder", x=0.15 * env * np.sin(p))
    b.add("neck", y=0.35 * np.clip(rate / 2.0, -1, 1))
    b.add("spine3", y=0.1 * np.clip(rate / 2.0, -1, 1))


def _idle(b: _Builder) -> None:
    u, sp = b.u, b.speed
    times, shift = [-u(0.0, 3.0)], [0.0]
    while times[-1] < b.duration:
        times.append(times[-1] + u(0.8, 2.0) / sp)
        shift.append(u(-1.0, 1.0))
    w = _interp_keys(np.asarray(times), np.asarray(shift)[:, None], b.t)[:, 0]
    gamma = 0.07 * b.amp * w  # both legs lean the same way in the world
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        b.add(f"{side}_hip", z=sgn * gamma)
        b.add(f"{side}_ankle", z=-sgn * gamma)
        unweighted = np.clip(-sgn * w, 0, 1)  # the knee of the unloaded leg relaxes
        b.leg(side, thigh=0.12 * unweighted, shin=0.12 * unweighted)
    b.roll += -0.5 * gamma
    b.add("spine2", z=0.6 * gamma)
    look = _smooth_noise(b.rng, b.t, (2,), fmax=0.25)
    b.add("neck", y=0.3 * look[:, 0], x=0.1 * look[:, 1])
    arms = _smooth_noise(b.rng, b.t, (2, 3), fmax=0.3)
    for k, side in enumerate(("left", "right")):
        b.add(f"{side}_shoulder", x=0.15 * arms[:, k, 0], z=0.1 * arms[:, k, 1])
        b.add(f"{side}_elbow", y=-0.3 * (1 + arms[:, k, 2]) / 2)


_KINDS: dict[str, Callable[[_Builder], None]] = {
    "walk": lambda b: _gait(b, run=False), "run": lambda b: _gait(b, run=True), "jump": _jump,
    "squat": _squat, "reach": _reach, "turn": _turn, "sit": _sit, "wave": _wave, "kick": _kick,
    "stretch": _stretch, "lunge": _lunge, "punch": _punch, "jumping_jack": _jumping_jack, "idle": _idle,
}
assert tuple(_KINDS) == MOTION_KINDS


# ----------------------------------------------------------------------------- assembly


def _root_matrix(heading, yaw, pitch, roll) -> np.ndarray:
    return Rotation.from_euler("YXZ", np.stack([heading + yaw, pitch, roll], -1)).as_matrix()


def _finish(b: _Builder) -> tuple[np.ndarray, np.ndarray]:
    st = b.style
    noise = st.jitter * _smooth_noise(b.rng, b.t, (24, 3), fmin=0.1, fmax=0.8)
    full = _BASE + st.offsets + b.A + noise
    support = clamp_euler(full * _MIRROR) if b.air.any() else None
    full = clamp_euler((full + b.air) * _MIRROR)
    root_noise = 0.3 * st.jitter * _smooth_noise(b.rng, b.t, (3,), fmax=0.5)
    root = _root_matrix(b.heading, b.yaw + root_noise[:, 0], b.pitch + root_noise[:, 1],
                        b.roll + root_noise[:, 2])
    local = euler_to_matrix(full)
    local[:, 0] = root
    pose = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(b.T, 72)
    if support is not None:
        local = euler_to_matrix(support)
        local[:, 0] = root
    pts = contact_points(local)  # (T, 4, 3), root at the origin
    trans = np.zeros((b.T, 3))
    height = _gaussian_smooth(_FLOOR_Y - _soft_lowest(pts[..., 1]), sigma=b.contact_smooth * b.fps)
    trans[:, 1] = height + b.lift
    if b.path is not None:
        trans[:, [0, 2]] = b.path
    else:
        feet = np.stack([pts[:, :2].mean(1), pts[:, 2:].mean(1)], axis=1)  # (T, 2, 3)
        low = np.stack([pts[:, :2, 1].min(1), pts[:, 2:, 1].min(1)], axis=1)
        w = np.exp(-(low - low.min(1, keepdims=True)) / 0.03)
        w = _gaussian_smooth(w / w.sum(1, keepdims=True), sigma=0.15 * b.fps)  # gradual weight shift
        stance = (w[..., None] * feet).sum(1)[:, [0, 2]]
        trans[:, [0, 2]] = b.anchor - (stance - stance[:1])
    return pose, trans


def _check_args(kind: str, num_frames: int, fps: float, speed, amplitude) -> None:
    if kind not in _KINDS:
        raise InputError(f"unknown motion kind '{kind}'", field="kind",
                         expected=f"one of {list(MOTION_KINDS)}")
    if int(num_frames) != num_frames or num_frames < 1:
        raise InputError(f"num_frames={num_frames}", field="num_frames", expected="an integer >= 1")
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"fps={fps}", field="fps", expected="a positive frame rate")
    if speed is not None and not 0.2 <= speed <= 3.0:
        raise InputError(f"speed={speed}", field="speed", expected="a tempo factor in [0.2, 3]")
    if amplitude is not None and not 0.2 <= amplitude <= 1.5:
        raise InputError(f"amplitude={amplitude}", field="amplitude", expected="a factor in [0.2, 1.5]")


def generate_motion(kind: str, *, num_frames: int, fps: float, rng: np.random.Generator,
                    speed: float | None = None, amplitude: float | None = None,
                    style: MotionStyle | None = None) -> MotionClip:
    """One procedural clip -> MotionClip(pose (T, 72) axis-angle, trans (T, 3) metres y-up).

    ``speed`` is a tempo factor (1 = nominal cadence; sampled in [0.8, 1.25] when None),
    ``amplitude`` scales joint excursions (sampled in [0.7, 1.2]), ``style`` is sampled with
    :func:`sample_style` when None. The result depends only on the arguments and the state of
    ``rng``.
    """
    _check_args(kind, num_frames, fps, speed, amplitude)
    speed = float(rng.uniform(0.8, 1.25)) if speed is None else float(speed)
    amplitude = float(rng.uniform(0.7, 1.2)) if amplitude is None else float(amplitude)
    style = sample_style(rng) if style is None else style
    b = _Builder(int(num_frames), float(fps), rng, speed, amplitude, style)
    _KINDS[kind](b)
    pose, trans = _finish(b)
    return MotionClip(pose=pose.astype(np.float32), trans=trans.astype(np.float32), fps=float(fps), kind=kind)


# ----------------------------------------------------------------------------- resampling, blending


def slerp_rotvec(r0: np.ndarray, r1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """r0, r1: (N, 3) axis-angle; w: (N,) in [0, 1] -> (N, 3) shortest-arc interpolation."""
    q0 = Rotation.from_rotvec(r0).as_quat()
    q1 = Rotation.from_rotvec(r1).as_quat()
    dot = (q0 * q1).sum(-1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    dot = np.abs(dot).clip(-1.0, 1.0)
    theta = np.arccos(dot)
    sin = np.sin(theta)
    small = sin < 1e-6
    safe = np.where(small, 1.0, sin)
    a = np.where(small, 1.0 - w, np.sin((1.0 - w) * theta) / safe)
    c = np.where(small, w, np.sin(w * theta) / safe)
    q = a[:, None] * q0 + c[:, None] * q1
    return Rotation.from_quat(q / np.linalg.norm(q, axis=-1, keepdims=True)).as_rotvec()


def resample_clip(clip: MotionClip, fps: float) -> MotionClip:
    """Resample to ``fps``: slerp per joint, linear trans; frame k sits at time k / fps and the
    last frame at or before the clip's last time."""
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"fps={fps}", field="fps", expected="a positive frame rate")
    T = clip.num_frames
    if T == 0 or fps == clip.fps:
        return replace(clip, fps=float(fps))
    n = int(np.floor((T - 1) * fps / clip.fps + 1e-9)) + 1
    x = np.arange(n) * clip.fps / fps
    i0 = np.clip(np.floor(x).astype(int), 0, T - 1)
    i1 = np.minimum(i0 + 1, T - 1)
    w = x - i0
    p0 = clip.pose.reshape(T, 24, 3)[i0].reshape(-1, 3).astype(np.float64)
    p1 = clip.pose.reshape(T, 24, 3)[i1].reshape(-1, 3).astype(np.float64)
    pose = slerp_rotvec(p0, p1, np.repeat(w, 24)).reshape(n, 72)
    trans = clip.trans[i0] * (1 - w[:, None]) + clip.trans[i1] * w[:, None]
    return replace(clip, pose=pose.astype(np.float32), trans=trans.astype(np.float32), fps=float(fps))


def _facing_yaw(root_rotvec: np.ndarray) -> float:
    fwd = Rotation.from_rotvec(root_rotvec).apply([0.0, 0.0, 1.0])
    return float(np.arctan2(fwd[0], fwd[2]))


def random_motion(rng: np.random.Generator, *, num_frames: int, fps: float,
                  kinds: tuple[str, ...] | list[str] | None = None, blend_prob: float = 0.35) -> MotionClip:
    """A clip of a random kind; with probability ``blend_prob`` (clips >= 3 s) two kinds joined
    by a smooth 0.6-1.2 s cross-fade, the second re-aligned to the first's position and heading
    at the transition. ``kind`` is "a" or "a+b". pose (T, 72), trans (T, 3)."""
    pool = MOTION_KINDS if kinds is None else tuple(kinds)
    if not pool:
        raise InputError("no motion kinds given", field="kinds", expected=f"a subset of {list(MOTION_KINDS)}")
    for k in pool:
        if k not in _KINDS:
            raise InputError(f"unknown motion kind '{k}'", field="kinds",
                             expected=f"a subset of {list(MOTION_KINDS)}")
    first = str(rng.choice(pool))
    clip_a = generate_motion(first, num_frames=num_frames, fps=fps, rng=rng)
    if num_frames / fps < 3.0 or rng.random() >= blend_prob:
        return clip_a
    second = str(rng.choice(pool))
    clip_b = generate_motion(second, num_frames=num_frames, fps=fps, rng=rng)
    t = np.arange(num_frames) / fps
    width = float(rng.uniform(0.6, 1.2))
    tc = float(rng.uniform(0.35, 0.65)) * t[-1]
    c = round(tc * fps)
    dyaw = _facing_yaw(clip_a.pose[c, :3]) - _facing_yaw(clip_b.pose[c, :3])
    Q = Rotation.from_euler("y", dyaw)
    root_b = (Q * Rotation.from_rotvec(clip_b.pose[:, :3].astype(np.float64))).as_rotvec()
    trans_b = clip_b.trans.astype(np.float64) - clip_b.trans[c] * np.array([1.0, 0.0, 1.0])
    trans_b = Q.apply(trans_b) + clip_a.trans[c] * np.array([1.0, 0.0, 1.0])
    pose_b = clip_b.pose.astype(np.float64).copy()
    pose_b[:, :3] = root_b
    w = smootherstep((t - tc + width / 2) / width)
    pose = slerp_rotvec(clip_a.pose.reshape(-1, 3).astype(np.float64), pose_b.reshape(-1, 3),
                        np.repeat(w, 24)).reshape(num_frames, 72)
    trans = clip_a.trans * (1 - w[:, None]) + trans_b * w[:, None]
    pose = clamp_to_limits(pose)
    return MotionClip(pose=pose.astype(np.float32), trans=trans.astype(np.float32), fps=float(fps),
                      kind=f"{first}+{second}")
