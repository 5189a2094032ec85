"""The train_backbone stage (the SPIN analogue): its heads, augmentation, determinism and hand-over to features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.features.backbone import build_backbone, trained_backbone_path
from hmrmamba.features.backbone_training import BackboneNet, CropBatcher, CropTargets, recolor, soft_argmax
from hmrmamba.layout import Layout
from hmrmamba.settings import parse_settings


def test_soft_argmax_finds_the_peak_cell_centre():
    logits = torch.full((1, 2, 4, 6), -50.0)
    logits[0, 0, 1, 2] = 50.0  # row 1 of 4, column 2 of 6
    logits[0, 1, 3, 5] = 50.0
    out = soft_argmax(logits)
    assert torch.allclose(out[0, 0], torch.tensor([2.5 / 6 * 2 - 1, 1.5 / 4 * 2 - 1]), atol=1e-6)
    assert torch.allclose(out[0, 1], torch.tensor([5.5 / 6 * 2 - 1, 3.5 / 4 * 2 - 1]), atol=1e-6)
    flat = soft_argmax(torch.zeros(1, 1, 3, 3))  # uniform: the centre
    assert torch.allclose(flat, torch.zeros(1, 1, 2), atol=1e-6)


def test_recolor_permutes_channels_or_makes_grey():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 5, 5)
    plain = recolor(x.clone(), grey_prob=0.0, gain=(1.0, 1.0), shift=0.0)
    for i in range(64):  # each sample's channels are its own, reordered
        got = sorted(plain[i].reshape(3, -1).tolist())
        assert got == sorted(x[i].reshape(3, -1).tolist())
    assert not torch.equal(plain, x)  # 64 samples: some permutation is not the identity
    grey = recolor(x.clone(), grey_prob=1.0, gain=(1.0, 1.0), shift=0.0)
    assert torch.allclose(grey, x.mean(1, keepdim=True).expand_as(x), atol=1e-6)
    wild = recolor(x.clone(), grey_prob=0.0, gain=(0.1, 3.0), shift=0.5)
    assert float(wild.min()) >= 0.0 and float(wild.max()) <= 1.0


def _dot_frames(n: int, size: int, rng: np.random.Generator) -> CropTargets:
    """Black frames with one white 3x3 dot at joint 0; joint 1 elsewhere (no dot)."""
    images = np.zeros((n, size, size, 3), np.uint8)
    j2 = np.zeros((n, 2, 2), np.float32)
    for i in range(n):
        cx, cy = rng.integers(size // 2 - 8, size // 2 + 8, 2)
        images[i, cy - 1:cy + 2, cx - 1:cx + 2] = 255
        j2[i, 0] = (cx + 0.5, cy + 0.5)  # the dot's centre, pixel-centre convention
        j2[i, 1] = (cx + 10.5, cy - 6.5)
    boxes = np.tile(np.array([[size / 2, size / 2, 40.0, 40.0]], np.float32), (n, 1))
    j3 = rng.normal(size=(n, 2, 3)).astype(np.float32)
    return CropTargets(images=images, boxes=boxes, joints3d=j3, joints2d=j2)


def _dot_location(crop: torch.Tensor) -> np.ndarray:
    """(3, S, S) crop -> the brightest point's centroid in normalised crop coordinates (x, y)."""
    s = crop.shape[-1]
    w = crop.mean(0).clamp(min=0).numpy()
    w = np.where(w > 0.5 * w.max(), w, 0)
    ys, xs = np.mgrid[0:s, 0:s]
    return np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5]) / s * 2 - 1


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_crop_targets_follow_the_image_under_jitter_and_mirroring(flip):
    data = _dot_frames(8, 64, np.random.default_rng(1))
    batcher = CropBatcher(data, crop_size=48, flip_index=(1, 0), flip=flip, scale=(0.8, 1.2), shift=0.1, color=False)
    torch.manual_seed(3)
    batch = batcher(list(range(8)))
    # undo the ImageNet normalisation: the dot is the bright spot whatever the colour statistics
    joint_with_dot = 1 if flip else 0  # mirrored: joint 0's mirror (index 1) now names the dot
    for i in range(8):
        found = _dot_location(batch["image"][i])
        assert np.abs(found - batch["joints2d"][i, joint_with_dot].numpy()).max() < 2.0 / 48, (i, found)
    j3 = torch.as_tensor(data.joints3d)
    want = j3[:, [1, 0]] * torch.tensor([-1.0, 1.0, 1.0]) if flip else j3
    assert torch.equal(batch["joints3d"], want)


def test_unaugmented_crops_are_the_features_stage_crops():
    from hmrmamba.features.crops import crop_and_resize

    data = _dot_frames(4, 64, np.random.default_rng(2))
    batch = CropBatcher(data, crop_size=32, flip_index=(1, 0), augment=False)([0, 1, 2, 3])
    assert torch.allclose(batch["image"], crop_and_resize(data.images, data.boxes, out_size=32), atol=1e-6)


def test_crop_targets_reject_mismatched_rows():
    data = _dot_frames(4, 64, np.random.default_rng(0))
    with pytest.raises(InputError, match="boxes"):
        CropTargets(images=data.images, boxes=data.boxes[:3], joints3d=data.joints3d, joints2d=data.joints2d)
    with pytest.raises(InputError, match="flip_index"):
        CropBatcher(data, crop_size=32, flip_index=(0,))


def test_settings_refuse_a_trained_backbone_beside_other_weights(tiny_params):
    params = dict(tiny_params)
    params["train_backbone"] = {**params["train_backbone"], "enabled": True}
    params["features"] = {**params["features"], "weights": "spin.pt"}
    with pytest.raises(InputError, match="train_backbone.enabled.*features.weights"):
        parse_settings(params)


def test_features_load_the_trained_backbone_and_refuse_another_architecture(tmp_path):
    from hmrmamba.train.checkpoint import save_checkpoint

    net = BackboneNet(num_joints=17, map_layer="layer3", init_seed=5)
    path = tmp_path / "models/backbone/best.pt"
    save_checkpoint(path, model=net, epoch=1, step=1, config={"stage": "train_backbone"})
    params = parse_settings({"train_backbone": {"enabled": True}})
    assert trained_backbone_path(params.train_backbone, Layout(tmp_path)) == path
    model, note = build_backbone(params.features, Layout(tmp_path), trained=path)
    assert "train_backbone" in note
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert trained_backbone_path(parse_settings({}).train_backbone, Layout(tmp_path)) is None
    with pytest.raises(MissingFileError, match="train_backbone"):
        build_backbone(params.features, Layout(tmp_path), trained=tmp_path / "missing.pt")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    other.conv1 = torch.nn.Conv2d(3, 64, 5)  # a conv1 of another kernel size
    save_checkpoint(path, model=other, epoch=1, step=1, config={})
    with pytest.raises(InputError, match="best.pt"):
        build_backbone(params.features, Layout(tmp_path), trained=path)


def _run_stage(root, params):
    from hmrmamba.stages import train_backbone
    from hmrmamba.stages.common import execute

    return execute(train_backbone.STAGE, train_backbone.run, root=root, params=params)


@pytest.fixture(scope="module")
def trained_projects(tiny_project, tmp_path_factory):
    """Two copies of the tiny project, each with the backbone trained (same params and seed)."""
    from pathlib import Path

    from hmrmamba.profiles import compose

    roots = []
    for name in ("a", "b"):
        root = tmp_path_factory.mktemp(f"backbone_{name}") / "p"
        shutil.copytree(tiny_project, root, ignore=shutil.ignore_patterns("mlruns", "mlflow.db", "models"))
        params = compose(Path(__file__).resolve().parents[1], "default", [
            "synthetic.splits.train.sequences=3", "synthetic.splits.train.subjects=2",
            "synthetic.splits.test.sequences=2", "synthetic.splits.test.subjects=1",
            "synthetic.frames=[20,28]", "synthetic.image_size=64",
            "features.batch_size=16", "features.crop_size=32",
            "train_backbone.enabled=true", "train_backbone.epochs=2", "train_backbone.batch_size=8",
            "train_backbone.val_frames=16"])
        metrics = _run_stage(root, params)
        roots.append((root, params, metrics))
    return roots


def test_backbone_training_repeats_bit_for_bit(trained_projects):
    from hmrmamba.train.checkpoint import load_checkpoint

    (a, _, ma), (b, _, mb) = trained_projects
    assert ma["enabled"] and ma["epochs"] == 2 and ma["val_frames"] == 16
    sa = load_checkpoint(a / "models/backbone/best.pt")["model"]
    sb = load_checkpoint(b / "models/backbone/best.pt")["model"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh = BackboneNet(num_joints=17).state_dict()
    assert not torch.equal(sa["backbone.layer3.0.conv1.weight"], fresh["backbone.layer3.0.conv1.weight"])
    assert ma["best_val_mpjpe"] == mb["best_val_mpjpe"] and np.isfinite(ma["best_val_mpjpe"])


def test_features_stage_uses_the_trained_backbone_and_disabling_removes_it(trained_projects):
    from hmrmamba.data.h5schema import open_h5
    from hmrmamba.stages import features
    from hmrmamba.stages.common import execute

    root, params, _ = trained_projects[0]
    with open_h5(Layout(root).features("train")) as h5:
        before = np.asarray(h5["features"][:])
    metrics = execute(features.STAGE, features.run, root=root, params=params)
    assert "train_backbone" in metrics["weights"]
    with open_h5(Layout(root).features("train")) as h5:
        after = np.asarray(h5["features"][:])
    assert before.shape == after.shape and not np.array_equal(before, after)
    off = {**params, "train_backbone": {**params["train_backbone"], "enabled": False}}
    metrics = _run_stage(root, off)
    assert metrics["enabled"] is False and metrics["features_from"] == "the seeded random init"
    assert not (root / "models/backbone/best.pt").exists() and (root / "models/backbone").is_dir()
