import math

import numpy as np
import pytest
import torch

from hmrmamba.evaluate import metrics as M
from hmrmamba.geometry import axis_angle_to_matrix


def test_mpjpe_known_answer():
    gt = torch.zeros(2, 17, 3, dtype=torch.float64)
    pred = gt.clone()
    pred[0, :, 0] = 0.01          # every joint 10 mm off
    pred[1, 0] = torch.tensor([0.03, 0.04, 0.0])  # one joint 50 mm off
    np.testing.assert_allclose(M.mpjpe(pred, gt).numpy(), [10.0, 50.0 / 17])


def test_pa_mpjpe_is_invariant_to_similarity_of_the_prediction():
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(5, 17, 3, generator=g, dtype=torch.float64) * 0.3
    pred = gt + torch.randn(5, 17, 3, generator=g, dtype=torch.float64) * 0.02
    base = M.pa_mpjpe(pred, gt)
    R = axis_angle_to_matrix(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    moved = 2.5 * pred @ R.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    np.testing.assert_allclose(M.pa_mpjpe(moved, gt).numpy(), base.numpy(), rtol=1e-9)
    assert (base < M.mpjpe(pred, gt)).all()
    assert M.pa_mpjpe(2.0 * gt @ R.T + 1.0, gt).max() < 1e-9  # a pure similarity costs nothing


def test_mpvpe_after_pelvis_alignment():
    gt = torch.rand(3, 100, 3, dtype=torch.float64)
    shifted = gt + torch.tensor([0.5, 0.0, -0.2], dtype=torch.float64)
    root_gt, root_pred = gt[:, 0], shifted[:, 0]
    np.testing.assert_allclose(M.mpvpe(M.align_at(shifted, root_pred), M.align_at(gt, root_gt)), 0, atol=1e-12)


def test_accel_error_known_answer_and_constant_velocity_is_free():
    t = torch.arange(10, dtype=torch.float64)
    gt = torch.zeros(10, 2, 3, dtype=torch.float64)
    gt[..., 0] = 0.1 * t[:, None]  # constant velocity: zero acceleration
    pred = gt.clone()
    assert M.accel_error(pred + 0.2 * t[:, None, None], gt).abs().max() < 1e-9
    pred[5, :, 1] += 0.001  # a 1 mm bump at frame 5 -> accel 1, -2, 1 mm at stencils 4, 5, 6
    err = M.accel_error(pred, gt)
    np.testing.assert_allclose(err.numpy(), [0, 0, 0, 1, 2, 1, 0, 0], atol=1e-9)
    valid = np.ones(10, bool)
    valid[5] = False
    assert len(M.accel_error(pred, gt, valid)) == 5
    assert M.accel_error(pred[:2], gt[:2]).numel() == 0


def test_mpjve_known_answer():
    gt = torch.zeros(4, 17, 3, dtype=torch.float64)
    pred = gt.clone()
    pred[2:, :, 2] = 0.005
    np.testing.assert_allclose(M.mpjve(pred, gt).numpy(), [0, 5, 0])


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(\.\.\., J, 3\)"):
        M.mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 14, 3)))


# ----------------------------------------------------------------------------------------------
# mesh quality


def _octahedron():
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return v, f


def test_mesh_edges_of_an_octahedron():
    from hmrmamba.evaluate.metrics import mesh_edges

    _, f = _octahedron()
    e = mesh_edges(f)
    assert e.shape == (12, 2) and (e[:, 0] < e[:, 1]).all()


def test_edge_length_error_known_answers():
    from hmrmamba.evaluate.metrics import edge_length_error, mesh_edges

    v, f = _octahedron()
    e = mesh_edges(f)
    assert edge_length_error(v, v, e).item() == 0.0
    # every octahedron edge is sqrt(2) m; doubling the mesh adds sqrt(2) m to each
    assert edge_length_error(2 * v, v, e).item() == pytest.approx(np.sqrt(2) * 1000)
    rot = torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    assert edge_length_error(v @ rot.T + 5.0, v, e).item() == pytest.approx(0.0, abs=1e-9)


def test_normal_angle_error_known_answers():
    from hmrmamba.evaluate.metrics import normal_angle_error

    v, f = _octahedron()
    assert normal_angle_error(v, v, f).item() == pytest.approx(0.0, abs=1e-6)
    tri = torch.tensor([[[0, 0, 0], [1, 0, 0], [0, 1, 0]]], dtype=torch.float64)
    flipped = tri[:, [0, 2, 1]]  # the same triangle wound the other way: its normal points down
    assert normal_angle_error(flipped, tri, np.array([[0, 1, 2]])).item() == pytest.approx(180.0, abs=1e-4)
    up = torch.tensor([[[0, 0, 0], [1, 0, 0], [0, 0, 1]]], dtype=torch.float64)  # turned 90 deg about x
    assert normal_angle_error(up, tri, np.array([[0, 1, 2]])).item() == pytest.approx(90.0)


def test_umbrella_laplacian_known_answers():
    from hmrmamba.evaluate.metrics import mesh_edges, umbrella_laplacian

    v, f = _octahedron()
    e = mesh_edges(f)
    # each vertex has 4 neighbours at the origin's ring: their mean is the origin, so |L v| = 1 m
    assert umbrella_laplacian(v, e).item() == pytest.approx(1000.0)
    assert umbrella_laplacian(3 * v + 1.0, e).item() == pytest.approx(3000.0)
    spiky = v.clone()
    spiky[4, 2] = 3.0
    assert umbrella_laplacian(spiky, e).item() > umbrella_laplacian(v, e).item()
    batch = torch.stack([v, 2 * v])
    assert torch.allclose(umbrella_laplacian(batch, e), torch.tensor([1000.0, 2000.0], dtype=torch.float64))


def test_mesh_quality_of_the_ground_truth_is_perfect():
    from hmrmamba.evaluate.protocol import _quality_summary, mesh_quality

    v, f = _octahedron()
    frames = np.stack([v.numpy(), 1.1 * v.numpy()])
    q = _quality_summary(mesh_quality(frames, frames, f, chunk=1))
    assert q == {"edge_err": 0.0, "normal_err": pytest.approx(0.0, abs=1e-6), "roughness": pytest.approx(1.0)}
    q2 = _quality_summary(mesh_quality(2 * frames, frames, f))
    assert q2["roughness"] == pytest.approx(2.0)
