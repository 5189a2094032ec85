"""Where the synthetic dataset's motion comes from: the procedural generator, folders of BVH or
AMASS files, or a weighted mix, with every motion file in exactly one split.

``synthetic.motion_source`` (and, per split, ``synthetic.splits.<name>.motion_source``) is one of

* ``procedural`` -- :func:`~hmrmamba.data.synthetic.motion.random_motion` (the default);
* ``bvh`` / ``amass`` -- the files under ``synthetic.mocap.bvh_dir`` / ``amass_dir`` (``*.bvh`` /
  ``*.npz``, searched recursively), shared out over the splits that use the folder;
* ``bvh:<folder>`` / ``amass:<folder>`` -- every file of that folder, for this split alone (a
  held-out test split of real motion: ``synthetic.splits.test.motion_source=bvh:data/raw/mocap_test``);
* a mapping of those names to weights, e.g. ``{procedural: 0.5, bvh: 0.5}``: each sequence draws
  its source with these probabilities.

Splits are disjoint by file. The files of a shared folder are ordered by the SHA-256 of
``"<synthetic.seed>/<path inside the folder>"`` and dealt out in contiguous runs, one run per split
that uses the folder, sized by the split's expected number of sequences from it (at least one file
each). The same seed and folder give the same assignment on every machine; a file used by two
splits (say a folder given both as ``bvh`` and as a split's ``bvh:<folder>``) is refused.

A sequence from a motion file is a random window of ``synthetic.frames`` frames of a random file of
its split, after resampling to ``synthetic.fps`` (slerp). The body is the split's subject: the file
gives joint rotations (BVH: retargeted by the joint map), the subject's body its bone lengths; the
root path's strides are scaled by the ratio of the subject's pelvis height to the mocap actor's (BVH:
the skeleton's; AMASS: the body model with the file's betas).

Everything is read and checked before any rendering (:func:`plan_motion`): a folder with no usable
file, a BVH the joint map cannot place, an AMASS file without poses, a frame rate below
``synthetic.fps`` or above :data:`MAX_MOCAP_FPS`, weights that do not sum to a positive number --
each a one-line :class:`~hmrmamba.errors.InputError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.data.mocap.bvh import JOINT_MAPS, UNITS, bvh_to_smpl, guess_joint_map, read_bvh
from hmrmamba.data.synthetic.motion import MotionClip, resample_clip
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.named_rng import named_rng
from hmrmamba.settings import MocapSettings
from hmrmamba.skeleton import SMPL24

SOURCE_KINDS = ("procedural", "bvh", "amass")
SUFFIXES = {"bvh": ".bvh", "amass": ".npz"}
#: Highest mocap frame rate accepted (CMU's BVH are 120 fps, AMASS up to 250 fps).
MAX_MOCAP_FPS = 1000.0
#: SMPL joints a BVH must place (through the joint map) to give the H36M-17 joints a motion.
REQUIRED_JOINTS = ("pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
                   "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                   "head")
PARAMS = "params.yaml"


def mocap_options(p: Mapping[str, Any] | None) -> MocapSettings:
    """``synthetic.mocap`` (a params mapping) -> checked :class:`~hmrmamba.settings.MocapSettings`."""
    p = dict(p or {})
    opts = MocapSettings(**{f.name: p[f.name] for f in fields(MocapSettings) if f.name in p})
    bvh_map(opts, ["Hips"])  # checks the map
    if not (opts.units == "auto" or opts.units in UNITS or (
            isinstance(opts.units, int | float) and not isinstance(opts.units, bool)
            and math.isfinite(opts.units) and opts.units > 0)):
        raise InputError(f"units={opts.units!r}", file=PARAMS, field="synthetic.mocap.units",
                         expected=f"'auto', one of {sorted(UNITS)} or metres per file unit > 0")
    if opts.up not in ("y", "z"):
        raise InputError(f"up={opts.up!r}", file=PARAMS, field="synthetic.mocap.up", expected="'y' or 'z'")
    return opts


def bvh_map(opts: MocapSettings, names) -> dict[str, str]:
    """The joint map (BVH joint -> SMPL joint) of ``opts`` for a skeleton with these joint names."""
    jm = opts.joint_map
    if isinstance(jm, str):
        if jm == "auto":
            return guess_joint_map(names)
        if jm in JOINT_MAPS:
            return JOINT_MAPS[jm]
        raise InputError(f"joint_map={jm!r}", file=PARAMS, field="synthetic.mocap.joint_map",
                         expected=f"'auto', one of {sorted(JOINT_MAPS)} or a mapping {{bvh joint: smpl joint}}")
    if not isinstance(jm, Mapping) or not jm:
        raise InputError(f"joint_map={jm!r}", file=PARAMS, field="synthetic.mocap.joint_map",
                         expected="a name or a non-empty mapping {bvh joint: smpl joint}")
    for k, v in jm.items():
        if not isinstance(k, str) or v not in SMPL24.names:
            raise InputError(f"{k!r}: {v!r}", file=PARAMS, field=f"synthetic.mocap.joint_map.{k}",
                             expected=f"a BVH joint name mapped to one of {list(SMPL24.names)}")
    return dict(jm)


@dataclass(frozen=True)
class Entry:
    """One term of a split's source: a kind, its folder (None: procedural), whether the split owns it."""

    kind: str
    folder: Path | None = None
    dedicated: bool = False

    @property
    def label(self) -> str:
        return self.kind if self.folder is None else f"{self.kind}:{self.folder}"


@dataclass
class MocapFile:
    """A motion file read, retargeted and resampled to the dataset's frame rate."""

    path: Path
    label: str  # the path inside its folder
    clip: MotionClip


@dataclass
class SplitMotion:
    """How one split draws its motion: the entries with their probabilities, the files of each."""

    name: str
    entries: tuple[Entry, ...]
    weights: np.ndarray
    files: dict[Entry, list[MocapFile]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def procedural_only(self) -> bool:
        return all(e.kind == "procedural" for e in self.entries)

    def clip(self, seed: int, index: int, num_frames: int) -> MotionClip | None:
        """The motion of sequence ``index``: None for the procedural generator, else a window of
        ``num_frames`` (or the whole file when it is shorter) of a random file, kind ``"bvh:<file>@<start>"``."""
        if self.procedural_only:
            return None
        rng = named_rng(seed, "motion_source", self.name, index)
        entry = self.entries[int(rng.choice(len(self.entries), p=self.weights))]
        if entry.kind == "procedural":
            return None
        files = self.files[entry]
        f = files[int(rng.integers(len(files)))]
        total = f.clip.num_frames
        n = min(num_frames, total)
        start = int(rng.integers(0, total - n + 1))
        trans = f.clip.trans[start:start + n].astype(np.float64)
        trans[:, [0, 2]] -= trans[:, [0, 2]].mean(0)
        return replace(f.clip, pose=f.clip.pose[start:start + n], trans=trans.astype(np.float32),
                       kind=f"{entry.kind}:{f.label}@{start}")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {e.label: float(w) for e, w in zip(self.entries, self.weights, strict=True)}
        files = {e.label: [f.label for f in fs] for e, fs in self.files.items()}
        return {"weights": out, "files": files, "skipped": list(self.skipped)}


# ----------------------------------------------------------------------------- parsing


def _entry(key: Any, *, where: str, opts: MocapSettings, root: Path) -> Entry:
    from hmrmamba.config import resolve_path

    if not isinstance(key, str) or not key.strip():
        raise InputError(f"{key!r}", file=PARAMS, field=where,
                         expected="procedural, bvh, amass, bvh:<folder>, amass:<folder> or a mapping of these to weights")
    kind, sep, folder = key.partition(":")
    if kind not in SOURCE_KINDS or (kind == "procedural" and sep):
        raise InputError(f"unknown motion source {key!r}", file=PARAMS, field=where,
                         expected="procedural, bvh, amass, bvh:<folder> or amass:<folder>")
    if kind == "procedural":
        return Entry("procedural")
    if sep:
        path, dedicated = resolve_path(root, folder, field=where), True
    else:
        value = opts.bvh_dir if kind == "bvh" else opts.amass_dir
        if value is None:
            raise InputError(f"{where} uses '{kind}' but no folder is set", file=PARAMS,
                             field=f"synthetic.mocap.{kind}_dir", expected=f"a folder of {SUFFIXES[kind]} files")
        path, dedicated = resolve_path(root, value, field=f"synthetic.mocap.{kind}_dir"), False
    if not path.is_dir():
        raise MissingFileError("motion folder not found", file=path, field=where,
                               expected=f"a folder of {SUFFIXES[kind]} files")
    return Entry(kind, path.resolve(), dedicated)


def parse_source(value: Any, *, where: str, opts: MocapSettings, root: Path) -> tuple[tuple[Entry, ...], np.ndarray]:
    """A motion_source value -> (entries, probabilities summing to 1)."""
    if isinstance(value, Mapping):
        if not value:
            raise InputError("an empty mix", file=PARAMS, field=where, expected="{source: weight, ...}")
        entries, weights = [], []
        for k, w in value.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise InputError(f"weight {w!r}", file=PARAMS, field=f"{where}.{k}",
                                 expected="a finite weight >= 0")
            entries.append(_entry(k, where=f"{where}.{k}", opts=opts, root=root))
            weights.append(float(w))
        total = sum(weights)
        if not total > 0:
            raise InputError(f"weights sum to {total}", file=PARAMS, field=where,
                             expected="weights that sum to a positive number")
        keep = [i for i, w in enumerate(weights) if w > 0]
        return tuple(entries[i] for i in keep), np.array([weights[i] / total for i in keep])
    return (_entry(value, where=where, opts=opts, root=root),), np.ones(1)


# ----------------------------------------------------------------------------- files


def _order_key(seed: int, label: str) -> str:
    return hashlib.sha256(f"{seed}/{label}".encode()).hexdigest()


def list_files(entry: Entry) -> list[tuple[Path, str]]:
    """(path, label inside the folder) of the entry's motion files, sorted by label."""
    assert entry.folder is not None
    suffix = SUFFIXES[entry.kind]
    out = [(p, p.relative_to(entry.folder).as_posix()) for p in entry.folder.rglob("*")
           if p.suffix.lower() == suffix and p.is_file()]
    return sorted(out, key=lambda t: t[1])


def deal(files: list[tuple[Path, str]], shares: dict[str, float], seed: int) -> dict[str, list[tuple[Path, str]]]:
    """Share files out over splits: hash order, contiguous runs sized by ``shares`` (>= 1 file each)."""
    names = list(shares)
    ordered = sorted(files, key=lambda t: _order_key(seed, t[1]))
    n = len(ordered)
    total = sum(shares.values())
    quota = np.array([shares[s] / total * n for s in names])
    counts = np.maximum(np.floor(quota).astype(int), 1)
    while counts.sum() > n:  # the minimum of one each overshot: take from the largest
        counts[int(np.argmax(counts))] -= 1
    while counts.sum() < n:  # largest remainders first
        counts[int(np.argmax(quota - counts))] += 1
    out, k = {}, 0
    for s, c in zip(names, counts, strict=True):
        out[s] = ordered[k:k + int(c)]
        k += int(c)
    return out


def _check_rate(fps: float, lo: float, *, file: Path, what: str) -> None:
    if not (lo * (1 - 1e-3) <= fps <= MAX_MOCAP_FPS):
        raise InputError(f"{fps:.4g} fps", file=file, field=what,
                         expected=f"a frame rate from synthetic.fps ({lo:g}) to {MAX_MOCAP_FPS:g} fps "
                                  f"(motion is only resampled down)")


def load_motion_file(path: Path, kind: str, *, fps: float, opts: MocapSettings) -> MotionClip:
    """Read one BVH/AMASS file -> a MotionClip at ``fps``, checked (joint map, frame rate)."""
    if kind == "amass":
        from hmrmamba.data.mocap.amass import read_amass

        clip = read_amass(path)
        _check_rate(clip.fps, fps, file=path, what="mocap_framerate")
        return resample_clip(clip, fps)
    bvh = read_bvh(path)
    _check_rate(bvh.fps, fps, file=path, what="Frame Time")
    jmap = bvh_map(opts, bvh.names)
    placed = {jmap[n.rsplit(":", 1)[-1]] for n in bvh.names if n.rsplit(":", 1)[-1] in jmap}
    missing = [j for j in REQUIRED_JOINTS if j not in placed]
    if missing:
        named = next((k for k, v in JOINT_MAPS.items() if v is jmap), "given")
        name = f"auto ({named})" if opts.joint_map == "auto" else named
        looks = {j: " or ".join(repr(b) for b, s in jmap.items() if s == j) or "mapped" for j in missing}
        shown = ", ".join(bvh.names[:24]) + (" ..." if len(bvh.names) > 24 else "")
        raise InputError(f"the {name} joint map (synthetic.mocap.joint_map) cannot place SMPL joints "
                         + ", ".join(f"{j} (no BVH joint {looks[j]})" for j in missing)
                         + f"; the file's joints: {shown}", file=path, field="HIERARCHY",
                         expected="a joint_map that fits: auto, " + ", ".join(sorted(JOINT_MAPS))
                                  + " or your own {bvh joint: smpl joint}")
    return bvh_to_smpl(bvh, jmap, units=opts.units, up=opts.up, target_fps=fps)


# ----------------------------------------------------------------------------- the plan


def plan_motion(syn: Mapping[str, Any], root: Path, *, fps: float, min_frames: int, seed: int
                ) -> dict[str, SplitMotion]:
    """Every split's motion source, its files read and checked -> {split: SplitMotion}.

    syn: the ``synthetic`` params section; root: the project root (relative folders).
    """
    opts = mocap_options(syn.get("mocap"))
    default = syn.get("motion_source", "procedural")
    splits: dict[str, SplitMotion] = {}
    shares: dict[Entry, dict[str, float]] = {}
    for name, spec in syn["splits"].items():
        own = spec.get("motion_source") if isinstance(spec, Mapping) else None
        where = f"synthetic.splits.{name}.motion_source" if own is not None else "synthetic.motion_source"
        entries, weights = parse_source(default if own is None else own, where=where, opts=opts, root=root)
        splits[name] = SplitMotion(name, entries, weights)
        for e, w in zip(entries, weights, strict=True):
            if e.kind != "procedural":
                shares.setdefault(e, {})[name] = float(spec["sequences"]) * float(w)

    owner: dict[Path, str] = {}
    cache: dict[Path, MotionClip] = {}
    for entry, split_shares in shares.items():
        files = list_files(entry)
        if not files:
            raise InputError(f"no {SUFFIXES[entry.kind]} files", file=entry.folder,
                             field=_field(entry, split_shares),
                             expected=f"a folder with {entry.kind.upper()} motion files ({SUFFIXES[entry.kind]})")
        if len(files) < len(split_shares):
            raise InputError(f"{len(files)} file(s) for splits {sorted(split_shares)}", file=entry.folder,
                             field=_field(entry, split_shares),
                             expected="at least one motion file per split that draws from the folder "
                                      "(splits are disjoint by file)")
        dealt = deal(files, split_shares, seed)
        for split, chosen in dealt.items():
            usable = []
            for path, label in chosen:
                key = path.resolve()
                if owner.setdefault(key, split) != split:
                    raise InputError(f"used by splits '{owner[key]}' and '{split}'", file=path,
                                     field=_field(entry, split_shares),
                                     expected="each motion file in one split (give each split its own folder)")
                if key not in cache:
                    cache[key] = load_motion_file(path, entry.kind, fps=fps, opts=opts)
                clip = cache[key]
                if clip.num_frames < min_frames:
                    splits[split].skipped.append(f"{label}: {clip.num_frames} frames at {fps:g} fps")
                    continue
                usable.append(MocapFile(path, label, clip))
            if not usable:
                raise InputError(f"no usable file for split '{split}' among {len(chosen)} "
                                 f"({'; '.join(splits[split].skipped[-3:])})", file=entry.folder,
                                 field=_field(entry, split_shares),
                                 expected=f"motion files at least synthetic.frames[0] = {min_frames} frames long "
                                          f"at {fps:g} fps")
            splits[split].files[entry] = usable
    return splits


def _field(entry: Entry, split_shares: Mapping[str, float]) -> str:
    if entry.dedicated:
        return f"synthetic.splits.{next(iter(split_shares))}.motion_source"
    return f"synthetic.mocap.{entry.kind}_dir"
