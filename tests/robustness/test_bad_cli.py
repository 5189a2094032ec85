"""Bad command lines: ``hmrmamba <command>`` exits with status 2 and one line ``hmrmamba <command>:
error: ...`` naming the file and field, never a traceback, and writes nothing."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from hmrmamba import cli

from .support import PYTHON, snapshot, subprocess_env, write_yaml_params

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def hmrmamba(argv: list[str], capsys) -> tuple[int, str]:
    """Run the console script in-process -> (exit status, stderr)."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse and the stage frame exit this way
        rc = exc.code
    err = capsys.readouterr().err
    return rc, err


def assert_one_line_error(rc: int, err: str, command: str, *needles: str) -> None:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"hmrmamba {command}: error: ")]
    assert lines, err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def smpl_pickle(path: Path) -> Path:
    from .test_bad_files import smpl_like_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(smpl_like_dict(), protocol=2))
    return path


@pytest.mark.parametrize(
    "case", ["missing", "garbage", "truncated", "empty", "directory_output", "top_level_list"]
)
def test_convert_smpl_bad_inputs(tmp_path, capsys, reliability, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "données" / "SMPL_NEUTRAL.pkl"
    out = tmp_path / "out" / "SMPL.npz"
    if case == "garbage":
        src.parent.mkdir()
        src.write_bytes(b"garbage\n" * 10)
    elif case == "truncated":
        smpl_pickle(src)
        src.write_bytes(src.read_bytes()[:1000])
    elif case == "empty":
        src.parent.mkdir()
        src.write_bytes(b"")
    elif case == "directory_output":
        smpl_pickle(src)
        out.mkdir(parents=True)
    elif case == "top_level_list":
        src.parent.mkdir()
        src.write_bytes(pickle.dumps([1, 2, 3]))
    before = snapshot(tmp_path)
    rc, err = hmrmamba(["convert-smpl", str(src), "-o", str(out)], capsys)
    assert_one_line_error(rc, err, "convert-smpl", str(out if case == "directory_output" else src))
    assert snapshot(tmp_path) == before
    reliability.bad_input("hmrmamba convert-smpl", case.replace("_", " "))


def test_convert_smpl_to_and_from_unicode_paths(tmp_path, capsys, reliability):
    from hmrmamba.body.body_model import load_body_arrays

    src = smpl_pickle(tmp_path / "模型 ünï" / "SMPL ✓.pkl")
    out = tmp_path / "sortie é" / "SMPL ✓.npz"
    rc, err = hmrmamba(["convert-smpl", str(src), "-o", str(out)], capsys)
    assert rc == 0, err
    assert load_body_arrays(out)["v_template"].shape == (40, 3)
    reliability.bad_input("hmrmamba convert-smpl", "unicode input and output paths (must work)")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """An MLflow store with one finished evaluate run tagged with a variant (for ``compare``)."""
    from hmrmamba import mlflow_runs
    from .support import own_mlflow_env

    root = tmp_path_factory.mktemp("store")
    with own_mlflow_env():
        with mlflow_runs.stage_run("evaluate", root=root, params={}, tags={"variant": "tiny"}):
            mlflow_runs.log_metrics({"mpjpe": 1.0})
    return root


@pytest.mark.parametrize(
    "argv, command, needles",
    [
        (["preview", "--split", "nosuch"], "preview", ["nosuch.h5"]),
        (["efficiency", "--table"], "efficiency", ["efficiency.json"]),
        (["compare", "--experiment", "nosuch"], "compare", ["--experiment", "nosuch"]),
        (["compare", "--output-dir", "../../escape"], "compare", ["--output-dir", "escapes"]),
        (["params", "--profile", "nosuch"], "params", ["profile", "nosuch"]),
    ],
)
def test_commands_with_bad_arguments(
    project, store, capsys, reliability, monkeypatch, argv, command, needles
):
    monkeypatch.chdir(project)
    shutil.copy(store / "mlflow.db", project / "mlflow.db")
    before = snapshot(project / "data", project / "models", project / "metrics", project / "params.yaml")
    rc, err = hmrmamba(argv, capsys)
    assert_one_line_error(rc, err, command, *needles)
    assert (
        snapshot(project / "data", project / "models", project / "metrics", project / "params.yaml") == before
    )
    reliability.bad_input(f"hmrmamba {command}", " ".join(argv[1:]))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a: [", "invalid YAML"),
        ("- 1\n", "top level is list"),
        ("runtime: {threads: -4}\n", "runtime.threads"),
    ],
)
def test_stage_command_with_broken_params_yaml(project, capsys, reliability, monkeypatch, text, needle):
    monkeypatch.chdir(project)
    (project / "params.yaml").write_text(text)
    before = snapshot(project / "data", project / "models", project / "metrics")
    rc, err = hmrmamba(["stage", "detect2d"], capsys)
    assert_one_line_error(rc, err, "detect2d", "params.yaml", needle)
    assert snapshot(project / "data", project / "models", project / "metrics") == before
    reliability.bad_input("hmrmamba stage detect2d", f"params.yaml: {text.strip()!r}")


def test_commands_outside_a_project(tmp_path, capsys, reliability, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = hmrmamba(["stage", "prepare"], capsys)
    assert_one_line_error(rc, err, "prepare", "no params.yaml found")
    rc = cli.main(["where"])
    assert rc == 1 and "not inside an hmrmamba checkout" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    reliability.bad_input("hmrmamba stage / where", "outside a project")


def test_real_console_script_prints_no_traceback(project, tmp_path, reliability):
    """The installed entry point, as a user runs it (a subprocess, not the in-process main)."""
    exe = Path(PYTHON).with_name("hmrmamba")
    write_yaml_params(project, {"runtime": {"threads": "many"}})
    for argv, needle in (
        ([str(exe), "stage", "features"], "runtime.threads"),
        ([str(exe), "convert-smpl", str(tmp_path / "absent ✓.pkl")], "absent ✓.pkl"),
    ):
        out = subprocess.run(
            argv, cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr and needle in out.stderr, out.stderr[
            -2000:
        ]
        reliability.bad_input("hmrmamba (console script)", " ".join(argv[1:3]))


XFAIL_CLI = {
    "params with an unknown override": (
        ["params", "synthetic.no_such_key=3"],
        "params",
        "synthetic.no_such_key",
        "Hydra's ConfigCompositionException escapes with a traceback. Fix: hmrmamba/profiles.py compose: wrap "
        "hydra_compose in `except (hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException) as exc: "
        "raise InputError(str(exc).splitlines()[0], file=root / 'conf', field='overrides', expected='overrides "
        "of existing keys (key=value), or +key=value to add one') from None`",
    ),
    "params with a value of the wrong type": (
        ["params", "synthetic.fps=abc"],
        "params",
        "synthetic.fps",
        "`hmrmamba params synthetic.fps=abc` writes an invalid params.yaml that every stage then refuses. Fix: "
        "hmrmamba/profiles.py write_params: call `validate_params(params, file=path)` (hmrmamba.config) before "
        "writing",
    ),
    "preview with a negative sequence count": (
        ["preview", "--sequences", "-1"],
        "preview",
        "--sequences",
        "matplotlib's 'Number of rows must be a positive integer' escapes. Fix: hmrmamba/cli.py cmd_preview: "
        "`if args.sequences < 1: raise InputError(f'{args.sequences}', field='--sequences', expected='>= 1')`",
    ),
}


@pytest.mark.parametrize(
    "case", list(XFAIL_CLI)
)
def test_commands_with_bad_arguments_known_gaps(project, capsys, monkeypatch, case):
    argv, command, needle, _ = XFAIL_CLI[case]
    monkeypatch.chdir(project)
    before = snapshot(project / "params.yaml", project / "plots")
    rc, err = hmrmamba(argv, capsys)
    assert_one_line_error(rc, err, command, needle)
    assert snapshot(project / "params.yaml", project / "plots") == before
