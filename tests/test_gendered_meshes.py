"""3DPW ground-truth meshes from the gendered body models (PMCE/VIBE protocol), for MPVPE and for
the training vertex loss; every other split keeps the configured body model, bit for bit."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fabricate import write_mini_3dpw
from hmrmamba.body.body_model import load_smpl, save_body_model
from hmrmamba.body.gendered import (
    CONFIGURED,
    FEMALE,
    MALE,
    GroundTruthBodies,
    frame_genders,
    ground_truth_bodies,
    is_gendered,
    read_split_header,
)
from hmrmamba.data.h5schema import write_split, write_table
from hmrmamba.data.loading import load_split_arrays
from hmrmamba.data.real.pw3d import PW3DConfig, build_pw3d
from hmrmamba.errors import InputError
from hmrmamba.evaluate.protocol import smpl_targets
from hmrmamba.layout import Layout
from hmrmamba.train.objectives import MeshObjective, MeshTargets


@pytest.fixture(scope="module")
def bodies(tmp_path_factory):
    """Neutral, male and female procedural body models (male taller and broader, female smaller),
    plus one with fewer vertices. -> dict name -> .npz path."""
    from hmrmamba.body.procedural import build_procedural_smpl

    base = build_procedural_smpl(seed=0)
    d = tmp_path_factory.mktemp("gendered")
    out = {name: d / f"{name}.npz" for name in ("neutral", "male", "female", "small")}
    save_body_model(out["neutral"], base)
    centre = base["v_template"].mean(0)
    for name, scale in (("male", np.array([1.10, 1.06, 1.10])), ("female", np.array([0.92, 0.95, 0.92]))):
        save_body_model(out[name], dict(base, v_template=centre + (base["v_template"] - centre) * scale))
    k = 5000  # a valid model with another vertex count: the first k vertices and the faces among them
    f = base["f"][(base["f"] < k).all(1)]
    small = {key: base[key][:k] for key in ("v_template", "shapedirs", "posedirs", "weights")}
    small.update(f=f, J_regressor=base["J_regressor"][:, :k], kintree_table=base["kintree_table"])
    save_body_model(out["small"], small)
    return out


@pytest.fixture(scope="module")
def models(bodies):
    return {name: load_smpl(path) for name, path in bodies.items() if name != "small"}


@pytest.fixture(scope="module")
def regressor(bodies):
    return torch.as_tensor(np.load(bodies["neutral"])["J_regressor_h36m"], dtype=torch.float32)


def _params(bodies, male="male", female="female"):
    pairs = (("smpl_male", male), ("smpl_female", female))
    pw3d = {k: (None if v is None else str(bodies[v])) for k, v in pairs}
    return {"datasets": {"pw3d": pw3d}}


def _forward(model, pose, betas, trans):
    f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
    with torch.no_grad():
        out = model(global_orient=f32(pose[:, :3]), body_pose=f32(pose[:, 3:]), betas=f32(betas),
                    transl=f32(trans))
    return out.vertices.numpy(), out.joints[:, 0].numpy()


class _Split:
    def __init__(self, genders, lens, attrs, path="fake/test.h5"):
        self.seqs = {"gender": np.array(genders), "seq_len": np.array(lens),
                     "seq_start": np.concatenate([[0], np.cumsum(lens)[:-1]])}
        self.attrs, self.path = attrs, path


GENDERED = {"smpl_gendered": True, "has_mesh_gt": True}


def _params_arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    pose = (rng.normal(0, 0.2, (n, 72))).astype(np.float32)
    betas = rng.normal(0, 0.8, (n, 10)).astype(np.float32)
    trans = rng.normal(0, 0.3, (n, 3)).astype(np.float32) + np.float32([0, 0, 4])
    return pose, betas, trans


# --------------------------------------------------------------------------------------------
# which frames are gendered
# --------------------------------------------------------------------------------------------


def test_frame_genders_follow_the_sequence_table_only_for_gendered_splits():
    split = _Split(["m", "f", "m"], [2, 3, 1], dict(GENDERED))
    assert is_gendered(split.attrs)
    np.testing.assert_array_equal(frame_genders(split), [MALE, MALE, FEMALE, FEMALE, FEMALE, MALE])
    assert frame_genders(split).dtype == np.int8
    # 3DPW prepared without the gendered models, synthetic, H36M: no codes, the configured model
    for attrs in ({"smpl_gendered": True, "has_mesh_gt": False}, {"has_mesh_gt": True}, {}):
        assert frame_genders(_Split(["m"], [3], attrs)) is None and not is_gendered(attrs)
    with pytest.raises(InputError, match=r"fake/test\.h5: field 'sequences/gender\[1\]': gender 'x'"):
        frame_genders(_Split(["m", "x"], [1, 1], dict(GENDERED)))


# --------------------------------------------------------------------------------------------
# MPVPE's ground truth (smpl_targets) and the vertex loss's (MeshTargets)
# --------------------------------------------------------------------------------------------


def test_mixed_split_gt_meshes_come_from_each_sequences_gendered_model(bodies, models, regressor, tmp_path):
    split = _Split(["m", "f"], [4, 3], dict(GENDERED))
    gt = ground_truth_bodies(_params(bodies), tmp_path, split, models["neutral"])
    pose, betas, trans = _params_arrays(7)
    v, j, pelvis = smpl_targets(gt, regressor, pose, betas, trans, gender=frame_genders(split), chunk=5)
    for name, rows in (("male", slice(0, 4)), ("female", slice(4, 7))):
        want_v, want_pelvis = _forward(models[name], pose[rows], betas[rows], trans[rows])
        np.testing.assert_allclose(v[rows], want_v, atol=1e-6)
        np.testing.assert_allclose(pelvis[rows], want_pelvis, atol=1e-6)
        np.testing.assert_allclose(j[rows], np.einsum("jv,nvc->njc", regressor.numpy(), want_v), atol=1e-5)
        neutral_v, _ = _forward(models["neutral"], pose[rows], betas[rows], trans[rows])
        assert np.abs(v[rows] - neutral_v).max() > 0.02  # centimetres apart: really another body
    # a single-gender split works the same way
    one = _Split(["f"], [3], dict(GENDERED))
    v1, _, _ = smpl_targets(ground_truth_bodies(_params(bodies), tmp_path, one, models["neutral"]), regressor,
                            pose[:3], betas[:3], trans[:3], gender=frame_genders(one))
    np.testing.assert_allclose(v1, _forward(models["female"], pose[:3], betas[:3], trans[:3])[0], atol=1e-6)


def test_mesh_targets_pose_each_window_frame_by_its_gender(bodies, models, regressor, tmp_path):
    split = _Split(["m", "f"], [1, 1], dict(GENDERED))
    gt = ground_truth_bodies(_params(bodies), tmp_path, split, models["neutral"])
    targets = MeshTargets(gt, regressor)
    b, t = 2, 3
    pose, betas, trans = (torch.as_tensor(a).reshape(b, t, -1) for a in _params_arrays(b * t, seed=1))
    gender = torch.tensor([[MALE, MALE, FEMALE], [FEMALE, FEMALE, FEMALE]], dtype=torch.int8)
    v, j = targets(pose, betas, trans, gender)
    assert v.shape == (b, t, 6890, 3) and j.shape == (b, t, 17, 3)
    for code, name in ((MALE, "male"), (FEMALE, "female")):
        rows = (gender == code).reshape(-1).numpy()
        flat = lambda x: x.reshape(b * t, -1).numpy()[rows]
        want, _ = _forward(models[name], flat(pose), flat(betas), flat(trans))
        root = np.einsum("jv,nvc->njc", regressor.numpy(), want)[:, :1]
        np.testing.assert_allclose(v.reshape(b * t, 6890, 3).numpy()[rows], want - root, atol=1e-5)
    # a gender code with no model is refused, not silently posed by the neutral model
    with pytest.raises(InputError, match=r"gender code 1 has no body model"):
        MeshTargets(models["neutral"], regressor)(pose, betas, trans, gender)


def test_non_gendered_split_targets_are_bit_identical_to_the_configured_model(models, regressor, tmp_path):
    """Synthetic / H36M / 3DPW without gendered models: nothing changes, not even in the last bit."""
    smpl = models["neutral"]
    synthetic = _Split(["m"], [6], {"dataset": "synthetic", "has_mesh_gt": True})
    gt = ground_truth_bodies({}, tmp_path, synthetic, smpl)  # gendered params not even needed
    assert gt.configured is smpl and len(gt.gendered) == 0
    pose, betas, trans = _params_arrays(6, seed=2)
    # evaluation's helper, as the evaluate stage called it before (a bare smplx model, no gender)
    before = smpl_targets(smpl, regressor, pose, betas, trans)
    after = smpl_targets(gt, regressor, pose, betas, trans, gender=None)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # the vertex loss's targets: the old computation, written out
    P, B, T = (torch.as_tensor(a).reshape(2, 3, -1) for a in (pose, betas, trans))
    with torch.no_grad():
        out = smpl(global_orient=P.reshape(6, -1)[:, :3], body_pose=P.reshape(6, -1)[:, 3:],
                   betas=B.reshape(6, -1), transl=T.reshape(6, -1))
        joints = torch.einsum("jv,nvc->njc", regressor, out.vertices)
        old_v = (out.vertices - joints[:, :1]).reshape(2, 3, -1, 3)
        old_j = (joints - joints[:, :1]).reshape(2, 3, -1, 3)
    for targets in (MeshTargets(smpl, regressor), MeshTargets(gt, regressor)):
        v, j = targets(P, B, T)
        assert torch.equal(v, old_v) and torch.equal(j, old_j)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_gendered_split_without_usable_gendered_models_is_refused(bodies, models, tmp_path):
    split = _Split(["m"], [2], dict(GENDERED))
    neutral = models["neutral"]
    with pytest.raises(InputError, match=r"^params\.yaml: field 'datasets\.pw3d\.smpl_male': not set, but "
                                         r"fake/test\.h5 was prepared with gendered SMPL meshes \(expected"):
        ground_truth_bodies(_params(bodies, male=None), tmp_path, split, neutral)
    with pytest.raises(InputError, match=r"^params\.yaml: field 'datasets\.pw3d\.smpl_female': not set"):
        ground_truth_bodies(_params(bodies, female=None), tmp_path, split, neutral)
    missing = tmp_path / "nope" / "SMPL_FEMALE.npz"
    params = {"datasets": {"pw3d": {"smpl_male": str(bodies["male"]), "smpl_female": str(missing)}}}
    where = re.escape(str(missing))
    with pytest.raises(InputError, match=rf"^{where}: field 'datasets\.pw3d\.smpl_female': file not found"):
        ground_truth_bodies(params, tmp_path, split, neutral)
    small = re.escape(str(bodies["small"]))
    with pytest.raises(InputError, match=rf"^{small}: field 'datasets\.pw3d\.smpl_male: v_template': 5000 "
                                         r"vertices \(expected 6890 vertices, the prediction's topology"):
        ground_truth_bodies(_params(bodies, male="small"), tmp_path, split, neutral)
    with pytest.raises(InputError) as err:
        ground_truth_bodies({}, tmp_path, split, neutral)
    assert "\n" not in str(err.value)


def test_relative_model_paths_resolve_inside_the_project(bodies, models, tmp_path):
    import shutil

    (tmp_path / "models").mkdir()
    for name in ("male", "female"):
        shutil.copy(bodies[name], tmp_path / "models" / f"{name}.npz")
    params = {"datasets": {"pw3d": {"smpl_male": "models/male.npz", "smpl_female": "models/female.npz"}}}
    gt = ground_truth_bodies(params, tmp_path, _Split(["f"], [1], dict(GENDERED)), models["neutral"])
    assert sorted(int(k) for k in gt.gendered) == [MALE, FEMALE] and gt.model(CONFIGURED) is models["neutral"]


# --------------------------------------------------------------------------------------------
# end to end: a fabricated 3DPW, prepared with the gendered models, loaded as windows
# --------------------------------------------------------------------------------------------


def _write_project(root, split):
    """The split plus minimal detections/features tables, as the stages would write them."""
    lay = Layout(root)
    write_split(lay.prepared("test"), split.frames, split.seqs, split.attrs)
    n = split.num_frames
    write_table(lay.detections("test"), {"gt/keypoints": split.frames["joints2d"],
                                         "gt/confidence": np.ones((n, 17), np.float32)}, {})
    boxes = np.tile(np.float32([540, 960, 400, 800]), (n, 1))
    write_table(lay.features("test"), {"features": np.zeros((n, 8), np.float32), "boxes": boxes}, {})
    return lay


def _first_batch(data):
    """The first batch of 4-frame training windows (all of them, for these tiny splits)."""
    windows = data.windows(length=4, stride=4, centred=False)
    return next(iter(torch.utils.data.DataLoader(windows, batch_size=8)))


def test_3dpw_prepared_with_gendered_models_end_to_end(bodies, models, regressor, tmp_path):
    write_mini_3dpw(tmp_path / "raw", splits={"test": (2,)}, frames=6, body_model=bodies["neutral"])
    cfg = PW3DConfig(splits={"test": "test"})
    split = build_pw3d(tmp_path / "raw", cfg, smpl_male=bodies["male"], smpl_female=bodies["female"])["test"]
    assert list(split.seqs["gender"]) == ["m", "f"] and split.attrs["has_mesh_gt"]
    # the reader's joints3d come from each person's gendered mesh (the shared loading path)
    f = split.frames
    for p, name in enumerate(("male", "female")):
        rows = slice(6 * p, 6 * p + 6)
        v, _ = _forward(models[name], f["smpl_pose"][rows], f["smpl_betas"][rows], f["smpl_trans"][rows])
        want = np.einsum("jv,nvc->njc", regressor.numpy(), v)
        np.testing.assert_allclose(f["joints3d"][rows], want, atol=2e-4)

    lay = _write_project(tmp_path / "project", split)
    assert is_gendered(read_split_header(lay.prepared("test")).attrs)
    data = load_split_arrays(lay, "test", detector="gt", with_smpl=True)
    np.testing.assert_array_equal(data.arrays["smpl_gender"], [MALE] * 6 + [FEMALE] * 6)
    assert "smpl_gender" not in load_split_arrays(lay, "test", detector="gt").arrays  # only with_smpl

    gt = ground_truth_bodies(_params(bodies), lay.root, data.split, models["neutral"])
    a = data.arrays
    v, _, _ = smpl_targets(gt, regressor, a["smpl_pose"], a["smpl_betas"], a["smpl_trans"],
                           gender=a["smpl_gender"])
    for p, name in enumerate(("male", "female")):
        rows = slice(6 * p, 6 * p + 6)
        want, _ = _forward(models[name], a["smpl_pose"][rows], a["smpl_betas"][rows], a["smpl_trans"][rows])
        np.testing.assert_allclose(v[rows], want, atol=1e-6)

    # training windows carry smpl_gender through to the vertex loss's targets
    batch = _first_batch(data)
    assert batch["smpl_gender"].dtype == torch.int8
    assert set(batch["smpl_gender"].unique().tolist()) == {MALE, FEMALE}
    targets = MeshTargets(gt, regressor)
    v_win, _ = targets(batch["smpl_pose"], batch["smpl_betas"], batch["smpl_trans"], batch["smpl_gender"])
    idx = batch["frame_index"].reshape(-1).numpy()
    want = v[idx] - np.einsum("jv,nvc->njc", regressor.numpy(), v[idx])[:, :1]
    np.testing.assert_allclose(v_win.reshape(len(idx), -1, 3).numpy(), want, atol=1e-5)


def test_3dpw_without_gendered_models_keeps_the_configured_model(bodies, models, regressor, tmp_path):
    write_mini_3dpw(tmp_path / "raw", splits={"test": (2,)}, frames=5)
    split = build_pw3d(tmp_path / "raw", PW3DConfig(splits={"test": "test"}))["test"]
    lay = _write_project(tmp_path / "project", split)
    data = load_split_arrays(lay, "test", detector="gt", with_smpl=True)
    assert "smpl_gender" not in data.arrays
    gt = ground_truth_bodies(_params(bodies), lay.root, data.split, models["neutral"])
    assert len(gt.gendered) == 0
    batch = _first_batch(data)
    assert "smpl_gender" not in batch


def test_mesh_objective_passes_the_batch_gender_to_its_targets(models, regressor, monkeypatch):
    import hmrmamba.train.objectives as objectives

    seen = {}

    class _Targets(MeshTargets):
        def forward(self, pose, betas, trans, gender=None):
            seen["gender"] = gender
            raise StopIteration

    class _Out:
        vertices = torch.zeros(1, 4, 6890, 3)

    monkeypatch.setattr(objectives, "run_batch", lambda model, batch, lift_only, decode_frames=None: _Out())
    obj = MeshObjective(weights=None, targets=_Targets(GroundTruthBodies(models["neutral"]), regressor),
                        faces=torch.zeros(1, 3, dtype=torch.long), frames=2)
    batch = {"kp2d": torch.zeros(1, 4, 17, 2), "smpl_pose": torch.zeros(1, 4, 72), "smpl_betas": torch.zeros(1, 4, 10),
             "smpl_trans": torch.zeros(1, 4, 3),
             "smpl_gender": torch.tensor([[MALE, FEMALE, FEMALE, MALE]], dtype=torch.int8)}
    with pytest.raises(StopIteration):
        obj(None, batch)
    assert seen["gender"].tolist() == [[1, 1]]  # the supervised frames 0 and 3
