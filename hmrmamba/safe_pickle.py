"""A restricted unpickler for the pickles this field ships (SMPL ``.pkl``, 3DPW, GraphCMR ``.npz``).

``pickle.load`` runs whatever callable a file names, so it must never see a user's file.
:func:`safe_load` resolves globals through an allow-list only:

* builtins containers and scalars (``dict``, ``list``, ``set``, ``complex``, ...), ``_codecs.encode``
  (Python 3 writes ``bytes`` with it under protocol 2) and ``collections.OrderedDict``;
* numpy array and scalar reconstruction (``ndarray``, ``dtype``, ``_reconstruct``, ``scalar``,
  ``_frombuffer``) under both the ``numpy.core`` and ``numpy._core`` module names;
* scipy sparse matrices (csc/csr/coo, any scipy version's module path), rebuilt from their stored
  components rather than trusted as they are;
* ``chumpy`` classes (SMPL's pickles hold ``chumpy.ch.Ch`` objects) are replaced by
  :class:`ChumpyStub`; after loading, a stub with an array state (``x``) is replaced by that array.

Anything else raises :class:`~hmrmamba.errors.InputError` naming the file and the refused
``module.name``, before any object of that class is made.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import pickle
import struct
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse as sp

from hmrmamba.errors import InputError, MissingFileError

__all__ = ["ChumpyStub", "safe_load", "safe_loads", "to_array"]


class ChumpyStub:
    """Stands in for a ``chumpy`` object; keeps the pickled state (``state['x']`` is the array)."""

    chumpy_class = "chumpy.?"

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    @property
    def array(self) -> np.ndarray | None:
        x = getattr(self, "state", {}).get("x")
        if isinstance(x, ChumpyStub):
            return x.array
        return None if x is None else np.asarray(x)

    def __repr__(self) -> str:
        return f"ChumpyStub({self.chumpy_class}, keys={sorted(getattr(self, 'state', {}))})"


_STUBS: dict[str, type[ChumpyStub]] = {}


def _chumpy_stub(qualname: str) -> type[ChumpyStub]:
    if qualname not in _STUBS:
        _STUBS[qualname] = type("ChumpyStub_" + qualname.replace(".", "_"), (ChumpyStub,),
                                {"chumpy_class": qualname})
    return _STUBS[qualname]


class _SparseStub:
    """Collects a pickled scipy sparse matrix's state; replaced by a fresh matrix after loading."""

    fmt = "csr"

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {}


_SPARSE_STUBS = {fmt: type(f"_SparseStub_{fmt}", (_SparseStub,), {"fmt": fmt})
                 for fmt in ("csr", "csc", "coo")}


def _numpy_core(name: str):
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric

    return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,
            "_frombuffer": numeric._frombuffer}.get(name)


_BUILTINS = {name: getattr(__import__("builtins"), name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float",
    "complex", "bool", "slice", "range", "object")}


_TEXT_CODECS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "utf-8", "utf8", "ascii"}


def _encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to text codecs (protocol-2 pickles write ``bytes`` with it)."""
    if not isinstance(obj, str) or encoding.lower() not in _TEXT_CODECS:
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _allowed(module: str, name: str) -> Any | None:
    """The object a pickle may reference as ``module.name``, or ``None`` if it is refused."""
    if module == "builtins":
        return _BUILTINS.get(name)
    if module == "_codecs" and name == "encode":
        return _encode
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "copyreg" and name == "_reconstructor":
        import copyreg

        return copyreg._reconstructor
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return np.dtype
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return _numpy_core(name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _numpy_core(name)
    if module.startswith("numpy.dtypes") and name.endswith("DType"):
        import numpy.dtypes

        obj = getattr(numpy.dtypes, name, None)
        return obj if isinstance(obj, type) else None
    if module.startswith("scipy.sparse") and name in ("csr_matrix", "csc_matrix", "coo_matrix"):
        return _SPARSE_STUBS[name[:3]]
    if module == "chumpy" or module.startswith("chumpy."):
        return _chumpy_stub(f"{module}.{name}")
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], *, encoding: str, source: str):
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__) map as the stock unpickler would map them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = _allowed(module, name)
        if obj is None:
            raise InputError(f"refused to unpickle '{module}.{name}' (not on the allow-list)",
                             file=self._source, expected="numpy/scipy.sparse/builtin containers only")
        return obj


def _build_sparse(stub: _SparseStub, source: str) -> sp.spmatrix:
    s = getattr(stub, "state", {})
    shape = s.get("_shape", s.get("shape"))
    try:
        shape = tuple(int(x) for x in shape)
        if stub.fmt == "coo":
            row = np.asarray(s["row"] if "row" in s else s["coords"][0])
            col = np.asarray(s["col"] if "col" in s else s["coords"][1])
            return sp.coo_matrix((np.asarray(s["data"]), (row, col)), shape=shape)
        cls = sp.csr_matrix if stub.fmt == "csr" else sp.csc_matrix
        return cls((np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])), shape=shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed {stub.fmt}_matrix state ({exc!r})", file=source,
                         expected="data/indices/indptr/shape") from None


def _resolve(obj: Any, source: str, seen: dict[int, Any]) -> Any:
    """Replace sparse stubs by scipy matrices and array-backed chumpy stubs by their arrays."""
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, _SparseStub):
        out = _build_sparse(obj, source)
    elif isinstance(obj, ChumpyStub):
        out = obj.array if obj.array is not None else obj
        if out is obj:
            seen[key] = obj
            obj.state = {k: _resolve(v, source, seen) for k, v in getattr(obj, "state", {}).items()}
            return obj
    elif isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        seen[key] = out
        for k, v in obj.items():
            out[k] = _resolve(v, source, seen)
        return out
    elif isinstance(obj, list):
        out = []
        seen[key] = out
        out.extend(_resolve(v, source, seen) for v in obj)
        return out
    elif isinstance(obj, tuple):
        out = tuple(_resolve(v, source, seen) for v in obj)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        out = np.empty(obj.shape, dtype=object)
        seen[key] = out
        for idx in np.ndindex(obj.shape):
            out[idx] = _resolve(obj[idx], source, seen)
        return out
    else:
        out = obj
    seen[key] = out
    return out


def safe_load(path_or_file: str | Path | IO[bytes], *, encoding: str = "latin1",
              name: str | None = None) -> Any:
    """Unpickle a file through the allow-list; sparse matrices and chumpy arrays come back resolved.

    ``name`` labels the source in error messages when a file object is passed.
    """
    if isinstance(path_or_file, (str, Path)):
        path = Path(path_or_file)
        if not path.is_file():
            raise MissingFileError("file not found", file=path)
        with open(path, "rb") as fh:
            return safe_load(fh, encoding=encoding, name=name or str(path))
    source = name or getattr(path_or_file, "name", None) or "<pickle stream>"
    expected = "a complete pickle file (it may be truncated or corrupt)"
    try:
        obj = _RestrictedUnpickler(path_or_file, encoding=encoding, source=str(source)).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError, struct.error) as exc:
        raise InputError(f"unreadable pickle ({type(exc).__name__}: {str(exc)[:200]})", file=str(source),
                         expected=expected) from None
    try:
        return _resolve(obj, str(source), {})
    except RecursionError:
        raise InputError("objects nested too deeply to load", file=str(source),
                         expected=f"containers nested less than {sys.getrecursionlimit()} deep") from None


def safe_loads(data: bytes, *, encoding: str = "latin1", name: str = "<bytes>") -> Any:
    """:func:`safe_load` for an in-memory pickle."""
    return safe_load(io.BytesIO(data), encoding=encoding, name=name)


def to_array(obj: Any, *, file: str | Path | None = None, field: str | None = None) -> np.ndarray:
    """A loaded value as a dense ndarray (chumpy stubs with ``x``, sparse matrices, arrays)."""
    if isinstance(obj, ChumpyStub):
        if obj.array is None:
            raise InputError(f"chumpy object {obj.chumpy_class} has no array state 'x'", file=file,
                             field=field, expected="a chumpy.Ch leaf")
        return obj.array
    if sp.issparse(obj):
        return obj.toarray()
    try:
        return np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot convert {type(obj).__name__} to an array ({exc})", file=file,
                         field=field) from None
