"""3DPW (von Marcard et al. 2018) sequence files -> H36M-17, camera-frame splits.

Files under the dataset root: ``sequenceFiles/{train,validation,test}/<sequence>.pkl``, Python 2
pickles (read with ``encoding="latin1"`` through the restricted unpickler
:func:`hmrmamba.safe_pickle.safe_load`; a pickle naming anything but numpy arrays and builtin
containers is refused before any of it runs). Keys used, per file:

* ``sequence`` (str), ``genders`` (per person ``'m'``/``'f'``), ``cam_intrinsics`` (3, 3),
  ``cam_poses`` (N, 4, 4) world -> camera extrinsics ``[R t; 0 1]``;
* per person: ``poses`` (N, 72) SMPL axis-angle, world; ``betas`` (>= 10,); ``trans`` (N, 3)
  world metres; ``jointPositions`` (N, 72) = SMPL-24 joints x 3, world metres;
  ``campose_valid`` (N,); ``poses2d`` (N, 3, 18) OpenPose-COCO18 pixels + confidence (only read
  for the ``openpose`` 2D source).

Each person is one sequence (``<sequence>/<person>``) at 30 fps; frames whose ``campose_valid``
is false keep their numbers but get ``valid = False`` (they are not scored).

Camera frame: ``x_cam = R x_world + t``. SMPL parameters move with it; SMPL rotates about its
rest pelvis ``j0`` and the posed pelvis is ``j0 + trans``, so ``j0 = jointPositions[pelvis] -
trans`` and ``trans_cam = R (trans + j0) + t - j0`` need no body model.

``joints3d`` (H36M-17):

* with the gendered SMPL models (``datasets.pw3d.smpl_male`` / ``smpl_female``, body-model
  ``.npz`` files, see :mod:`hmrmamba.body.body_model`): regressed from the camera-frame mesh with the
  H36M regressor (``datasets.pw3d.h36m_regressor``, or the male model's ``J_regressor_h36m``) --
  the PMCE/ARTS protocol; the mesh ground truth (MPVPE) is then available (``attrs["has_mesh_gt"]``)
  and, for MPVPE and the training vertex loss, made from the same gendered models per sequence
  (:mod:`hmrmamba.body.gendered`);
* without them: from ``jointPositions`` by :data:`SMPL24_TO_H36M17` (approximate, a few cm on
  spine/neck/head: see :func:`smpl24_to_h36m17`), and MPVPE is recorded as unavailable.

``joints2d`` is the pinhole projection of ``joints3d`` with ``cam_intrinsics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrmamba.data.real.tools import (
    PreparedSplit,
    SplitBuilder,
    check_options,
    project_pinhole,
    require_files,
    smpl_to_camera,
)
from hmrmamba.errors import InputError
from hmrmamba.skeleton import COCO17, H36M17, SMPL24

FPS = 30.0
SEQUENCE_DIR = "sequenceFiles"
SPLIT_DIRS: dict[str, str] = {"train": "train", "val": "validation", "test": "test"}
IMAGE_WH = (1080, 1920)  # portrait videos (a few are landscape; the largest side is what matters)

#: H36M-17 joint -> SMPL-24 joint used for it (head top is extrapolated, see smpl24_to_h36m17).
SMPL24_TO_H36M17: dict[str, str] = {
    "pelvis": "pelvis",
    "right_hip": "right_hip",
    "right_knee": "right_knee",
    "right_ankle": "right_ankle",
    "left_hip": "left_hip",
    "left_knee": "left_knee",
    "left_ankle": "left_ankle",
    "spine": "spine2",
    "thorax": "neck",
    "neck": "head",
    "left_shoulder": "left_shoulder",
    "left_elbow": "left_elbow",
    "left_wrist": "left_wrist",
    "right_shoulder": "right_shoulder",
    "right_elbow": "right_elbow",
    "right_wrist": "right_wrist",
}
#: head top = SMPL head + HEAD_TOP_EXTENT * (SMPL head - SMPL neck).
HEAD_TOP_EXTENT = 1.2

#: OpenPose-COCO18 names in their file order.
OPENPOSE18 = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
#: ``coco17[i] = openpose18[OPENPOSE18_TO_COCO17[i]]``.
OPENPOSE18_TO_COCO17: tuple[int, ...] = tuple(OPENPOSE18.index(n) for n in COCO17.names)


def smpl24_to_h36m17(j24: np.ndarray) -> np.ndarray:
    """SMPL-24 joints -> H36M-17 by the documented correspondence. j24: (..., 24, 3) -> (..., 17, 3).

    Spine = SMPL spine2, thorax = SMPL neck, neck/nose = SMPL head; head top is extrapolated
    along neck -> head. These are approximations (SMPL has no nose or head-top joint); where the
    gendered SMPL is given the H36M regressor is used instead.
    """
    j24 = np.asarray(j24)
    idx = [SMPL24.index(SMPL24_TO_H36M17[n]) if n != "head" else 0 for n in H36M17.names]
    out = j24[..., idx, :].copy()
    head, neck = j24[..., SMPL24.index("head"), :], j24[..., SMPL24.index("neck"), :]
    out[..., H36M17.index("head"), :] = head + HEAD_TOP_EXTENT * (head - neck)
    return out


@dataclass(frozen=True)
class PW3DConfig:
    """Reader options (``params["datasets"]["pw3d"]``): split name -> sequenceFiles subfolder."""

    splits: Mapping[str, str] = field(default_factory=lambda: dict(SPLIT_DIRS))

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> PW3DConfig:
        known = {"root", "splits", "smpl_male", "smpl_female", "h36m_regressor"}
        check_options(p, known, section="pw3d")
        splits = p.get("splits")
        if splits is None:
            return cls()
        if (
            not isinstance(splits, Mapping)
            or not splits
            or not all(isinstance(v, str) and v in SPLIT_DIRS.values() for v in splits.values())
        ):
            raise InputError(
                f"value {splits!r}",
                file="params.yaml",
                field="datasets.pw3d.splits",
                expected=f"a mapping split -> one of {sorted(SPLIT_DIRS.values())}",
            )
        return cls(splits={str(k): v for k, v in splits.items()})


def expected_files(root: Path, cfg: PW3DConfig) -> list[Path]:
    return [root / SEQUENCE_DIR / d for d in dict.fromkeys(cfg.splits.values())]


# --------------------------------------------------------------------------------------------
# reading one sequence file
# --------------------------------------------------------------------------------------------


def _arr(x: Any, path: Path, fld: str, shape: tuple[int | None, ...], what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"{type(x).__name__} is not numeric", file=path, field=fld, expected=f"{shape} {what}"
        ) from None
    if a.ndim != len(shape) or any(s is not None and d != s for d, s in zip(a.shape, shape)):
        raise InputError(
            f"shape {a.shape}",
            file=path,
            field=fld,
            expected=f"({', '.join('N' if s is None else str(s) for s in shape)}) {what}",
        )
    return a


def _per_person(d: Mapping[str, Any], key: str, path: Path, persons: int | None) -> list:
    if key not in d:
        raise InputError(
            f"missing key (keys: {sorted(d)})", file=path, field=key, expected="a 3DPW sequence file"
        )
    v = d[key]
    if isinstance(v, np.ndarray) and v.dtype != object:
        v = list(v)
    if not isinstance(v, (list, tuple, np.ndarray)) or (persons is not None and len(v) != persons):
        n = len(v) if hasattr(v, "__len__") else type(v).__name__
        raise InputError(
            f"{n} entries",
            file=path,
            field=key,
            expected=f"a list with one entry per person ({persons})" if persons else "a list per person",
        )
    return list(v)


@dataclass
class PW3DPerson:
    """One person of one sequence, in the camera frame (rows = the file's 30 fps frames)."""

    sequence: str
    person: int
    gender: str
    joints24: np.ndarray  # (N, 24, 3) camera metres
    pose: np.ndarray  # (N, 72) camera-frame SMPL pose
    betas: np.ndarray  # (10,)
    trans: np.ndarray  # (N, 3) camera-frame SMPL translation
    valid: np.ndarray  # (N,) bool
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy
    poses2d: np.ndarray | None = None  # (N, 18, 3) OpenPose px + confidence


def read_sequence(path: str | Path, *, with_2d: bool = False) -> list[PW3DPerson]:
    """One ``sequenceFiles/*/*.pkl`` -> its people in the camera frame (see the module doc)."""
    from hmrmamba.safe_pickle import safe_load

    path = Path(path)
    d = safe_load(path, encoding="latin1")
    if not isinstance(d, Mapping):
        raise InputError(
            f"top level is {type(d).__name__}", file=path, expected="a dict (3DPW sequence file)"
        )
    for key in ("sequence", "cam_poses", "cam_intrinsics"):
        if key not in d:
            raise InputError(
                f"missing key (keys: {sorted(d)})", file=path, field=key, expected="a 3DPW sequence file"
            )
    seq = d["sequence"]
    seq = seq.decode("latin1") if isinstance(seq, bytes) else str(seq)
    cam_poses = _arr(d["cam_poses"], path, "cam_poses", (None, 4, 4), "world -> camera extrinsics")
    n = cam_poses.shape[0]
    K = _arr(d["cam_intrinsics"], path, "cam_intrinsics", (3, 3), "intrinsics")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(
            "non-finite or non-positive focal length",
            file=path,
            field="cam_intrinsics",
            expected="a calibrated 3x3 K",
        )
    poses = _per_person(d, "poses", path, None)
    persons = len(poses)
    if persons == 0:
        raise InputError("no people", file=path, field="poses", expected="at least one person")
    trans = _per_person(d, "trans", path, persons)
    betas = _per_person(d, "betas", path, persons)
    joints = _per_person(d, "jointPositions", path, persons)
    valid = _per_person(d, "campose_valid", path, persons)
    genders = _per_person(d, "genders", path, persons)
    p2d = _per_person(d, "poses2d", path, persons) if with_2d else [None] * persons
    R, t = cam_poses[:, :3, :3], cam_poses[:, :3, 3]
    intr = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    out = []
    for p in range(persons):
        pose = _arr(poses[p], path, f"poses[{p}]", (n, 72), "SMPL axis-angle per frame")
        tr = _arr(trans[p], path, f"trans[{p}]", (n, 3), "metres")
        j = _arr(joints[p], path, f"jointPositions[{p}]", (n, 72), "SMPL-24 joints x 3, metres").reshape(
            n, 24, 3
        )
        b = _arr(betas[p], path, f"betas[{p}]", (None,), "shape coefficients").reshape(-1)
        if b.shape[0] < 10:
            raise InputError(f"{b.shape[0]} coefficients", file=path, field=f"betas[{p}]", expected=">= 10")
        ok = _arr(valid[p], path, f"campose_valid[{p}]", (n,), "flags").astype(bool)
        finite = (
            np.isfinite(pose).all(1)
            & np.isfinite(tr).all(1)
            & np.isfinite(j).all((1, 2))
            & np.isfinite(cam_poses).all((1, 2))
        )
        if (ok & ~finite).any():
            f = int(np.nonzero(ok & ~finite)[0][0])
            raise InputError(
                f"non-finite values at valid frame {f}",
                file=path,
                field=f"poses/trans/jointPositions[{p}]",
                expected="finite numbers wherever campose_valid is set",
            )
        if not np.isfinite(b[:10]).all():
            raise InputError("non-finite values", file=path, field=f"betas[{p}]", expected="finite numbers")
        ok &= finite
        pose, tr, j = (np.where(finite[(...,) + (None,) * (a.ndim - 1)], a, 0.0) for a in (pose, tr, j))
        Rs = np.where(finite[:, None, None], R, np.eye(3))
        ts = np.where(finite[:, None], t, 0.0)
        j_cam = np.einsum("nij,nkj->nki", Rs, j) + ts[:, None]
        j0 = j[:, 0] - tr
        pose_c, trans_c = smpl_to_camera(pose, tr, j0, Rs, ts)  # one camera per frame (it moves)
        g = genders[p]
        g = g.decode("latin1") if isinstance(g, bytes) else str(g)
        g = {"male": "m", "female": "f"}.get(g.lower(), g.lower()[:1])
        if g not in ("m", "f"):
            raise InputError(
                f"gender {genders[p]!r}", file=path, field=f"genders[{p}]", expected="'m' or 'f'"
            )
        kp2d = None
        if with_2d:
            raw = _arr(p2d[p], path, f"poses2d[{p}]", (n, 3, 18), "OpenPose-COCO18 x, y, confidence")
            kp2d = np.nan_to_num(raw.transpose(0, 2, 1), nan=0.0, posinf=0.0, neginf=0.0)
        out.append(
            PW3DPerson(
                sequence=seq,
                person=p,
                gender=g,
                joints24=j_cam,
                pose=pose_c,
                betas=b[:10],
                trans=trans_c,
                valid=ok,
                intrinsics=intr,
                poses2d=kp2d,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# gendered SMPL (optional)
# --------------------------------------------------------------------------------------------


class GenderedMesh:
    """H36M-17 joints regressed from the gendered SMPL mesh (camera frame).

    The male/female models are loaded (and checked to share one topology) by
    :func:`hmrmamba.body.gendered.load_gendered_models` and posed by
    :class:`hmrmamba.body.gendered.GroundTruthBodies`: the same path that makes the ground-truth
    meshes of the training vertex loss and of MPVPE.
    """

    def __init__(self, *, male: Path, female: Path, h36m_regressor: Path | None):
        import torch

        from hmrmamba.body.body_model import h36m_regressor as load_regressor
        from hmrmamba.body.gendered import FEMALE, MALE, GroundTruthBodies, load_gendered_models

        self.bodies = GroundTruthBodies(None, load_gendered_models({MALE: male, FEMALE: female}))
        self.reg = load_regressor(h36m_regressor or male).to(torch.float32)
        self.paths = {"m": str(male), "f": str(female)}

    def joints(self, person: PW3DPerson, *, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """-> H36M-17 (N, 17, 3) and the model's SMPL pelvis (N, 3), camera metres."""
        import torch

        from hmrmamba.body.gendered import gender_code

        model = self.bodies.model(gender_code(person.gender))
        n = person.pose.shape[0]
        h36m, pelvis = [], []
        with torch.no_grad():
            for a in range(0, n, chunk):
                sl = slice(a, min(n, a + chunk))
                m = sl.stop - sl.start
                f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
                out = model(
                    global_orient=f32(person.pose[sl, :3]),
                    body_pose=f32(person.pose[sl, 3:]),
                    betas=f32(np.tile(person.betas, (m, 1))),
                    transl=f32(person.trans[sl]),
                )
                h36m.append(torch.einsum("jv,nvc->njc", self.reg, out.vertices).numpy())
                pelvis.append(out.joints[:, 0].numpy())
        return np.concatenate(h36m).astype(np.float64), np.concatenate(pelvis).astype(np.float64)


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


def _sequence_files(root: Path, folder: str) -> list[Path]:
    files = sorted((root / SEQUENCE_DIR / folder).glob("*.pkl"))
    if not files:
        raise InputError(
            "no .pkl sequence files",
            file=root / SEQUENCE_DIR / folder,
            expected="3DPW's sequenceFiles/<split>/*.pkl",
        )
    return files


def build_pw3d(
    root: str | Path,
    cfg: PW3DConfig,
    *,
    smpl_male: Path | None = None,
    smpl_female: Path | None = None,
    h36m_regressor: Path | None = None,
) -> dict[str, PreparedSplit]:
    """Read 3DPW's sequence files under ``root`` into the configured splits (nothing written)."""
    root = Path(root)
    require_files(
        expected_files(root, cfg),
        dataset="3dpw",
        how="3DPW's sequenceFiles/{train,validation,test}/*.pkl (see docs/real_data.md)",
    )
    if (smpl_male is None) != (smpl_female is None):
        raise InputError(
            "only one gendered SMPL model given",
            file="params.yaml",
            field="datasets.pw3d.smpl_male/smpl_female",
            expected="both or neither",
        )
    mesh = None
    if smpl_male is not None:
        require_files(
            [smpl_male, smpl_female],
            dataset="3dpw",
            how="gendered SMPL body-model .npz files (hmrmamba convert-smpl)",
        )
        mesh = GenderedMesh(male=smpl_male, female=smpl_female, h36m_regressor=h36m_regressor)
    out: dict[str, PreparedSplit] = {}
    for split, folder in cfg.splits.items():
        b = SplitBuilder()
        check = []
        for path in _sequence_files(root, folder):
            for person in read_sequence(path):
                n = person.pose.shape[0]
                if mesh is not None:
                    j3d, pelvis = mesh.joints(person)
                    v = person.valid
                    if v.any():
                        check.append(np.linalg.norm(pelvis[v] - person.joints24[v, 0], axis=-1).mean())
                else:
                    j3d = smpl24_to_h36m17(person.joints24)
                frames = {
                    "joints3d": j3d.astype(np.float32),
                    "joints2d": project_pinhole(j3d, person.intrinsics).astype(np.float32),
                    "valid": person.valid.copy(),
                    "smpl_pose": person.pose.astype(np.float32),
                    "smpl_betas": np.broadcast_to(person.betas, (n, 10)).astype(np.float32),
                    "smpl_trans": person.trans.astype(np.float32),
                    "smpl_valid": np.ones(n, bool),
                }
                b.add(
                    frames,
                    {
                        "seq_name": f"{person.sequence}/{person.person}",
                        "subject": person.sequence,
                        "motion": person.sequence.rsplit("_", 1)[0],
                        "camera": person.intrinsics,
                        "fps": FPS,
                        "person": person.person,
                        "gender": person.gender,
                        "source_dir": folder,
                        "image_wh": np.asarray(
                            IMAGE_WH if person.intrinsics[2] < person.intrinsics[3] else IMAGE_WH[::-1],
                            np.int64,
                        ),
                    },
                )
        frames, seqs = b.build()
        attrs = {
            "dataset": "3dpw",
            "split": split,
            "joint_set": "h36m17",
            "image_size": int(max(IMAGE_WH)),
            "source_fps": FPS,
            "has_smpl": True,
            "has_mesh_gt": mesh is not None,
            "smpl_gendered": True,
            "joints3d_source": (
                "H36M regressor on the gendered SMPL mesh"
                if mesh is not None
                else "jointPositions (SMPL-24) -> H36M-17 by hmrmamba.data.real.pw3d.SMPL24_TO_H36M17"
            ),
            "joints2d_source": "projected with cam_intrinsics",
            "mesh_gt_note": (
                f"gendered SMPL: male {mesh.paths['m']}, female {mesh.paths['f']} "
                "(sequences/gender says which)"
            )
            if mesh is not None
            else "gendered SMPL not given (datasets.pw3d.smpl_male/smpl_female): MPVPE unavailable; "
            "smpl_* are the 3DPW gendered fits",
        }
        metrics = {"persons": len(b), "valid_frames": int(frames["valid"].sum())}
        if check:
            metrics["smpl_pelvis_vs_jointPositions_mm"] = round(1000 * float(np.mean(check)), 2)
        out[split] = PreparedSplit(frames=frames, seqs=seqs, attrs=attrs, metrics=metrics)
    return out


def pw3d_openpose(root: str | Path, cfg: PW3DConfig, *, data):
    """The sequence files' OpenPose ``poses2d`` for the rows of a written split -> Detections.

    COCO18 -> COCO17 (drop the OpenPose neck) -> H36M-17 (:func:`coco17_to_h36m17`); confidences
    as in the file (undetected joints have 0).
    """
    from hmrmamba.detect.sources import Detections, coco17_to_h36m17

    root = Path(root)
    seqs = data.seqs
    for k in ("subject", "person", "source_dir"):
        if k not in seqs:
            raise InputError(
                "missing sequence field",
                file=data.path,
                field=f"sequences/{k}",
                expected="a split written by the 3dpw reader (re-run prepare)",
            )
    cache: dict[str, list[PW3DPerson]] = {}
    kps, confs = [], []
    for i in range(len(seqs["seq_len"])):
        path = root / SEQUENCE_DIR / str(seqs["source_dir"][i]) / f"{seqs['subject'][i]}.pkl"
        require_files([path], dataset="3dpw", how="the sequence file the split was prepared from")
        if str(path) not in cache:
            cache[str(path)] = read_sequence(path, with_2d=True)
        person = cache[str(path)][int(seqs["person"][i])]
        raw = person.poses2d
        if raw.shape[0] != int(seqs["seq_len"][i]):
            raise InputError(
                f"{raw.shape[0]} frames, the split has {int(seqs['seq_len'][i])}",
                file=path,
                field=f"poses2d[{person.person}]",
                expected="the split's frame count (re-run prepare)",
            )
        coco = raw[:, list(OPENPOSE18_TO_COCO17)]
        kp, conf = coco17_to_h36m17(coco[..., :2], coco[..., 2])
        kps.append(kp)
        confs.append(np.clip(conf, 0.0, 1.0))
    return Detections(
        kp=np.concatenate(kps).astype(np.float32),
        conf=np.concatenate(confs).astype(np.float32),
        source="openpose",
        meta={"files": sorted(cache)},
    )
