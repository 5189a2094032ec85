"""Reading ``params.yaml`` and locating the project's directories.

``params.yaml`` is the single source of configuration; stages read their own section from it.
Paths in params are relative to the project root (the directory holding ``params.yaml``), or
absolute. A relative path that escapes the project root with ``..`` is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from hmrmamba.errors import InputError, MissingFileError

PARAMS_FILE = "params.yaml"


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding ``params.yaml``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / PARAMS_FILE).is_file():
            return d
    raise MissingFileError(f"no {PARAMS_FILE} found in {here} or its parents", file=PARAMS_FILE,
                           expected="to run inside an hmrmamba project checkout")


def home_root(root: Path) -> Path:
    """The checkout that owns shared stores, also from a DVC experiment temp copy.

    ``dvc exp run --temp`` runs in ``<repo>/.dvc/tmp/exps/...``; MLflow and Prefect stores must
    still land in ``<repo>``, so the part before ``/.dvc/tmp/`` is used.
    """
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    return root


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Load params.yaml (default: the project root's) with a safe YAML loader."""
    path = Path(path) if path else find_project_root() / PARAMS_FILE
    if not path.is_file():
        raise MissingFileError("file not found", file=path, expected="a params.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML ({exc})", file=path, expected="a YAML mapping") from None
    if not isinstance(data, dict):
        raise InputError(f"top level is {type(data).__name__}", file=path, expected="a YAML mapping")
    return data


def section(params: Mapping[str, Any], name: str, *, file: str = PARAMS_FILE) -> dict[str, Any]:
    """One top-level section of params, with a clear error when it is absent."""
    if name not in params or not isinstance(params[name], Mapping):
        raise InputError(f"missing section '{name}'", file=file, field=name, expected="a mapping")
    return dict(params[name])


def resolve_path(root: Path, value: str | os.PathLike, *, field: str) -> Path:
    """Resolve a params path inside ``root`` (relative) or as given (absolute); refuse ``..`` escapes."""
    p = Path(value)
    if p.is_absolute():
        return p
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise InputError(f"path '{value}' escapes the project root {root}", file=PARAMS_FILE,
                         field=field, expected="a path inside the project, or an absolute path")
    return full


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
