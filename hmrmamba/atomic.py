"""Atomic file writes: write to a sibling temporary file, then ``os.replace`` it into place.

A crash or a raised error leaves either the old file or nothing, never a half-written one.
Temporary files and folders are named ``.<name>.<pid>.<random><suffix>``; one left behind by a
writer that was killed (``kill -9``, power loss) is removed by the next write of the same path. A
write that fails for lack of space, quota or file-size limit raises :class:`WriteFailed` naming the
destination.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hmrmamba.errors import InputError


class WriteFailed(OSError):
    """Writing a file failed (disk full, quota, file-size limit, read-only or I/O error).

    ``errno`` is the system error; the destination is untouched and no temporary file is left.
    """


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")  # HDF5 reports the system error in its message


def write_errno(exc: BaseException | None) -> int | None:
    """The errno of a failed write found in ``exc`` or its causes, or ``None``.

    HDF5 (through h5py) raises ``RuntimeError``/``OSError`` whose text holds ``errno = 28``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, InputError):
            code = exc.errno if isinstance(exc, OSError) else None
            if code is None:
                found = _ERRNO_IN_TEXT.search(str(exc))
                code = int(found.group(1)) if found else None
            if code in _WRITE_ERRNOS:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


#: suffixes of :func:`atomic_dir`'s temporary folders (the only folders :func:`remove_stale_temps` removes)
_DIR_SUFFIXES = (".tmp", ".old")


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temporary siblings of ``path`` whose writer process no longer exists. -> removed paths.

    Files ``.<name>.<pid>.*`` and folders ``.<name>.<pid>.*.tmp``/``.old`` (of :func:`atomic_dir`)
    whose ``pid`` is not alive are removed; symlinks are never followed nor removed. A stale ``.old``
    folder whose ``previous`` output was moved aside just before the writer died is put back first
    when ``path`` itself is missing (the swap was cut between its two renames).
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = sorted(path.parent.glob(glob.escape(prefix) + "*"))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_symlink():
                continue
            if entry.is_file():
                entry.unlink()
                removed.append(entry)
            elif entry.is_dir() and entry.name.endswith(_DIR_SUFFIXES):
                previous = entry / "previous"
                if (entry.name.endswith(".old") and not os.path.lexists(path) and previous.is_dir()
                        and not previous.is_symlink()):
                    os.replace(previous, path)
                shutil.rmtree(entry)  # does not follow symlinks inside (shutil.rmtree.avoids_symlink_attacks)
                removed.append(entry)
    return removed


def _write_failed(path: Path, exc: BaseException) -> WriteFailed | None:
    code = write_errno(exc) if isinstance(exc, Exception) and not isinstance(exc, WriteFailed) else None
    if code is None:
        return None
    return WriteFailed(code, f"cannot write {path}: {os.strerror(code)}; nothing was written and any "
                             f"previous file is unchanged")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory so that ``os.replace`` is atomic; it is flushed
    to disk before the rename. On any exception the temporary file is removed and the destination
    is untouched; a failure for lack of space (or quota, size limit) becomes :class:`WriteFailed`.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a directory", file=path, expected="the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError("a parent of it is a file, not a directory", file=path,
                         expected="a file path inside a directory") from None
    remove_stale_temps(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix or ".tmp",
                                        dir=path.parent)
    except OSError as exc:
        failed = _write_failed(path, exc)
        if failed is not None:
            raise failed from exc
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files; give them the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        failed = _write_failed(path, exc)
        if failed is not None:
            raise failed from exc
        raise


def make_output_dir(path: str | Path, *, field: str = "--out") -> Path:
    """``mkdir -p path`` for an output folder; a path that is (or passes through) a file is an
    :class:`InputError` naming it, not a ``FileExistsError``/``NotADirectoryError``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("exists and is a file", file=path, field=field, expected="a folder (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError("a parent of it is a file, not a directory", file=path, field=field,
                         expected="a folder path whose parents are folders") from None
    return path


#: Entries that mark a directory as a project or repository, never an output to replace.
_PROJECT_MARKERS = ("params.yaml", "dvc.yaml", "pyproject.toml", ".git", ".dvc")


def _git_tracked_files(full: Path) -> list[str] | None:
    """Files tracked by git under the existing folder ``full`` (first few), or ``None`` when git is
    missing, slow, or ``full`` is not inside a git work tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    try:
        top = subprocess.run(["git", "-C", str(full.parent), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10, env=env)
        if top.returncode != 0 or not top.stdout.strip():
            return None
        toplevel = Path(top.stdout.strip()).resolve()
        try:
            rel = full.relative_to(toplevel)
        except ValueError:
            return None
        listed = subprocess.run(["git", "ls-files", "-z", "--", str(rel)], cwd=toplevel,
                                capture_output=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    if listed.returncode != 0:
        return None
    return [f for f in listed.stdout.decode(errors="replace").split("\0") if f][:3]


def check_replaceable_dir(path: str | Path, *, field: str | None = None) -> None:
    """Refuse to let :func:`atomic_dir` replace a directory that is not a flat folder of outputs.

    A path with an existing ancestor that is not a directory (``params.yaml/x``), a filesystem
    root, the home directory, the current directory or one of its ancestors, a project or
    repository (``params.yaml``, ``.git``, ...), any directory holding a subdirectory and any
    directory holding files tracked by git are refused with :class:`InputError` (naming ``field``
    when given): replacing one of them would delete it, or could not work.
    """
    path = Path(path)
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{parent} exists and is not a folder", file=path, field=field,
                                 expected="a folder path whose existing parents are folders")
            break  # an existing folder: its own parents exist and are folders
        if os.path.lexists(parent):  # a dangling symlink cannot be created through
            raise InputError(f"{parent} is a broken symlink", file=path, field=field,
                             expected="a folder path whose existing parents are folders")
    if not path.exists():
        return
    full = path.resolve()
    if not full.is_dir():
        raise InputError("exists and is not a directory", file=path, field=field,
                         expected="a directory (or nothing) to replace")
    protected = {Path(full.anchor), Path.home().resolve()}
    cwd = Path.cwd().resolve()
    entries = list(full.iterdir())
    why = None
    if full in protected or full == cwd or full in cwd.parents:
        why = "it is a filesystem root, the home directory or holds the current directory"
    elif any(e.name in _PROJECT_MARKERS for e in entries):
        why = "it is a project or repository"
    elif any(e.is_dir() for e in entries):
        why = f"it holds subdirectories ({sorted(e.name for e in entries if e.is_dir())[:3]})"
    else:
        tracked = _git_tracked_files(full)
        if tracked:
            why = f"it holds files tracked by git ({tracked})"
    if why:
        raise InputError(f"refusing to replace this directory: {why}", file=path, field=field,
                         expected="an output directory of its own (a flat folder of files, or absent)")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, field: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; swap it in for ``path`` only on success.

    On success the old directory (if any) is moved aside, the new one renamed into place, then the
    old one removed: readers see the old contents or the new, never a mix. On any exception the
    temporary directory is removed and ``path`` is untouched. Directories that are not flat output
    folders are never replaced (:func:`check_replaceable_dir`, whose errors name ``field``). The
    temporary folders are ``.<name>.<pid>.<random>.tmp``/``.old``: those of a writer that was killed
    are removed by the next :func:`atomic_dir` of the same ``path`` (:func:`remove_stale_temps`).
    """
    path = Path(path)
    check_replaceable_dir(path, field=field)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    prefix = f".{path.name}.{os.getpid()}."  # the writer's pid, for remove_stale_temps after a kill
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats replaced by ``None`` (JSON has no NaN; ``null`` means undefined)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, standard JSON (NaN/Inf, e.g. undefined metrics, become null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Atomically write arrays to an uncompressed ``.npz`` (loadable with ``allow_pickle=False``)."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
