"""``kill -9`` at random (seeded) moments: during an atomic HDF5 write, and during the ``prepare``,
``features``, ``train_lift`` and ``train_mesh`` stages run as ``python -m hmrmamba.stages.<name>`` in
a temporary copy of a tiny project.

After each kill: no output file is half-written (every file present is complete and readable;
temporary files are hidden and removed by the next run). Re-running the stage finishes, and its
outputs equal an uninterrupted run's: data stages array for array, training stages bit for bit
(model weights of ``last.pt`` and ``best.pt``, the per-epoch history).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from .support import (
    PYTHON,
    REPO,
    copy_project,
    load_yaml_params,
    rng_for,
    subprocess_env,
    temp_files,
    write_yaml_params,
)

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def start_stage(root: Path, stage: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", f"hmrmamba.stages.{stage}"],
        cwd=root,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish_stage(root: Path, stage: str, timeout: float = 600) -> float:
    """Run a stage to completion -> its wall time in seconds."""
    t0 = time.monotonic()
    p = start_stage(root, stage)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"{stage} failed:\n{err[-4000:]}"
    return time.monotonic() - t0


def assert_no_half_written_files(*dirs: Path) -> int:
    """Every visible file under ``dirs`` is complete (readable by its format's reader) -> count."""
    from hmrmamba.train.checkpoint import load_checkpoint

    n = 0
    for d in dirs:
        if not d.exists():
            continue
        for p in d.rglob("*"):
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix == ".h5":
                with h5py.File(p, "r") as h5:
                    h5.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
            elif p.suffix == ".pt":
                load_checkpoint(p)
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    [z[k] for k in z.files]
            elif p.suffix == ".csv":
                import pandas as pd

                pd.read_csv(p)
            elif p.suffix == ".png":
                import imageio.v3 as iio

                iio.imread(p)
            n += 1
    return n


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return out


def same_h5(a: Path, b: Path) -> bool:
    x, y = h5_arrays(a), h5_arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# fast: an atomic HDF5 write killed at random moments
# ---------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from robustness.test_bad_files import good_split
    from hmrmamba.data import h5schema as H
    out = sys.argv[1]
    frames, seqs = good_split((4000, 4000))
    frames["image"] = np.random.default_rng(0).integers(0, 255, size=(8000, 24, 24, 3), dtype=np.uint8)
    print("ready", flush=True)
    for version in range(1, 1000):
        frames["smpl_trans"][:] = version
        H.write_split(out, frames, seqs, attrs={{"version": version}})
""")


@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_atomic_hdf5_write_killed_at_a_random_moment(tmp_path, reliability, seed):
    from hmrmamba.data.h5schema import read_split

    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(REPO / "tests")))
    out = tmp_path / "data" / "train.h5"
    p = subprocess.Popen(
        [PYTHON, str(script), str(out)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    time.sleep(float(rng_for(f"atomic-{seed}").uniform(0.05, 2.0)))
    p.kill()
    p.communicate()
    # the destination holds a complete earlier version, or nothing yet
    if out.exists():
        split = read_split(out)
        version = int(split.attrs["version"])
        assert (split.frames["smpl_trans"] == version).all()
    left = temp_files(tmp_path)
    assert all(f.name.startswith(".train.h5.") for f in left)
    # the next write (another process) succeeds and removes what the killed writer left
    from .test_bad_files import good_split

    frames, seqs = good_split()
    from hmrmamba.data.h5schema import write_split

    write_split(out, frames, seqs)
    assert temp_files(tmp_path) == []
    reliability.fault(
        "atomic write (write_split)",
        f"SIGKILL mid-write (seed {seed})",
        detail=f"{'a complete earlier version' if left or out.exists() else 'no file'} kept; "
        f"{len(left)} temporary file(s) removed by the next write",
    )


# ---------------------------------------------------------------------------------------------
# slow: whole stages killed and re-run
# ---------------------------------------------------------------------------------------------

DATA_OUT = {"prepare": "data/prepared", "features": "data/features"}
SPLITS = ("train", "val", "test")


def _bigger(root: Path, **overrides) -> None:
    params = load_yaml_params(root)
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        node = params[section]
        *head, last = name.split(".")
        for h in head:
            node = node[h]
        node[last] = value
    write_yaml_params(root, params)


def kill_when(root: Path, stage: str, ready, *, delay: float, timeout: float = 600) -> str:
    """Start ``stage``; once ``ready()`` holds, wait ``delay`` s and SIGKILL it -> what happened."""
    p = start_stage(root, stage)
    t0 = time.monotonic()
    try:
        while not ready():
            if p.poll() is not None:
                return "finished before the kill point"
            assert time.monotonic() - t0 < timeout, "kill point never reached"
            time.sleep(0.005)
        time.sleep(delay)
        if p.poll() is not None:
            return "finished before the kill"
        p.send_signal(signal.SIGKILL)
        p.wait()
        return f"killed at {time.monotonic() - t0:.1f} s"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()


def writing(out_dir: Path, split: str):
    """True while an atomic write of ``<split>.h5`` is in progress (its temporary file exists)."""
    return lambda: any(out_dir.glob(f".{split}.h5.*"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["prepare", "features"])
def test_data_stage_killed_then_rerun_equals_an_uninterrupted_run(base_project, tmp_path, reliability, stage):
    """Killed twice in the middle of writing one of its split files (split and moment seeded)."""
    base = copy_project(base_project, tmp_path / "base")
    _bigger(base, **{"synthetic.splits.train.sequences": 4, "synthetic.frames": [20, 30]})
    for s in ("prepare", "detect2d") if stage == "features" else ():
        finish_stage(base, s)
    killed = copy_project(base, tmp_path / "killed")
    duration = finish_stage(base, stage)
    out_dir = DATA_OUT[stage]
    rng = rng_for(f"{stage}-kill")
    landed = []
    for _ in range(2):
        split, delay = SPLITS[int(rng.integers(0, 3))], float(rng.uniform(0.0, 0.05))
        what = kill_when(killed, stage, writing(killed / out_dir, split), delay=delay)
        landed.append(f"while writing {split}.h5 (+{delay * 1000:.0f} ms): {what}")
        assert_no_half_written_files(killed / "data", killed / "metrics")
    finish_stage(killed, stage)
    assert temp_files(killed / "data") == []
    files = sorted(p.name for p in (base / out_dir).iterdir())
    assert files == sorted(p.name for p in (killed / out_dir).iterdir())
    for name in files:
        assert same_h5(base / out_dir / name, killed / out_dir / name), name
    identical = all(sha(base / out_dir / n) == sha(killed / out_dir / n) for n in files)
    reliability.fault(
        f"stage {stage} (python -m)",
        "SIGKILL " + "; then ".join(landed) + "; then re-run",
        detail=f"finished; no half-written file (uninterrupted run {duration:.1f} s)",
    )
    reliability.compared(
        f"stage {stage}",
        f"{out_dir}/*.h5 after kills + re-run vs uninterrupted",
        equal=True,
        detail="arrays equal" + ("; files byte-identical" if identical else ""),
    )


def _train_outputs_equal(a: Path, b: Path, ckpt: str) -> dict[str, bool]:
    import torch

    from hmrmamba.train.checkpoint import load_checkpoint

    out = {}
    for name in ("last.pt", "best.pt"):
        x, y = load_checkpoint(a / ckpt / name), load_checkpoint(b / ckpt / name)
        out[name] = (
            x["model"].keys() == y["model"].keys()
            and all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])
            and x["epoch"] == y["epoch"]
            and x["step"] == y["step"]
        )
    import pandas as pd

    h1, h2 = (pd.read_csv(p / ckpt / "history.csv") for p in (a, b))
    cols = [c for c in h1.columns if "seconds" not in c]
    out["history.csv"] = list(h1["epoch"]) == list(range(1, len(h1) + 1)) and h1[cols].equals(h2[cols])
    return out


def epochs_done(history: Path):
    def count() -> int:
        try:
            return max(0, len(history.read_text().splitlines()) - 1)
        except FileNotFoundError:
            return 0

    return count


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train_lift", "train_mesh"])
def test_training_killed_then_resumed_equals_an_uninterrupted_run_bit_for_bit(
    base_project, tmp_path, reliability, stage
):
    """Killed twice in the middle of an epoch (epochs and moments seeded), resumed, compared bit for bit."""
    import pandas as pd

    epochs = 6
    base = copy_project(base_project, tmp_path / "base")
    _bigger(base, **{f"{stage}.epochs": epochs})
    import shutil

    for d in ("models/lift", "models/mesh"):
        shutil.rmtree(base / d)
    if stage == "train_mesh":
        _bigger(base, **{"train_lift.epochs": 1})
        finish_stage(base, "train_lift")
    killed = copy_project(base, tmp_path / "killed")
    duration = finish_stage(base, stage)
    ckpt = load_yaml_params(base)[stage]["checkpoint_dir"]
    epoch_s = float(pd.read_csv(base / ckpt / "history.csv")["epoch_seconds"].median())
    rng = rng_for(f"{stage}-kill")
    first, second = sorted(int(k) for k in rng.choice(np.arange(1, epochs), size=2, replace=False))
    landed = []
    done = epochs_done(killed / ckpt / "history.csv")
    for k in (first, second):
        delay = float(rng.uniform(0.1, 0.8)) * epoch_s
        what = kill_when(killed, stage, lambda k=k: done() >= k, delay=delay)
        landed.append(f"in epoch {k + 1}/{epochs} ({delay:.2f} s after epoch {k} ended): {what}")
        assert_no_half_written_files(killed / "models", killed / "metrics", killed / "plots")
    finish_stage(killed, stage)
    assert temp_files(killed / "models") == []
    metrics = json.loads((killed / f"metrics/{stage}.json").read_text())
    assert metrics["resumed"] is True
    equal = _train_outputs_equal(base, killed, ckpt)
    assert all(equal.values()), equal
    reliability.fault(
        f"stage {stage} (python -m)",
        "SIGKILL " + "; then ".join(landed) + "; then re-run",
        detail=f"resumed from last.pt; no half-written file (uninterrupted run {duration:.1f} s)",
    )
    reliability.compared(
        f"stage {stage}",
        "last.pt, best.pt weights and history after kills + resume vs uninterrupted",
        equal=True,
        detail="torch.equal on every tensor; same epochs and steps",
    )


STORE_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hmrmamba import mlflow_runs
    with mlflow_runs.stage_run("prepare", root=Path(sys.argv[1]), params={"x": 1}):
        mlflow_runs.log_metrics({"m": 1.0})
""")


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_mlflow_store_creation_killed_at_a_random_moment(tmp_path, reliability, seed):
    """A stage killed while MLflow creates a fresh sqlite store (its first run in a project) leaves
    either no store or a complete one: the next run logs normally."""
    from hmrmamba import mlflow_runs
    from .support import own_mlflow_env

    root = tmp_path / "project"
    root.mkdir()
    at = float(rng_for(f"store-{seed}").uniform(1.0, 4.0))
    p = subprocess.Popen(
        [PYTHON, "-c", STORE_WRITER, str(root)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        p.wait(timeout=at)
        running = False
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        running = True
    with own_mlflow_env():
        with mlflow_runs.stage_run("prepare", root=root, params={"x": 2}) as run:
            mlflow_runs.log_metrics({"m": 2.0})
    from mlflow.tracking import MlflowClient

    got = MlflowClient(mlflow_runs.local_store_uri(root)).get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics["m"] == 2.0
    assert temp_files(root) == []
    reliability.fault(
        "tracking (sqlite store)",
        f"SIGKILL {at:.1f} s into the first run of a project (seed {seed})",
        detail="next run logs normally" + ("" if running else " (had finished)"),
    )
