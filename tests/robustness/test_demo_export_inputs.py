"""Bad inputs of ``hmrmamba export`` and ``hmrmamba demo``: the audited cases that were handled but
had no regression test.

Refusals must be a clean :class:`~hmrmamba.errors.InputError` naming the field (and the file when
there is one), raised before any output is written; on the command line, exit status 2 and one line
``hmrmamba <command>: error: ...``. Keypoints that are no person (absurdly far away, all on one
pixel) must not count as detections, and a detected frame must have a finite translation.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from hmrmamba import cli
from hmrmamba.errors import InputError

from .support import PYTHON, expect_clean_failure, snapshot, subprocess_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N_VERTS = 4
FACES = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64)


def meshes_npz(path: Path, *, frames: int = 2, fps=25.0) -> Path:
    """A small ``meshes.npz`` as ``hmrmamba demo`` writes it (a tetrahedron per frame)."""
    v = np.zeros((frames, N_VERTS, 3), np.float32)
    v[:, 1, 0] = v[:, 2, 1] = v[:, 3, 2] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, vertices=v, faces=FACES, fps=fps)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``hmrmamba ARGV`` in-process -> (exit status, stderr)."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse exits this way
        rc = exc.code
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, command: str, field: str) -> str:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hmrmamba {command}: error: "), err
    assert f"'{field}'" in lines[0], (field, err)
    return lines[0]


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("case, fps", [("vector", np.array([25.0, 30.0])), ("string", np.array("abc"))])
@pytest.mark.parametrize("fmt", ["glb", "obj"])
def test_export_refuses_fps_that_is_not_one_number(tmp_path, reliability, case, fps, fmt):
    from hmrmamba.demo.export import export_meshes, read_meshes

    src = meshes_npz(tmp_path / "in" / "meshes.npz", fps=fps)
    out = tmp_path / ("out.glb" if fmt == "glb" else "frames")
    err = expect_clean_failure(lambda: read_meshes(src), watch=[tmp_path], file=src, field="'fps'")
    assert err.field == "fps"
    err = expect_clean_failure(lambda: export_meshes(src, fmt=fmt, out=out), watch=[tmp_path], file=src,
                               field="'fps'")
    assert err.field == "fps"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    reliability.bad_input("hmrmamba export", f"meshes.npz fps as a {case} (--format {fmt})")


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_export_refuses_meshes_with_zero_frames(tmp_path, reliability, fmt):
    from hmrmamba.demo.export import export_meshes, read_meshes

    src = meshes_npz(tmp_path / "in" / "meshes.npz", frames=0)
    out = tmp_path / ("out.glb" if fmt == "glb" else "frames")
    err = expect_clean_failure(lambda: read_meshes(src), watch=[tmp_path], file=src, field="'vertices'",
                               match="0 frames")
    assert err.field == "vertices"
    err = expect_clean_failure(lambda: export_meshes(src, fmt=fmt, out=out), watch=[tmp_path], file=src,
                               field="'vertices'", match="0 frames")
    assert err.field == "vertices"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    reliability.bad_input("hmrmamba export", f"meshes.npz with zero frames (--format {fmt})")


def test_export_model_refuses_negative_frames_before_loading_the_model(tmp_path, reliability):
    """``--frames -3`` is named, not the (absent) checkpoint that would be loaded next; nothing is written."""
    from hmrmamba.demo.export import check_frames

    err = expect_clean_failure(lambda: check_frames(-3), field="'--frames'", match="-3")
    assert err.field == "--frames"

    exe = Path(PYTHON).with_name("hmrmamba")
    ckpt = tmp_path / "absent_checkpoint.pt"
    out = tmp_path / "model.pt"
    proc = subprocess.run(
        [str(exe), "export", "--torchscript", "--frames", "-3", "--checkpoint", str(ckpt), "--out", str(out)],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    line = assert_one_line_error(proc.returncode, proc.stderr, "export", "--frames")
    assert "-3" in line and "absent_checkpoint" not in line, line
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []
    reliability.bad_input("hmrmamba export --torchscript", "--frames -3 (before the model loads)")


def test_export_obj_refuses_an_existing_file_as_out_folder(tmp_path, capsys, reliability):
    from hmrmamba.demo.export import export_meshes

    src = meshes_npz(tmp_path / "in" / "meshes.npz")
    out = tmp_path / "afile"
    out.write_text("keep me\n")
    err = expect_clean_failure(lambda: export_meshes(src, fmt="obj", out=out), watch=[tmp_path], file=out,
                               field="'--out'", match="is a file")
    assert err.field == "--out"

    before = snapshot(tmp_path)
    rc, stderr = run_cli(["export", "--meshes", str(src), "--format", "obj", "--out", str(out)], capsys)
    line = assert_one_line_error(rc, stderr, "export", "--out")
    assert str(out) in line, line
    assert snapshot(tmp_path) == before
    assert out.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in"]
    reliability.bad_input("hmrmamba export --format obj", "--out is an existing file")


# ---------------------------------------------------------------------------------------------- demo


def _demo_kwargs(tmp_path: Path) -> dict:
    """Arguments of a demo whose video, keypoints and checkpoint are all absent: an option check that
    runs before any work is the only error that can name anything other than these files."""
    return dict(keypoints=tmp_path / "absent_kp.npz", checkpoint=tmp_path / "absent.pt", root=tmp_path,
                pictures=False, progress=False)


def test_demo_refuses_infinite_focal(tmp_path, capsys, reliability):
    from hmrmamba.demo import run_demo
    from hmrmamba.demo.camera import check_focal, default_camera

    for call in (lambda: check_focal(float("inf")), lambda: default_camera((48, 64), focal=float("inf"))):
        err = expect_clean_failure(call, field="'--focal'", match="inf")
        assert err.field == "--focal"

    out = tmp_path / "out"
    err = expect_clean_failure(
        lambda: run_demo(tmp_path / "absent.mp4", out, focal=float("inf"), **_demo_kwargs(tmp_path)),
        watch=[tmp_path], field="'--focal'")
    assert err.field == "--focal"
    assert not out.exists()

    rc, stderr = run_cli(["demo", str(tmp_path / "absent.mp4"), "--out", str(out), "--keypoints",
                          str(tmp_path / "absent_kp.npz"), "--focal", "inf", "--quiet"], capsys)
    assert_one_line_error(rc, stderr, "demo", "--focal")
    assert list(tmp_path.iterdir()) == []
    reliability.bad_input("hmrmamba demo", "--focal inf")


def test_demo_refuses_render_size_zero_before_any_work(tmp_path, capsys, reliability):
    from hmrmamba.demo import run_demo
    from hmrmamba.demo.pipeline import _check_options

    err = expect_clean_failure(lambda: _check_options(0, None, 8), field="'--render-size'", match="render_size=0")
    assert err.field == "--render-size"

    out = tmp_path / "out"
    err = expect_clean_failure(
        lambda: run_demo(tmp_path / "absent.mp4", out, render_size=0, **_demo_kwargs(tmp_path)),
        watch=[tmp_path], field="'--render-size'")
    assert err.field == "--render-size"
    assert not out.exists()

    rc, stderr = run_cli(["demo", str(tmp_path / "absent.mp4"), "--out", str(out), "--keypoints",
                          str(tmp_path / "absent_kp.npz"), "--render-size", "0", "--quiet"], capsys)
    line = assert_one_line_error(rc, stderr, "demo", "--render-size")
    assert "absent" not in line, line  # named before the video or the keypoints file is looked at
    assert list(tmp_path.iterdir()) == []
    reliability.bad_input("hmrmamba demo", "--render-size 0 (before any work)")


# ---------------------------------------------------------------------------------------------- demo keypoints

H, W = 480, 640
FRAMES = 4


def _good_keypoints(rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, 17, 2) px of a person inside a 640x480 image."""
    return rng.uniform(100.0, 300.0, (FRAMES, 17, 2))


def _pelvis_relative_joints(rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, 17, 3) metres, pelvis-relative, a body-sized spread."""
    j = rng.normal(0.0, 0.3, (FRAMES, 17, 3))
    return (j - j[:, :1]).astype(np.float32)


def _assert_detections_have_translations(track) -> None:
    """The demo's camera step on this track: every detected frame gets a finite translation."""
    from hmrmamba.demo.camera import default_camera, estimate_translation
    from hmrmamba.demo.keypoints import fill_undetected

    kp, conf = fill_undetected(track)
    trans = estimate_translation(_pelvis_relative_joints(np.random.default_rng(1)), kp, conf,
                                 default_camera((H, W)))
    det = np.asarray(track.detected, bool)
    assert np.isfinite(trans[det]).all(), (det, trans)
    assert np.isnan(trans[~det]).all(), (det, trans)


@pytest.mark.parametrize("case", ["1e31 px, image size known", "1e31 px, image size unknown",
                                  "far outside the image"])
def test_demo_keypoints_far_away_are_not_detections(tmp_path, reliability, case):
    from hmrmamba.demo.keypoints import MAX_ABS_PX, OUTSIDE_MARGIN, load_keypoints, make_track

    rng = np.random.default_rng(0)
    kp = _good_keypoints(rng)
    if case.startswith("1e31"):
        # joints spread apart (1e31 + 100 == 1e31 in floating point: scale, do not shift)
        kp[1] = 1e31 * rng.uniform(1.0, 2.0, (17, 2))
        assert kp[1].min() > MAX_ABS_PX
    else:
        kp[1] = kp[1] + (1.0 + OUTSIDE_MARGIN) * W + 10.0  # right of the image by more than the margin
        assert (kp[1, :, 0] > (1.0 + OUTSIDE_MARGIN) * W).all() and (np.abs(kp[1]) < MAX_ABS_PX).all()
    image_size = None if "unknown" in case else (H, W)

    path = tmp_path / "kp.npz"
    np.savez(path, keypoints=kp)
    tracks = [make_track(kp, None, image_size=image_size),
              load_keypoints(path, num_frames=FRAMES, image_size=image_size)]
    for track in tracks:
        assert track.detected.tolist() == [True, False, True, True], case
        assert np.isnan(track.keypoints[1]).all() and (track.confidence[1] == 0).all()
        assert np.isfinite(track.keypoints[[0, 2, 3]]).all()
        _assert_detections_have_translations(track)
    reliability.bad_input("hmrmamba demo --keypoints", f"keypoints at {case}: not a detection")


def test_demo_keypoints_all_on_one_pixel_are_not_detections(tmp_path, reliability):
    from hmrmamba.demo.keypoints import MIN_SPREAD_PX, detected_frames, load_keypoints

    rng = np.random.default_rng(0)
    kp = _good_keypoints(rng)
    kp[2] = 150.0  # every joint of frame 2 on one pixel, inside the image
    conf = np.ones((FRAMES, 17), np.float32)
    assert detected_frames(kp, conf).tolist() == [True, True, False, True]
    kp_tight = kp.copy()
    kp_tight[2] += rng.uniform(0.0, MIN_SPREAD_PX / 4, (17, 2))  # within a fraction of a pixel: still one spot
    assert not detected_frames(kp_tight, conf)[2]

    path = tmp_path / "kp.npz"
    np.savez(path, keypoints=kp, confidence=conf)
    track = load_keypoints(path, num_frames=FRAMES, image_size=(H, W))
    assert track.detected.tolist() == [True, True, False, True]
    _assert_detections_have_translations(track)
    reliability.bad_input("hmrmamba demo --keypoints", "all joints on one pixel: not a detection")
