"""A full disk while writing: every writer raises :class:`~hmrmamba.atomic.WriteFailed` naming the
destination, leaves no partial or temporary file, and keeps the previous file byte for byte.

Three ways to fill the disk: the HDF5/torch/json write patched to raise ``ENOSPC`` (in-process),
a real 256 KiB tmpfs in a private mount namespace (``unshare -rm``, skipped where not allowed),
and a file-size limit (``RLIMIT_FSIZE``: the kernel's ``EFBIG``) on a stage subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hmrmamba.atomic import WriteFailed, write_json, write_npz
from hmrmamba.data import h5schema as H

from .support import (
    PYTHON,
    REPO,
    expect_clean_failure,
    load_yaml_params,
    snapshot,
    subprocess_env,
    temp_files,
)
from .test_bad_files import good_split


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _hdf5_enospc(*args, **kwargs):
    # what h5py raises when HDF5's write() fails: a RuntimeError carrying the errno in its text
    raise RuntimeError(
        "Can't write data (file write failed: time = Mon Jan  1 00:00:00 2024, filename = "
        "'x.h5', file descriptor = 5, errno = 28, error message = 'No space left on device')"
    )


def _fail_after(n: int, error):
    """A replacement that lets ``n`` calls through to ``original`` (bound later), then raises."""
    calls = {"n": 0}

    def make(original):
        def patched(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > n:
                error()
            return original(*args, **kwargs)

        return patched

    return make


WRITERS = ["write_split", "write_table", "save_checkpoint", "write_json", "write_npz", "save_body_model"]


def _write(kind: str, path: Path, *, version: int) -> None:
    """Write a small valid file of ``kind`` to ``path`` (``version`` changes its content)."""
    if kind == "write_split":
        frames, seqs = good_split((5 + version, 3))
        H.write_split(path, frames, seqs)
    elif kind == "write_table":
        H.write_table(
            path,
            {"boxes": np.full((9, 4), version, np.float32), "features": np.ones((9, 64))},
            attrs={"v": version},
        )
    elif kind == "save_checkpoint":
        import torch

        from hmrmamba.train.checkpoint import save_checkpoint

        model = torch.nn.Linear(64, 64)
        torch.nn.init.constant_(model.weight, version)
        save_checkpoint(path, model=model, epoch=version, step=version, config={"v": version})
    elif kind == "write_json":
        write_json(path, {"v": version, "pad": "x" * 5000})
    elif kind == "write_npz":
        write_npz(path, a=np.full(3000, version))
    elif kind == "save_body_model":
        from hmrmamba.body.body_model import save_body_model

        from .test_bad_files import smpl_like_dict

        arrays = {
            k: np.asarray(v.toarray() if hasattr(v, "toarray") else v) for k, v in smpl_like_dict().items()
        }
        arrays["f"], arrays["kintree_table"] = (
            arrays["f"].astype(np.int64),
            arrays["kintree_table"].astype(np.int64),
        )
        arrays["v_template"] = arrays["v_template"] + version
        save_body_model(path, arrays)


def _patch_disk_full(monkeypatch, kind: str, style: str) -> None:
    """Make the bytes of ``kind``'s write fail part-way with ENOSPC."""
    import io

    if kind in ("write_split", "write_table"):
        error = _hdf5_enospc if style == "hdf5" else _enospc
        monkeypatch.setattr(h5py.Group, "create_dataset", _fail_after(1, error)(h5py.Group.create_dataset))
    else:  # torch.save / json / numpy: the Python-level file write fails, as a full disk makes it
        real_open = open

        class FullFile(io.FileIO):
            def write(self, b):
                if self.tell() + len(b) > 512:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(b)

        def fake_open(file, mode="r", *args, **kwargs):
            if "w" in mode and Path(str(file)).name.startswith("."):  # only the temporary files
                raw = FullFile(file, "w")
                return raw if "b" in mode else io.TextIOWrapper(raw)
            return real_open(file, mode, *args, **kwargs)

        import builtins

        monkeypatch.setattr(builtins, "open", fake_open)

        def write_text(self, data, *args, **kwargs):
            with fake_open(self, "w") as fh:
                return fh.write(data)

        monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize(
    "kind, style", [(k, "oserror") for k in WRITERS] + [(k, "hdf5") for k in ("write_split", "write_table")]
)  # h5py's RuntimeError form
def test_disk_full_mid_write_leaves_the_old_file(tmp_path, monkeypatch, reliability, kind, style):
    dest = tmp_path / "out" / f"{kind}.bin"
    _write(kind, dest, version=1)
    with monkeypatch.context() as m:
        _patch_disk_full(m, kind, style)
        err = expect_clean_failure(
            lambda: _write(kind, dest, version=2),
            watch=[tmp_path],
            exc_type=WriteFailed,
            file=dest,
            match="No space left on device",
        )
    assert err.errno == errno.ENOSPC
    assert temp_files(tmp_path) == []
    _write(kind, dest, version=3)  # the disk has room again: the same call succeeds
    reliability.fault(f"atomic write ({kind})", f"ENOSPC mid-write ({style} error)", detail="old file kept")


def test_disk_full_on_the_first_write_leaves_nothing(tmp_path, monkeypatch, reliability):
    dest = tmp_path / "out" / "train.h5"
    monkeypatch.setattr(h5py.Group, "create_dataset", _fail_after(2, _hdf5_enospc)(h5py.Group.create_dataset))
    expect_clean_failure(lambda: _write("write_split", dest, version=1), exc_type=WriteFailed, file=dest)
    assert list((tmp_path / "out").iterdir()) == []
    reliability.fault("atomic write (write_split)", "ENOSPC on a first write", detail="no file left")


def test_stage_with_a_full_disk_keeps_its_previous_outputs(project, monkeypatch, reliability):
    """detect2d re-run on a full disk: its three split files stay as they were; nothing half-written."""
    from hmrmamba.layout import Layout
    from hmrmamba.stages import detect2d

    monkeypatch.chdir(project)
    params = load_yaml_params(project)
    monkeypatch.setattr(h5py.Group, "create_dataset", _fail_after(3, _hdf5_enospc)(h5py.Group.create_dataset))
    watch = [project / d for d in ("data", "metrics", "models")]
    expect_clean_failure(
        lambda: detect2d.run(params, Layout(project)), watch=watch, exc_type=WriteFailed, match="detections/"
    )
    assert temp_files(project / "data") == []
    reliability.fault(
        "stage detect2d", "ENOSPC while writing its HDF5 output", detail="previous outputs kept"
    )


TMPFS_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from robustness.test_bad_files import good_split
    from hmrmamba.atomic import WriteFailed
    from hmrmamba.data import h5schema as H
    d = sys.argv[1]
    frames, seqs = good_split()
    H.write_split(d + "/train.h5", frames, seqs)
    old = hashlib.sha256(open(d + "/train.h5", "rb").read()).hexdigest()
    frames, seqs = good_split((3000, 3000))
    frames["image"] = np.random.default_rng(0).integers(0, 255, size=(6000, 16, 16, 3), dtype=np.uint8)
    out = {{}}
    try:
        H.write_split(d + "/train.h5", frames, seqs)
    except WriteFailed as exc:
        out = {{"errno": exc.errno, "message": str(exc)}}
    out["files"] = sorted(os.listdir(d))
    out["old_kept"] = old == hashlib.sha256(open(d + "/train.h5", "rb").read()).hexdigest()
    print(json.dumps(out))
""")


def test_real_full_tmpfs(tmp_path, reliability):
    """A 256 KiB tmpfs in a private mount namespace: the real ENOSPC from the kernel, through HDF5."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({probe.stderr.strip()})")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(TMPFS_SCRIPT.format(tests=str(REPO / "tests")))
    out = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=256k tmpfs '{mnt}' && exec '{PYTHON}' '{script}' '{mnt}'",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["errno"] == errno.ENOSPC and "No space left on device" in res["message"]
    assert "train.h5" in res["message"] and res["files"] == ["train.h5"] and res["old_kept"]
    reliability.fault(
        "atomic write (write_split)",
        "real ENOSPC on a full 256 KiB tmpfs",
        detail="old file kept, no temporary file",
    )


def test_file_size_limit_on_a_stage_process(project, reliability):
    """``prepare`` under RLIMIT_FSIZE (the kernel refuses to grow a file: EFBIG): a one-line error, exit
    status 1, the previous splits untouched and no temporary files."""
    limit = 60_000  # the tiny splits are 50-110 kB: the first write that grows past this fails
    out_dir = project / "data" / "prepared"
    before = snapshot(out_dir)
    (project / "mlflow.db").unlink(missing_ok=True)
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from hmrmamba.stages import prepare
        from hmrmamba.stages.common import execute
        from hmrmamba.atomic import WriteFailed
        try:
            execute(prepare.STAGE, prepare.run, log_to_mlflow=False)
        except WriteFailed as exc:
            print("WriteFailed", exc.errno, exc, file=sys.stderr)
            sys.exit(1)
    """)
    res = subprocess.run(
        [PYTHON, "-c", code], cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert f"WriteFailed {errno.EFBIG}" in res.stderr and "File too large" in res.stderr, res.stderr[-2000:]
    assert snapshot(out_dir) == before and temp_files(project / "data") == []
    reliability.fault(
        "stage prepare (subprocess)",
        "RLIMIT_FSIZE: the kernel refuses to grow the output (EFBIG)",
        detail="previous splits kept",
    )


def test_stale_temporary_files_of_a_dead_writer_are_removed(tmp_path, reliability):
    """A temp file left by a writer killed mid-write (its pid no longer exists) goes on the next write;
    one of a live writer stays."""
    from hmrmamba.atomic import atomic_path

    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".train.h5.{dead_pid}.abc123.h5"
    live = tmp_path / f".train.h5.{os.getppid()}.def456.h5"
    other = tmp_path / f".val.h5.{dead_pid}.xyz.h5"
    for p in (stale, live, other):
        p.write_bytes(b"half")
    with atomic_path(tmp_path / "train.h5", suffix=".h5") as tmp:
        tmp.write_bytes(b"new")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "train.h5").read_bytes() == b"new"
    reliability.fault("atomic write", "temporary file of a killed writer", detail="removed by the next write")


def test_metrics_json_is_strict_json(tmp_path):
    """An undefined metric (NaN, e.g. acceleration of one-frame clips) is written as null, not NaN."""
    write_json(tmp_path / "m.json", {"accel": float("nan"), "mpjpe": 12.5, "per": [float("inf"), 1.0]})
    got = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert got == {"accel": None, "mpjpe": 12.5, "per": [None, 1.0]}
