"""Which body model makes a sequence's ground-truth mesh (the PMCE/VIBE 3DPW protocol).

3DPW's SMPL fits were made with the male or female SMPL, per person. PMCE (after Pose2Mesh) and
VIBE build the 3DPW ground-truth mesh with that gendered model, while the prediction uses the
neutral model's topology (the same vertices). A prepared split says it is gendered with the
attributes ``smpl_gendered`` and ``has_mesh_gt`` (both true: the 3DPW reader was given
``datasets.pw3d.smpl_male`` / ``smpl_female``) and its sequence table's ``gender`` column
(``'m'`` / ``'f'``). Every other split (synthetic, Human3.6M, 3DPW prepared without the gendered
models) keeps the configured body model (``data/body_model/body_model.npz``), unchanged.

Per-frame gender codes (``smpl_gender``, int8): :data:`CONFIGURED` 0, :data:`MALE` 1,
:data:`FEMALE` 2.

* :func:`is_gendered` / :func:`frame_genders`: does a split need the gendered models, and which
  one each frame uses;
* :func:`gendered_paths` / :func:`load_gendered_models`: the model files from the typed settings
  (``datasets.pw3d``), loaded and checked against the prediction's vertex count;
* :class:`GroundTruthBodies`: the configured model plus the gendered ones, run per frame by code;
* :func:`ground_truth_bodies`: all of the above for a split, what the consumers (the training
  vertex loss, evaluation's MPVPE) call; :func:`read_split_header` reads just the attributes it
  needs from a prepared split file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from hmrmamba.errors import InputError

__all__ = [
    "CONFIGURED",
    "FEMALE",
    "GENDER_CODES",
    "MALE",
    "BodyOutput",
    "GroundTruthBodies",
    "frame_genders",
    "gender_code",
    "gendered_paths",
    "is_gendered",
    "load_gendered_models",
    "ground_truth_bodies",
    "read_split_header",
]

CONFIGURED, MALE, FEMALE = 0, 1, 2
#: sequence-table gender -> per-frame code
GENDER_CODES: dict[str, int] = {"m": MALE, "f": FEMALE}
#: code -> its params key under ``datasets.pw3d``
MODEL_KEYS: dict[int, str] = {MALE: "smpl_male", FEMALE: "smpl_female"}
#: SMPL's own joints (smplx appends landmark joints after them)
SMPL_JOINTS = 24

_HOW = "the gendered SMPL body-model .npz the split was prepared with (hmrmamba convert-smpl)"


def gender_code(value: Any, *, file: str | Path | None = None, field: str = "sequences/gender") -> int:
    """``'m'``/``'male'``/``'f'``/``'female'`` (str or bytes) -> :data:`MALE` / :data:`FEMALE`."""
    g = value.decode("latin1") if isinstance(value, bytes) else str(value)
    g = {"male": "m", "female": "f"}.get(g.lower(), g.lower())
    if g not in GENDER_CODES:
        raise InputError(f"gender {value!r}", file=file, field=field, expected="'m' or 'f'")
    return GENDER_CODES[g]


def is_gendered(attrs: Mapping[str, Any]) -> bool:
    """A split whose ground-truth meshes come from the gendered models: attrs ``smpl_gendered`` and
    ``has_mesh_gt`` both true (3DPW prepared with ``datasets.pw3d.smpl_male``/``smpl_female``)."""
    return bool(attrs.get("smpl_gendered", False)) and bool(attrs.get("has_mesh_gt", False))


def frame_genders(split: Any) -> np.ndarray | None:
    """Per-frame gender codes of a gendered split, None for any other.

    ``split``: anything with ``attrs``, ``seqs`` (``gender`` (S,), ``seq_len`` (S,)) and optionally
    ``path`` (an :class:`hmrmamba.data.h5schema.Split` or a reader's ``PreparedSplit``).
    -> (N,) int8 codes (:data:`MALE` / :data:`FEMALE`), frames in split order.
    """
    if not is_gendered(split.attrs):
        return None
    file = getattr(split, "path", None)
    seqs = split.seqs
    if "gender" not in seqs:
        raise InputError("missing sequence field, but attrs say smpl_gendered and has_mesh_gt", file=file,
                         field="sequences/gender", expected="'m'/'f' per sequence (re-run prepare)")
    codes = np.asarray([gender_code(g, file=file, field=f"sequences/gender[{i}]")
                        for i, g in enumerate(np.asarray(seqs["gender"]).tolist())], dtype=np.int8)
    return np.repeat(codes, np.asarray(seqs["seq_len"], dtype=np.int64))


def gendered_paths(params: Mapping[str, Any], root: str | Path) -> dict[int, Path | None]:
    """``datasets.pw3d.smpl_male`` / ``smpl_female`` from the typed settings, resolved inside the
    project ``root`` as the prepare stage resolves them. -> {MALE: path or None, FEMALE: ...}."""
    from hmrmamba.config import resolve_path
    from hmrmamba.settings import section_settings

    pw3d = section_settings(params, "datasets").pw3d
    out: dict[int, Path | None] = {}
    for code, key in MODEL_KEYS.items():
        value = getattr(pw3d, key)
        out[code] = (None if value in (None, "")
                     else resolve_path(Path(root), value, field=f"datasets.pw3d.{key}"))
    return out


def load_gendered_models(paths: Mapping[int, Path | None], *, vertices: int | None = None,
                         split: str | Path | None = None) -> dict[int, nn.Module]:
    """Load the male and female body models (``smplx.SMPL`` via :func:`hmrmamba.body.body_model.load_smpl`).

    paths: {MALE: .npz, FEMALE: .npz}; vertices: the prediction topology's vertex count V (None:
    the two models need only agree with each other); split: named in the error when a path is unset.
    -> {MALE: model, FEMALE: model}. A path unset or missing, or a model with another vertex count,
    is an :class:`InputError` naming the file, the params key and what was expected.
    """
    from hmrmamba.body.body_model import load_smpl

    models: dict[int, nn.Module] = {}
    for code in (MALE, FEMALE):
        key = f"datasets.pw3d.{MODEL_KEYS[code]}"
        path = paths.get(code)
        if path is None:
            why = f"not set, but {split} was prepared with gendered SMPL meshes" if split else "not set"
            raise InputError(why, file="params.yaml", field=key, expected=_HOW)
        path = Path(path)
        if not path.is_file():
            raise InputError("file not found", file=path, field=key, expected=_HOW)
        model = load_smpl(path)
        n = int(model.v_template.shape[0])
        want = vertices if vertices is not None else (
            int(next(iter(models.values())).v_template.shape[0]) if models else None)
        if want is not None and n != want:
            raise InputError(f"{n} vertices", file=path, field=f"{key}: v_template",
                             expected=f"{want} vertices, the prediction's topology "
                                      "(the configured body model)")
        models[code] = model
    return models


class BodyOutput(NamedTuple):
    """Posed bodies: vertices (M, V, 3) and SMPL joints (M, 24, 3), metres."""

    vertices: torch.Tensor
    joints: torch.Tensor


class GroundTruthBodies(nn.Module):
    """The body models of ground-truth meshes: the configured one (code 0) and, for gendered
    splits, the male (1) and female (2) ones; each frame is posed by the model of its code.

    Called like ``smplx.SMPL``: global_orient (M, 3), body_pose (M, 69), betas (M, 10),
    transl (M, 3), gender (M,) int codes or None. With ``gender=None`` this *is* the configured
    model's call (its own output, bit for bit); otherwise -> :class:`BodyOutput`.
    """

    def __init__(self, configured: nn.Module | None, gendered: Mapping[int, nn.Module] | None = None):
        super().__init__()
        self.configured = configured
        self.gendered = nn.ModuleDict({str(k): m for k, m in (gendered or {}).items()})

    def model(self, code: int) -> nn.Module:
        """The body model of gender code ``code``."""
        m = self.configured if code == CONFIGURED else (
            self.gendered[str(code)] if str(code) in self.gendered else None)
        if m is None:
            have = [CONFIGURED] if self.configured is not None else []
            have += sorted(int(k) for k in self.gendered)
            raise InputError(f"gender code {code} has no body model", field="smpl_gender",
                             expected=f"codes {have} (0 configured, 1 male, 2 female: set "
                                      "datasets.pw3d.smpl_male/smpl_female for a gendered split)")
        return m

    def forward(self, *, global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor,
                transl: torch.Tensor, gender: torch.Tensor | None = None):
        args = {"global_orient": global_orient, "body_pose": body_pose, "betas": betas, "transl": transl}
        if gender is None:
            return self.model(CONFIGURED)(**args)
        gender = torch.as_tensor(gender, device=global_orient.device).reshape(-1).long()
        codes = [int(c) for c in torch.unique(gender).tolist()]
        if len(codes) == 1:
            out = self.model(codes[0])(**args)
            return BodyOutput(out.vertices, out.joints[:, :SMPL_JOINTS])
        verts = joints = None
        for c in codes:
            rows = torch.nonzero(gender == c).squeeze(1)
            out = self.model(c)(**{k: v[rows] for k, v in args.items()})
            if verts is None:
                m = gender.shape[0]
                verts = out.vertices.new_empty((m,) + tuple(out.vertices.shape[1:]))
                joints = out.joints.new_empty((m, SMPL_JOINTS, 3))
            verts[rows] = out.vertices
            joints[rows] = out.joints[:, :SMPL_JOINTS]
        return BodyOutput(verts, joints)


class SplitHeader(NamedTuple):
    """What :func:`ground_truth_bodies` needs of a prepared split: its file and attributes."""

    path: Path
    attrs: dict[str, Any]


def read_split_header(path: str | Path) -> SplitHeader:
    """A prepared split's attributes only (no frames read): enough to know whether it is gendered."""
    from hmrmamba.data.h5schema import corrupt_as_input_error, decode_strings, open_h5

    path = Path(path)
    with corrupt_as_input_error(path, ["attrs"], "an HDF5 split written by the pipeline (re-run prepare)"):
        with open_h5(path) as h5:
            attrs = decode_strings(dict(h5.attrs))
    return SplitHeader(path, attrs)


def ground_truth_bodies(params: Mapping[str, Any], root: str | Path, split: Any,
                        configured: nn.Module) -> GroundTruthBodies:
    """The ground-truth body models for ``split`` (anything with ``attrs``, e.g. a loaded
    :class:`hmrmamba.data.h5schema.Split` or a :class:`SplitHeader`; ``path`` for messages).

    Gendered split: the configured model plus the male/female models of ``datasets.pw3d``
    (checked: set, present, same vertex count as ``configured``); any other: the configured
    model alone (the gendered files are not read).
    """
    if not is_gendered(split.attrs):
        return GroundTruthBodies(configured)
    where = getattr(split, "path", None) or "the split"
    models = load_gendered_models(gendered_paths(params, root), vertices=int(configured.v_template.shape[0]),
                                  split=where)
    return GroundTruthBodies(configured, models)
