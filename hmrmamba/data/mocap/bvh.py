"""BVH motion capture: a strict parser and retargeting onto SMPL poses.

BVH semantics used here. ``CHANNELS ... Zrotation Xrotation Yrotation`` means the local rotation
``R = Rz @ Rx @ Ry`` (the channels compose in the order listed, angles in degrees). A joint's
local translation is its ``OFFSET``, replaced by its position channels when it has them (in
practice only the root). Global: ``R_g = R_g(parent) @ R``, ``p = p(parent) + R_g(parent) @ t``.

Retargeting (:func:`bvh_to_smpl`). Each SMPL joint is mapped to a BVH joint by name (tables for
the CMU/cgspeed, Mixamo, Biovision and original CMU ASF conventions, :data:`JOINT_MAPS`;
:func:`guess_joint_map`). The two rest poses
differ (the BVH may be an A-pose, face another way, have extra or missing joints), so a constant
alignment ``A_j`` is computed per SMPL joint from the rest poses: the root from the hip line and
the spine (a full frame), every other joint as the smallest rotation, on top of its parent's
alignment, that turns the SMPL rest bone onto the BVH rest bone. Then ``G_j = G_bvh(j) @ A_j``
and the SMPL local rotation is ``G_parent^T @ G_j``; unmapped SMPL joints keep an identity
local rotation. With this, the retargeted global bone directions equal the BVH's wherever a
bone's two ends are mapped and the BVH has no rotating joint between them.

Units: ``"auto"`` picks metres, centimetres, millimetres, inches or the CMU unit (1/0.45 inch)
by the skeleton height closest to 1.7 m. ``trans`` is relative to the rest pose standing on the
floor (y = 0 of the BVH world): trans = pelvis position - rest pelvis height above the soles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from hmrmamba.data.synthetic.motion import REST_JOINTS, MotionClip, forward_kinematics, resample_clip
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.skeleton import SMPL24

_CHANNELS = {f"{a}{k}" for a in "XYZ" for k in ("position", "rotation")}

#: CMU / cgspeed BVH names (LeftShoulder is the collar bone, LeftArm the upper arm).
CMU_TO_SMPL: dict[str, str] = {
    "Hips": "pelvis", "LowerBack": "spine1", "Spine": "spine2", "Spine1": "spine3",
    "Neck": "neck", "Head": "head",
}
#: Mixamo-style names (Spine, Spine1, Spine2; a "mixamorig:" prefix is stripped).
MIXAMO_TO_SMPL: dict[str, str] = {
    "Hips": "pelvis", "Spine": "spine1", "Spine1": "spine2", "Spine2": "spine3", "Neck": "neck",
    "Head": "head",
}
#: Biovision / MotionBuilder names (LeftCollar, LeftShoulder is the upper arm, LeftHip...).
BIOVISION_TO_SMPL: dict[str, str] = {
    "Hips": "pelvis", "Ab": "spine1", "Abdomen": "spine1", "Chest": "spine3", "Neck": "neck",
    "Head": "head",
}
for _side in ("Left", "Right"):
    _s = _side.lower()
    _limbs = {"UpLeg": "hip", "Leg": "knee", "Foot": "ankle", "ToeBase": "foot", "Shoulder": "collar",
              "Arm": "shoulder", "ForeArm": "elbow", "Hand": "wrist"}
    for _k, _v in _limbs.items():
        CMU_TO_SMPL[f"{_side}{_k}"] = f"{_s}_{_v}"
        MIXAMO_TO_SMPL[f"{_side}{_k}"] = f"{_s}_{_v}"
    CMU_TO_SMPL[f"{_side}FingerBase"] = f"{_s}_hand"
    MIXAMO_TO_SMPL[f"{_side}HandMiddle1"] = f"{_s}_hand"
    BIOVISION_TO_SMPL.update({
        f"{_side}Hip": f"{_s}_hip", f"{_side}Knee": f"{_s}_knee", f"{_side}Ankle": f"{_s}_ankle",
        f"{_side}Toes": f"{_s}_foot", f"{_side}Toe": f"{_s}_foot", f"{_side}Collar": f"{_s}_collar",
        f"{_side}Shoulder": f"{_s}_shoulder", f"{_side}Elbow": f"{_s}_elbow",
        f"{_side}Wrist": f"{_s}_wrist"})

#: The original CMU ASF/AMC bone names, as BVH files converted with them name their joints (a joint
#: is named after the bone it rotates, so ``lfemur`` sits at the hip and ``ltibia`` at the knee).
ASF_TO_SMPL: dict[str, str] = {
    "root": "pelvis", "lowerback": "spine1", "upperback": "spine2", "thorax": "spine3", "lowerneck": "neck",
    "head": "head",
}
for _s, _full in (("l", "left"), ("r", "right")):
    ASF_TO_SMPL.update({f"{_s}femur": f"{_full}_hip", f"{_s}tibia": f"{_full}_knee", f"{_s}foot": f"{_full}_ankle",
                        f"{_s}toes": f"{_full}_foot", f"{_s}clavicle": f"{_full}_collar",
                        f"{_s}humerus": f"{_full}_shoulder", f"{_s}radius": f"{_full}_elbow",
                        f"{_s}wrist": f"{_full}_wrist", f"{_s}hand": f"{_full}_hand"})

#: The named joint maps (``synthetic.mocap.joint_map``).
JOINT_MAPS: dict[str, dict[str, str]] = {"cmu": CMU_TO_SMPL, "mixamo": MIXAMO_TO_SMPL,
                                         "biovision": BIOVISION_TO_SMPL, "asf": ASF_TO_SMPL}

#: Metres per file unit for the ``units`` argument of :func:`bvh_to_smpl`.
UNITS: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "inch": 0.0254, "cmu": 0.0254 / 0.45}

# The SMPL bone that orients each joint: joint -> next joint along its limb (None: a leaf).
_SMPL_NEXT = {
    "pelvis": "spine1", "spine1": "spine2", "spine2": "spine3", "spine3": "neck", "neck": "head",
    "head": None,
}
for _s in ("left", "right"):
    _SMPL_NEXT.update({f"{_s}_hip": f"{_s}_knee", f"{_s}_knee": f"{_s}_ankle", f"{_s}_ankle": f"{_s}_foot",
                       f"{_s}_foot": None, f"{_s}_collar": f"{_s}_shoulder",
                       f"{_s}_shoulder": f"{_s}_elbow", f"{_s}_elbow": f"{_s}_wrist",
                       f"{_s}_wrist": f"{_s}_hand", f"{_s}_hand": None})


@dataclass(frozen=True)
class BvhClip:
    """A parsed BVH file. offsets: (J, 3) file units; frames: (T, C) channel values (degrees for
    rotations); channels: per joint, the channel names in file order; end_sites: joint index ->
    (3,) end-site offset; source: the file it came from (for error messages)."""

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]
    frames: np.ndarray
    frame_time: float
    end_sites: dict[int, np.ndarray] = field(default_factory=dict)
    source: str = "<bvh>"

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    @property
    def channel_starts(self) -> tuple[int, ...]:
        starts, c = [], 0
        for ch in self.channels:
            starts.append(c)
            c += len(ch)
        return tuple(starts)


# ----------------------------------------------------------------------------- parsing


def _float(tok: str, *, source: str, what: str) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise InputError(f"'{tok}' is not a number", file=source, field=what, expected="a float") from None
    if not np.isfinite(v):
        raise InputError(f"'{tok}' is not finite", file=source, field=what, expected="a finite float")
    return v


def _parse_hierarchy(tokens: list[str], source: str):
    names: list[str] = []
    parents: list[int] = []
    offsets: list[np.ndarray | None] = []
    channels: list[tuple[str, ...]] = []
    end_sites: dict[int, np.ndarray] = {}
    stack: list[int] = []
    i, n = 0, len(tokens)

    def need(k: int, what: str) -> None:
        if i + k > n:
            raise InputError("the hierarchy ends early", file=source, field="HIERARCHY", expected=what)

    while i < n:
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            need(3, f"'{tok} <name> {{'")
            if (tok == "ROOT") != (not stack):
                raise InputError(f"'{tok} {tokens[i + 1]}' at the wrong level", file=source,
                                 field="HIERARCHY",
                                 expected="one ROOT at the top level and JOINTs inside it")
            if tok == "ROOT" and names:
                raise InputError("a second ROOT", file=source, field="HIERARCHY", expected="exactly one ROOT")
            if tokens[i + 2] != "{":
                raise InputError(f"'{tokens[i + 2]}' after {tok} {tokens[i + 1]}", file=source,
                                 field="HIERARCHY", expected="'{'")
            names.append(tokens[i + 1])
            parents.append(stack[-1] if stack else -1)
            offsets.append(None)
            channels.append(())
            stack.append(len(names) - 1)
            i += 3
        elif tok == "End":
            need(8, "'End Site { OFFSET x y z }'")
            if not stack or tokens[i + 1] != "Site" or tokens[i + 2] != "{" or tokens[i + 3] != "OFFSET" \
                    or tokens[i + 7] != "}":
                raise InputError("malformed End Site", file=source, field="HIERARCHY",
                                 expected="'End Site { OFFSET x y z }' inside a joint")
            end_sites[stack[-1]] = np.array([_float(t, source=source, what="End Site OFFSET")
                                             for t in tokens[i + 4:i + 7]])
            i += 8
        elif tok == "OFFSET":
            need(4, "'OFFSET x y z'")
            if not stack:
                raise InputError("OFFSET outside a joint", file=source,
                                 field="HIERARCHY", expected="OFFSET in a joint")
            offsets[stack[-1]] = np.array([_float(t, source=source, what=f"OFFSET of {names[stack[-1]]}")
                                           for t in tokens[i + 1:i + 4]])
            i += 4
        elif tok == "CHANNELS":
            need(2, "'CHANNELS n names...'")
            if not stack:
                raise InputError("CHANNELS outside a joint", file=source, field="HIERARCHY",
                                 expected="CHANNELS in a joint")
            try:
                k = int(tokens[i + 1])
            except ValueError:
                raise InputError(f"channel count '{tokens[i + 1]}'", file=source,
                                 field=f"CHANNELS of {names[stack[-1]]}", expected="an integer") from None
            need(2 + k, f"{k} channel names")
            chans = tuple(tokens[i + 2:i + 2 + k])
            bad = [c for c in chans if c not in _CHANNELS]
            if bad or k < 0 or len(set(chans)) != k:
                raise InputError(f"channels {list(chans)}", file=source,
                                 field=f"CHANNELS of {names[stack[-1]]}",
                                 expected=f"distinct names from {sorted(_CHANNELS)}")
            channels[stack[-1]] = chans
            i += 2 + k
        elif tok == "}":
            if not stack:
                raise InputError("unbalanced '}'", file=source, field="HIERARCHY", expected="matching braces")
            stack.pop()
            i += 1
        else:
            raise InputError(f"unexpected token '{tok}'", file=source, field="HIERARCHY",
                             expected="ROOT, JOINT, End Site, OFFSET, CHANNELS or braces")
    if stack:
        raise InputError("unclosed '{'", file=source, field="HIERARCHY", expected="matching braces")
    if not names:
        raise InputError("no joints", file=source, field="HIERARCHY", expected="a ROOT joint")
    for j, off in enumerate(offsets):
        if off is None:
            raise InputError(f"joint '{names[j]}' has no OFFSET", file=source, field="HIERARCHY",
                             expected="an OFFSET line in every joint")
    return tuple(names), tuple(parents), np.stack(offsets), tuple(channels), end_sites


def parse_bvh(text: str, *, source: str = "<bvh>") -> BvhClip:
    """Parse BVH text (see :func:`read_bvh`)."""
    m = re.search(r"^\s*MOTION\s*$", text, flags=re.MULTILINE)
    head = text.lstrip()
    if not head.startswith("HIERARCHY"):
        raise InputError("the file does not start with HIERARCHY", file=source, field="HIERARCHY",
                         expected="a BVH file beginning with 'HIERARCHY'")
    if m is None:
        raise InputError("no MOTION section", file=source, field="MOTION",
                         expected="a line 'MOTION' after the hierarchy")
    hier = text[text.index("HIERARCHY") + len("HIERARCHY"):m.start()]
    names, parents, offsets, channels, end_sites = _parse_hierarchy(hier.split(), source)
    num_channels = sum(len(c) for c in channels)

    lines = text[m.end():].splitlines()
    lineno0 = text[:m.end()].count("\n") + 1
    body = [(lineno0 + k, ln.strip()) for k, ln in enumerate(lines) if ln.strip()]
    if len(body) < 2:
        raise InputError("MOTION lacks 'Frames:' and 'Frame Time:'", file=source, field="MOTION",
                         expected="'Frames: N' and 'Frame Time: dt' lines")
    fm = re.fullmatch(r"Frames:\s*(\d+)", body[0][1])
    if fm is None:
        raise InputError(f"line {body[0][0]}: '{body[0][1][:40]}'", file=source, field="Frames",
                         expected="'Frames: N' with an integer N")
    tm = re.fullmatch(r"Frame\s+Time:\s*(\S+)", body[1][1])
    if tm is None:
        raise InputError(f"line {body[1][0]}: '{body[1][1][:40]}'", file=source, field="Frame Time",
                         expected="'Frame Time: dt' in seconds")
    frame_time = _float(tm.group(1), source=source, what="Frame Time")
    if frame_time <= 0:
        raise InputError(f"Frame Time {frame_time}", file=source, field="Frame Time",
                         expected="a positive number of seconds")
    num_frames = int(fm.group(1))
    if num_frames < 1:
        raise InputError(f"Frames: {num_frames}", file=source, field="Frames", expected="at least one frame")
    rows = body[2:]
    if len(rows) < num_frames:
        raise InputError(f"{len(rows)} frame rows", file=source, field="Frames",
                         expected=f"{num_frames} rows as declared by 'Frames: {num_frames}'")
    rows = rows[:num_frames]  # some exporters write one row more than they declare
    values = [r[1].split() for r in rows]
    for (lineno, _), v in zip(rows, values, strict=True):
        if len(v) != num_channels:
            raise InputError(f"line {lineno} has {len(v)} values", file=source, field="MOTION",
                             expected=f"{num_channels} channel values per frame")
    try:
        frames = np.array(values, dtype=np.float64).reshape(num_frames, num_channels)
    except ValueError:
        for (lineno, _), v in zip(rows, values, strict=True):
            for tok in v:
                _float(tok, source=source, what=f"MOTION line {lineno}")
        raise
    if not np.isfinite(frames).all():
        bad = int(np.argwhere(~np.isfinite(frames))[0, 0])
        raise InputError(f"line {rows[bad][0]} has a non-finite value", file=source, field="MOTION",
                         expected="finite channel values")
    return BvhClip(names=names, parents=parents, offsets=offsets, channels=channels, frames=frames,
                   frame_time=frame_time, end_sites=end_sites, source=source)


def read_bvh(path: str | Path) -> BvhClip:
    """Read a BVH file -> BvhClip. Raises InputError naming the file and the field on bad input."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("BVH file not found", file=path, expected="an existing .bvh file")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return parse_bvh(text, source=str(path))


# ----------------------------------------------------------------------------- kinematics


def bvh_local_rotations(clip: BvhClip) -> np.ndarray:
    """-> (T, J, 3, 3) local rotation of every joint (identity where a joint has no rotation channel)."""
    T, J = clip.num_frames, len(clip.names)
    out = np.broadcast_to(np.eye(3), (T, J, 3, 3)).copy()
    for j, (start, chans) in enumerate(zip(clip.channel_starts, clip.channels, strict=True)):
        rot = [(c[0], start + k) for k, c in enumerate(chans) if c.endswith("rotation")]
        if rot:
            seq = "".join(a for a, _ in rot)
            angles = clip.frames[:, [k for _, k in rot]]
            out[:, j] = Rotation.from_euler(seq, angles, degrees=True).as_matrix()
    return out


def bvh_local_translations(clip: BvhClip) -> np.ndarray:
    """-> (T, J, 3) local translation in file units: OFFSET, replaced by position channels."""
    out = np.broadcast_to(clip.offsets, (clip.num_frames,) + clip.offsets.shape).copy()
    for j, (start, chans) in enumerate(zip(clip.channel_starts, clip.channels, strict=True)):
        for k, c in enumerate(chans):
            if c.endswith("position"):
                out[:, j, "XYZ".index(c[0])] = clip.frames[:, start + k]
    return out


def bvh_forward_kinematics(clip: BvhClip) -> tuple[np.ndarray, np.ndarray]:
    """-> global positions (T, J, 3) in file units and global rotations (T, J, 3, 3)."""
    return forward_kinematics(bvh_local_rotations(clip), bvh_local_translations(clip), clip.parents)


def bvh_rest_positions(clip: BvhClip) -> np.ndarray:
    """-> (J, 3) joint positions of the rest pose (all rotations identity, root at its OFFSET)."""
    pos = np.zeros((len(clip.names), 3))
    for j, p in enumerate(clip.parents):
        pos[j] = clip.offsets[j] + (pos[p] if p >= 0 else 0.0)
    return pos


# ----------------------------------------------------------------------------- retargeting


def _plain(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def guess_joint_map(names) -> dict[str, str]:
    """Pick the name table that fits a BVH skeleton's joint names (prefixes like 'x:' ignored)."""
    plain = {_plain(n) for n in names}
    if {"lfemur", "rfemur", "lhumerus", "rhumerus"} & plain:
        return ASF_TO_SMPL
    if {"LeftCollar", "LeftKnee", "LeftHip", "LeftElbow"} & plain:
        return BIOVISION_TO_SMPL
    if "LowerBack" in plain:
        return CMU_TO_SMPL
    if "Spine2" in plain:
        return MIXAMO_TO_SMPL
    return CMU_TO_SMPL


def _unit_scale(clip: BvhClip, units: str | float, up: np.ndarray) -> float:
    if not isinstance(units, str):
        if not np.isfinite(units) or units <= 0:
            raise InputError(f"units={units}", file=clip.source,
                             field="units", expected="metres per unit > 0")
        return float(units)
    if units in UNITS:
        return UNITS[units]
    if units != "auto":
        raise InputError(f"units='{units}'", file=clip.source, field="units",
                         expected=f"'auto', one of {sorted(UNITS)} or a float")
    rest = bvh_rest_positions(clip)
    ends = [rest[j] + e for j, e in clip.end_sites.items()]
    pts = np.concatenate([rest, np.stack(ends)]) if ends else rest
    height = float(np.ptp(pts @ up))
    if height <= 0:
        raise InputError("the rest skeleton has no height", file=clip.source, field="OFFSET",
                         expected="joint offsets spanning the up axis")
    return min(UNITS.values(), key=lambda u: abs(np.log(height * u / 1.7)))


def _swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation (3, 3) turning direction a onto direction b."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return Rotation.from_rotvec(np.pi * perp / np.linalg.norm(perp)).as_matrix()
    return Rotation.from_rotvec(axis / s * np.arctan2(s, c)).as_matrix()


def _frame(lateral: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Orthonormal frame (columns: lateral, up, forward) from a left-pointing and an up vector."""
    u = up / np.linalg.norm(up)
    l = lateral - np.dot(lateral, u) * u
    l = l / np.linalg.norm(l)
    return np.stack([l, u, np.cross(l, u)], axis=1)


def bvh_to_smpl(clip: BvhClip, joint_map: Mapping[str, str] | None = None, *, units: str | float = "auto",
                up: str = "y", target_fps: float | None = None,
                rest_joints: np.ndarray = REST_JOINTS) -> MotionClip:
    """Retarget a BVH clip onto SMPL -> MotionClip(pose (T, 72), trans (T, 3) metres, y up).

    joint_map: BVH joint name -> SMPL joint name (None: :func:`guess_joint_map`); units: see
    module doc; up: the BVH's up axis, "y" or "z" (z-up is turned to y-up by -90 deg about x);
    rest_joints: (24, 3) SMPL rest joints whose bone directions define the SMPL rest pose.
    """
    src = clip.source
    joint_map = guess_joint_map(clip.names) if joint_map is None else joint_map
    if up not in ("y", "z"):
        raise InputError(f"up='{up}'", file=src, field="up", expected="'y' or 'z'")
    Q = np.eye(3) if up == "y" else Rotation.from_euler("x", -90, degrees=True).as_matrix()
    smpl_of: dict[int, int] = {}  # SMPL joint -> BVH joint (the first BVH joint in file order wins)
    for b, name in enumerate(clip.names):
        target = joint_map.get(_plain(name))
        if target is None:
            continue
        if target not in SMPL24.names:
            raise InputError(f"joint_map sends '{name}' to '{target}'", file=src, field="joint_map",
                             expected=f"SMPL joint names {list(SMPL24.names)}")
        smpl_of.setdefault(SMPL24.names.index(target), b)
    if 0 not in smpl_of:
        raise InputError(f"no joint maps to the SMPL pelvis (joints: {list(clip.names)[:8]}...)", file=src,
                         field="HIERARCHY", expected="a mappable root joint such as 'Hips'")

    scale = _unit_scale(clip, units, Q.T @ np.array([0.0, 1.0, 0.0]))
    rest_b = bvh_rest_positions(clip) @ Q.T * scale  # (J, 3) metres, y up
    rest_s = np.asarray(rest_joints, dtype=np.float64)
    children: dict[int, list[int]] = {}
    for b, p in enumerate(clip.parents):
        children.setdefault(p, []).append(b)

    def bvh_dir(bj: int, bc: int) -> np.ndarray:
        """Rest direction from BVH joint bj to bc; past coincident joints along first children."""
        d = rest_b[bc] - rest_b[bj]
        node = bc
        while np.linalg.norm(d) < 1e-6:
            if children.get(node):
                node = children[node][0]
                d = rest_b[node] - rest_b[bj]
            elif node in clip.end_sites:
                d = rest_b[node] + Q @ clip.end_sites[node] * scale - rest_b[bj]
                break
            else:
                break
        return d

    def chain_dirs(j: int):
        """(SMPL, BVH) rest directions from joint j to the first usable mapped joint down its limb."""
        c = _SMPL_NEXT[SMPL24.names[j]]
        while c is not None:
            ci = SMPL24.names.index(c)
            if ci in smpl_of:
                ds, db = rest_s[ci] - rest_s[j], bvh_dir(smpl_of[j], smpl_of[ci])
                if np.linalg.norm(ds) > 1e-6 and np.linalg.norm(db) > 1e-6:
                    return ds, db
            c = _SMPL_NEXT[c]
        return None

    align = np.zeros((24, 3, 3))
    lh, rh = SMPL24.names.index("left_hip"), SMPL24.names.index("right_hip")
    up_dirs = chain_dirs(0)
    if lh in smpl_of and rh in smpl_of and up_dirs is not None:
        lat_b = rest_b[smpl_of[lh]] - rest_b[smpl_of[rh]]
        align[0] = _frame(lat_b, up_dirs[1]) @ _frame(rest_s[lh] - rest_s[rh], up_dirs[0]).T
    elif up_dirs is not None:
        align[0] = _swing(*up_dirs)
    else:
        align[0] = np.eye(3)
    for j in range(1, 24):
        a_par = align[SMPL24.parents[j]]
        dirs = chain_dirs(j) if j in smpl_of else None
        align[j] = a_par if dirs is None else _swing(a_par @ dirs[0], dirs[1]) @ a_par

    pos_b, glob_b = bvh_forward_kinematics(clip)
    T = clip.num_frames
    glob = np.empty((T, 24, 3, 3))
    local = np.empty((T, 24, 3, 3))
    for j in range(24):
        p = SMPL24.parents[j]
        if j in smpl_of:
            glob[:, j] = Q @ glob_b[:, smpl_of[j]] @ Q.T @ align[j]  # BVH rotation, in y-up coordinates
        else:
            glob[:, j] = glob[:, p]
        local[:, j] = glob[:, j] if p < 0 else np.swapaxes(glob[:, p], -1, -2) @ glob[:, j]
    pose = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(T, 72)

    pelvis = pos_b[:, smpl_of[0]] @ Q.T * scale
    soles = [rest_b] + [(rest_b[j] + Q @ e * scale)[None] for j, e in clip.end_sites.items()]
    height = rest_b[smpl_of[0], 1] - np.concatenate(soles)[:, 1].min()
    trans = pelvis - np.array([0.0, height, 0.0])
    out = MotionClip(pose=pose.astype(np.float32), trans=trans.astype(np.float32), fps=clip.fps, kind="bvh",
                     pelvis_height=float(height))
    return out if target_fps is None else resample_clip(out, target_fps)
