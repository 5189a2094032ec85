"""Moving a clip's image features to the training features' per-channel moments (demo on real footage)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hmrmamba.errors import InputError
from hmrmamba.features.alignment import FeatureMoments, align_to, feature_moments, read_feature_moments


def test_moments_are_the_per_channel_mean_and_std_in_float64_chunks():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 7)).astype(np.float16)
    m = feature_moments(x, chunk=64)
    np.testing.assert_allclose(m.mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.std, x.astype(np.float64).std(0), rtol=1e-9)
    assert m.frames == 1000


def test_a_clip_from_the_training_distribution_is_left_nearly_as_it_is():
    rng = np.random.default_rng(1)
    ref = FeatureMoments(mean=np.linspace(-2, 5, 16), std=np.linspace(0.5, 3, 16), frames=10_000)
    clip = rng.normal(ref.mean, ref.std, size=(4000, 16))
    out = align_to(clip, ref)
    assert out.dtype == np.float32
    # only the sampling error of the clip's own moments moves it
    assert (np.abs(out - clip).max(0) < 0.15 * ref.std).all()


def test_a_shifted_wider_clip_gets_the_training_moments_and_a_narrower_one_keeps_its_spread():
    rng = np.random.default_rng(2)
    ref = FeatureMoments(mean=np.array([1.0, -1.0, 0.0]), std=np.array([1.0, 1.0, 1.0]), frames=100)
    clip = rng.normal(0, 1, size=(500, 3)) * [5.0, 0.25, 1.0] + [10.0, 20.0, -3.0]
    out = align_to(clip, ref)
    got = feature_moments(out)
    np.testing.assert_allclose(got.mean, ref.mean, atol=1e-5)
    clip_std = clip.std(0)
    # wider than training: shrunk to its spread; narrower (channel 1, and 2 by sampling): kept, never widened
    np.testing.assert_allclose(got.std, np.minimum(clip_std, ref.std), rtol=1e-5)
    assert got.std[0] == pytest.approx(1.0, rel=1e-5) and got.std[1] < 0.3
    # the order of the frames within each channel is kept (a monotone map per channel)
    for c in range(3):
        assert (np.argsort(out[:, c]) == np.argsort(clip[:, c])).all()


def test_the_clip_moments_come_from_the_used_frames_only():
    ref = FeatureMoments(mean=np.zeros(2), std=np.ones(2), frames=10)
    clip = np.array([[1.0, 1.0], [3.0, 3.0], [100.0, -100.0]])
    out = align_to(clip, ref, use=np.array([True, True, False]))
    np.testing.assert_allclose(out[:2], [[-1, -1], [1, 1]], atol=1e-6)  # mean 2, std 1: unchanged spread
    np.testing.assert_allclose(out[2], [98.0, -102.0], atol=1e-4)  # moved the same way, not used for moments


def test_bad_shapes_and_masks_are_one_line_errors(tmp_path):
    ref = FeatureMoments(mean=np.zeros(4), std=np.ones(4), frames=1)
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        align_to(np.zeros((3, 5)), ref)
    with pytest.raises(InputError, match="at least one frame"):
        align_to(np.zeros((3, 4)), ref, use=np.zeros(3, bool))
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as fh:
        fh["boxes"] = np.zeros((2, 4))
    with pytest.raises(InputError, match="no 'features' dataset"):
        read_feature_moments(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cannot read features"):
        read_feature_moments(tmp_path / "junk.h5")


def test_moments_read_from_a_features_file_match_the_array(tmp_path):
    x = np.random.default_rng(3).normal(size=(300, 2048)).astype(np.float16)
    with h5py.File(tmp_path / "train.h5", "w") as fh:
        fh["features"] = x
    m = read_feature_moments(tmp_path / "train.h5")
    np.testing.assert_allclose(m.mean, x.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.std, x.astype(np.float64).std(0), rtol=1e-9)
