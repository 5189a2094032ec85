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

Sizes are bounded too: a pickle can make ``bytearray(3_000_000_000)`` in 36 bytes. Every constructor
that allocates by an argument (``bytes``, ``bytearray``, ``list``, ``tuple``, ``set``, ``range``,
``copyreg._reconstructor``, ``numpy.ndarray``, numpy's ``_reconstruct``) is called through a guard
that charges what it would make against one budget per load, :func:`size_budget` of the file's
length (a real pickle stores its data, so it never makes more than a small multiple of its size).
Over budget is an :class:`~hmrmamba.errors.InputError` before the allocation. Loaded arrays are
checked against the same budget (a zero-size dtype can carry any shape), and :func:`to_array`
refuses to densify more than :data:`MAX_DENSE_ELEMENTS` elements.
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

__all__ = ["MAX_DENSE_ELEMENTS", "ChumpyStub", "safe_load", "safe_loads", "size_budget", "to_array"]

#: Elements a sparse matrix or nested list may become in :func:`to_array` (256 MB of float64).
MAX_DENSE_ELEMENTS = 1 << 25
#: Budget of a stream whose length cannot be known (not a seekable file).
UNKNOWN_LENGTH_BUDGET = 1 << 28


def size_budget(file_bytes: int | None) -> int:
    """Bytes/elements the sized constructors of one pickle of ``file_bytes`` bytes may make in all.

    Four times the file (a latin-1 text re-encoded as UTF-8 can double; arrays are stored in full)
    plus 1 MiB of slack for the small containers every pickle makes.
    """
    if file_bytes is None:
        return UNKNOWN_LENGTH_BUDGET
    return 4 * int(file_bytes) + (1 << 20)


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

#: Builtins whose size follows an argument: called through a guard (see :class:`_Budget`).
_SIZED = ("list", "tuple", "set", "frozenset", "bytearray", "bytes", "range", "dict")


class _OverBudget(Exception):
    """A constructor would make more than the pickle's budget (becomes an InputError)."""


def _arg_size(value: Any) -> int:
    """How many items/bytes a sized constructor makes from ``value`` (an int, or anything with len)."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return max(int(value), 0)
    try:
        return max(len(value), 0)
    except OverflowError:  # len() of a range beyond sys.maxsize
        return 1 << 62
    except TypeError:
        return 0


def _range_len(args: tuple) -> int:
    try:
        return len(range(*args))
    except OverflowError:
        return 1 << 62


class _Budget:
    """What one load may still allocate; the guards below charge it before they construct."""

    def __init__(self, total: int):
        self.total = int(total)
        self.left = int(total)

    def charge(self, n: int, what: str) -> None:
        n = int(n)
        if n > self.left:
            raise _OverBudget(f"{what} would make {n:,} items/bytes, over the {self.total:,} this "
                              f"pickle may make (its size bounds what a real one holds)")
        self.left -= n

    def guard_builtin(self, name: str):
        real = _BUILTINS[name]
        budget = self

        def charge(args: tuple) -> None:
            if name == "range":
                budget.charge(_range_len(args) if all(isinstance(a, int) for a in args) else 0,
                              "builtins.range")
            elif args:
                budget.charge(_arg_size(args[0]), f"builtins.{name}")

        class _Guard:
            # NEWOBJ calls cls.__new__(cls, *args), REDUCE calls cls(*args): both come here and
            # return the real builtin's object (never a _Guard instance)
            def __new__(cls, *args: Any, **kwargs: Any):
                charge(args)
                return real(*args, **kwargs)

        _Guard.__name__ = _Guard.__qualname__ = f"guarded_{name}"
        _Guard.real = real
        return _Guard

    def guard_ndarray(self):
        budget = self

        class _GuardedNdarray:
            def __new__(cls, shape: Any = (), dtype: Any = float, *args: Any, **kwargs: Any):
                budget.charge(_array_bytes(shape, dtype), "numpy.ndarray")
                return np.ndarray(shape, dtype, *args, **kwargs)

        _GuardedNdarray.real = np.ndarray
        return _GuardedNdarray

    def guard_reconstruct(self):
        budget, real = self, _numpy_core("_reconstruct")

        def _reconstruct(subtype: Any, shape: Any, dtype: Any):
            budget.charge(_array_bytes(shape, dtype), "numpy _reconstruct")
            return real(_real(subtype), shape, dtype)

        return _reconstruct

    def guard_reconstructor(self):
        import copyreg

        budget = self

        def _reconstructor(cls: Any, base: Any, state: Any):
            cls, base = _real(cls), _real(base)
            if base is not object:
                budget.charge(_arg_size(state), f"copyreg._reconstructor({getattr(base, '__name__', base)})")
            return copyreg._reconstructor(cls, base, state)

        return _reconstructor


def _real(cls: Any) -> Any:
    """The real class behind a guard (guards stand in for classes inside the pickle)."""
    return getattr(cls, "real", cls) if isinstance(cls, type) else cls


def _array_bytes(shape: Any, dtype: Any) -> int:
    """Bytes of an array of ``shape``/``dtype`` (elements when the dtype has no size)."""
    try:
        dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        itemsize = np.dtype(dtype).itemsize
    except (TypeError, ValueError, OverflowError):
        return 0  # numpy refuses the call itself
    n = 1
    for d in dims:
        n *= max(d, 0)
    return n * max(itemsize, 1)


_TEXT_CODECS = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "utf-8", "utf8", "ascii"}


def _encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to text codecs (protocol-2 pickles write ``bytes`` with it)."""
    if not isinstance(obj, str) or encoding.lower() not in _TEXT_CODECS:
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _allowed(module: str, name: str, budget: _Budget | None = None) -> Any | None:
    """The object a pickle may reference as ``module.name``, or ``None`` if it is refused.

    With a ``budget``, constructors sized by an argument come back guarded by it.
    """
    if budget is not None:
        if module == "builtins" and name in _SIZED:
            return budget.guard_builtin(name)
        if module == "copyreg" and name == "_reconstructor":
            return budget.guard_reconstructor()
        if module == "numpy" and name == "ndarray":
            return budget.guard_ndarray()
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return budget.guard_reconstruct()
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
    def __init__(self, file: IO[bytes], *, encoding: str, source: str, budget: _Budget):
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._source = source
        self._budget = budget
        self._guards: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__) map as the stock unpickler would map them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in self._guards:  # one guard per name, so identity checks inside a pickle hold
            return self._guards[key]
        obj = _allowed(module, name, self._budget)
        self._guards[key] = obj
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


def _resolve(obj: Any, source: str, seen: dict[int, Any], limit: int = UNKNOWN_LENGTH_BUDGET) -> Any:
    """Replace sparse stubs by scipy matrices and array-backed chumpy stubs by their arrays.

    An array of more than ``limit`` elements is refused (only a zero-size dtype gets one that big
    out of a file of that size, and any use of it would allocate by its shape).
    """
    key = id(obj)
    if key in seen:
        return seen[key]
    if isinstance(obj, np.ndarray) and obj.size > limit:
        raise InputError(f"array of shape {obj.shape} ({obj.size:,} elements) is larger than the "
                         "file could hold", file=source, expected=f"at most {limit:,} elements")
    if isinstance(obj, _SparseStub):
        out = _build_sparse(obj, source)
    elif isinstance(obj, ChumpyStub):
        out = obj.array if obj.array is not None else obj
        if out is obj:
            seen[key] = obj
            obj.state = {k: _resolve(v, source, seen, limit) for k, v in getattr(obj, "state", {}).items()}
            return obj
    elif isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        seen[key] = out
        for k, v in obj.items():
            out[k] = _resolve(v, source, seen, limit)
        return out
    elif isinstance(obj, list):
        out = []
        seen[key] = out
        out.extend(_resolve(v, source, seen, limit) for v in obj)
        return out
    elif isinstance(obj, tuple):
        out = tuple(_resolve(v, source, seen, limit) for v in obj)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        out = np.empty(obj.shape, dtype=object)
        seen[key] = out
        for idx in np.ndindex(obj.shape):
            out[idx] = _resolve(obj[idx], source, seen, limit)
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
    budget = _Budget(size_budget(_stream_length(path_or_file)))
    try:
        obj = _RestrictedUnpickler(path_or_file, encoding=encoding, source=str(source), budget=budget).load()
    except InputError:
        raise
    except _OverBudget as exc:
        raise InputError(f"refused to unpickle: {exc}", file=str(source),
                         expected="a pickle that stores its data instead of sizing it by an argument") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError, struct.error) as exc:
        raise InputError(f"unreadable pickle ({type(exc).__name__}: {str(exc)[:200]})", file=str(source),
                         expected=expected) from None
    try:
        return _resolve(obj, str(source), {}, budget.total)
    except RecursionError:
        raise InputError("objects nested too deeply to load", file=str(source),
                         expected=f"containers nested less than {sys.getrecursionlimit()} deep") from None


def _stream_length(fh: IO[bytes]) -> int | None:
    """Bytes left in ``fh`` from its position, or ``None`` when it cannot seek."""
    try:
        here = fh.tell()
        end = fh.seek(0, io.SEEK_END)
        fh.seek(here)
        return max(int(end) - int(here), 0)
    except (AttributeError, OSError, ValueError):
        return None


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
        _check_dense(int(np.prod(obj.shape, dtype=object)), f"sparse matrix of shape {obj.shape}",
                     file=file, field=field)
        return obj.toarray()
    if isinstance(obj, (list, tuple)):
        _check_dense(_nested_elements(obj), "nested list", file=file, field=field)
    try:
        return np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot convert {type(obj).__name__} to an array ({exc})", file=file,
                         field=field) from None


def _check_dense(n: int, what: str, *, file: str | Path | None, field: str | None) -> None:
    if n > MAX_DENSE_ELEMENTS:
        raise InputError(f"{what} would become {n:,} dense elements", file=file, field=field,
                         expected=f"at most {MAX_DENSE_ELEMENTS:,}")


def _nested_elements(obj: Any) -> int:
    """Elements ``np.asarray`` would make from nested lists/tuples (shared rows counted each time).

    Walks the first item of each level (a ragged list fails in numpy anyway), stopping as soon as
    the product passes :data:`MAX_DENSE_ELEMENTS`, so a list of references to one list of
    references (a few bytes per level) is measured without being expanded.
    """
    n, level, depth = 1, obj, 0
    while isinstance(level, (list, tuple)) and depth < 64:
        n *= len(level)
        if n == 0 or n > MAX_DENSE_ELEMENTS:
            return n
        level, depth = level[0], depth + 1
    return n
