"""The stage-1 flip augmentation (hmrmamba.data.augment): every input and target mirrored consistently."""

from __future__ import annotations

import pytest
import torch

from hmrmamba.data.augment import flip_windows
from hmrmamba.errors import InputError
from hmrmamba.geometry import perspective_project
from hmrmamba.skeleton import H36M17

B, T, J = 4, 5, 17


def stage1_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A window batch whose pixel keypoints are the exact projections of its 3D joints."""
    g = torch.Generator().manual_seed(seed)
    joints3d = torch.randn(B, T, J, 3, generator=g, dtype=torch.float64) * 0.3
    joints3d = joints3d - joints3d[:, :, :1]
    root = torch.randn(B, T, 3, generator=g, dtype=torch.float64) * 0.2 + torch.tensor([0.1, 0.0, 4.0], dtype=torch.float64)
    camera = torch.tensor([[150.0, 150.0, 60.0, 66.0]], dtype=torch.float64).repeat(B, 1)
    camera[:, 2] += torch.arange(B)  # a different principal point per window
    px = perspective_project(joints3d + root[:, :, None], camera[:, None].expand(-1, T, -1))
    centre = px.mean(2, keepdim=True)
    return {"kp2d": (px - centre) / 40.0, "kp2d_px": px, "conf": torch.rand(B, T, J, generator=g, dtype=torch.float64),
            "joints3d": joints3d, "root": root, "camera": camera, "feats": torch.randn(B, T, 8, generator=g),
            "spatial": torch.randn(B, T, 3, 4, 6, generator=g), "mask": torch.ones(B, T, dtype=torch.bool)}


def test_mirrored_windows_still_project_onto_their_keypoints():
    batch = stage1_batch()
    out = flip_windows(batch, torch.ones(B, dtype=torch.bool), H36M17.flip)
    proj = perspective_project(out["joints3d"] + out["root"][:, :, None], out["camera"][:, None].expand(-1, T, -1))
    torch.testing.assert_close(proj, out["kp2d_px"], rtol=0, atol=1e-9)
    # and the mirror really moved something: a pose is not its own mirror image
    assert (out["joints3d"] - batch["joints3d"]).abs().max() > 0.05


def test_known_answer_for_one_joint_pair():
    batch = stage1_batch(1)
    out = flip_windows(batch, torch.ones(B, dtype=torch.bool), H36M17.flip)
    left = 13  # H36M-17: left wrist; its mirror partner is the right wrist (16)
    right = H36M17.flip[left]
    assert right == 16
    expect = batch["joints3d"][:, :, right].clone()
    expect[..., 0] *= -1
    torch.testing.assert_close(out["joints3d"][:, :, left], expect)
    torch.testing.assert_close(out["kp2d"][:, :, left, 0], -batch["kp2d"][:, :, right, 0])
    torch.testing.assert_close(out["conf"][:, :, left], batch["conf"][:, :, right])
    torch.testing.assert_close(out["root"][..., 0], -batch["root"][..., 0])
    torch.testing.assert_close(out["spatial"], batch["spatial"].flip(-1))


def test_only_the_chosen_windows_change_and_twice_is_identity():
    batch = stage1_batch(2)
    which = torch.tensor([True, False, True, False])
    once = flip_windows(batch, which, H36M17.flip)
    for key in ("kp2d", "kp2d_px", "joints3d", "root", "conf", "spatial"):
        assert torch.equal(once[key][~which], batch[key][~which]), key
        assert not torch.equal(once[key][which], batch[key][which]), key
        torch.testing.assert_close(flip_windows(once, which, H36M17.flip)[key], batch[key], rtol=0, atol=1e-12)
    assert once["feats"] is batch["feats"] and once["camera"] is batch["camera"]


def test_stage2_batches_are_refused():
    batch = {**stage1_batch(), "smpl_pose": torch.zeros(B, T, 72)}
    with pytest.raises(InputError, match="smpl_pose"):
        flip_windows(batch, torch.ones(B, dtype=torch.bool), H36M17.flip)
