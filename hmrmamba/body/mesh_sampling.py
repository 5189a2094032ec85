"""Mesh decimation to exact vertex counts and the sampling matrices between mesh levels.

The motion-guided reconstructor works on a coarse-to-fine hierarchy of the SMPL topology,
6890 -> 1723 -> 431 vertices (GraphCMR/PMCE). :func:`compute_downsampling` builds it from any
closed genus-0 triangle mesh:

* each coarser mesh is a quadric decimation (``fast_simplification``) of the finer one, brought to
  the *exact* vertex count by splitting the longest edges (a closed genus-0 mesh with ``n``
  vertices then has ``2n - 4`` faces);
* ``D[k]`` (``n_{k+1} x n_k``) maps fine to coarse: ``method="sample"`` selects one distinct
  fine vertex per coarse vertex (one-hot rows, as in GraphCMR) and moves the coarse vertex onto
  it; ``method="cluster"`` averages the fine vertices nearest to each coarse vertex;
* ``U[k]`` (``n_k x n_{k+1}``) maps coarse to fine: each fine vertex is the barycentric
  combination of the closest point on the coarse surface;
* ``A[k]`` is the 0/1 vertex adjacency of level ``k``.

All matrices are ``scipy.sparse.csr_matrix`` with rows summing to 1 (``D``, ``U``).
:func:`save_mesh_downsampling` stores CSR components in a plain ``.npz`` (no pickles);
:func:`load_mesh_downsampling` reads that and also the real ``mesh_downsampling.npz`` of
GraphCMR/PMCE, whose object arrays of pickled scipy matrices go through the restricted unpickler.
"""

from __future__ import annotations

import heapq
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError, MissingFileError

__all__ = [
    "MeshHierarchy",
    "closest_points_on_mesh",
    "compute_downsampling",
    "decimate_exact",
    "euler_characteristic",
    "improve_triangles",
    "load_mesh_downsampling",
    "mesh_adjacency",
    "save_mesh_downsampling",
    "save_mesh_hierarchy",
    "split_longest_edges",
    "unique_edges",
]


# ----------------------------------------------------------------------------------------------
# topology helpers


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """Undirected edges of a triangle mesh. faces: (F, 3) int -> (E, 2) int with e[:, 0] < e[:, 1]."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e.sort(axis=1)
    n = int(e.max()) + 1 if len(e) else 1
    k = np.unique(e[:, 0] * n + e[:, 1])
    return np.stack([k // n, k % n], axis=1)


def euler_characteristic(num_vertices: int, faces: np.ndarray) -> int:
    """V - E + F of a triangle mesh (2 for a closed genus-0 surface)."""
    return int(num_vertices) - len(unique_edges(faces)) + len(faces)


def mesh_adjacency(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Symmetric 0/1 vertex adjacency. faces: (F, 3) -> (V, V) csr float32, zero diagonal."""
    e = unique_edges(faces)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(num_vertices, num_vertices))


def _is_closed_oriented_manifold(faces: np.ndarray) -> bool:
    """Every directed edge occurs once and its reverse once (closed, consistently oriented)."""
    f = np.asarray(faces, dtype=np.int64)
    d = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(d.max()) + 1
    key = d[:, 0] * n + d[:, 1]
    rkey = d[:, 1] * n + d[:, 0]
    if len(np.unique(key)) != len(key):
        return False
    return bool(np.isin(rkey, key).all())


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for i in range(3):
        np.add.at(vn, f[:, i], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _compact(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(f)
    remap = np.full(len(v), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return v[used], remap[f]


# ----------------------------------------------------------------------------------------------
# exact-count decimation


def split_longest_edges(vertices: np.ndarray, faces: np.ndarray, num_vertices: int,
                        *, project: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Split the longest edges at their midpoints until there are ``num_vertices`` vertices.

    vertices: (V, 3), faces: (F, 3) of a closed oriented manifold -> (num_vertices, 3), (F', 3).
    Each split adds one vertex and two faces and keeps the orientation and the genus.
    ``project`` may move new midpoints onto a reference surface.
    """
    v = [tuple(p) for p in np.asarray(vertices, dtype=np.float64)]
    f = [list(t) for t in np.asarray(faces, dtype=np.int64)]
    if num_vertices < len(v):
        raise ValueError(f"cannot split down from {len(v)} to {num_vertices} vertices")
    he: dict[tuple[int, int], int] = {}
    for fi, (a, b, c) in enumerate(f):
        he[(a, b)] = fi
        he[(b, c)] = fi
        he[(c, a)] = fi

    def length(a: int, b: int) -> float:
        pa, pb = v[a], v[b]
        return float(np.sqrt((pa[0] - pb[0]) ** 2 + (pa[1] - pb[1]) ** 2 + (pa[2] - pb[2]) ** 2))

    heap = [(-length(a, b), a, b) for (a, b) in he if a < b]
    heapq.heapify(heap)
    while len(v) < num_vertices:
        _, a, b = heapq.heappop(heap)
        if (a, b) not in he or (b, a) not in he:
            continue  # stale entry
        f1, f2 = he[(a, b)], he[(b, a)]
        c = next(x for x in f[f1] if x != a and x != b)
        d = next(x for x in f[f2] if x != a and x != b)
        m = len(v)
        v.append(tuple((np.asarray(v[a]) + np.asarray(v[b])) / 2.0))
        # f1 = (a, b, c) -> (a, m, c) + (m, b, c);  f2 = (b, a, d) -> (b, m, d) + (m, a, d)
        n1, n2 = len(f), len(f) + 1
        f[f1] = [a, m, c]
        f[f2] = [b, m, d]
        f.append([m, b, c])
        f.append([m, a, d])
        for key in ((a, b), (b, a), (b, c), (a, d)):
            he.pop(key, None)
        he[(a, m)], he[(m, c)], he[(c, a)] = f1, f1, f1
        he[(b, m)], he[(m, d)], he[(d, b)] = f2, f2, f2
        he[(m, b)], he[(b, c)], he[(c, m)] = n1, n1, n1
        he[(m, a)], he[(a, d)], he[(d, m)] = n2, n2, n2
        for x in (a, b, c, d):
            heapq.heappush(heap, (-length(min(x, m), max(x, m)), min(x, m), max(x, m)))
    vv = np.asarray(v, dtype=np.float64)
    if project is not None and len(vv) > len(vertices):
        vv[len(vertices):] = project(vv[len(vertices):])
    return vv, np.asarray(f, dtype=np.int64)


def _flip_pass(v: np.ndarray, f: np.ndarray, *, min_cos_dihedral: float) -> int:
    """One pass of Delaunay edge flips on disjoint face pairs (in place). Returns the flip count.

    An edge (a, b) with faces (a, b, c) and (b, a, d) is flipped to (c, d) when the angles
    opposite to it sum to more than pi, the two faces are nearly coplanar, the new faces keep the
    orientation, (c, d) is not already an edge, and a and b keep valence >= 4.
    """
    n = len(v)
    F = len(f)
    a = f.ravel()
    b = np.roll(f, -1, axis=1).ravel()
    opp = np.roll(f, -2, axis=1).ravel()
    face = np.repeat(np.arange(F), 3)
    key = a * n + b
    order = np.argsort(key)
    skey = key[order]
    twin_pos = np.searchsorted(skey, b * n + a)
    twin_pos = np.minimum(twin_pos, len(skey) - 1)
    has_twin = skey[twin_pos] == b * n + a
    half = np.flatnonzero(has_twin & (a < b))
    t = order[twin_pos[half]]
    A, B, C, Dv = a[half], b[half], opp[half], opp[t]
    f1, f2 = face[half], face[t]
    pa, pb, pc, pd = v[A], v[B], v[C], v[Dv]

    def angle(p, q, r):
        x, y = q - p, r - p
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-18)
        return np.arccos(np.clip(cos, -1.0, 1.0))

    n1 = np.cross(pb - pa, pc - pa)
    n2 = np.cross(pa - pb, pd - pb)
    u1 = n1 / (np.linalg.norm(n1, axis=1, keepdims=True) + 1e-18)
    u2 = n2 / (np.linalg.norm(n2, axis=1, keepdims=True) + 1e-18)
    m1 = np.cross(pd - pa, pc - pa)  # new face (a, d, c)
    m2 = np.cross(pb - pd, pc - pd)  # new face (d, b, c)
    nn = u1 + u2
    ok = (angle(pc, pa, pb) + angle(pd, pb, pa) > np.pi + 1e-6) & ((u1 * u2).sum(1) >= min_cos_dihedral)
    ok &= ((m1 * nn).sum(1) > 0) & ((m2 * nn).sum(1) > 0) & (C != Dv)
    cand = np.flatnonzero(ok)
    if len(cand) == 0:
        return 0
    edge_keys = set((np.minimum(a, b) * n + np.maximum(a, b)).tolist())
    valence = np.bincount(f.ravel(), minlength=n)
    touched = np.zeros(F, dtype=bool)
    flips = 0
    for i in cand.tolist():
        x, y, c, d, g1, g2 = int(A[i]), int(B[i]), int(C[i]), int(Dv[i]), int(f1[i]), int(f2[i])
        ck = min(c, d) * n + max(c, d)
        if touched[g1] or touched[g2] or ck in edge_keys or valence[x] <= 4 or valence[y] <= 4:
            continue
        f[g1] = (x, d, c)
        f[g2] = (d, y, c)
        touched[[g1, g2]] = True
        edge_keys.discard(min(x, y) * n + max(x, y))
        edge_keys.add(ck)
        valence[[x, y]] -= 1
        valence[[c, d]] += 1
        flips += 1
    return flips


def improve_triangles(vertices: np.ndarray, faces: np.ndarray, *, iterations: int = 4,
                      step: float = 0.5, min_cos_dihedral: float = 0.8,
                      project: Callable[[np.ndarray], np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Delaunay edge flips + tangential Laplacian relaxation (+ projection), counts unchanged.

    vertices: (V, 3), faces: (F, 3) -> same shapes. Flips only across nearly flat edges
    (dihedral cosine >= ``min_cos_dihedral``) and never below valence 4.
    """
    v = np.asarray(vertices, dtype=np.float64).copy()
    f = np.asarray(faces, dtype=np.int64).copy()
    for _ in range(iterations):
        _flip_pass(v, f, min_cos_dihedral=min_cos_dihedral)
        adj = mesh_adjacency(f, len(v))
        deg = np.asarray(adj.sum(axis=1)).ravel()
        centroid = (adj @ v) / deg[:, None]
        n = _vertex_normals(v, f)
        delta = centroid - v
        delta -= (delta * n).sum(axis=1, keepdims=True) * n
        v = v + step * delta
        if project is not None:
            v = project(v)
    return v, f


def decimate_exact(vertices: np.ndarray, faces: np.ndarray, num_vertices: int, *,
                   project: Callable[[np.ndarray], np.ndarray] | None = None,
                   improve_iterations: int = 4, undershoot: float = 0.02
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation of a closed genus-0 mesh to exactly ``num_vertices`` vertices.

    vertices: (V, 3), faces: (F, 3) -> (num_vertices, 3), (2 * num_vertices - 4, 3).
    Decimates a little below the target, splits the longest edges up to it, then improves the
    triangles. Raises ``ValueError`` if the result is not a closed oriented genus-0 manifold.
    """
    import fast_simplification

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if num_vertices < 8:
        raise ValueError(f"num_vertices must be >= 8, got {num_vertices}")
    if len(v) > num_vertices:
        lower = max(8, round(num_vertices * (1.0 - undershoot)))
        for agg in (3.0, 5.0, 7.0):
            dv, df = fast_simplification.simplify(v, f.astype(np.int32), target_count=2 * lower - 4,
                                                  agg=agg)
            dv, df = _compact(np.asarray(dv, np.float64), np.asarray(df, np.int64))
            if len(dv) <= num_vertices and _is_closed_oriented_manifold(df) \
                    and euler_characteristic(len(dv), df) == 2:
                break
        else:
            raise ValueError(f"quadric decimation to {num_vertices} vertices broke the topology")
        v, f = dv, df
    v, f = split_longest_edges(v, f, num_vertices, project=project)
    if improve_iterations:
        v, f = improve_triangles(v, f, iterations=improve_iterations, project=project)
    if len(f) != 2 * num_vertices - 4 or not _is_closed_oriented_manifold(f) \
            or euler_characteristic(num_vertices, f) != 2:
        raise ValueError("decimated mesh is not a closed oriented genus-0 manifold")
    return v, f


# ----------------------------------------------------------------------------------------------
# closest points on a triangle mesh


def closest_points_on_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, *,
                           candidates: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point per query. points: (P, 3) -> face ids (P,), barycentrics (P, 3), points (P, 3).

    Searches the ``candidates`` triangles with the nearest centroids (exact for fine queries near
    the surface, which is the use here).
    """
    p = np.asarray(points, dtype=np.float64)
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    k = min(candidates, len(tri))
    _, cand = cKDTree(tri.mean(axis=1)).query(p, k=k)
    cand = cand.reshape(len(p), k)
    t = tri[cand]  # (P, K, 3, 3)
    a, b, c = t[:, :, 0], t[:, :, 1], t[:, :, 2]
    q = p[:, None, :]
    # projection onto the plane, barycentrics by Cramer's rule
    e0, e1, w = b - a, c - a, q - a
    d00, d01, d11 = (e0 * e0).sum(-1), (e0 * e1).sum(-1), (e1 * e1).sum(-1)
    d20, d21 = (w * e0).sum(-1), (w * e1).sum(-1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    bv = (d11 * d20 - d01 * d21) / den
    bw = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1.0 - bv - bw, bv, bw], axis=-1)
    inside = (bary >= 0).all(axis=-1)
    best_bary = np.where(inside[..., None], bary, 0.0)
    best_pt = a + bv[..., None] * e0 + bw[..., None] * e1
    best_d = np.where(inside, np.linalg.norm(q - best_pt, axis=-1), np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):  # the closest point on each edge
        pi, pj = t[:, :, i], t[:, :, j]
        e = pj - pi
        s = np.clip(((q - pi) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-30), 0.0, 1.0)
        pt = pi + s[..., None] * e
        d = np.linalg.norm(q - pt, axis=-1)
        better = d < best_d
        bb = np.zeros_like(bary)
        bb[..., i] = 1.0 - s
        bb[..., j] = s
        best_d = np.where(better, d, best_d)
        best_pt = np.where(better[..., None], pt, best_pt)
        best_bary = np.where(better[..., None], bb, best_bary)
    arg = best_d.argmin(axis=1)
    rows = np.arange(len(p))
    return cand[rows, arg], best_bary[rows, arg], best_pt[rows, arg]


# ----------------------------------------------------------------------------------------------
# the hierarchy


@dataclass
class MeshHierarchy:
    """Mesh levels, fine to coarse, with sampling matrices between consecutive levels.

    ``D[k]``: (n_{k+1}, n_k) fine -> coarse; ``U[k]``: (n_k, n_{k+1}) coarse -> fine;
    ``A[k]``: (n_k, n_k) adjacency. ``vertices``/``faces`` are ``None`` for levels read from a
    file that does not store them (the real GraphCMR/PMCE file).
    """

    A: list[sp.csr_matrix]
    D: list[sp.csr_matrix]
    U: list[sp.csr_matrix]
    vertices: list[np.ndarray | None] = field(default_factory=list)
    faces: list[np.ndarray | None] = field(default_factory=list)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(a.shape[0]) for a in self.A)

    def validate(self, file: str | Path | None = None) -> None:
        """Raise ``InputError`` unless the matrix shapes chain up level by level."""
        n = self.sizes
        if len(self.D) != len(n) - 1 or len(self.U) != len(n) - 1:
            raise InputError(f"{len(n)} levels need {len(n) - 1} D and U matrices, got "
                             f"{len(self.D)} and {len(self.U)}", file=file, field="D/U")
        for k, a in enumerate(self.A):
            if a.shape != (n[k], n[k]):
                raise InputError(f"shape {a.shape}", file=file, field=f"A[{k}]",
                                 expected=f"({n[k]}, {n[k]})")
        for k in range(len(n) - 1):
            if self.D[k].shape != (n[k + 1], n[k]):
                raise InputError(f"shape {self.D[k].shape}", file=file, field=f"D[{k}]",
                                 expected=f"({n[k + 1]}, {n[k]})")
            if self.U[k].shape != (n[k], n[k + 1]):
                raise InputError(f"shape {self.U[k].shape}", file=file, field=f"U[{k}]",
                                 expected=f"({n[k]}, {n[k + 1]})")


def _sample_matrix(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Distinct nearest fine vertex per coarse vertex (greedy by distance). -> (n_coarse,) indices."""
    k = min(32, len(fine))
    dist, idx = cKDTree(fine).query(coarse, k=k)
    order = np.argsort(dist, axis=None, kind="stable")
    chosen = np.full(len(coarse), -1, dtype=np.int64)
    taken = np.zeros(len(fine), dtype=bool)
    for flat in order:
        ci, j = divmod(int(flat), k)
        fi = idx[ci, j]
        if chosen[ci] < 0 and not taken[fi]:
            chosen[ci] = fi
            taken[fi] = True
    for ci in np.flatnonzero(chosen < 0):  # rare: all k candidates taken
        free = np.flatnonzero(~taken)
        fi = free[np.argmin(np.linalg.norm(fine[free] - coarse[ci], axis=1))]
        chosen[ci] = fi
        taken[fi] = True
    return chosen


def compute_downsampling(vertices: np.ndarray, faces: np.ndarray, sizes: tuple[int, ...] = (1723, 431),
                         *, method: str = "sample") -> MeshHierarchy:
    """Build the mesh hierarchy. vertices: (V, 3) metres, faces: (F, 3) closed genus-0 -> MeshHierarchy.

    ``sizes`` are the coarse vertex counts after level 0 (the input). ``method``: ``"sample"``
    (one-hot D, coarse vertices placed on fine vertices) or ``"cluster"`` (D averages clusters).
    """
    if method not in ("sample", "cluster"):
        raise InputError(f"unknown method '{method}'", field="method", expected="'sample' or 'cluster'")
    v0 = np.asarray(vertices, dtype=np.float64)
    f0 = np.asarray(faces, dtype=np.int64)
    levels_v, levels_f = [v0], [f0]
    D, U = [], []
    for n in sizes:
        fine_v, fine_f = levels_v[-1], levels_f[-1]
        if not 8 <= n < len(fine_v):
            raise InputError(f"level size {n} must be >= 8 and below the finer level's {len(fine_v)}",
                             field="sizes")
        cv, cf = decimate_exact(fine_v, fine_f, n, improve_iterations=2)
        nf = len(fine_v)
        if method == "sample":
            pick = _sample_matrix(fine_v, cv)
            cv = fine_v[pick]
            d = sp.csr_matrix((np.ones(n), (np.arange(n), pick)), shape=(n, nf))
        else:
            _, owner = cKDTree(cv).query(fine_v)
            counts = np.bincount(owner, minlength=n).astype(np.float64)
            empty = np.flatnonzero(counts == 0)
            rows, cols = list(owner), list(range(nf))
            if len(empty):  # a coarse vertex with no cluster takes its nearest fine vertex
                _, near = cKDTree(fine_v).query(cv[empty])
                rows += list(empty)
                cols += list(near)
                counts[empty] = 1.0
            rows, cols = np.asarray(rows), np.asarray(cols)
            d = sp.csr_matrix((1.0 / counts[rows], (rows, cols)), shape=(n, nf))
            cv = d @ fine_v
        fid, bary, _ = closest_points_on_mesh(fine_v, cv, cf)
        bary = np.clip(bary, 0.0, None)
        bary /= bary.sum(axis=1, keepdims=True)
        u = sp.csr_matrix((bary.ravel(), (np.repeat(np.arange(nf), 3), cf[fid].ravel())), shape=(nf, n))
        u.sum_duplicates()
        D.append(d.tocsr())
        U.append(u.tocsr())
        levels_v.append(cv)
        levels_f.append(cf)
    A = [mesh_adjacency(f, len(v)) for v, f in zip(levels_v, levels_f)]
    return MeshHierarchy(A=A, D=D, U=U, vertices=levels_v, faces=levels_f)


# ----------------------------------------------------------------------------------------------
# files


def _csr_fields(prefix: str, m: sp.spmatrix) -> dict[str, np.ndarray]:
    m = sp.csr_matrix(m)
    return {f"{prefix}_data": m.data.astype(np.float64), f"{prefix}_indices": m.indices.astype(np.int64),
            f"{prefix}_indptr": m.indptr.astype(np.int64), f"{prefix}_shape": np.asarray(m.shape, np.int64)}


def save_mesh_downsampling(path: str | Path, hierarchy: MeshHierarchy) -> None:
    """Atomically write the hierarchy to a pickle-free ``.npz`` (CSR components per matrix)."""
    hierarchy.validate()
    arrays: dict[str, np.ndarray] = {"sizes": np.asarray(hierarchy.sizes, dtype=np.int64)}
    for name, mats in (("A", hierarchy.A), ("D", hierarchy.D), ("U", hierarchy.U)):
        for k, m in enumerate(mats):
            arrays.update(_csr_fields(f"{name}{k}", m))
    for k, (v, f) in enumerate(zip(hierarchy.vertices, hierarchy.faces)):
        if v is not None and f is not None:
            arrays[f"vertices{k}"] = np.asarray(v, dtype=np.float64)
            arrays[f"faces{k}"] = np.asarray(f, dtype=np.int64)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _read_csr(z: np.lib.npyio.NpzFile, prefix: str, file: Path) -> sp.csr_matrix:
    try:
        shape = tuple(int(s) for s in z[f"{prefix}_shape"])
        return sp.csr_matrix((z[f"{prefix}_data"], z[f"{prefix}_indices"], z[f"{prefix}_indptr"]),
                             shape=shape)
    except KeyError:
        raise InputError("missing CSR components", file=file, field=prefix,
                         expected=f"{prefix}_data/_indices/_indptr/_shape") from None
    except ValueError as exc:
        raise InputError(f"inconsistent CSR components ({exc})", file=file, field=prefix) from None


def _read_object_npy(raw: bytes, file: Path, key: str):
    """Read one ``.npy`` member holding an object array through the restricted unpickler."""
    from hmrmamba.safe_pickle import safe_load

    fh = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            _, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except ValueError as exc:
        raise InputError(f"not a .npy member ({exc})", file=file, field=key) from None
    if not dtype.hasobject:
        fh.seek(0)
        return np.lib.format.read_array(fh, allow_pickle=False)
    return safe_load(fh, name=f"{file}[{key}]")


def _as_matrix_list(obj, file: Path, key: str) -> list[sp.csr_matrix]:
    items = list(obj.ravel()) if isinstance(obj, np.ndarray) and obj.dtype.hasobject else list(obj)
    out = []
    for i, m in enumerate(items):
        if not sp.issparse(m):
            if isinstance(m, np.ndarray) and m.ndim == 2:
                m = sp.csr_matrix(m)
            else:
                raise InputError(f"entry {i} is {type(m).__name__}", file=file, field=key,
                                 expected="scipy sparse matrices")
        out.append(sp.csr_matrix(m, dtype=np.float64))
    return out


save_mesh_hierarchy = save_mesh_downsampling


def load_mesh_downsampling(path: str | Path) -> MeshHierarchy:
    """Read a hierarchy saved by :func:`save_mesh_downsampling` or a real ``mesh_downsampling.npz``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            "mesh downsampling file not found; create it with the `body_model` stage "
            "(hmrmamba.body.mesh_sampling.compute_downsampling) or copy GraphCMR/PMCE's "
            "mesh_downsampling.npz there", file=path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError("not an .npz archive", file=path, expected="a zip of .npy members") from None
    with zf:
        names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        if {"A", "D", "U"} <= names:  # the GraphCMR/PMCE layout: object arrays of scipy matrices
            mats = {key: _as_matrix_list(_read_object_npy(zf.read(key + ".npy"), path, key), path, key)
                    for key in ("A", "D", "U")}
            h = MeshHierarchy(A=mats["A"], D=mats["D"], U=mats["U"],
                              vertices=[None] * len(mats["A"]), faces=[None] * len(mats["A"]))
            h.validate(path)
            return h
    if "sizes" not in names:
        raise InputError("unrecognised layout", file=path, field="sizes",
                         expected="keys sizes/A0_*/D0_*/U0_* or the GraphCMR keys A, D, U")
    with np.load(path, allow_pickle=False) as z:
        sizes = [int(s) for s in z["sizes"]]
        L = len(sizes)
        A = [_read_csr(z, f"A{k}", path) for k in range(L)]
        D = [_read_csr(z, f"D{k}", path) for k in range(L - 1)]
        U = [_read_csr(z, f"U{k}", path) for k in range(L - 1)]
        verts = [z[f"vertices{k}"] if f"vertices{k}" in z.files else None for k in range(L)]
        faces = [z[f"faces{k}"] if f"faces{k}" in z.files else None for k in range(L)]
    h = MeshHierarchy(A=A, D=D, U=U, vertices=verts, faces=faces)
    h.validate(path)
    if h.sizes != tuple(sizes):
        raise InputError(f"adjacency sizes {h.sizes}", file=path, field="sizes", expected=str(tuple(sizes)))
    return h
