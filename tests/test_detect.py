"""2D keypoint sources: simulated detector noise, COCO->H36M conversion, file import, error report."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hmrmamba.detect import (
    DETECTOR_SOURCES,
    PRESETS,
    DetectorNoiseModel,
    coco17_to_h36m17,
    detect,
    detector_error_table,
    error_report,
    get_preset,
    load_keypoints_file,
    mean_error_px,
    save_keypoints_file,
    simulate,
    simulate_events,
)
from hmrmamba.detect.noise import LIMB_PAIRS, ar1_jitter, sequence_layout
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.skeleton import COCO17, H36M17

# A standing pose (H36M-17, pixels, y down), about 90 px from ankles to head top.
REST = np.array([
    [64, 60], [57, 60], [57, 82], [57, 104],   # pelvis, right hip, knee, ankle
    [71, 60], [71, 82], [71, 104],             # left hip, knee, ankle
    [64, 48], [64, 36], [64, 30], [64, 14],    # spine, thorax, neck/nose, head
    [78, 36], [80, 50], [81, 62],              # left shoulder, elbow, wrist
    [50, 36], [48, 50], [47, 62],              # right shoulder, elbow, wrist
], dtype=np.float64)


def walking_batch(num_seqs: int, seq_len: int, seed: int = 0):
    """Simple walking-like sequences: the rest pose drifting, with limbs swinging in anti-phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(seq_len)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (num_seqs, 1, 1))
    swing = np.sin(2 * np.pi * t / 30.0 + phase)                     # (S, T, 1)
    j = np.broadcast_to(REST, (num_seqs, seq_len, 17, 2)).copy()
    for knee, ankle, sgn in ((2, 3, 1.0), (5, 6, -1.0)):
        j[:, :, knee, 0] += sgn * 5 * swing[..., 0]
        j[:, :, ankle, 0] += sgn * 10 * swing[..., 0]
    for elbow, wrist, sgn in ((12, 13, 1.0), (15, 16, -1.0)):
        j[:, :, elbow, 0] -= sgn * 4 * swing[..., 0]
        j[:, :, wrist, 0] -= sgn * 8 * swing[..., 0]
    j[..., 0] += rng.uniform(-15, 15, (num_seqs, 1, 1)) + 0.2 * t
    j[..., 1] += rng.uniform(-5, 5, (num_seqs, 1, 1)) + np.abs(swing)
    seq_start = np.arange(num_seqs, dtype=np.int64) * seq_len
    return (j.reshape(-1, 17, 2).astype(np.float32), seq_start,
            np.full(num_seqs, seq_len, dtype=np.int64))


def clean_model(**kw) -> DetectorNoiseModel:
    base = {"name": "test", "sigma": 0.0, "swap_prob": 0.0, "drop_prob": 0.0, "outlier_prob": 0.0}
    base.update(kw)
    return DetectorNoiseModel(**base)


# --------------------------------------------------------------------------------------------
# simulated detectors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_presets_rank_sh_detectron_cpn_gt(seed):
    j, ss, sl = walking_batch(24, 60, seed)
    err = {src: mean_error_px(detect(src, joints2d=j, seq_start=ss, seq_len=sl, rng=seed + 10).kp, j)
           for src in ("sh", "detectron", "cpn", "gt")}
    assert err["gt"] == 0.0
    assert err["sh"] > 1.1 * err["detectron"] > 1.1 * 1.1 * err["cpn"] > 0.0
    # H36M-like magnitudes: ~1-3 % of a ~92 px person box
    assert 0.9 < err["cpn"] < 1.8 and 1.6 < err["sh"] < 3.0


def test_gt_source_is_exact_copy():
    j, ss, sl = walking_batch(2, 10)
    det = detect("gt", joints2d=j, seq_start=ss, seq_len=sl, rng=None)
    np.testing.assert_array_equal(det.kp, j)
    assert det.kp.dtype == np.float32 and det.conf.dtype == np.float32
    np.testing.assert_array_equal(det.conf, 1.0)
    assert det.kp is not j


def test_simulation_is_deterministic_and_seed_dependent():
    j, ss, sl = walking_batch(4, 30)
    a = simulate(j, ss, sl, model=PRESETS["sh"], rng=np.random.default_rng(5))
    b = simulate(j, ss, sl, model=PRESETS["sh"], rng=np.random.default_rng(5))
    c = simulate(j, ss, sl, model=PRESETS["sh"], rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])
    d = detect("sh", joints2d=j, seq_start=ss, seq_len=sl, rng=5)
    np.testing.assert_array_equal(d.kp, a[0])
    assert a[0].shape == (120, 17, 2) and a[0].dtype == np.float32
    assert a[1].shape == (120, 17) and a[1].dtype == np.float32
    assert np.all((a[1] >= 0) & (a[1] <= 1))


def _ar1_reference(innov, seq_start, seq_len, coef):
    """Slow twin of ar1_jitter: a Python loop per sequence and frame, in frame order."""
    out = np.empty_like(innov)
    b = np.sqrt(1 - coef ** 2)
    for s0, n in zip(seq_start, seq_len):
        out[s0] = innov[s0]
        for t in range(1, n):
            out[s0 + t] = coef * out[s0 + t - 1] + b * innov[s0 + t]
    return out


@pytest.mark.parametrize("coef", [0.0, 0.5, 0.95])
def test_ar1_jitter_matches_per_sequence_loop(coef):
    rng = np.random.default_rng(0)
    seq_len = np.array([7, 1, 40, 3, 12])
    seq_start = np.array([13, 0, 23, 20, 1])          # covers 0..62, deliberately out of order
    n = int(seq_len.sum())
    frame, t_in_seq, _ = sequence_layout(seq_start, seq_len, n)
    innov = rng.standard_normal((n, 17, 2))             # frame order
    got = np.empty_like(innov)
    got[frame] = ar1_jitter(innov[frame], t_in_seq, coef)
    np.testing.assert_allclose(got, _ar1_reference(innov, seq_start, seq_len, coef), atol=1e-12)


def test_ar_jitter_does_not_leak_across_sequences():
    n_seq, length, coef = 600, 4, 0.95
    ss = np.arange(n_seq) * length
    sl = np.full(n_seq, length)
    j = np.broadcast_to(REST, (n_seq * length, 17, 2)).astype(np.float32)
    ev = simulate_events(j, ss, sl, model=clean_model(sigma=0.01, ar_coef=coef),
                         rng=np.random.default_rng(0))
    e = ev.jitter.reshape(n_seq, length, -1)
    within = np.corrcoef(e[:, 0].ravel(), e[:, 1].ravel())[0, 1]
    across = np.corrcoef(e[:-1, -1].ravel(), e[1:, 0].ravel())[0, 1]
    assert within == pytest.approx(coef, abs=0.02)
    assert abs(across) < 0.04
    # the first frame comes from the stationary law: same spread as later frames
    assert e[:, 0].std() == pytest.approx(1.0, abs=0.03)
    assert e[:, -1].std() == pytest.approx(1.0, abs=0.03)
    # and the pixel noise is the jitter scaled by sigma * joint_scale * box size
    kp_noise = (ev.kp - j).reshape(n_seq, length, 17, 2)
    box = 90.0
    expected = ev.jitter.reshape(n_seq, length, 17, 2) * (0.01 * np.array(
        PRESETS["sh"].joint_scale))[None, None, :, None] * box
    np.testing.assert_allclose(kp_noise, expected, atol=1e-3)


def test_swaps_exchange_left_and_right_slots_in_runs_within_sequences():
    n_seq, length = 60, 25
    j, ss, sl = walking_batch(n_seq, length)
    model = clean_model(swap_prob=0.05, swap_len=(3, 5))
    ev = simulate_events(j, ss, sl, model=model, rng=np.random.default_rng(1))
    assert ev.swapped.any()
    for a, b in LIMB_PAIRS:
        on = ev.swapped[:, a]
        np.testing.assert_array_equal(on, ev.swapped[:, b])
        np.testing.assert_array_equal(ev.kp[on, a], j[on, b])
        np.testing.assert_array_equal(ev.kp[on, b], j[on, a])
        np.testing.assert_array_equal(ev.kp[~on, a], j[~on, a])
    np.testing.assert_array_equal(ev.kp[:, [0, 7, 8, 9, 10]], j[:, [0, 7, 8, 9, 10]])
    # runs: every maximal run inside a sequence is >= 3 frames unless cut by the sequence end
    # (overlapping runs may merge into longer ones)
    sw = ev.swapped.reshape(n_seq, length, 17)[..., [a for a, _ in LIMB_PAIRS]]
    starts = sw & ~np.concatenate([np.zeros_like(sw[:, :1]), sw[:, :-1]], axis=1)
    for s, t, p in zip(*np.nonzero(starts)):
        run = np.argmin(np.append(sw[s, t:, p], False))
        assert run >= 3 or t + run == length
    # a run in one sequence never continues into the next: with p=0 at the first frame of
    # a sequence, its swapped fraction equals the start rate (~0.05), not the steady rate (~0.2)
    assert sw[:, 0].mean() < 0.1 < sw[:, 10:].mean()
    rep = error_report(ev.kp, j)
    assert rep["swap_rate"] == pytest.approx(sw.mean(), abs=0.02)


def test_confidence_is_lower_for_dropped_and_outlier_joints():
    j, ss, sl = walking_batch(30, 40)
    model = replace(PRESETS["sh"], drop_prob=0.05, outlier_prob=0.05)
    ev = simulate_events(j, ss, sl, model=model, rng=np.random.default_rng(2))
    clean = ~(ev.dropped | ev.outlier | ev.swapped)
    assert ev.dropped.sum() > 100 and ev.outlier.sum() > 100
    assert ev.conf[ev.dropped & ~ev.outlier].mean() < 0.5 * ev.conf[clean].mean()
    assert ev.conf[ev.outlier].mean() < 0.5 * ev.conf[clean].mean()
    assert ev.conf[clean].max() <= model.conf_high + 1e-6
    # for clean joints, confidence decreases with the sampled error
    err = np.linalg.norm(ev.kp - j, axis=-1)
    rel = err / np.asarray(model.joint_scale)[None]
    assert np.corrcoef(ev.conf[clean], rel[clean])[0, 1] < -0.5
    # outliers land near the body (in the margin-enlarged box)
    lo = j.min(axis=1) - 0.2 * 100
    hi = j.max(axis=1) + 0.2 * 100
    o = np.nonzero(ev.outlier)
    assert np.all((ev.kp[o] >= lo[o[0]]) & (ev.kp[o] <= hi[o[0]]))


def test_image_size_clips_keypoints():
    j, ss, sl = walking_batch(4, 20)
    j[:, :, 0] -= 60.0                                    # push the person off the left edge
    kp, _ = simulate(j, ss, sl, model=PRESETS["sh"], rng=np.random.default_rng(0),
                     image_size=(128, 100))
    assert kp[..., 0].min() >= 0.0 and kp[..., 1].max() <= 99.0
    kp2, _ = simulate(j, ss, sl, model=PRESETS["sh"], rng=np.random.default_rng(0))
    assert kp2[..., 0].min() < 0.0


def test_noise_model_validation():
    with pytest.raises(InputError, match="ar_coef"):
        DetectorNoiseModel(ar_coef=1.0)
    with pytest.raises(InputError, match="joint_scale"):
        DetectorNoiseModel(joint_scale=(1.0,) * 16)
    with pytest.raises(InputError, match="swap_len"):
        DetectorNoiseModel(swap_len=(0, 3))
    with pytest.raises(InputError, match="swap_prob"):
        DetectorNoiseModel(swap_prob=1.5)
    with pytest.raises(InputError, match="cpn"):
        get_preset("hrnet")
    assert get_preset("cpn").scaled(2.0).sigma == pytest.approx(2 * PRESETS["cpn"].sigma)


@pytest.mark.parametrize("starts, lens", [
    ([0, 5], [6, 5]),      # overlap
    ([0, 6], [5, 4]),      # frame 5 uncovered
    ([0], [11]),           # runs past the end
    ([0, 5], [5, 0]),      # empty sequence
])
def test_bad_sequence_layout(starts, lens):
    j, _, _ = walking_batch(1, 10)
    with pytest.raises(InputError, match="seq_start"):
        simulate(j, np.array(starts), np.array(lens), model=PRESETS["cpn"],
                 rng=np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# COCO-17 -> H36M-17
# --------------------------------------------------------------------------------------------

def test_coco17_to_h36m17_known_answers():
    c = {n: i for i, n in enumerate(COCO17.names)}
    kp = np.zeros((17, 2))
    kp[c["left_hip"]] = [10, 100]
    kp[c["right_hip"]] = [30, 100]
    kp[c["left_shoulder"]] = [6, 40]
    kp[c["right_shoulder"]] = [34, 40]
    kp[c["nose"]] = [20, 25]
    for name, xy in (("left_eye", [18, 20]), ("right_eye", [22, 20]),
                     ("left_ear", [14, 22]), ("right_ear", [26, 22])):
        kp[c[name]] = xy
    kp[c["left_wrist"]] = [1, 2]
    kp[c["right_ankle"]] = [3, 4]
    conf = np.linspace(0.2, 1.0, 17)[::-1].copy()       # nose 1.0 ... right ankle 0.2
    out, oc = coco17_to_h36m17(kp[None], conf[None])
    out, oc = out[0], oc[0]
    h = {n: i for i, n in enumerate(H36M17.names)}
    np.testing.assert_allclose(out[h["pelvis"]], [20, 100])
    np.testing.assert_allclose(out[h["thorax"]], [20, 40])
    np.testing.assert_allclose(out[h["spine"]], [20, 70])
    np.testing.assert_allclose(out[h["neck"]], [20, 25])
    np.testing.assert_allclose(out[h["head"]], [20, 21])
    np.testing.assert_allclose(out[h["left_wrist"]], [1, 2])
    np.testing.assert_allclose(out[h["right_ankle"]], [3, 4])
    np.testing.assert_allclose(out[h["left_hip"]], [10, 100])
    assert oc[h["pelvis"]] == pytest.approx(min(conf[c["left_hip"]], conf[c["right_hip"]]))
    assert oc[h["spine"]] == pytest.approx(min(conf[[c["left_hip"], c["right_hip"],
                                                      c["left_shoulder"], c["right_shoulder"]]]))
    assert oc[h["head"]] == pytest.approx(conf[[1, 2, 3, 4]].min())
    assert oc[h["neck"]] == pytest.approx(conf[c["nose"]])
    assert oc[h["right_wrist"]] == pytest.approx(conf[c["right_wrist"]])
    # left/right consistency: flipping COCO slots flips the H36M result
    flipped, _ = coco17_to_h36m17(kp[list(COCO17.flip)])
    np.testing.assert_allclose(flipped, out[list(H36M17.flip)])


# --------------------------------------------------------------------------------------------
# file import
# --------------------------------------------------------------------------------------------

def test_file_round_trip_h36m_coco_and_three_channels(tmp_path):
    j, ss, sl = walking_batch(3, 10)
    rng = np.random.default_rng(0)
    kp = j + rng.normal(0, 1, j.shape).astype(np.float32)
    conf = rng.uniform(0, 1, j.shape[:2]).astype(np.float32)
    path = tmp_path / "dets.npz"
    save_keypoints_file(path, kp=kp, conf=conf)
    det = detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=path)
    np.testing.assert_array_equal(det.kp, kp)
    np.testing.assert_array_equal(det.conf, conf)
    assert det.meta["joint_set"] == "h36m17" and det.meta["has_confidence"]

    three = tmp_path / "three.npz"
    np.savez(three, keypoints=np.concatenate([kp, conf[..., None]], axis=-1).astype(np.float64))
    det3 = detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=three)
    np.testing.assert_allclose(det3.kp, kp)
    np.testing.assert_allclose(det3.conf, conf)

    no_conf = tmp_path / "noconf.npz"
    np.savez(no_conf, keypoints=kp)
    np.testing.assert_array_equal(load_keypoints_file(no_conf, num_frames=30)[1], 1.0)

    coco = rng.uniform(0, 128, (30, 17, 2)).astype(np.float32)
    coco_path = tmp_path / "coco.npz"
    save_keypoints_file(coco_path, kp=coco, conf=conf, joint_set="coco17")
    detc = detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=coco_path)
    want_kp, want_conf = coco17_to_h36m17(coco.astype(np.float64), conf.astype(np.float64))
    np.testing.assert_allclose(detc.kp, want_kp, rtol=1e-6)
    np.testing.assert_allclose(detc.conf, want_conf, rtol=1e-6)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, arrays, match", [
    ("frames", {"keypoints": np.zeros((29, 17, 2), np.float32)}, "29 frames.*30"),
    ("joints", {"keypoints": np.zeros((30, 16, 2), np.float32)}, r"shape \(30, 16, 2\)"),
    ("channels", {"keypoints": np.zeros((30, 17, 4), np.float32)}, r"shape \(30, 17, 4\)"),
    ("dtype", {"keypoints": np.zeros((30, 17, 2), np.int32)}, "dtype int32"),
    ("nan", {"keypoints": np.where(np.arange(30)[:, None, None] == 7, np.nan,
                                    np.zeros((30, 17, 2)))}, "NaN/Inf.*frame 7"),
    ("inf", {"keypoints": np.full((30, 17, 2), np.inf)}, "NaN/Inf"),
    ("missing", {"points": np.zeros((30, 17, 2))}, "missing"),
    ("conf_shape", {"keypoints": np.zeros((30, 17, 2)), "confidence": np.ones((30, 16))}, "confidence"),
    ("conf_nan", {"keypoints": np.zeros((30, 17, 2)), "confidence": np.full((30, 17), np.nan)},
     "confidence"),
    ("joint_set", {"keypoints": np.zeros((30, 17, 2)), "joint_set": np.array("mpii")}, "mpii"),
    ("pickled", {"keypoints": np.array([{"a": 1}], dtype=object)}, "cannot read"),
])
def test_bad_keypoint_files(tmp_path, case, arrays, match):
    j, ss, sl = walking_batch(3, 10)
    path = _write(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(InputError, match=match) as info:
        detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=path)
    msg = str(info.value)
    assert str(path) in msg
    field = "confidence" if case.startswith("conf") else "joint_set" if case == "joint_set" else "keypoints"
    assert f"'{field}'" in msg
    if case in ("frames", "joints", "channels", "dtype"):
        assert "(30, 17, 2)" in msg


def test_missing_and_unreadable_files(tmp_path):
    j, ss, sl = walking_batch(1, 5)
    with pytest.raises(MissingFileError, match="nope.npz"):
        detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(InputError, match="junk.npz"):
        detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=junk)
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros((5, 17, 2)))
    with pytest.raises(InputError, match="not an .npz"):
        detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None, file=npy)


def test_bad_source_and_arguments():
    j, ss, sl = walking_batch(1, 5)
    with pytest.raises(InputError) as info:
        detect("hrnet", joints2d=j, seq_start=ss, seq_len=sl, rng=0)
    for name in DETECTOR_SOURCES:
        assert name in str(info.value)
    with pytest.raises(InputError, match="needs a keypoint file"):
        detect("file", joints2d=j, seq_start=ss, seq_len=sl, rng=None)
    with pytest.raises(InputError, match="source is 'cpn'"):
        detect("cpn", joints2d=j, seq_start=ss, seq_len=sl, rng=0, file="x.npz")
    with pytest.raises(InputError, match="rng"):
        detect("cpn", joints2d=j, seq_start=ss, seq_len=sl, rng=None)
    with pytest.raises(InputError, match="joints2d"):
        detect("gt", joints2d=j[:, :16], seq_start=ss, seq_len=sl, rng=None)


# --------------------------------------------------------------------------------------------
# error measures and the doc table
# --------------------------------------------------------------------------------------------

def test_error_report_known_answers():
    gt = np.broadcast_to(REST, (4, 17, 2)).copy()       # box = 90 px (head 14 -> ankle 104)
    kp = gt + np.array([3.0, 4.0])                       # 5 px everywhere
    rep = error_report(kp, gt, np.full((4, 17), 0.5))
    assert rep["mean_px"] == pytest.approx(5.0)
    assert mean_error_px(kp, gt) == pytest.approx(5.0)
    assert rep["mean_pct_box"] == pytest.approx(100 * 5 / 90)
    assert rep["per_joint_px"]["left_wrist"] == pytest.approx(5.0)
    assert rep["pck_0.05"] == 0.0                         # 5 px > 0.05 * 90 = 4.5 px
    assert rep["swap_rate"] == 0.0 and rep["mean_conf"] == 0.5
    assert rep["conf_error_corr"] is None
    swapped = gt.copy()
    swapped[:2, [13, 16]] = gt[:2, [16, 13]]             # wrists swapped in half the frames
    rep = error_report(swapped, gt)
    assert rep["swap_rate"] == pytest.approx(0.5 / len(LIMB_PAIRS))
    assert rep["pck_0.05"] == pytest.approx(1 - 4 / (4 * 17))


def test_detector_error_table_lists_every_preset():
    table = detector_error_table(num_seqs=2, seq_len=20)
    for name in ("sh", "detectron", "cpn", "gt"):
        assert f"| {name} |" in table
    assert "| gt | 0.00 | 0.00 |" in table
