from pathlib import Path
import subprocess

import numpy as np
import pytest
import yaml

from hmrmamba.config import flatten, home_root, resolve_path
from hmrmamba.data.synthetic.cameras import Camera, fit_in_frame, look_at, sample_camera
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from hmrmamba.profiles import compose, params_text

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_composed_default_profile():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose(ROOT, "default"), "params.yaml is stale: run `hmrmamba params`"


def test_params_yaml_is_written_as_dvc_writes_it(tmp_path):
    """``dvc exp run -S`` recomposes params.yaml from conf/ with Hydra and writes it with DVC's own dumper:
    the committed file must be that text byte for byte, so applying an experiment changes only its values."""
    from dvc.utils.hydra import compose_and_dump

    assert (ROOT / "params.yaml").read_text() == params_text(compose(ROOT, "default")), \
        "params.yaml is not in DVC's style: run `hmrmamba params`"
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", str(ROOT), ["train_mesh.lr=0.5"])
    ours, dvcs = (ROOT / "params.yaml").read_text().splitlines(), out.read_text().splitlines()
    changed = [(a, b) for a, b in zip(ours, dvcs) if a != b]
    assert len(ours) == len(dvcs) and len(changed) == 1 and changed[0][1] == "  lr: 0.5", changed


def test_profiles_override_one_key():
    s = compose(ROOT, "paper-s")
    d = compose(ROOT, "default")
    assert s["profile"] == "paper-s" and s["features"]["crop_size"] == 224
    # the default profile overrides only the training split's size in this section
    assert d["synthetic"]["splits"]["train"] == {"sequences": 120, "subjects": 16}
    assert s["synthetic"]["splits"]["train"] == {"sequences": 40, "subjects": 8}
    strip = lambda syn: {**syn, "splits": {k: v for k, v in syn["splits"].items() if k != "train"}}
    assert strip(s["synthetic"]) == strip(d["synthetic"])
    with pytest.raises(InputError, match="unknown profile 'paper-xl'"):
        compose(ROOT, "paper-xl")


def test_dvc_outs_match_layout():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    lay = Layout(ROOT)
    expected = {
        "body_model": lay.body_model.parent, "prepare": lay.prepared("train").parent,
        "detect2d": lay.detections("train").parent, "features": lay.features("train").parent,
    }
    for stage, out in expected.items():
        assert ROOT / dvc[stage]["outs"][0] == out
        assert ROOT / dvc[stage]["outs"][1] == lay.metrics(stage)
        assert ROOT / next(iter(dvc[stage]["metrics"][0])) == lay.summary(stage)
        assert dvc[stage]["cmd"] == f"python -m hmrmamba.stages.{stage}"


def test_paths_cannot_escape_the_project(tmp_path):
    assert resolve_path(tmp_path, "data/x.npz", field="f") == (tmp_path / "data/x.npz").resolve()
    assert resolve_path(tmp_path, "/abs/x", field="f") == Path("/abs/x")
    with pytest.raises(InputError, match="escapes the project root"):
        resolve_path(tmp_path, "../../etc/passwd", field="features.weights")


def test_home_root_from_dvc_temp_dir():
    assert home_root(Path("/repo/.dvc/tmp/exps/tmpabc")) == Path("/repo")
    assert home_root(Path("/repo")) == Path("/repo")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": 2}) == {"a.b": 1, "a.c": [1, 2], "d": 2}


def test_look_at_puts_target_on_the_optical_axis_with_y_down():
    eye, target = np.array([0.0, 1.0, 5.0]), np.array([0.0, 1.0, 0.0])
    R, t = look_at(eye, target)
    cam = Camera(R=R, t=t, intrinsics=np.array([100.0, 100, 64, 64]))
    np.testing.assert_allclose(cam.to_camera(target), [0, 0, 5], atol=1e-12)
    head = cam.to_camera(np.array([0.0, 2.0, 0.0]))
    assert head[1] < 0  # up in the world is up (negative y) in the image
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(R), 1.0)


def test_sampled_cameras_fit_points_in_frame():
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=[0.4, 0.8, 0.4], size=(500, 3)) + [0, 1, 0]
    for _ in range(20):
        cam = sample_camera(rng, target=np.array([0.0, 1.0, 0.0]), image_size=128, distance=(3.0, 6.0),
                            height=(-0.2, 1.2), yaw_deg=(-180, 180), person_fraction=(0.9, 1.5))
        cam = fit_in_frame(cam, pts, 128)
        uv = cam.project(cam.to_camera(pts))
        assert uv.min() >= 0 and uv.max() <= 128


def test_dvc_lock_is_not_git_ignored():
    """`dvc repro` refuses to write a git-ignored dvc.lock, so the ignore rules must leave it alone."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    probe = subprocess.run(["git", "check-ignore", "-q", "dvc.lock"], cwd=root)
    assert probe.returncode == 1, "dvc.lock is git-ignored; `dvc repro` would fail with 'dvc.lock is git-ignored'"


def test_atomic_dir_swaps_in_on_success_and_leaves_the_old_on_error(tmp_path):
    from hmrmamba.atomic import atomic_dir

    out = tmp_path / "reports"
    with atomic_dir(out) as tmp:
        (tmp / "a.md").write_text("one")
    assert (out / "a.md").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.md").write_text("two")
            raise RuntimeError("boom")
    assert (out / "a.md").read_text() == "one"
    with atomic_dir(out) as tmp:
        (tmp / "b.md").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["b.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
