"""Exact-count decimation and the 6890 -> 1723 -> 431 sampling matrices (own and GraphCMR format)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import trimesh

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.body.mesh_sampling import (
    MeshHierarchy,
    closest_points_on_mesh,
    compute_downsampling,
    decimate_exact,
    euler_characteristic,
    improve_triangles,
    load_mesh_downsampling,
    mesh_adjacency,
    save_mesh_downsampling,
    split_longest_edges,
)


def _check_closed_genus0(v: np.ndarray, f: np.ndarray) -> None:
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert euler_characteristic(len(v), f) == 2 and len(f) == 2 * len(v) - 4
    assert len(np.unique(f)) == len(v)


@pytest.fixture(scope="module")
def sphere():
    s = trimesh.creation.icosphere(subdivisions=4)  # 2562 vertices
    return np.asarray(s.vertices, dtype=np.float64), np.asarray(s.faces, dtype=np.int64)


@pytest.fixture(scope="module")
def body():
    from hmrmamba.body.procedural import build_procedural_smpl

    m = build_procedural_smpl(seed=0)
    return m["v_template"], m["f"]


@pytest.fixture(scope="module")
def body_hierarchy(body):
    return compute_downsampling(*body, sizes=(1723, 431))


@pytest.mark.parametrize("n", [12, 431, 1001, 1723])
def test_decimate_exact_counts_and_topology(sphere, n):
    v, f = decimate_exact(*sphere, n)
    assert v.shape == (n, 3)
    _check_closed_genus0(v, f)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=0.2 if n < 100 else 0.03)


def test_split_and_improve_keep_counts_and_orientation(sphere):
    v, f = split_longest_edges(*sphere, 2600)
    _check_closed_genus0(v, f)
    assert len(v) == 2600
    def to_sphere(p):
        return p / np.linalg.norm(p, axis=1, keepdims=True)

    v2, f2 = improve_triangles(v, f, iterations=3, project=to_sphere)
    _check_closed_genus0(v2, f2)
    np.testing.assert_allclose(np.linalg.norm(v2, axis=1), 1.0, atol=1e-12)
    with pytest.raises(ValueError):
        split_longest_edges(*sphere, 100)


def test_closest_points_match_brute_force(sphere):
    v, f = sphere
    q = np.random.default_rng(0).normal(size=(60, 3))
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * np.random.default_rng(1).uniform(0.9, 1.1, (60, 1))
    fid, bary, pts = closest_points_on_mesh(q, v, f)
    _, _, exact = closest_points_on_mesh(q, v, f, candidates=len(f))
    np.testing.assert_allclose(pts, exact, atol=1e-12)
    np.testing.assert_allclose((bary[:, :, None] * v[f[fid]]).sum(1), pts, atol=1e-12)
    assert (bary >= -1e-12).all() and np.allclose(bary.sum(1), 1.0)


def test_body_hierarchy_sizes_and_matrices(body, body_hierarchy):
    h = body_hierarchy
    assert h.sizes == (6890, 1723, 431)
    assert [d.shape for d in h.D] == [(1723, 6890), (431, 1723)]
    assert [u.shape for u in h.U] == [(6890, 1723), (1723, 431)]
    for k in range(2):
        d, u = h.D[k], h.U[k]
        assert isinstance(d, sp.csr_matrix) and isinstance(u, sp.csr_matrix)
        np.testing.assert_allclose(np.asarray(d.sum(1)).ravel(), 1.0)
        np.testing.assert_allclose(np.asarray(u.sum(1)).ravel(), 1.0)
        assert d.min() >= 0 and u.min() >= 0 and (u.getnnz(axis=1) <= 3).all()
        # sampling: each coarse vertex is one distinct fine vertex
        assert (d.getnnz(axis=1) == 1).all() and len(np.unique(d.indices)) == d.shape[0]
        np.testing.assert_allclose(d @ h.vertices[k], h.vertices[k + 1])
        # upsampling the coarse surface lands close to the fine one
        err = np.linalg.norm(u @ h.vertices[k + 1] - h.vertices[k], axis=1)
        assert err.mean() < 0.01 and err.max() < 0.05
        _check_closed_genus0(h.vertices[k + 1], h.faces[k + 1])
    for k, a in enumerate(h.A):
        assert (a != a.T).nnz == 0 and a.diagonal().sum() == 0
        assert a.nnz == 2 * (3 * h.sizes[k] - 6)  # edges of a closed genus-0 triangle mesh
    np.testing.assert_array_equal(h.vertices[0], body[0])


def test_cluster_method_averages(sphere):
    h = compute_downsampling(*sphere, sizes=(600, 150), method="cluster")
    assert h.sizes == (2562, 600, 150)
    for k, d in enumerate(h.D):
        np.testing.assert_allclose(np.asarray(d.sum(1)).ravel(), 1.0)
        assert d.getnnz(axis=0).max() == 1  # every fine vertex in exactly one cluster
        assert d.getnnz(axis=0).min() == 1
    with pytest.raises(InputError, match="method"):
        compute_downsampling(*sphere, sizes=(600,), method="nearest")
    with pytest.raises(InputError, match="sizes"):
        compute_downsampling(*sphere, sizes=(3000,))


def test_save_load_round_trip_without_pickles(body_hierarchy, tmp_path):
    path = tmp_path / "mesh_downsampling_procedural.npz"
    save_mesh_downsampling(path, body_hierarchy)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    back = load_mesh_downsampling(path)
    assert back.sizes == body_hierarchy.sizes
    for name in ("A", "D", "U"):
        for a, b in zip(getattr(back, name), getattr(body_hierarchy, name)):
            assert (a != b).nnz == 0
    for a, b in zip(back.faces, body_hierarchy.faces):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _object_array(items):
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def test_reads_graphcmr_format(body_hierarchy, tmp_path):
    """GraphCMR/PMCE's file: keys A, D, U holding object arrays of pickled scipy matrices."""
    h = body_hierarchy
    path = tmp_path / "mesh_downsampling.npz"
    np.savez(path, A=_object_array([sp.csc_matrix(a) for a in h.A]),
             D=_object_array([sp.csc_matrix(d) for d in h.D]),
             U=_object_array([sp.csc_matrix(u) for u in h.U]))
    back = load_mesh_downsampling(path)
    assert back.sizes == (6890, 1723, 431)
    assert back.vertices == [None, None, None]
    for k in range(2):
        assert isinstance(back.D[k], sp.csr_matrix)
        np.testing.assert_allclose(back.D[k].toarray(), h.D[k].toarray())
        np.testing.assert_allclose(back.U[k].toarray(), h.U[k].toarray())


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_graphcmr_format_with_foreign_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mesh_downsampling.npz"
    ok = [sp.csc_matrix(np.eye(4)), sp.csc_matrix(np.eye(2))]
    np.savez(path, A=_object_array(ok + [_Evil(marker)]), D=_object_array([sp.csc_matrix((2, 4))]),
             U=_object_array([sp.csc_matrix((4, 2))]))
    with pytest.raises(InputError, match=r"mesh_downsampling.npz\[A\].*posix.system"):
        load_mesh_downsampling(path)
    assert not marker.exists()


def test_bad_and_missing_files(tmp_path):
    with pytest.raises(MissingFileError, match="mesh_downsampling"):
        load_mesh_downsampling(tmp_path / "mesh_downsampling.npz")
    path = tmp_path / "wrong.npz"
    a = [sp.csc_matrix(np.eye(n)) for n in (6, 3)]
    np.savez(path, A=_object_array(a), D=_object_array([sp.csc_matrix((2, 6))]),
             U=_object_array([sp.csc_matrix((6, 3))]))
    with pytest.raises(InputError, match=r"wrong.npz: field 'D\[0\]'.*\(3, 6\)"):
        load_mesh_downsampling(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"junk.npz: not an .npz archive"):
        load_mesh_downsampling(tmp_path / "junk.npz")


def test_hierarchy_validate_names_mismatch():
    adj = [mesh_adjacency(np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]]), 4), sp.csr_matrix((2, 2))]
    h = MeshHierarchy(A=adj, D=[sp.csr_matrix((2, 4))], U=[sp.csr_matrix((2, 4))])
    with pytest.raises(InputError, match=r"U\[0\]"):
        h.validate()
