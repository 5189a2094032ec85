"""Camera options of the synthetic dataset (synthetic.camera.pitch_deg/roll_deg/focal/partial_*): the
defaults reproduce the old camera and random stream exactly; each option does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from hmrmamba.data.synthetic.cameras import push_out_of_frame, sample_camera

KW = {"image_size": 128, "distance": (3.5, 6.0), "height": (-0.2, 1.2), "yaw_deg": (-180, 180),
      "person_fraction": (0.45, 0.8)}
TARGET = np.array([0.2, 0.9, -0.4])


def camera(seed: int, **kw):
    rng = np.random.default_rng(seed)
    cam = sample_camera(rng, target=TARGET, **KW, **kw)
    return cam, rng.random()


def test_defaults_are_the_old_camera_and_stream():
    for seed in range(5):
        old, after_old = camera(seed)
        new, after_new = camera(seed, pitch_deg=(0, 0), roll_deg=(0, 0), focal=None)
        np.testing.assert_array_equal(new.R, old.R)
        np.testing.assert_array_equal(new.intrinsics, old.intrinsics)
        assert after_new == after_old  # nothing extra was drawn: the rest of the sequence is unchanged


def image_of(cam, p):
    return cam.project(cam.to_camera(np.asarray(p)))


@pytest.mark.parametrize("angle", [-25.0, 10.0, 40.0])
def test_pitch_and_roll(angle):
    base, _ = camera(3)
    c = base.intrinsics[2]
    # pitch: the camera looks further down by `angle`, so the target rises by f tan(angle) in the image
    tilted, _ = camera(3, pitch_deg=(angle, angle))
    u, v = image_of(tilted, TARGET)
    rise = tilted.intrinsics[1] * np.tan(np.radians(angle))
    assert u == pytest.approx(c, abs=1e-6) and v == pytest.approx(c - rise, abs=1e-6)
    # roll: the target stays at the centre, every other point turns by `angle` about it
    rolled, _ = camera(3, roll_deg=(angle, angle))
    np.testing.assert_allclose(image_of(rolled, TARGET), [c, c], atol=1e-6)
    p = TARGET + np.array([0.3, 0.5, 0.1])
    a0, a1 = image_of(base, p) - c, image_of(rolled, p) - c
    turn = np.degrees(np.arctan2(a1[1], a1[0]) - np.arctan2(a0[1], a0[0]))
    assert abs((abs(turn) + 180) % 360 - 180) == pytest.approx(abs(angle), abs=1e-6)
    assert np.linalg.norm(a1) == pytest.approx(np.linalg.norm(a0), rel=1e-9)


def test_focal_range_in_image_widths():
    fs = [camera(s, focal=(1.0, 2.0))[0].intrinsics[0] for s in range(20)]
    assert 128 <= min(fs) and max(fs) <= 256 and np.ptp(fs) > 32


@pytest.mark.parametrize("side", range(4))
def test_push_out_of_frame_cuts_the_given_share(side):
    cam, _ = camera(1)
    rng = np.random.default_rng(0)
    pts = TARGET + rng.normal(scale=[0.2, 0.5, 0.2], size=(200, 3))
    out = push_out_of_frame(cam, pts, 128, cut=0.3, side=side)
    uv = out.project(out.to_camera(pts))
    axis = 0 if side < 2 else 1
    lo, hi = uv[:, axis].min(), uv[:, axis].max()
    beyond = (0 - lo) if side in (0, 2) else (hi - 128)
    assert beyond / (hi - lo) == pytest.approx(0.3, abs=1e-6)
    np.testing.assert_array_equal(out.R, cam.R)
