"""What DVC knows about a stage, for the flows that run stages in a DVC project.

A flow asks DVC, right before a stage would run, whether ``dvc repro`` would run it (:func:`stale_reasons`:
``dvc status STAGE``); when it would, the flow does what ``dvc repro`` does around the stage's command:
removes the stage's outputs that are not ``persist: true`` (:func:`clear_outputs`), runs the stage, then
records its dependencies, params and outputs in ``dvc.lock`` and the cache (:func:`record`:
``dvc commit --force STAGE``). A stage's answer is only good until another stage runs: a stage whose inputs an
upstream stage has just rewritten is stale only from then on, as in ``dvc repro``; so answers are asked for
in one batch and forgotten when a stage of the project is cleared or recorded.

DVC runs as its command line (``python -m dvc`` of this interpreter, in the project directory): its Python
internals resolve paths against the working directory, which a flow's worker thread must not change.
Each call costs 2-4 s (mostly DVC's import), small beside a stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

DVC_YAML = "dvc.yaml"


def is_dvc_project(root: Path) -> bool:
    """True when ``root`` has a ``dvc.yaml`` and is a DVC repository (``.dvc/`` from ``dvc init``)."""
    return (Path(root) / DVC_YAML).is_file() and (Path(root) / ".dvc").is_dir()


def pipeline_stages(root: Path) -> dict[str, Mapping[str, Any]]:
    """The stages of ``root/dvc.yaml`` -> {name: definition}; {} when there is none."""
    path = Path(root) / DVC_YAML
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    stages = doc.get("stages") if isinstance(doc, Mapping) else None
    return dict(stages) if isinstance(stages, Mapping) else {}


def stage_param_keys(definition: Mapping[str, Any]) -> list[str]:
    """The params.yaml keys (dotted) a dvc.yaml stage lists under ``params``."""
    keys: list[str] = []
    for entry in definition.get("params") or ():
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, Mapping):  # {file: [keys]}: only params.yaml is read by the stages
            for file, names in entry.items():
                if file == "params.yaml":
                    keys.extend(str(n) for n in names or ())
    return keys


def lookup(params: Mapping[str, Any], dotted: str) -> Any:
    """``params['a']['b']`` for ``'a.b'``; a missing key is ``KeyError``."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def same_params(a: Mapping[str, Any], b: Mapping[str, Any], keys: list[str]) -> bool:
    """True when ``a`` and ``b`` agree on every dotted key (missing in both counts as equal)."""
    missing = object()

    def get(p: Mapping[str, Any], key: str) -> Any:
        try:
            return lookup(p, key)
        except KeyError:
            return missing

    return all(get(a, k) == get(b, k) for k in keys)


class DvcError(RuntimeError):
    """A DVC command failed; the message is its last line of output."""


def dvc(root: Path, *args: str, timeout: float = 3600) -> str:
    """Run ``dvc ARGS`` in ``root`` -> its stdout; :class:`DvcError` with DVC's own message when it fails."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        raise DvcError(f"dvc {' '.join(args)} failed in {root}: {lines[-1] if lines else out.returncode}")
    return out.stdout


def _describe(entry: Any) -> str:
    """One ``dvc status`` entry ({'changed deps': {path: what}} or 'always changed') as short text."""
    if isinstance(entry, Mapping):
        parts = []
        for kind, changes in entry.items():
            if isinstance(changes, Mapping):
                items = [f"{k} ({v if isinstance(v, str) else ', '.join(f'{a} {b}' for a, b in v.items())})"
                         for k, v in changes.items()]
                parts.append(f"{kind}: {'; '.join(items)}")
            else:
                parts.append(f"{kind}: {changes}")
        return "; ".join(parts)
    return str(entry)


#: ``dvc status`` answers per (project, flow run): {"asked": stages, "status": {stage: entries}}. Valid until
#: a stage of that project is cleared or recorded: only a stage that runs changes what DVC sees.
_ANSWERS: dict[tuple[Path, str], dict[str, Any]] = {}
_ANSWERS_LOCK = threading.Lock()


def stale_reasons(root: Path, stage: str, *, batch: Sequence[str] = (), token: str = "") -> list[str]:
    """What ``dvc status STAGE`` reports in ``root`` (one line per change) -> [] when it is up to date.

    ``batch`` (with a ``token``, e.g. the flow run's id): other stages to ask about in the same ``dvc status``
    call; their answers serve later calls with the same token until :func:`clear_outputs` or :func:`record`
    changes the project. A flow whose stages are all up to date thus costs one ``dvc status``, not one per
    stage.
    """
    key = (Path(root).resolve(), token)
    with _ANSWERS_LOCK:
        known = _ANSWERS.get(key) if token else None
    if known is None or stage not in known["asked"]:
        targets = [stage, *(s for s in batch if s != stage)] if token else [stage]
        known = {"asked": set(targets), "status": json.loads(dvc(root, "status", "--json", *targets) or "{}")}
        if token:
            with _ANSWERS_LOCK:
                _ANSWERS[key] = known
    return [_describe(e) for e in (known["status"].get(stage) or ())]


def _forget(root: Path) -> None:
    """Drop the remembered answers for ``root`` (a stage there is about to change it)."""
    where = Path(root).resolve()
    with _ANSWERS_LOCK:
        for key in [k for k in _ANSWERS if k[0] == where]:
            del _ANSWERS[key]


def _outputs(definition: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(path, persist) of every output of a dvc.yaml stage: ``outs``, ``metrics`` and ``plots`` entries."""
    found = []
    for kind in ("outs", "metrics", "plots"):
        for entry in definition.get(kind) or ():
            if isinstance(entry, str):
                found.append((entry, False))
            elif isinstance(entry, Mapping):
                found += [(path, bool((opts or {}).get("persist"))) for path, opts in entry.items()]
    return found


def clear_outputs(root: Path, stage: str) -> list[str]:
    """Remove the stage's outputs that ``dvc repro`` removes before running it (all but ``persist: true``)
    -> the paths removed."""
    _forget(root)
    removed = []
    for rel, persist in _outputs(pipeline_stages(root).get(stage, {})):
        path = Path(root) / rel
        if persist or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(rel)
    return removed


def record(root: Path, stage: str) -> None:
    """Record the stage's current deps, params and outputs in ``dvc.lock`` and the cache (``dvc commit -f``)."""
    _forget(root)
    dvc(root, "commit", "--force", "--quiet", stage)
