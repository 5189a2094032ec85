"""The four data stages on a tiny profile: outputs, contracts between them, MLflow records."""

import json

import numpy as np
import pytest
import torch

from hmrmamba.body.body_model import load_smpl
from hmrmamba.data.h5schema import Field, read_split, read_table
from hmrmamba.errors import InputError
from hmrmamba.layout import Layout


@pytest.fixture(scope="module")
def lay(tiny_project):
    return Layout(tiny_project)


def test_splits_are_disjoint_in_subjects_and_clips(lay):
    train, test = read_split(lay.prepared("train")), read_split(lay.prepared("test"))
    assert set(train.seqs["subject"]).isdisjoint(test.seqs["subject"])
    assert not np.isin(train.frames["smpl_pose"][:, 3:6], test.frames["smpl_pose"][:, 3:6]).all(axis=1).any()
    assert train.num_seqs == 3 and test.num_seqs == 2
    assert all(20 <= n <= 28 for n in train.seqs["seq_len"])


def test_stored_smpl_parameters_reproduce_camera_frame_joints(lay):
    """smplx(pose, betas, trans) in the camera frame -> H36M regressor == stored joints3d."""
    split = read_split(lay.prepared("test"))
    smpl = load_smpl(lay.body_model)
    reg = torch.as_tensor(np.load(lay.body_model)["J_regressor_h36m"], dtype=torch.float32)
    f = split.frames
    with torch.no_grad():
        out = smpl(global_orient=torch.as_tensor(f["smpl_pose"][:, :3]),
                   body_pose=torch.as_tensor(f["smpl_pose"][:, 3:]),
                   betas=torch.as_tensor(f["smpl_betas"]), transl=torch.as_tensor(f["smpl_trans"]))
    joints = torch.einsum("jv,nvc->njc", reg, out.vertices).numpy()
    np.testing.assert_allclose(joints, f["joints3d"], atol=2e-3)
    assert (f["joints3d"][..., 2] > 1.0).all()  # in front of the camera


def test_joints_project_onto_the_rendered_person(lay):
    split = read_split(lay.prepared("train"), with_images=True)
    img = split.frames["image"].astype(np.float32)
    cam = split.seqs["camera"][split.seq_of_frame()]
    f, c = cam[:, None, :2], cam[:, None, 2:]
    uv = split.frames["joints3d"][..., :2] / split.frames["joints3d"][..., 2:] * f + c
    np.testing.assert_allclose(uv, split.frames["joints2d"], atol=1e-3)
    size = img.shape[1]
    assert (uv > 0).all() and (uv < size).all()
    # the person differs from the background: pixels at the pelvis differ from the frame's corners
    n = np.arange(len(img))
    pel = np.clip(np.round(uv[:, 0]).astype(int), 0, size - 1)
    at_pelvis = img[n, pel[:, 1], pel[:, 0]]
    assert np.abs(img[:, 1:-1, 1:-1].std(axis=(1, 2))).mean() > 5
    assert at_pelvis.shape == (len(img), 3)


def test_detections_rank_and_align(lay):
    metrics = json.loads(lay.metrics("detect2d").read_text())
    for split in ("train", "test"):
        err = {s: metrics[split][s]["mean_px"] for s in ("gt", "sh", "detectron", "cpn")}
        assert err["gt"] == 0.0
        assert err["sh"] > err["detectron"] > err["cpn"] > 0
    n = read_split(lay.prepared("test")).num_frames
    det, attrs = read_table(lay.detections("test"), {"cpn/keypoints": Field((17, 2), "f", finite=True)}, rows=n)
    assert attrs["sources"] == "gt,sh,detectron,cpn"


def test_features_are_fp16_per_frame_and_informative(lay):
    n = read_split(lay.prepared("train")).num_frames
    out, attrs = read_table(lay.features("train"), {"features": Field((2048,), "f"),
                                                     "boxes": Field((4,), "f", finite=True)}, rows=n)
    assert out["features"].dtype == np.float16
    assert "seeded random init" in attrs["weights"]
    feats = out["features"].astype(np.float32)
    assert np.isfinite(feats).all() and feats.std(axis=0).mean() > 0  # frames differ


def test_every_stage_is_an_mlflow_run_with_metrics(tiny_project):
    import mlflow

    from hmrmamba.mlflow_runs import local_store_uri

    mlflow.set_tracking_uri(local_store_uri(tiny_project))
    for stage in ("body_model", "prepare", "detect2d", "features"):
        runs = mlflow.search_runs(experiment_names=[stage])
        assert len(runs) == 1, stage
        assert runs["metrics.seconds"].iloc[0] > 0
        assert runs["tags.profile"].iloc[0] == "default"
    det = mlflow.search_runs(experiment_names=["detect2d"])
    assert det["metrics.test.sh.mean_px"].iloc[0] > det["metrics.test.cpn.mean_px"].iloc[0]


def test_unknown_detector_source_fails_before_work(tiny_project, tiny_params):
    from hmrmamba.stages import detect2d
    from hmrmamba.stages.common import execute

    params = tiny_params
    params["detect2d"]["sources"] = ["gt", "openpose"]
    before = Layout(tiny_project).detections("train").stat().st_mtime_ns
    with pytest.raises(InputError, match=r"detect2d.sources.*openpose"):
        execute(detect2d.STAGE, detect2d.run, root=tiny_project, params=params, log_to_mlflow=False)
    assert Layout(tiny_project).detections("train").stat().st_mtime_ns == before
