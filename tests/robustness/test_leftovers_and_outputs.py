"""Leftovers and output folders of :func:`hmrmamba.atomic.atomic_dir` (report stage, ``hmrmamba demo``).

* A writer killed with ``kill -9`` leaves its temporary folder ``.<name>.<pid>.<random>.tmp``; the
  next :func:`atomic_dir` of the same target removes it (its pid is dead), never a live writer's.
* An existing folder holding files tracked by git (``.ci`` with ``.ci/run``) is never replaced.
* An output path below an existing file (``--out params.yaml/x``) is a one-line :class:`InputError`
  raised before any work, not a ``FileExistsError``/``NotADirectoryError`` traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from hmrmamba.atomic import atomic_dir, check_replaceable_dir, remove_stale_temps
from hmrmamba.errors import InputError

from .support import PYTHON, REPO, subprocess_env


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    assert p.returncode == 0
    return p.pid


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c",
                    "commit.gpgsign=false", *args], cwd=repo, check=True, capture_output=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# 1. temporary folders of killed writers
# ---------------------------------------------------------------------------------------------


def test_atomic_dir_names_its_temp_folders_with_its_pid(tmp_path):
    out = tmp_path / "reports"
    with atomic_dir(out) as tmp:
        assert tmp.name.startswith(f".reports.{os.getpid()}.") and tmp.name.endswith(".tmp")
        (tmp / "a.md").write_text("one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_stale_temp_folders_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "old.md").write_text("old")
    pid = dead_pid()
    stale_tmp = tmp_path / f".reports.{pid}.abc123.tmp"
    stale_old = tmp_path / f".reports.{pid}.def456.old"
    live = tmp_path / f".reports.{os.getppid()}.xyz789.tmp"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    for d in (stale_tmp, stale_old, live):
        d.mkdir()
        (d / "big.bin").write_bytes(b"x" * 1000)
    (stale_tmp / "sub").mkdir()
    (stale_tmp / "sub" / "f").write_text("f")
    (stale_tmp / "link").symlink_to(outside)  # never followed
    stale_link = tmp_path / f".reports.{pid}.lnk.tmp"
    stale_link.symlink_to(outside)  # a symlink is never removed nor followed

    with atomic_dir(out) as tmp:
        (tmp / "new.md").write_text("new")

    assert not stale_tmp.exists() and not stale_old.exists()
    assert live.is_dir() and (live / "big.bin").exists()
    assert (outside / "keep.txt").read_text() == "keep"
    assert stale_link.is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["new.md"]


def test_a_swap_cut_between_its_renames_puts_the_previous_output_back(tmp_path):
    out = tmp_path / "reports"
    stale_old = tmp_path / f".reports.{dead_pid()}.abc.old"
    (stale_old / "previous").mkdir(parents=True)
    (stale_old / "previous" / "a.md").write_text("previous")
    removed = remove_stale_temps(out)
    assert removed == [stale_old] and not stale_old.exists()
    assert (out / "a.md").read_text() == "previous"


def test_kill_9_inside_atomic_dir_leaves_a_folder_that_the_next_run_removes(tmp_path):
    target = tmp_path / "reports"
    code = textwrap.dedent(f"""
        import sys, time
        from hmrmamba.atomic import atomic_dir
        with atomic_dir({str(target)!r}) as tmp:
            (tmp / "figure.png").write_bytes(b"x" * 100000)
            print("ready", flush=True)
            time.sleep(600)
    """)
    p = subprocess.Popen([PYTHON, "-c", code], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        p.stdout.close()
        p.stderr.close()
    left = [e for e in tmp_path.iterdir() if e.name != "reports"]
    assert len(left) == 1 and left[0].is_dir() and left[0].name.startswith(f".reports.{p.pid}.")
    assert (left[0] / "figure.png").exists()

    with atomic_dir(target) as tmp:
        (tmp / "report.md").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    assert (target / "report.md").read_text() == "done"


# ---------------------------------------------------------------------------------------------
# 2. folders holding git-tracked files
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_a_folder_with_git_tracked_files_is_never_replaced(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "keep").mkdir(parents=True)
    (repo / "keep" / "run").write_text("#!/bin/sh\n")
    git(repo, "init", "-q")
    git(repo, "add", "keep/run")
    git(repo, "commit", "-q", "-m", "ci")
    (repo / "out").mkdir()
    (repo / "out" / "old.md").write_text("old")  # untracked output
    monkeypatch.chdir(tmp_path)

    with pytest.raises(InputError, match="tracked by git") as err:
        with atomic_dir(repo / "keep") as tmp:
            (tmp / "report.md").write_text("x")
    assert "\n" not in str(err.value) and "keep" in str(err.value)
    assert (repo / "keep" / "run").read_text() == "#!/bin/sh\n"
    assert sorted(p.name for p in (repo / "keep").iterdir()) == ["run"]
    # relative path, from inside the repository
    monkeypatch.chdir(repo)
    with pytest.raises(InputError, match="tracked by git"):
        check_replaceable_dir(Path("keep"))

    with atomic_dir(Path("out")) as tmp:
        (tmp / "report.md").write_text("new")
    assert sorted(p.name for p in (repo / "out").iterdir()) == ["report.md"]


def test_outside_a_repository_the_flat_folder_rule_still_applies(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    out = tmp_path / "plain"
    out.mkdir()
    (out / "a.md").write_text("a")
    with atomic_dir(out) as tmp:
        (tmp / "b.md").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == ["b.md"]


@pytest.mark.skipif(not (REPO / ".git").exists() or not (REPO / ".ci" / "run").exists(),
                    reason="not a git checkout with .ci/run")
def test_report_dir_ci_would_not_delete_the_tracked_ci_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="tracked by git"):
        check_replaceable_dir(REPO / ".ci")


# ---------------------------------------------------------------------------------------------
# 3. an output path below an existing file
# ---------------------------------------------------------------------------------------------


def test_atomic_dir_below_a_file_is_an_input_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "afile" / "x", tmp_path / "afile" / "x" / "y"):
        with pytest.raises(InputError, match="existing parents are folders") as err:
            with atomic_dir(target):
                pass
        msg = str(err.value)
        assert "\n" not in msg and str(target) in msg and "afile" in msg
    with pytest.raises(InputError, match="field 'report.dir'"):
        with atomic_dir(tmp_path / "afile" / "x", field="report.dir"):
            pass
    assert (tmp_path / "afile").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_demo_refuses_out_below_a_file_before_any_work(tmp_path, monkeypatch):
    from hmrmamba.demo.pipeline import _check_out_dir

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("seed: 0\n")
    with pytest.raises(InputError, match="existing parents are folders") as err:
        _check_out_dir(Path("params.yaml/x"))
    msg = str(err.value)
    assert "\n" not in msg and "params.yaml/x" in msg and "'--out'" in msg
    assert Path("params.yaml").read_text() == "seed: 0\n"
