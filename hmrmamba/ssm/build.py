"""Build of the fused CPU selective scan (``csrc/selective_scan.c``) into a cached shared library.

The library is compiled with the system C compiler (``$HMRMAMBA_CC``, else ``$CC``, else ``cc``),
never at import time: :func:`build_library` runs on the first fused scan, or explicitly through
``python -m hmrmamba.ssm.build`` (called by ``make install``), which prints one line saying what it
did. Flags are tried in order, the first that compiles wins: ``-O3 -march=native -fopenmp``, then
without ``-march=native``, then ``-fopenmp-simd`` (no OpenMP runtime), then plain ``-O3`` (see
``FLAG_SETS``).

The result is cached in ``$XDG_CACHE_HOME/hmrmamba`` (default ``~/.cache/hmrmamba``) under a name
keyed by the hash of the source, the compiler's version line and the CPU's instruction-set flags
(``-march=native`` code must not run on another CPU sharing the home folder). It is written under a
temporary name and moved into place with ``os.replace``, so concurrent builds never see a partial file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BuildResult", "build_library", "cache_dir", "compiler", "source_path"]

#: flag sets tried in order; the first that compiles is cached
#: (-fno-trapping-math lets the compiler vectorise the branch-free exp/log/softplus selects; the
#: kernels never rely on floating-point exceptions)
FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-fno-trapping-math", "-march=native", "-fopenmp"),
    ("-O3", "-fno-trapping-math", "-fopenmp"),
    ("-O3", "-fno-trapping-math", "-march=native", "-fopenmp-simd"),
    ("-O3",),
)
COMPILE_TIMEOUT_S = 120


@dataclass(frozen=True)
class BuildResult:
    """Outcome of :func:`build_library`: ``path`` of the library or None, and what happened."""

    path: Path | None
    action: str  # "cached" | "built" | "failed"
    detail: str  # flags used, or why it failed (one line)


def source_path() -> Path:
    """The C source shipped with the package."""
    return Path(__file__).resolve().parent / "csrc" / "selective_scan.c"


def cache_dir() -> Path:
    """Per-user cache folder of the compiled library: ``$XDG_CACHE_HOME/hmrmamba`` or ``~/.cache/hmrmamba``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hmrmamba"


def compiler() -> str:
    """The C compiler command: ``$HMRMAMBA_CC``, else ``$CC``, else ``cc``."""
    return os.environ.get("HMRMAMBA_CC") or os.environ.get("CC") or "cc"


def _one_line(text: str, limit: int = 200) -> str:
    """The most telling line of compiler output (the first 'error' line, else the last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    line = (errors or lines or ["no output"])[0 if errors else -1]
    return line[:limit]


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (Linux), else the machine name: part of the cache key."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler_version(cc: str) -> str:
    """First line of ``cc --version``; raises OSError when the compiler cannot run."""
    exe = shutil.which(cc)
    if exe is None:
        raise FileNotFoundError(f"C compiler {cc!r} not found")
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return f"{exe} {res.stdout.splitlines()[0] if res.stdout else ''}"


def library_name(source: bytes, cc_version: str) -> str:
    """File name of the cached library for this source, compiler and CPU."""
    key = hashlib.sha256(source + b"\0" + cc_version.encode() + b"\0" + _cpu_flags().encode()
                         + b"\0" + repr(FLAG_SETS).encode()).hexdigest()[:16]
    ext = ".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so"
    return f"selective_scan-{key}{ext}"


def build_library(force: bool = False) -> BuildResult:
    """Return the cached library, compiling it first if needed (or if ``force``). Never raises for a
    missing or failing compiler: the result says ``failed`` and why."""
    cc = compiler()
    src = source_path()
    try:
        source = src.read_bytes()
        version = _compiler_version(cc)
    except (OSError, subprocess.SubprocessError) as exc:
        return BuildResult(None, "failed", _one_line(str(exc)))
    out_dir = cache_dir()
    target = out_dir / library_name(source, version)
    if target.exists() and not force:
        return BuildResult(target, "cached", str(target))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return BuildResult(None, "failed", f"cannot create {out_dir}: {exc}")
    last_error = "no flag set tried"
    for flags in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=out_dir)
        os.close(fd)
        cmd = [cc, *flags, "-shared", "-fPIC", str(src), "-o", tmp, "-lm"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            Path(tmp).unlink(missing_ok=True)
            return BuildResult(None, "failed", _one_line(f"{cc}: {exc}"))
        if res.returncode == 0:
            os.replace(tmp, target)
            return BuildResult(target, "built", f"{target} ({cc} {' '.join(flags)})")
        Path(tmp).unlink(missing_ok=True)
        last_error = f"{cc} {' '.join(flags)}: {_one_line(res.stderr or res.stdout)}"
    return BuildResult(None, "failed", last_error)


def main() -> int:
    """Build (or find) the library and print one line; exit status 0 when a library is usable."""
    from hmrmamba.ssm.fused import load_library

    result = build_library()
    if result.path is None:
        print(f"hmrmamba fused CPU selective scan: not built ({result.detail}); the PyTorch scan will be used")
        return 1
    lib, reason = load_library()
    if lib is None:
        print(f"hmrmamba fused CPU selective scan: {result.action} but not loadable ({reason})")
        return 1
    print(f"hmrmamba fused CPU selective scan: {result.action} {result.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
