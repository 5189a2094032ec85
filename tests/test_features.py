"""Tests for hmrmamba.features: ResNet-50 layout, weight loading, crops, BN fusion, extraction."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.features import (
    ResNet50,
    bbox_from_keypoints,
    crop_and_resize,
    extract_features,
    keypoints_to_crop,
    load_backbone_weights,
    resnet50_conv_macs,
    smooth_boxes,
)
from hmrmamba.features.crops import IMAGENET_MEAN, IMAGENET_STD

# torchvision resnet50, written out once from its architecture: "conv shape | bn channels" per line,
# in state-dict order. Each BN expands to weight, bias, running_mean, running_var, num_batches_tracked.
TORCHVISION_RESNET50 = """
conv1 64,3,7,7 | bn1 64
layer1.0.conv1 64,64,1,1 | layer1.0.bn1 64
layer1.0.conv2 64,64,3,3 | layer1.0.bn2 64
layer1.0.conv3 256,64,1,1 | layer1.0.bn3 256
layer1.0.downsample.0 256,64,1,1 | layer1.0.downsample.1 256
layer1.1.conv1 64,256,1,1 | layer1.1.bn1 64
layer1.1.conv2 64,64,3,3 | layer1.1.bn2 64
layer1.1.conv3 256,64,1,1 | layer1.1.bn3 256
layer1.2.conv1 64,256,1,1 | layer1.2.bn1 64
layer1.2.conv2 64,64,3,3 | layer1.2.bn2 64
layer1.2.conv3 256,64,1,1 | layer1.2.bn3 256
layer2.0.conv1 128,256,1,1 | layer2.0.bn1 128
layer2.0.conv2 128,128,3,3 | layer2.0.bn2 128
layer2.0.conv3 512,128,1,1 | layer2.0.bn3 512
layer2.0.downsample.0 512,256,1,1 | layer2.0.downsample.1 512
layer2.1.conv1 128,512,1,1 | layer2.1.bn1 128
layer2.1.conv2 128,128,3,3 | layer2.1.bn2 128
layer2.1.conv3 512,128,1,1 | layer2.1.bn3 512
layer2.2.conv1 128,512,1,1 | layer2.2.bn1 128
layer2.2.conv2 128,128,3,3 | layer2.2.bn2 128
layer2.2.conv3 512,128,1,1 | layer2.2.bn3 512
layer2.3.conv1 128,512,1,1 | layer2.3.bn1 128
layer2.3.conv2 128,128,3,3 | layer2.3.bn2 128
layer2.3.conv3 512,128,1,1 | layer2.3.bn3 512
layer3.0.conv1 256,512,1,1 | layer3.0.bn1 256
layer3.0.conv2 256,256,3,3 | layer3.0.bn2 256
layer3.0.conv3 1024,256,1,1 | layer3.0.bn3 1024
layer3.0.downsample.0 1024,512,1,1 | layer3.0.downsample.1 1024
layer3.1.conv1 256,1024,1,1 | layer3.1.bn1 256
layer3.1.conv2 256,256,3,3 | layer3.1.bn2 256
layer3.1.conv3 1024,256,1,1 | layer3.1.bn3 1024
layer3.2.conv1 256,1024,1,1 | layer3.2.bn1 256
layer3.2.conv2 256,256,3,3 | layer3.2.bn2 256
layer3.2.conv3 1024,256,1,1 | layer3.2.bn3 1024
layer3.3.conv1 256,1024,1,1 | layer3.3.bn1 256
layer3.3.conv2 256,256,3,3 | layer3.3.bn2 256
layer3.3.conv3 1024,256,1,1 | layer3.3.bn3 1024
layer3.4.conv1 256,1024,1,1 | layer3.4.bn1 256
layer3.4.conv2 256,256,3,3 | layer3.4.bn2 256
layer3.4.conv3 1024,256,1,1 | layer3.4.bn3 1024
layer3.5.conv1 256,1024,1,1 | layer3.5.bn1 256
layer3.5.conv2 256,256,3,3 | layer3.5.bn2 256
layer3.5.conv3 1024,256,1,1 | layer3.5.bn3 1024
layer4.0.conv1 512,1024,1,1 | layer4.0.bn1 512
layer4.0.conv2 512,512,3,3 | layer4.0.bn2 512
layer4.0.conv3 2048,512,1,1 | layer4.0.bn3 2048
layer4.0.downsample.0 2048,1024,1,1 | layer4.0.downsample.1 2048
layer4.1.conv1 512,2048,1,1 | layer4.1.bn1 512
layer4.1.conv2 512,512,3,3 | layer4.1.bn2 512
layer4.1.conv3 2048,512,1,1 | layer4.1.bn3 2048
layer4.2.conv1 512,2048,1,1 | layer4.2.bn1 512
layer4.2.conv2 512,512,3,3 | layer4.2.bn2 512
layer4.2.conv3 2048,512,1,1 | layer4.2.bn3 2048
"""


def expected_state_dict_spec() -> list[tuple[str, tuple[int, ...]]]:
    spec: list[tuple[str, tuple[int, ...]]] = []
    for line in TORCHVISION_RESNET50.strip().splitlines():
        conv, bn = (part.split() for part in line.split("|"))
        spec.append((conv[0] + ".weight", tuple(int(v) for v in conv[1].split(","))))
        c = int(bn[1])
        spec += [(f"{bn[0]}.{s}", (c,)) for s in ("weight", "bias", "running_mean", "running_var")]
        spec.append((f"{bn[0]}.num_batches_tracked", ()))
    return spec + [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]


@pytest.fixture(scope="module")
def model() -> ResNet50:
    """A seeded ResNet-50 with non-trivial BN statistics, in eval mode."""
    net = ResNet50(init_seed=3)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def noise_state(model) -> dict[str, torch.Tensor]:
    """A state dict of ResNet-50's layout with every float tensor replaced by seeded noise."""
    gen = torch.Generator().manual_seed(1)
    out = {}
    for k, v in model.state_dict().items():
        if "running_var" in k:
            out[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=gen) * 0.05
        else:
            out[k] = v.clone()
    return out


@pytest.fixture(scope="module")
def blank() -> ResNet50:
    """A seeded model to copy (construction is the slow part)."""
    return ResNet50(init_seed=0)


# ----------------------------------------------------------------------------- architecture


def test_state_dict_matches_torchvision_resnet50_exactly():
    sd = ResNet50().state_dict()
    spec = expected_state_dict_spec()
    assert len(spec) == 320
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == spec


def test_selected_keys_and_shapes():
    sd = ResNet50().state_dict()
    assert tuple(sd["layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer3.0.downsample.1.running_var"].shape) == (1024,)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64
    assert tuple(ResNet50(num_classes=10).state_dict()["fc.weight"].shape) == (10, 2048)


def test_conv_macs_match_published_resnet50_count():
    # ResNet-50 is 4.09 GMACs at 224 incl. the 2.05 M MACs of fc.
    assert resnet50_conv_macs(224) == 4_087_136_256
    assert abs((resnet50_conv_macs(224) + 2048 * 1000) / 1e9 - 4.089) < 1e-3


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = ResNet50(init_seed=5).state_dict()
    after = torch.rand(3)
    assert torch.equal(before, after)
    b = ResNet50(init_seed=5).state_dict()
    c = ResNet50(init_seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer2.1.conv2.weight"], c["layer2.1.conv2.weight"])


def test_forward_features_shapes(model):
    with torch.inference_mode():
        pooled, spatial = model.forward_features(torch.randn(2, 3, 100, 64))
        logits = model(torch.randn(1, 3, 64, 64))
    assert pooled.shape == (2, 2048) and spatial.shape == (2, 2048, 4, 2)
    torch.testing.assert_close(pooled, spatial.mean(dim=(2, 3)))
    assert logits.shape == (1, 1000)
    with pytest.raises(InputError, match="x"):
        model.forward_features(torch.randn(2, 1, 64, 64))


def test_fuse_bn_matches_unfused_in_eval_mode(model):
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    fused = copy.deepcopy(model).fuse_bn()
    assert fused.fused and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref_p, ref_s = model.forward_features(x)
        p, s = fused.forward_features(x)
        p_cl, _ = cl.forward_features(x.contiguous(memory_format=torch.channels_last))
        assert torch.equal(fused(x), fused.fuse_bn()(x))  # second fuse is a no-op
    scale = ref_s.abs().max()
    torch.testing.assert_close(s / scale, ref_s / scale, rtol=0, atol=1e-4)
    torch.testing.assert_close(p / scale, ref_p / scale, rtol=0, atol=1e-4)
    torch.testing.assert_close(p_cl / scale, ref_p / scale, rtol=0, atol=1e-4)
    with pytest.raises(InputError, match="eval"):
        ResNet50().train().fuse_bn()


# ----------------------------------------------------------------------------- weights


def test_torchvision_checkpoint_round_trip(tmp_path, model, blank):
    path = tmp_path / "resnet50.pth"
    torch.save(model.state_dict(), path)
    other = copy.deepcopy(blank).eval()
    report = load_backbone_weights(other, path)
    assert report.prefix == "" and report.container == "<root>"
    assert len(report.loaded) == 320 and report.missing == [] and report.unexpected == []
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(other(x), model(x))
        assert torch.equal(other.forward_features(x)[1], model.forward_features(x)[1])


@pytest.mark.parametrize("prefix", ["", "backbone.", "encoder.", "module.backbone."])
def test_spin_style_checkpoint_takes_only_the_resnet(tmp_path, noise_state, blank, prefix):
    src = noise_state
    hmr = {prefix + k: v for k, v in src.items() if not k.startswith("fc.")}
    hmr.update({prefix + "fc1.weight": torch.zeros(1024, 2205), prefix + "decpose.weight": torch.zeros(144, 1024),
                "init_pose": torch.zeros(1, 144), "regressor.fc.weight": torch.zeros(3, 3)})
    ckpt = {"model": hmr, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-5}]}, "epoch": 3}
    path = tmp_path / "model_checkpoint.pt"
    torch.save(ckpt, path)
    net = copy.deepcopy(blank)
    fc_before = net.fc.weight.detach().clone()
    report = load_backbone_weights(net, path)
    assert report.container == "model" and report.prefix == prefix
    assert report.missing == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == 318
    regressor = {prefix + "fc1.weight", prefix + "decpose.weight", "init_pose", "regressor.fc.weight"}
    assert regressor <= set(report.unexpected)
    sd = net.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in report.loaded)
    assert torch.equal(net.fc.weight, fc_before)


def test_shape_mismatch_raises_and_copies_nothing(tmp_path, noise_state, blank):
    sd = dict(noise_state)
    sd["layer4.2.conv3.weight"] = torch.zeros(1024, 512, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    net = copy.deepcopy(blank)
    before = net.conv1.weight.detach().clone()
    with pytest.raises(InputError, match=r"layer4\.2\.conv3\.weight.*\(1024, 512, 1, 1\).*\(2048, 512, 1, 1\)") as err:
        load_backbone_weights(net, path)
    assert str(path) in str(err.value)
    assert torch.equal(net.conv1.weight, before)


def test_missing_file_says_what_to_get(tmp_path, blank):
    with pytest.raises(MissingFileError) as err:
        load_backbone_weights(blank, tmp_path / "nope.pth")
    msg = str(err.value)
    assert "nope.pth" in msg and "resnet50" in msg and "model_checkpoint.pt" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_nothing_matching_partial_and_unreadable_files(tmp_path, noise_state, blank):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, path)
    with pytest.raises(InputError, match="no tensor"):
        load_backbone_weights(copy.deepcopy(blank), path)
    partial = {k: v for k, v in noise_state.items() if not k.startswith("layer3.")}
    torch.save(partial, path)
    with pytest.raises(InputError, match=r"missing.*layer3\.0\.bn1\.bias"):
        load_backbone_weights(copy.deepcopy(blank), path)
    report = load_backbone_weights(copy.deepcopy(blank), path, allow_partial=True)
    assert "layer3.5.conv3.weight" in report.missing and "layer4.0.conv1.weight" in report.loaded
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        load_backbone_weights(blank, garbage)


class NotAllowed:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""

    def __init__(self):
        self.payload = "code"


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path, blank):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7)}, "extra": NotAllowed()}, path)
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        load_backbone_weights(blank, path)


# ----------------------------------------------------------------------------- crops


def test_identity_crop_reproduces_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[11.5, 11.5, 24.0, 24.0]], np.float32), (2, 1))  # whole image
    out = crop_and_resize(img, boxes, out_size=24, normalize=False)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), img / 255.0, atol=1e-6)
    norm = crop_and_resize(img, boxes, out_size=24)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    np.testing.assert_allclose(norm.permute(0, 2, 3, 1).numpy(), (img / 255.0 - mean) / std, atol=1e-5)
    assert norm.is_contiguous(memory_format=torch.channels_last)


def test_keypoint_lands_at_expected_crop_pixel():
    img = np.zeros((1, 60, 80, 3), np.uint8)
    img[0, 20, 30] = 255  # keypoint (x=30, y=20)
    kp = np.array([[[30.0, 20.0]]])
    box = np.array([[34.5, 24.5, 16.0, 16.0]], np.float32)  # crop origin (26.5, 16.5), scale 1
    crop = crop_and_resize(img, box, out_size=16, normalize=False)[0, 0].numpy()
    assert np.argwhere(crop > 0).tolist() == [[3, 3]] and crop[3, 3] == pytest.approx(1.0)
    np.testing.assert_allclose(keypoints_to_crop(kp, box, out_size=16), [[[3.0, 3.0]]])
    # 2x upsampling: the point sits between crop pixels 6 and 7 -> a symmetric 2x2 blob at 6.5.
    crop2 = crop_and_resize(img, box, out_size=32, normalize=False)[0, 0].numpy()
    np.testing.assert_allclose(keypoints_to_crop(kp, box, out_size=32), [[[6.5, 6.5]]])
    np.testing.assert_allclose(crop2[6:8, 6:8], 0.5625)
    ys, xs = np.mgrid[:32, :32]
    w = crop2 / crop2.sum()
    assert (w * xs).sum() == pytest.approx(6.5) and (w * ys).sum() == pytest.approx(6.5)
    # a generic box: the intensity centroid follows keypoints_to_crop.
    box3 = np.array([[31.3, 22.7, 13.0, 13.0]], np.float32)
    crop3 = crop_and_resize(img, box3, out_size=32, normalize=False)[0, 0].numpy()
    w = crop3 / crop3.sum()
    expect = keypoints_to_crop(kp, box3, out_size=32)[0, 0]
    assert abs((w * xs).sum() - expect[0]) < 0.05 and abs((w * ys).sum() - expect[1]) < 0.05


def test_outside_the_image_is_black_then_normalised():
    img = np.full((1, 10, 10, 3), 255, np.uint8)
    box = np.array([[-20.0, 4.5, 10.0, 10.0]], np.float32)  # entirely left of the image
    out = crop_and_resize(img, box, out_size=8)
    expect = -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[0].mean(dim=(1, 2)).numpy(), expect, atol=1e-6)


def test_supersample_keeps_geometry_and_smooths():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(1, 64, 64, 3), dtype=np.uint8)
    box = np.array([[31.5, 31.5, 64.0, 64.0]], np.float32)
    plain = crop_and_resize(img, box, out_size=16, normalize=False)
    ss = crop_and_resize(img, box, out_size=16, normalize=False, supersample=4)
    block_mean = torch.as_tensor(img / 255.0).permute(0, 3, 1, 2).float()
    block_mean = torch.nn.functional.avg_pool2d(block_mean, 4)
    torch.testing.assert_close(ss, block_mean, atol=1e-5, rtol=0)  # 4x4 supersampling = box filter here
    assert ss.std() < plain.std()


def test_box_covers_all_confident_joints_and_ignores_outliers():
    rng = np.random.default_rng(2)
    kp = rng.uniform(100, 300, size=(20, 17, 2))
    conf = rng.uniform(0.4, 1.0, size=(20, 17))
    kp[:, 0] = [5000.0, -4000.0]  # a wild joint...
    conf[:, 0] = 0.05  # ...with low confidence
    kp[:, 1] = np.nan  # a missing joint
    boxes = bbox_from_keypoints(kp, conf, image_size=(480, 640), scale=1.2, conf_threshold=0.3)
    assert boxes.shape == (20, 4) and boxes.dtype == np.float32
    good = kp[:, 2:]
    cx, cy, w, h = (boxes[:, i, None] for i in range(4))
    assert np.all(np.abs(good[..., 0] - cx) <= w / 2) and np.all(np.abs(good[..., 1] - cy) <= h / 2)
    extent = (good.max(axis=1) - good.min(axis=1)).max(axis=1)
    np.testing.assert_allclose(boxes[:, 2], 1.2 * extent, rtol=1e-5)
    np.testing.assert_array_equal(boxes[:, 2], boxes[:, 3])
    corners = np.stack([good.min(axis=1), good.max(axis=1)])
    np.testing.assert_allclose(boxes[:, :2], corners.mean(axis=0), rtol=1e-5)


def test_box_fallbacks_previous_then_whole_image():
    kp = np.tile(np.array([[[10.0, 20.0], [30.0, 60.0]]]), (4, 1, 1))
    conf = np.ones((4, 2))
    conf[0] = 0.0  # nothing confident before: whole image
    conf[2] = 0.0  # falls back to frame 1
    kp[3] += 100.0
    boxes = bbox_from_keypoints(kp, conf, image_size=(100, 200), scale=1.0)
    np.testing.assert_allclose(boxes[0], [99.5, 49.5, 200.0, 200.0])
    np.testing.assert_allclose(boxes[1], [20.0, 40.0, 40.0, 40.0])
    np.testing.assert_allclose(boxes[2], boxes[1])
    np.testing.assert_allclose(boxes[3], [120.0, 140.0, 40.0, 40.0])
    tiny = bbox_from_keypoints(np.zeros((1, 3, 2)), None, image_size=(100, 100), min_size=16.0)
    np.testing.assert_allclose(tiny[0], [0.0, 0.0, 16.0, 16.0])
    with pytest.raises(InputError, match="conf"):
        bbox_from_keypoints(kp, np.ones((4, 3)), image_size=(100, 200))
    with pytest.raises(InputError, match="kp2d"):
        bbox_from_keypoints(np.zeros((4, 2)), None, image_size=(100, 200))


def test_temporal_smoothing():
    rng = np.random.default_rng(3)
    n = 200
    truth = np.stack([np.linspace(100, 200, n), np.full(n, 120.0), np.full(n, 80.0), np.full(n, 80.0)], 1)
    noisy = truth + rng.normal(0, 3, size=truth.shape)
    smooth = smooth_boxes(noisy, sigma=3.0)
    assert smooth.shape == (n, 4)
    inner = slice(10, n - 10)
    assert np.abs(smooth[inner] - truth[inner]).mean() < 0.5 * np.abs(noisy[inner] - truth[inner]).mean()
    np.testing.assert_allclose(smooth_boxes(truth, sigma=2.0)[inner], truth[inner], rtol=1e-6)  # linear kept
    const = np.tile([[1.0, 2.0, 3.0, 3.0]], (7, 1))
    np.testing.assert_allclose(smooth_boxes(const, sigma=5.0), const, rtol=1e-6)
    kp = np.tile(np.array([[[10.0, 20.0], [30.0, 60.0]]]), (5, 1, 1))
    via = bbox_from_keypoints(kp, None, image_size=(100, 100), smooth_sigma=1.0)
    np.testing.assert_allclose(via, bbox_from_keypoints(kp, None, image_size=(100, 100)), rtol=1e-6)


def test_crop_rejects_bad_input():
    with pytest.raises(InputError, match="images"):
        crop_and_resize(np.zeros((2, 8, 8, 3), np.float32), np.ones((2, 4)), out_size=4)
    with pytest.raises(InputError, match="boxes"):
        crop_and_resize(np.zeros((2, 8, 8, 3), np.uint8), np.ones((3, 4)), out_size=4)
    with pytest.raises(InputError, match="boxes"):
        crop_and_resize(np.zeros((1, 8, 8, 3), np.uint8), np.array([[1.0, 1.0, 0.0, 1.0]]), out_size=4)


# ----------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(7, 48, 64, 3), dtype=np.uint8)
    kp2d = rng.uniform(8, 40, size=(7, 17, 2))
    conf = rng.uniform(0.2, 1.0, size=(7, 17))
    return images, kp2d, conf


def test_extract_matches_direct_forward_and_is_deterministic(model, video):
    images, kp2d, conf = video
    training_before = model.training
    out = extract_features(images, kp2d, conf, model=model, crop_size=64, batch_size=3, keep_spatial=True,
                           progress=False)
    again = extract_features(images, kp2d, conf, model=model, crop_size=64, batch_size=3, keep_spatial=True,
                             progress=False)
    assert out["features"].dtype == np.float16 and out["features"].shape == (7, 2048)
    assert out["spatial"].dtype == np.float16 and out["spatial"].shape == (7, 2048, 2, 2)
    assert out["boxes"].dtype == np.float32 and out["boxes"].shape == (7, 4)
    for key in out:
        np.testing.assert_array_equal(out[key], again[key])
    np.testing.assert_allclose(out["boxes"], bbox_from_keypoints(kp2d, conf, image_size=(48, 64)))
    crops = crop_and_resize(images, out["boxes"], out_size=64)
    with torch.inference_mode():
        ref, ref_spatial = model.forward_features(crops)
    scale = float(ref_spatial.abs().max())
    np.testing.assert_allclose(out["features"] / scale, ref.numpy() / scale, atol=2e-3)
    np.testing.assert_allclose(out["spatial"] / scale, ref_spatial.numpy() / scale, atol=2e-3)
    assert not model.fused and model.training == training_before  # caller's model untouched
    assert not torch.is_inference_mode_enabled()


def test_extract_streams_from_h5py_in_chunks(tmp_path, model, video):
    images, kp2d, conf = video
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=images, chunks=(2, 48, 64, 3), compression="gzip")

    class Recording:
        """Delegates to an h5py dataset and records how many frames each read asks for."""

        def __init__(self, ds):
            self.ds, self.reads = ds, []
            self.shape, self.dtype = ds.shape, ds.dtype

        def __getitem__(self, index):
            block = self.ds[index]
            self.reads.append(len(block))
            return block

    memory = extract_features(images, kp2d, conf, model=model, crop_size=64, batch_size=3, progress=False)
    with h5py.File(path, "r") as f:
        streamed = extract_features(f["image"], kp2d, conf, model=model, crop_size=64, batch_size=3,
                                    progress=False)
        rec = Recording(f["image"])
        extract_features(rec, kp2d, conf, model=model, crop_size=64, batch_size=3, progress=False)
    np.testing.assert_array_equal(streamed["features"], memory["features"])
    assert rec.reads == [3, 3, 1]


def test_extract_from_an_iterable_of_frames(model, video):
    images, kp2d, conf = video
    memory = extract_features(images, kp2d, conf, model=model, crop_size=64, batch_size=3, progress=False)
    frames = (frame for frame in images)
    streamed = extract_features(frames, kp2d, conf, model=model, crop_size=64, batch_size=3,
                                image_size=(48, 64), progress=False)
    np.testing.assert_array_equal(streamed["features"], memory["features"])
    chunks = [images[:2], images[2:7]]  # uneven chunks are re-batched
    rebatched = extract_features(chunks, None, None, model=model, crop_size=64, batch_size=3,
                                 boxes=memory["boxes"], progress=False)
    np.testing.assert_array_equal(rebatched["features"], memory["features"])
    with pytest.raises(InputError, match="frames"):
        extract_features(list(images[:5]), kp2d, conf, model=model, crop_size=64, batch_size=3,
                         image_size=(48, 64), progress=False)
    with pytest.raises(InputError, match="image size"):
        extract_features(iter(images), kp2d, conf, model=model, crop_size=64, progress=False)
    with pytest.raises(InputError, match="uint8"):
        extract_features(images.astype(np.float32), kp2d, conf, model=model, crop_size=64, progress=False)


def test_probe_recovers_a_linear_code_and_not_noise():
    from hmrmamba.features.probe import feature_probe

    rng = np.random.default_rng(0)

    def split(n, code):
        joints = rng.normal(0, 0.3, (n, 17, 3))
        joints[:, 0] = 0
        feats = joints.reshape(n, -1) @ code + rng.normal(0, 1e-3, (n, code.shape[1])) if code is not None \
            else rng.normal(0, 1, (n, 64))
        return feats, joints

    code = rng.normal(0, 1, (51, 80))
    coded = feature_probe(split(400, code), split(100, code), split(200, code))
    assert coded.probe_mm < 2.0 and coded.ratio < 0.01
    noise = feature_probe(split(400, None), split(100, None), split(200, None))
    assert 0.95 < noise.ratio < 1.2 and noise.floor_mm == pytest.approx(coded.floor_mm, rel=0.1)
    with pytest.raises(InputError, match="probe.val"):
        feature_probe(split(10, None), (np.zeros((3, 4)), np.zeros((2, 17, 3))), split(10, None))
