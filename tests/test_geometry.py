import math

import pytest
import torch

from hmrmamba import geometry as G


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


def test_axis_angle_matrix_round_trip_and_known_value(rng):
    aa = torch.randn(100, 3, generator=rng, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(100, 1, generator=rng, dtype=torch.float64) * 3.0
    assert torch.allclose(G.matrix_to_axis_angle(G.axis_angle_to_matrix(aa)), aa, atol=1e-9)
    R = G.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)


def test_rot6d_round_trip_and_projection_of_noise(rng):
    R = G.axis_angle_to_matrix(torch.randn(50, 3, generator=rng, dtype=torch.float64))
    assert torch.allclose(G.rot6d_to_matrix(G.matrix_to_rot6d(R)), R, atol=1e-12)
    noisy = G.rot6d_to_matrix(torch.randn(50, 6, generator=rng, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    assert torch.allclose(noisy.transpose(-1, -2) @ noisy, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(noisy), torch.ones(50, dtype=torch.float64))


def test_perspective_projection_known_answer():
    cam = torch.tensor([100.0, 120.0, 64.0, 60.0])
    p = torch.tensor([[0.5, -0.25, 2.0], [0.0, 0.0, 4.0]])
    uv = G.perspective_project(p, cam)
    assert torch.allclose(uv, torch.tensor([[64 + 25.0, 60 - 15.0], [64.0, 60.0]]))
    K = G.intrinsics_matrix(cam)
    hom = (K @ p.T).T
    assert torch.allclose(hom[:, :2] / hom[:, 2:], uv)


def test_weak_perspective_fit_recovers_parameters(rng):
    pts = torch.randn(4, 17, 3, generator=rng)
    s, t = torch.tensor([2.0, 0.5, 1.0, 3.0]), torch.randn(4, 2, generator=rng)
    target = G.weak_perspective_project(pts, s, t)
    s_fit, t_fit = G.fit_weak_perspective(pts, target)
    assert torch.allclose(s_fit, s, atol=1e-5) and torch.allclose(t_fit, t, atol=1e-5)


def test_umeyama_recovers_similarity_and_handles_reflection(rng):
    src = torch.randn(8, 17, 3, generator=rng, dtype=torch.float64)
    R = G.axis_angle_to_matrix(torch.randn(8, 3, generator=rng, dtype=torch.float64))
    s = torch.rand(8, generator=rng, dtype=torch.float64) + 0.5
    t = torch.randn(8, 3, generator=rng, dtype=torch.float64)
    dst = s[:, None, None] * src @ R.transpose(-1, -2) + t[:, None]
    s_hat, R_hat, t_hat = G.umeyama_similarity(src, dst)
    assert torch.allclose(s_hat, s) and torch.allclose(R_hat, R) and torch.allclose(t_hat, t)
    assert torch.allclose(G.similarity_align(src, dst), dst)
    mirrored = src * torch.tensor([-1.0, 1, 1], dtype=torch.float64)
    _, R_m, _ = G.umeyama_similarity(src, mirrored)
    assert torch.allclose(torch.linalg.det(R_m), torch.ones(8, dtype=torch.float64))
