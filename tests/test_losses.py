import math

import pytest
import torch

from hmrmamba.train import losses as L
from hmrmamba.geometry import axis_angle_to_matrix


def zeros(*shape):
    return torch.zeros(*shape, dtype=torch.float64)


def test_mpjpe_loss_known_answer_and_mask():
    gt = zeros(1, 4, 17, 3)
    pred = gt.clone()
    pred[0, 0, :, 0] = 0.02
    pred[0, 3, :, 0] = 1.0  # a padded frame: must not count
    mask = torch.tensor([[True, True, True, False]])
    assert math.isclose(L.mpjpe_loss(pred, gt, mask).item(), 0.02 / 3)


def test_temporal_consistency_weights_joints_like_mixste():
    pred = zeros(1, 2, 17, 3)
    pred[0, 1, 12, 0] = 0.1  # left elbow (weight 4) moves 0.1 m
    expected = 4 * 0.01 / (17 * 3)
    assert math.isclose(L.temporal_consistency_loss(pred).item(), expected)
    pred2 = zeros(1, 2, 17, 3)
    pred2[0, 1, 0, 0] = 0.1  # pelvis (weight 1)
    assert math.isclose(L.temporal_consistency_loss(pred2).item(), expected / 4)


def test_velocity_loss_ignores_constant_offsets():
    gt = torch.randn(2, 8, 17, 3, dtype=torch.float64)
    assert L.velocity_loss(gt + 0.3, gt).item() < 1e-12
    moved = gt.clone()
    moved[:, 4:] += torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64)  # one 5 cm step at t=4
    assert math.isclose(L.velocity_loss(moved, gt).item(), 0.05 / 7)


def test_reprojection_is_zero_for_consistent_input_both_ways():
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(2, 3, 17, 3, generator=g, dtype=torch.float64) * 0.3
    root = torch.tensor([0.1, 0.2, 5.0], dtype=torch.float64).expand(2, 3, 3)
    cam = torch.tensor([[200.0, 200.0, 64.0, 64.0]] * 2, dtype=torch.float64)
    from hmrmamba.geometry import perspective_project
    kp = perspective_project(pose + root[:, :, None], cam[:, None].expand(-1, 3, -1))
    assert L.reprojection_loss(pose, kp, camera=cam, root=root).item() < 1e-9
    wp = 40.0 * pose[..., :2] + 64.0
    assert L.reprojection_loss(pose, wp).item() < 1e-9
    assert L.reprojection_loss(pose, wp + 3.0 * torch.randn_like(wp), image_size=128).item() > 0.005


def test_lift_loss_combines_with_weights():
    g = torch.Generator().manual_seed(1)
    pred, gt = (torch.randn(2, 5, 17, 3, generator=g, dtype=torch.float64) for _ in range(2))
    kp = torch.randn(2, 5, 17, 2, generator=g, dtype=torch.float64)
    w = L.LiftLossWeights()
    t = L.lift_loss(pred, gt, kp, None, None, w)
    manual = t["mpjpe"] + 0.5 * t["temporal"] + 20 * t["velocity"] + 0.5 * t["reprojection"]
    assert torch.allclose(t["total"], manual)


def tetra():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return v[None, None], f


def test_edge_and_normal_losses_known_answers():
    v, f = tetra()
    assert L.edge_length_loss(v, v, f).item() == 0
    assert L.normal_loss(v, v, f).item() < 1e-12
    scaled = v * 2.0
    edges = torch.tensor([1, 1, math.sqrt(2)] * 3 + [math.sqrt(2)] * 3, dtype=torch.float64)
    assert math.isclose(L.edge_length_loss(scaled, v, f).item(), edges.mean().item())
    assert L.normal_loss(scaled, v, f).item() < 1e-12  # scaling keeps edges in the face planes
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64))
    assert L.normal_loss(v @ R.T, v, f).item() > 0.01
    assert L.edge_length_loss(v @ R.T, v, f).item() < 1e-12  # rotation keeps lengths


def test_mesh_loss_weights():
    v, f = tetra()
    pred = v + 0.01
    j = torch.zeros(1, 1, 17, 3, dtype=torch.float64)
    t = L.mesh_loss(pred, v, j + 0.01, j, f, None, L.MeshLossWeights(), extra_joints=(j + 0.02,))
    assert math.isclose(t["vertex"].item(), 0.01)
    assert math.isclose(t["joint"].item(), math.sqrt(3) * 0.03, rel_tol=1e-9)
    manual = t["vertex"] + t["joint"] + 0.1 * t["normal"] + 20 * t["edge"]
    assert torch.allclose(t["total"], manual)


def test_mesh_objective_supervises_evenly_spaced_frames():
    import torch

    from hmrmamba.errors import InputError
    from hmrmamba.train.objectives import supervised_frames

    assert supervised_frames(16, 4).tolist() == [0, 5, 10, 15]
    assert supervised_frames(16, 1).tolist() == [0]
    assert supervised_frames(16, None) is None and supervised_frames(16, 16) is None
    assert torch.equal(supervised_frames(9, 3), torch.tensor([0, 4, 8]))
    with pytest.raises(InputError, match="loss_frames"):
        supervised_frames(16, 0)
