"""SMPL-format body model files: save, load, validate, convert, and build an ``smplx.SMPL``.

A body model file is a plain ``.npz`` (no pickles) with SMPL's field names. It is made either by
:func:`hmrmamba.body.procedural.build_procedural_smpl` (the default, shippable model) or by
:func:`convert_smpl_pickle` from the real SMPL ``.pkl`` (https://smpl.is.tue.mpg.de). Both load
through the same path: ``smplx.SMPL(model_path="", data_struct=smplx.utils.Struct(**arrays))``,
so smplx never opens a user's file itself (it would ``pickle.load`` it).

Fields (N vertices, normally 6890; J = 24 joints):

=====================  ==================  ===========================================
``v_template``         (N, 3) float        rest-pose vertices, metres, y up
``f``                  (F, 3) int          triangles, indices < N
``shapedirs``          (N, 3, B) float     shape blend shapes, B >= 1 (10 or 300)
``posedirs``           (N, 3, 207) float   pose correctives ((J-1) * 9 = 207)
``J_regressor``        (24, N) float       joints from vertices
``weights``            (N, 24) float       LBS weights
``kintree_table``      (2, 24) int         row 0 parents (root: 4294967295), row 1 ids
``J_regressor_h36m``   (17, N) float       optional: H36M-17 joints from vertices
``vertex_ids``         (21,) int           optional: smplx's extra-joint landmark vertices
=====================  ==================  ===========================================
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError, MissingFileError

__all__ = [
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "convert_smpl_pickle",
    "h36m_regressor",
    "load_body_arrays",
    "load_regressor_npy",
    "load_smpl",
    "save_body_model",
    "validate_body_arrays",
]

REQUIRED_FIELDS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
OPTIONAL_FIELDS = ("J_regressor_h36m", "vertex_ids")
_NUM_JOINTS = 24

_GET_SMPL = (
    "Either generate the procedural model with the `body_model` stage "
    "(hmrmamba.body.procedural.build_procedural_smpl + hmrmamba.body.body_model.save_body_model), or register at "
    "https://smpl.is.tue.mpg.de, download SMPL for Python (e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl "
    "or SMPL_NEUTRAL.pkl), convert it once with `hmrmamba convert-smpl SRC.pkl DST.npz` "
    "(hmrmamba.body.body_model.convert_smpl_pickle) and put the .npz at this path")


def _spec(n: int) -> dict[str, tuple[tuple[int | None, ...], str]]:
    """field -> (shape with None for free axes, 'float' | 'int')."""
    return {
        "v_template": ((n, 3), "float"),
        "f": ((None, 3), "int"),
        "shapedirs": ((n, 3, None), "float"),
        "posedirs": ((n, 3, (_NUM_JOINTS - 1) * 9), "float"),
        "J_regressor": ((_NUM_JOINTS, n), "float"),
        "weights": ((n, _NUM_JOINTS), "float"),
        "kintree_table": ((2, _NUM_JOINTS), "int"),
        "J_regressor_h36m": ((17, n), "float"),
        "vertex_ids": ((21,), "int"),
    }


def _shape_str(shape: tuple[int | None, ...]) -> str:
    inner = ", ".join("*" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def validate_body_arrays(arrays: dict[str, Any], *, file: str | Path | None = None) -> dict[str, np.ndarray]:
    """Check every field's presence, shape, dtype and index range. -> the arrays (as ndarrays)."""
    missing = [k for k in REQUIRED_FIELDS if k not in arrays]
    if missing:
        raise InputError(f"missing field(s) {missing}", file=file, field=missing[0],
                         expected=f"all of {list(REQUIRED_FIELDS)}")
    unknown = sorted(set(arrays) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {unknown}", file=file, field=unknown[0],
                         expected=f"only {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    vt = np.asarray(arrays["v_template"])
    if vt.ndim != 2 or vt.shape[1] != 3:
        raise InputError(f"shape {vt.shape}", file=file, field="v_template", expected="(N, 3)")
    n = vt.shape[0]
    out: dict[str, np.ndarray] = {}
    for name, (shape, kind) in _spec(n).items():
        if name not in arrays:
            continue
        a = np.asarray(arrays[name])
        ok_kind = np.issubdtype(a.dtype, np.floating if kind == "float" else np.integer)
        if not ok_kind:
            raise InputError(f"dtype {a.dtype}", file=file, field=name, expected=f"{kind} dtype")
        if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
            raise InputError(f"shape {a.shape}", file=file, field=name, expected=_shape_str(shape))
        if kind == "float" and not np.isfinite(a).all():
            raise InputError("non-finite values", file=file, field=name, expected="finite floats")
        out[name] = a
    if out["shapedirs"].shape[2] < 1:
        raise InputError("no shape components", file=file, field="shapedirs", expected="(N, 3, B>=1)")
    f = out["f"]
    if len(f) == 0 or f.min() < 0 or f.max() >= n:
        raise InputError(f"indices outside [0, {n})", file=file, field="f", expected=f"vertex ids < {n}")
    kt = out["kintree_table"]
    parents = kt[0].astype(np.int64)
    is_tree = all(0 <= parents[j] < j for j in range(1, _NUM_JOINTS))
    if not np.array_equal(kt[1], np.arange(_NUM_JOINTS)) or not is_tree:
        raise InputError("not a kinematic tree in joint order", file=file, field="kintree_table",
                         expected="row 1 = 0..23, row 0 parents with parent[j] < j")
    if "vertex_ids" in out and (out["vertex_ids"].min() < 0 or out["vertex_ids"].max() >= n):
        raise InputError(f"indices outside [0, {n})", file=file, field="vertex_ids", expected=f"< {n}")
    return out


def save_body_model(path: str | Path, arrays: dict[str, Any]) -> None:
    """Validate and atomically write a body model as a compressed, pickle-free ``.npz``."""
    checked = validate_body_arrays(arrays, file=path)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **checked)


def load_body_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a body model ``.npz``. -> dict of the fields present."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"SMPL-format body model not found. {_GET_SMPL}", file=path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"not a readable .npz ({exc}); a real SMPL .pkl must be converted first with "
                         "`hmrmamba convert-smpl`", file=path, expected="a .npz body model") from None
    except ValueError as exc:  # e.g. object arrays (pickles) inside the archive
        raise InputError(f"refused to read ({exc})", file=path, expected="plain numeric arrays") from None
    return validate_body_arrays(arrays, file=path)


def load_smpl(path: str | Path, *, num_betas: int = 10, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, batch_size: int = 1):
    """Build an ``smplx.SMPL`` from a body model ``.npz`` (procedural or converted real SMPL)."""
    import smplx
    from smplx.utils import Struct

    arrays = load_body_arrays(path)
    kwargs: dict[str, Any] = {}
    if "vertex_ids" in arrays:
        from hmrmamba.body.procedural import VERTEX_ID_NAMES

        kwargs["vertex_ids"] = {name: int(i) for name, i in zip(VERTEX_ID_NAMES, arrays["vertex_ids"])}
    struct = Struct(**{k: arrays[k] for k in REQUIRED_FIELDS})
    with contextlib.redirect_stdout(io.StringIO()):  # smplx prints a warning for < 300 betas
        model = smplx.SMPL(model_path="", data_struct=struct, num_betas=num_betas, dtype=dtype,
                           batch_size=batch_size, **kwargs)
    return model.to(device)


def load_regressor_npy(path: str | Path, *, rows: int = 17) -> np.ndarray:
    """A plain ``.npy`` joint regressor such as SPIN's ``J_regressor_h36m.npy``. -> (rows, N) float64."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("joint regressor .npy not found (SPIN/PMCE ship J_regressor_h36m.npy)",
                               file=path)
    try:
        reg = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"refused to read ({exc})", file=path, expected="a float array") from None
    if reg.ndim != 2 or reg.shape[0] != rows or not np.issubdtype(reg.dtype, np.floating):
        raise InputError(f"shape {reg.shape} dtype {reg.dtype}", file=path, field="J_regressor_h36m",
                         expected=f"({rows}, N) float")
    return reg.astype(np.float64)


def h36m_regressor(path: str | Path, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The H36M-17 joint regressor. -> (17, N) tensor.

    ``path`` is a body model ``.npz`` with ``J_regressor_h36m`` or a plain ``.npy`` of shape
    (17, N) such as SPIN's ``J_regressor_h36m.npy``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("H36M joint regressor not found; it is part of the procedural body model "
                               "(field J_regressor_h36m), or use SPIN/PMCE's J_regressor_h36m.npy", file=path)
    if path.suffix == ".npy":
        reg = load_regressor_npy(path)
    else:
        arrays = load_body_arrays(path)
        if "J_regressor_h36m" not in arrays:
            raise InputError("field absent (a converted real SMPL has none; pass SPIN's "
                             "J_regressor_h36m.npy instead)", file=path, field="J_regressor_h36m",
                             expected="(17, N) float")
        reg = arrays["J_regressor_h36m"]
    return torch.as_tensor(np.asarray(reg, dtype=np.float64), dtype=dtype)


def convert_smpl_pickle(src_pkl: str | Path, dst_npz: str | Path, *,
                        h36m_regressor_path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Convert a real SMPL ``.pkl`` (chumpy, scipy.sparse) to a body model ``.npz``, without chumpy.

    Reads through :func:`hmrmamba.safe_pickle.safe_load`; ``J_regressor`` becomes dense. An
    optional SPIN-style ``J_regressor_h36m.npy`` is stored too. -> the arrays written.
    """
    from hmrmamba.safe_pickle import safe_load, to_array

    src = Path(src_pkl)
    if not src.is_file():
        raise MissingFileError(
            "SMPL pickle not found. Register at https://smpl.is.tue.mpg.de, download SMPL for Python "
            "and pass the path of its model .pkl (e.g. basicModel_neutral_lbs_10_207_0_v1.0.0.pkl)",
            file=src)
    data = safe_load(src)
    if not isinstance(data, dict):
        raise InputError(f"top level is {type(data).__name__}", file=src, expected="a dict of SMPL fields")
    out: dict[str, np.ndarray] = {}
    for name in REQUIRED_FIELDS:
        if name not in data:
            raise InputError("missing", file=src, field=name, expected=f"SMPL fields {list(REQUIRED_FIELDS)}")
        a = to_array(data[name], file=src, field=name)
        out[name] = a.astype(np.int64) if name in ("f", "kintree_table") else a.astype(np.float64)
    if h36m_regressor_path is not None:
        out["J_regressor_h36m"] = h36m_regressor(h36m_regressor_path).double().numpy()
    validate_body_arrays(out, file=src)
    save_body_model(dst_npz, out)
    return out
