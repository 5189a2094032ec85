"""Checks and helpers of the bad-input and fault suite (``tests/robustness``).

Every bad input must give a *clean* failure:

* an :class:`~hmrmamba.errors.InputError` (a ``ValueError``) raised by hmrmamba's own code, not a
  traceback from deep inside numpy/torch/h5py (:func:`raised_by_hmrmamba`);
* a message naming the file (when there is one), the field and what was expected;
* no partial output and no change to existing outputs: every file under the watched directories
  is hashed before and after (:func:`snapshot`), temporary files included.

Tests report what they tried through the ``reliability`` fixture; the records travel as junit-xml
properties and ``python -m hmrmamba.report.reliability`` turns them into ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pytest

from hmrmamba.errors import InputError, MissingFileError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "hmrmamba"
PYTHON = sys.executable

for _k, _v in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_k, _v)

#: The default profile shrunk to a few seconds per stage: 2/1/1 short sequences at 64 px.
TINY = [
    "synthetic.splits.train.sequences=2",
    "synthetic.splits.train.subjects=1",
    "synthetic.splits.val.sequences=1",
    "synthetic.splits.val.subjects=1",
    "synthetic.splits.test.sequences=1",
    "synthetic.splits.test.subjects=1",
    "synthetic.frames=[12,20]",
    "synthetic.image_size=64",
    "features.batch_size=16",
    "features.crop_size=32",
    "experiment.variant=tiny",
    "experiment.detector=cpn",
    "detect2d.sources=[gt,cpn]",
    "train_lift.epochs=2",
    "train_lift.window=8",
    "train_lift.stride=8",
    "train_lift.batch_size=4",
    "train_mesh.epochs=2",
    "train_mesh.window=8",
    "train_mesh.stride=8",
    "train_mesh.batch_size=4",
    "evaluate.batch_size=16",
    "runtime.threads=1",
]

OUTPUT_DIRS = ("data", "models", "metrics", "plots")


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------


class Reliability:
    """Records of one test: each becomes a junit property ``reliability`` holding JSON."""

    def __init__(self, record: Callable[[str, Any], None]):
        self._record = record

    def _add(self, **fields: Any) -> None:
        self._record("reliability", json.dumps(fields, sort_keys=True))

    def bad_input(self, target: str, case: str, *, examples: int = 1) -> None:
        """A bad input (or ``examples`` generated ones) fed to ``target`` was refused cleanly."""
        self._add(kind="bad_input", target=target, case=case, examples=int(examples))

    def fault(self, target: str, fault: str, *, survived: bool = True, detail: str = "") -> None:
        """A fault injected into ``target`` was survived (recovered, or failed cleanly)."""
        self._add(kind="fault", target=target, case=fault, survived=bool(survived), detail=detail)

    def compared(self, target: str, what: str, *, equal: bool, detail: str = "") -> None:
        """Two runs' outputs compared bit for bit."""
        self._add(kind="bitwise", target=target, case=what, equal=bool(equal), detail=detail)

    def security(self, target: str, case: str) -> None:
        self._add(kind="security", target=target, case=case)


# ---------------------------------------------------------------------------------------------
# clean-failure checks
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def own_mlflow_env():
    """Unset ``MLFLOW_TRACKING_URI`` inside and restore it after (MLflow exports the URI it uses)."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def snapshot(*roots: Path | str) -> dict[str, str]:
    """sha256 of every file under ``roots`` (hidden and temporary files included)."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def raised_by_hmrmamba(exc: BaseException) -> str:
    """The file of the innermost traceback frame; asserts that it is hmrmamba's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames, "no traceback"
    where = Path(frames[-1].filename).resolve()
    assert where.is_relative_to(PACKAGE), (
        f"{type(exc).__name__} raised from {where}:{frames[-1].lineno}, not from hmrmamba: {exc}"
    )
    return str(where)


def expect_clean_failure(
    call: Callable[[], Any],
    *,
    watch: Iterable[Path | str] = (),
    file: str | Path | None = None,
    field: str | None = None,
    match: str | None = None,
    exc_type: type[BaseException] = InputError,
    expected: bool = True,
) -> BaseException:
    """Run ``call``; assert a clean ``exc_type`` and that nothing under ``watch`` changed.

    ``file``/``field``: texts the message must contain; ``expected``: it states an expectation.
    """
    watch = list(watch)
    before = snapshot(*watch)
    with pytest.raises(BaseException) as info:
        call()
    err = info.value
    assert isinstance(err, exc_type), f"{type(err).__name__}: {err}"
    raised_by_hmrmamba(err)
    msg = str(err)
    if file is not None:
        assert str(file) in msg, f"message does not name the file {file}: {msg}"
    if field is not None:
        assert field in msg, f"message does not name the field {field}: {msg}"
    if match is not None:
        import re

        assert re.search(match, msg), f"message does not match {match!r}: {msg}"
    if expected and isinstance(err, InputError) and not isinstance(err, MissingFileError):
        assert err.expected or "(expected" in msg, f"message states no expectation: {msg}"
    after = snapshot(*watch)
    assert after == before, f"outputs changed: {sorted(set(after.items()) ^ set(before.items()))}"
    return err


def temp_files(*roots: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.<pid>.<random>...``) left under ``roots``."""
    return [
        p
        for r in roots
        if Path(r).exists()
        for p in Path(r).rglob(".*")
        if p.is_file() and not p.name.startswith((".gitignore", ".dvc"))
    ]


# ---------------------------------------------------------------------------------------------
# projects
# ---------------------------------------------------------------------------------------------


def make_project(path: Path, overrides: list[str] = TINY) -> Path:
    """A project directory: ``conf/`` copied from the checkout and ``params.yaml`` composed."""
    from hmrmamba.profiles import compose, write_params

    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "conf", path / "conf")
    write_params(path, compose(path, "default", overrides))
    return path


def copy_project(src: Path, dst: Path) -> Path:
    """A copy that keeps modification times (checkpoints fingerprint their inputs by mtime)."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    return dst


def load_yaml_params(root: Path) -> dict:
    from hmrmamba.config import load_params

    return load_params(root / "params.yaml")


def write_yaml_params(root: Path, params: dict) -> None:
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PYTEST"))}
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "TQDM_DISABLE": "1",
        }
    )
    env.update(extra)
    return env


def run_stage_process(
    root: Path, stage: str, *, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """``python -m hmrmamba.stages.<stage>`` in ``root`` (the way ``dvc repro`` runs it)."""
    return subprocess.run(
        [PYTHON, "-m", f"hmrmamba.stages.{stage}"],
        cwd=root,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_data_stages(
    root: Path, stages: Iterable[str] = ("body_model", "prepare", "detect2d", "features")
) -> None:
    """Run stages in-process without MLflow (fast), writing their outputs and metrics."""
    import importlib

    from hmrmamba.stages.common import execute

    for stage in stages:
        mod = importlib.import_module(f"hmrmamba.stages.{stage}")
        execute(mod.STAGE, mod.run, root=root, log_to_mlflow=False)


def fake_checkpoints(root: Path) -> None:
    """Untrained stage-1 and stage-2 checkpoints with the configs the stages save (no training)."""
    from hmrmamba.layout import Layout
    from hmrmamba.train.checkpoint import save_checkpoint
    from hmrmamba.train.experiment import build_model

    params, layout = load_yaml_params(root), Layout(root)
    for stage, lift_only in (("train_lift", True), ("train_mesh", False)):
        model, cfg = build_model(params, layout, lift_only=lift_only)
        ckpt = root / params[stage]["checkpoint_dir"]
        for name in ("best.pt", "last.pt"):
            save_checkpoint(ckpt / name, model=model, epoch=1, step=1, config={"model": cfg})


def rng_for(name: str) -> np.random.Generator:
    """A seeded generator per test case: fault points are random but reproducible."""
    import zlib

    return np.random.default_rng(zlib.crc32(name.encode()))
