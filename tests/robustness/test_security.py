"""Security: malicious pickles on every path that unpickles user files (SMPL ``.pkl``, 3DPW
sequences, Human3.6M object ``.npz``, GraphCMR ``mesh_downsampling.npz``), path escapes from params,
directory replacement guards, and servers bound to loopback only."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from hmrmamba.errors import InputError

from .support import REPO, expect_clean_failure, snapshot

# ---------------------------------------------------------------------------------------------
# malicious pickles
# ---------------------------------------------------------------------------------------------


class Gadget:
    """Pickles into ``func(*args)``: what a malicious data file carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _gadgets(marker: Path) -> dict[str, object]:
    import builtins
    import shutil
    import subprocess

    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Gadget(os.system, cmd),
        "subprocess.Popen": Gadget(subprocess.Popen, ["touch", str(marker)]),
        "builtins.eval": Gadget(builtins.eval, code),
        "builtins.exec": Gadget(builtins.exec, code),
        "builtins.__import__": Gadget(builtins.__import__, "os"),
        "builtins.getattr": Gadget(builtins.getattr, "text", "upper"),
        "builtins.open": Gadget(builtins.open, str(marker), "w"),
        "shutil.rmtree": Gadget(shutil.rmtree, str(marker.parent / "victim")),
        "numpy.load(allow_pickle)": Gadget(np.load, str(marker), None, True),
        "pickle.loads": Gadget(pickle.loads, pickle.dumps(Gadget(os.system, cmd))),
    }


GADGETS = list(_gadgets(Path("/x")).keys())


def _refused(err: InputError) -> None:
    assert "refused to unpickle" in str(err) or "not on the allow-list" in str(err), str(err)


@pytest.fixture
def marker(tmp_path) -> Path:
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("keep")
    return tmp_path / "pwned"


def _no_side_effect(marker: Path) -> None:
    assert not marker.exists(), "the payload ran"
    assert (marker.parent / "victim" / "keep.txt").exists(), "the payload deleted files"


@pytest.mark.parametrize("gadget", GADGETS)
def test_smpl_pickle_with_a_payload_is_refused_and_never_runs(tmp_path, marker, reliability, gadget):
    from hmrmamba.body.body_model import convert_smpl_pickle

    from .test_bad_files import smpl_like_dict

    d = smpl_like_dict()
    d["J_regressor_prior"] = _gadgets(marker)[gadget]
    src = tmp_path / "SMPL_NEUTRAL.pkl"
    src.write_bytes(pickle.dumps(d, protocol=2))
    err = expect_clean_failure(
        lambda: convert_smpl_pickle(src, tmp_path / "out.npz"), file=src, watch=[tmp_path / "victim"]
    )
    _refused(err)
    _no_side_effect(marker)
    assert not (tmp_path / "out.npz").exists()
    reliability.security("SMPL .pkl (body_model.convert_smpl_pickle)", f"payload {gadget} refused, never ran")


@pytest.mark.parametrize("gadget", GADGETS)
def test_3dpw_sequence_with_a_payload_is_refused_and_never_runs(tmp_path, marker, reliability, gadget):
    from fabricate import write_mini_3dpw
    from hmrmamba.data.real.dispatch import prepare_real
    from hmrmamba.layout import Layout

    mini = write_mini_3dpw(tmp_path / "raw", splits={"test": (1,)}, frames=5)
    path, d = next(iter(mini.files.values())), dict(next(iter(mini.sequences.values())))
    d["texture"] = _gadgets(marker)[gadget]
    path.write_bytes(pickle.dumps(d, protocol=2))
    params = {
        "dataset": {"name": "3dpw", "root": str(tmp_path / "raw")},
        "datasets": {"pw3d": {"splits": {"test": "test"}}},
    }
    err = expect_clean_failure(
        lambda: prepare_real(params, Layout(tmp_path / "project")),
        file=path.name,
        watch=[tmp_path / "victim"],
    )
    _refused(err)
    _no_side_effect(marker)
    assert not (tmp_path / "project").exists()
    reliability.security("3DPW sequence .pkl (prepare)", f"payload {gadget} refused, never ran")


@pytest.mark.parametrize("where", ["h36m positions_3d", "mesh_downsampling A"])
def test_object_npz_with_a_payload_is_refused_and_never_runs(tmp_path, marker, reliability, where):
    from fabricate import save_object_npz

    payload = _gadgets(marker)["os.system"]
    if where.startswith("h36m"):
        from hmrmamba.data.real.h36m import load_positions_3d

        path = save_object_npz(tmp_path / "data_3d_h36m.npz", positions_3d={"S1": {"Walking": payload}})
        call = lambda: load_positions_3d(path)
    else:
        from hmrmamba.body.mesh_sampling import load_mesh_downsampling

        path = save_object_npz(tmp_path / "mesh_downsampling.npz", A=[payload], D=[], U=[])
        call = lambda: load_mesh_downsampling(path)
    err = expect_clean_failure(call, file=path)
    _refused(err)
    _no_side_effect(marker)
    reliability.security(f"object .npz ({where})", "payload os.system refused, never ran")


def test_codecs_gadget_and_protocol_0_names_are_refused(reliability):
    """Python-2 style names (``posix``/``__builtin__``) and non-text codecs get no way around the list."""
    from hmrmamba.safe_pickle import safe_loads

    for blob in (
        b"cposix\nsystem\n(S'touch /tmp/x'\ntR.",
        b"c__builtin__\neval\n(S'1+1'\ntR.",
        b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",
        b"cnumpy.testing._private.utils\nrunstring\n.",
    ):
        with pytest.raises(InputError):
            safe_loads(blob, name="legacy.pkl")
    reliability.security(
        "safe_pickle", "protocol-0 posix.system / __builtin__.eval / _codecs rot13 / numpy runstring"
    )


# ---------------------------------------------------------------------------------------------
# paths from params
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, ok",
    [
        ("data/x.npz", True),
        ("/abs/elsewhere/x", True),
        ("a/../b", True),
        ("../x", False),
        ("data/../../x", False),
        ("link/passwd", False),
        ("", False),
        ("a\x00b", False),
        (5, False),
        (["data"], False),
    ],
)
def test_params_paths_resolve_inside_the_project(tmp_path, reliability, value, ok):
    from hmrmamba.config import resolve_path

    root = tmp_path / "project"
    root.mkdir()
    (root / "link").symlink_to("/etc")  # a symlink out of the project
    if ok:
        got = resolve_path(root, value, field="f")
        assert got.is_absolute() and (got.is_relative_to(root.resolve()) or Path(value).is_absolute())
        return
    expect_clean_failure(
        lambda: resolve_path(root, value, field="body_model.smpl_path"),
        file="params.yaml",
        field="body_model.smpl_path",
    )
    reliability.security("config.resolve_path", f"{value!r} refused")


@pytest.mark.parametrize(
    "key, value",
    [
        ("train_lift.checkpoint_dir", "../../outside"),
        ("train_mesh.checkpoint_dir", "models/../../x"),
        ("report.dir", "."),
        ("report.dir", "models"),
        ("report.dir", "/etc"),
        ("results.output", "../README.md"),
    ],
)
def test_output_paths_in_params_yaml_cannot_escape_or_replace_the_project(tmp_path, reliability, key, value):
    from hmrmamba.config import validate_params

    section, name = key.split(".")
    expect_clean_failure(lambda: validate_params({section: {name: value}}), file="params.yaml", field=key)
    reliability.security("params.yaml output paths", f"{key} = {value!r} refused")


@pytest.mark.parametrize(
    "target", ["project root", "cwd", "home", "a folder with subfolders", "a repository"]
)
def test_directory_replacement_never_deletes_a_project(tmp_path, reliability, monkeypatch, target):
    from hmrmamba.atomic import atomic_dir

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "params.yaml").write_text("seed: 0\n")
    (project / "data" / "x.h5").write_bytes(b"1")
    monkeypatch.chdir(project)
    path = {
        "project root": project,
        "cwd": Path("."),
        "home": Path.home(),
        "a folder with subfolders": tmp_path,
        "a repository": REPO,
    }[target]
    before = snapshot(project)
    with pytest.raises(InputError, match="refusing to replace this directory"):
        with atomic_dir(path) as tmp:
            (tmp / "report.md").write_text("x")
    assert snapshot(project) == before and path.exists()
    reliability.security("atomic.atomic_dir (report.dir, demo output)", f"replacing {target} refused")


# ---------------------------------------------------------------------------------------------
# servers on loopback only
# ---------------------------------------------------------------------------------------------

DOC_FILES = ["README.md", "Makefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
CODE_DIRS = ["hmrmamba", "flows", "tasks", "benchmarks"]
SERVER_COMMANDS = re.compile(
    r"(mlflow (server|ui)|prefect server start|uvicorn|gunicorn|http\.server|jupyter)"
)


def _lines(paths):
    for rel in paths:
        path = REPO / rel
        if path.is_file():
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                yield f"{rel}:{i}", line


def test_documented_servers_bind_to_loopback(reliability):
    code = [str(p.relative_to(REPO)) for d in CODE_DIRS for p in (REPO / d).rglob("*.py")]
    seen = 0
    for where, line in _lines(DOC_FILES + code):
        assert "0.0.0.0" not in line and "::/0" not in line, f"{where}: binds all interfaces: {line.strip()}"
        for m in re.finditer(r"--host[ =]['\"`]?([\w.:\-]+)", line):
            assert m.group(1) in ("127.0.0.1", "localhost", "::1"), f"{where}: {line.strip()}"
        if (
            SERVER_COMMANDS.search(line)
            and ("server" in line or "ui" in line)
            and "import" not in line
            and "--host" not in line
            and "host=" not in line
            and line.strip().startswith((".venv", "mlflow", "prefect", "PREFECT", "$", "uvicorn", "python"))
        ):
            raise AssertionError(f"{where}: a server command without --host 127.0.0.1: {line.strip()}")
        seen += bool(SERVER_COMMANDS.search(line))
    assert seen >= 2, "expected the README to document the MLflow and Prefect servers"
    reliability.security(
        "README, docs, Makefile, hmrmamba/flows/tasks/benchmarks code",
        f"{seen} server mentions, all bound to 127.0.0.1",
    )


def test_the_lint_finds_a_server_on_all_interfaces(tmp_path):
    """The check above fails on a document that binds a server to every interface."""
    bad = ["mlflow server --host 0.0.0.0 --port 5000", "prefect server start", "mlflow ui --host=example.org"]
    for line in bad:
        fails = (
            "0.0.0.0" in line
            or any(
                m.group(1) not in ("127.0.0.1", "localhost", "::1")
                for m in re.finditer(r"--host[ =]['\"`]?([\w.:\-]+)", line)
            )
            or "--host" not in line
        )
        assert fails, line
