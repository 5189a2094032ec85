"""The procedural SMPL-format body model: topology, skeleton, regressors, skinning, shape, smplx."""

from __future__ import annotations

import numpy as np
import pytest
import smplx
import torch
import trimesh
from scipy.spatial import cKDTree

from hmrmamba.body.body_model import REQUIRED_FIELDS, h36m_regressor, load_body_arrays, load_smpl, save_body_model
from hmrmamba.body.procedural import body_sdf, build_procedural_smpl, rest_joints
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.body.mesh_sampling import euler_characteristic, unique_edges
from hmrmamba.skeleton import H36M17, SMPL24

J = {name: i for i, name in enumerate(SMPL24.names)}


@pytest.fixture(scope="session")
def model() -> dict[str, np.ndarray]:
    return build_procedural_smpl(seed=0)


@pytest.fixture(scope="session")
def model_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("body") / "procedural_smpl.npz"
    save_body_model(path, model)
    return path


@pytest.fixture(scope="session")
def smpl(model_path):
    return load_smpl(model_path, num_betas=10)


def winding_numbers(points: np.ndarray, v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Generalised winding number of each point w.r.t. a closed mesh (1 inside, 0 outside)."""
    out = []
    for p in points:
        a, b, c = v[f[:, 0]] - p, v[f[:, 1]] - p, v[f[:, 2]] - p
        la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
        num = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = la * lb * lc + (a * b).sum(1) * lc + (b * c).sum(1) * la + (c * a).sum(1) * lb
        out.append(2 * np.arctan2(num, den).sum() / (4 * np.pi))
    return np.asarray(out)


def descendants(j: int) -> set[int]:
    out = {j}
    for c, p in enumerate(SMPL24.parents):  # parents precede children
        if p in out:
            out.add(c)
    return out


# ---------------------------------------------------------------------------------------------
# arrays and topology


def test_fields_shapes_and_dtypes(model):
    expect = {"v_template": (6890, 3), "f": (13776, 3), "shapedirs": (6890, 3, 10),
              "posedirs": (6890, 3, 207), "J_regressor": (24, 6890), "weights": (6890, 24),
              "kintree_table": (2, 24), "J_regressor_h36m": (17, 6890), "vertex_ids": (21,)}
    for name, shape in expect.items():
        assert model[name].shape == shape, name
    assert model["v_template"].dtype == np.float64
    assert np.issubdtype(model["f"].dtype, np.integer)
    kt = model["kintree_table"]
    assert kt[0, 0] == 4294967295
    assert list(kt[0, 1:]) == list(SMPL24.parents[1:])
    assert list(kt[1]) == list(range(24))
    assert not model["posedirs"].any()  # documented: no pose correctives


def test_template_is_closed_oriented_genus0(model):
    v, f = model["v_template"], model["f"]
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert euler_characteristic(len(v), f) == 2 and len(f) == 2 * len(v) - 4
    assert len(np.unique(f)) == 6890  # no unused vertices
    assert 0.045 < mesh.volume < 0.09  # m^3, an adult body (outward normals give a positive volume)
    tri = v[f]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) / 2
    assert area.min() > 1e-8  # no degenerate triangles
    # the vertices lie on the implicit surface they were meshed from (within 2 mm)
    assert np.abs(body_sdf(v)).max() < 2e-3


def test_template_is_human_shaped(model):
    v = model["v_template"]
    height = np.ptp(v[:, 1])
    span = np.ptp(v[:, 0])
    assert 1.65 < height < 1.8 and 1.6 < span < 1.85  # T-pose: arm span ~ height
    assert 0.2 < np.ptp(v[:, 2]) < 0.4
    mirrored_gap, _ = cKDTree(v).query(v * (-1, 1, 1))
    assert mirrored_gap.max() < 0.03  # left/right symmetric up to the triangulation
    joints = rest_joints()
    # joints are inside the body; y up, feet at the bottom, head on top
    assert (winding_numbers(joints, v, model["f"]) > 0.5).all()
    assert joints[J["head"], 1] > joints[J["neck"], 1] > joints[J["spine3"], 1] > joints[J["pelvis"], 1]
    assert joints[J["left_ankle"], 1] < joints[J["left_knee"], 1] < joints[J["left_hip"], 1]
    assert joints[J["left_wrist"], 0] > joints[J["left_elbow"], 0] > joints[J["left_shoulder"], 0] > 0
    # facing +z: the nose and the toes point forward
    nose = v[model["vertex_ids"][0]]
    assert nose[2] > v[np.abs(v[:, 1] - nose[1]) < 0.05, 2].max() - 1e-9
    assert joints[J["left_foot"], 2] > joints[J["left_ankle"], 2]


def test_deterministic_for_a_seed(model):
    again = build_procedural_smpl(seed=0)
    other = build_procedural_smpl(seed=1)
    for name in model:
        np.testing.assert_array_equal(again[name], model[name])
    # the seed only drives the two random shape directions
    np.testing.assert_array_equal(other["v_template"], model["v_template"])
    np.testing.assert_array_equal(other["shapedirs"][..., :8], model["shapedirs"][..., :8])
    assert not np.allclose(other["shapedirs"][..., 8:], model["shapedirs"][..., 8:])


# ---------------------------------------------------------------------------------------------
# regressors and weights


def test_joint_regressor_reproduces_rest_joints(model):
    reg = model["J_regressor"]
    assert reg.min() >= 0 and np.allclose(reg.sum(1), 1.0)
    np.testing.assert_allclose(reg @ model["v_template"], rest_joints(), atol=1e-9)
    assert ((reg > 0).sum(1) >= 10).all()  # a ring of vertices, not a single point


def test_h36m_regressor_places_h36m_joints(model):
    reg = model["J_regressor_h36m"]
    assert reg.min() >= 0 and np.allclose(reg.sum(1), 1.0)
    h = reg @ model["v_template"]
    H = {name: i for i, name in enumerate(H36M17.names)}
    sj = rest_joints()
    for side in ("left", "right"):
        for part in ("knee", "ankle", "shoulder", "elbow", "wrist"):
            np.testing.assert_allclose(h[H[f"{side}_{part}"]], sj[J[f"{side}_{part}"]], atol=1e-9)
    # mirror symmetry and vertical order of the H36M skeleton
    for i, j in enumerate(H36M17.flip):
        np.testing.assert_allclose(h[i] * (-1, 1, 1), h[j], atol=1e-6)
    assert h[H["head"], 1] > h[H["neck"], 1] > h[H["thorax"], 1] > h[H["spine"], 1] > h[H["pelvis"], 1]
    assert h[H["neck"], 2] > sj[J["head"], 2]  # H36M's neck/nose joint sits at the face
    np.testing.assert_allclose(h[H["pelvis"]], (h[H["left_hip"]] + h[H["right_hip"]]) / 2, atol=1e-6)
    assert (winding_numbers(h, model["v_template"], model["f"]) > 0.5).all()


def test_skinning_weights_are_smooth_partitions(model):
    w = model["weights"]
    assert w.min() >= 0 and np.allclose(w.sum(1), 1.0)
    # every vertex is moved only by bones next to each other in the tree
    adjacent = np.eye(24, dtype=bool)
    for c, p in enumerate(SMPL24.parents):
        if p >= 0:
            adjacent[c, p] = adjacent[p, c] = True
    near = (adjacent.astype(int) @ adjacent.astype(int)) > 0  # tree distance <= 2
    for row in w[::7]:
        parts = np.flatnonzero(row > 0)
        assert near[np.ix_(parts, parts)].all()
    # smooth over the surface: neighbouring vertices have similar weights
    e = unique_edges(model["f"])
    jump = np.abs(w[e[:, 0]] - w[e[:, 1]]).sum(1)
    assert np.median(jump) < 0.15 and np.percentile(jump, 99) < 0.8
    # the dominant bone of a vertex is where the vertex is: hands follow wrists, feet follow ankles
    v = model["v_template"]
    dominant = w.argmax(1)
    assert set(dominant[v[:, 0] > 0.8]) <= {J["left_hand"]}
    feet = {J["left_ankle"], J["right_ankle"], J["left_foot"], J["right_foot"]}
    assert set(dominant[v[:, 1] < -1.1]) <= feet
    assert set(dominant[v[:, 1] > 0.45]) == {J["head"]}


def test_shape_directions_orthogonal_and_meaningful(model, smpl):
    s = model["shapedirs"].reshape(-1, 10)
    g = s.T @ s
    d = np.sqrt(np.diag(g))
    np.testing.assert_allclose(g / np.outer(d, d), np.eye(10), atol=1e-8)
    rms = d / np.sqrt(6890)
    assert rms[0] == pytest.approx(0.02) and (np.diff(rms) <= 1e-12).all()

    def shaped(k: int, value: float) -> np.ndarray:
        betas = torch.zeros(1, 10)
        betas[0, k] = value
        return smpl(betas=betas).vertices[0].detach().double().numpy()

    f = model["f"]
    vol = [trimesh.Trimesh(shaped(1, b), f, process=False).volume for b in (-2.0, 0.0, 2.0)]
    assert vol[0] < vol[1] < vol[2]  # beta1: weight
    reg = model["J_regressor"]
    wide = reg @ shaped(3, 2.0)
    narrow = reg @ shaped(3, -2.0)
    shoulders = lambda x: np.linalg.norm(x[J["left_shoulder"]] - x[J["right_shoulder"]])
    assert shoulders(wide) > shoulders(narrow) + 0.05  # beta3: shoulder width


def test_height_increases_monotonically_with_beta0(smpl):
    betas = torch.zeros(9, 10)
    betas[:, 0] = torch.linspace(-4, 4, 9)
    with torch.no_grad():
        v = smpl(betas=betas, body_pose=torch.zeros(9, 69), global_orient=torch.zeros(9, 3)).vertices
    height = (v[..., 1].amax(1) - v[..., 1].amin(1)).numpy()
    assert (np.diff(height) > 0.03).all()
    assert 1.65 < height[4] < 1.8


# ---------------------------------------------------------------------------------------------
# through smplx


def test_loads_through_smplx(model, smpl):
    assert isinstance(smpl, smplx.SMPL)
    assert smpl.get_num_verts() == 6890 and smpl.get_num_faces() == 13776
    with torch.no_grad():
        out = smpl()
    np.testing.assert_allclose(out.vertices[0].numpy(), model["v_template"], atol=1e-6)
    np.testing.assert_allclose(out.joints[0, :24].numpy(), rest_joints(), atol=1e-5)
    # smplx's extra landmark joints come from the model's own vertex ids (nose first)
    np.testing.assert_allclose(out.joints[0, 24].numpy(), model["v_template"][model["vertex_ids"][0]],
                               atol=1e-6)
    assert smpl.parents.tolist() == [-1] + list(SMPL24.parents[1:])


@pytest.mark.parametrize("joint", ["left_elbow", "right_knee", "spine2", "neck", "left_hip", "left_collar"])
def test_rotating_a_joint_moves_only_its_descendants(smpl, joint):
    j = J[joint]
    pose = torch.zeros(1, 69)
    pose[0, 3 * (j - 1):3 * j] = torch.tensor([0.5, -0.4, 0.7])
    with torch.no_grad():
        rest = smpl().joints[0, :24]
        posed = smpl(body_pose=pose).joints[0, :24]
    moved = (posed - rest).norm(dim=1) > 1e-4
    desc = descendants(j)
    assert not moved[[k for k in range(24) if k not in desc]].any()
    assert moved[[k for k in desc if k != j]].all()  # every descendant swings about the joint
    assert not moved[j]


def test_bone_lengths_constant_under_random_poses(smpl):
    gen = torch.Generator().manual_seed(0)
    b = 16
    betas = torch.randn(b, 10, generator=gen)
    with torch.no_grad():
        rest = smpl(betas=betas, body_pose=torch.zeros(b, 69), global_orient=torch.zeros(b, 3)).joints[:, :24]
        posed = smpl(betas=betas, body_pose=0.6 * torch.randn(b, 69, generator=gen),
                     global_orient=torch.randn(b, 3, generator=gen), transl=torch.randn(b, 3, generator=gen)
                     ).joints[:, :24]
    parents = list(SMPL24.parents[1:])
    bone = lambda x: (x[:, 1:] - x[:, parents]).norm(dim=-1)
    torch.testing.assert_close(bone(posed), bone(rest), atol=1e-5, rtol=1e-5)
    assert (bone(rest).std(0) > 0).any()  # shapes do change the bones


def test_posed_surface_stays_watertight(model, smpl):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = smpl(betas=torch.randn(4, 10, generator=gen), body_pose=0.4 * torch.randn(4, 69, generator=gen),
                   global_orient=torch.randn(4, 3, generator=gen))
    for verts in out.vertices.double().numpy():
        mesh = trimesh.Trimesh(verts, model["f"], process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.euler_number == 2
        assert 0.03 < mesh.volume < 0.15


@pytest.mark.parametrize(("joint", "axis_angle"), [
    ("right_hip", (-1.6, 0.0, 0.0)), ("left_hip", (0.0, 0.0, 0.9)), ("left_shoulder", (0.0, 0.0, -1.3)),
    ("right_knee", (2.0, 0.0, 0.0)), ("left_elbow", (0.0, -2.0, 0.0)), ("spine1", (0.6, 0.0, 0.0)),
    ("neck", (0.5, 0.0, 0.0)), ("left_ankle", (0.6, 0.0, 0.0))])
def test_large_joint_rotations_do_not_tear_the_skin(model, smpl, joint, axis_angle):
    """Skinning is local: bending a joint far stretches no edge more than ~3x (no webs)."""
    j = J[joint]
    pose = torch.zeros(1, 69)
    pose[0, 3 * (j - 1):3 * j] = torch.tensor(axis_angle)
    with torch.no_grad():
        v = smpl(body_pose=pose).vertices[0].double().numpy()
    e = unique_edges(model["f"])
    v0 = model["v_template"]
    length = lambda x: np.linalg.norm(x[e[:, 0]] - x[e[:, 1]], axis=1)
    ratio = length(v) / length(v0)
    assert ratio.max() < 3.2 and ratio.min() > 0.1


# ---------------------------------------------------------------------------------------------
# files


def test_save_load_round_trip_is_pickle_free(model, model_path):
    arrays = load_body_arrays(model_path)
    assert set(arrays) == set(model)
    for name in model:
        np.testing.assert_array_equal(arrays[name], model[name])
    with np.load(model_path, allow_pickle=False) as z:  # readable without pickles
        assert set(z.files) == set(model)
    assert [p.name for p in model_path.parent.iterdir()] == [model_path.name]  # no temp files left


def test_h36m_regressor_from_npz_and_npy(model, model_path, tmp_path):
    reg = h36m_regressor(model_path)
    assert reg.shape == (17, 6890) and reg.dtype == torch.float32
    np.save(tmp_path / "J_regressor_h36m.npy", model["J_regressor_h36m"])
    torch.testing.assert_close(h36m_regressor(tmp_path / "J_regressor_h36m.npy"), reg)
    np.save(tmp_path / "bad.npy", np.zeros((16, 6890)))
    with pytest.raises(InputError, match="J_regressor_h36m"):
        h36m_regressor(tmp_path / "bad.npy")


def test_bad_fields_are_named(model, tmp_path):
    bad = dict(model)
    bad["weights"] = model["weights"][:, :23]
    with pytest.raises(InputError, match=r"field 'weights'.*\(6890, 24\)"):
        save_body_model(tmp_path / "bad.npz", bad)
    assert not list(tmp_path.iterdir())  # nothing written
    float_faces = {**{k: model[k] for k in REQUIRED_FIELDS}, "f": model["f"].astype(float)}
    np.savez(tmp_path / "bad2.npz", **float_faces)
    with pytest.raises(InputError, match=r"bad2.npz: field 'f'.*int"):
        load_body_arrays(tmp_path / "bad2.npz")
    missing = {k: model[k] for k in REQUIRED_FIELDS if k != "J_regressor"}
    np.savez(tmp_path / "bad3.npz", **missing)
    with pytest.raises(InputError, match="J_regressor"):
        load_body_arrays(tmp_path / "bad3.npz")
    # an archive holding pickled objects is refused, not unpickled
    np.savez(tmp_path / "bad4.npz", **{k: model[k] for k in REQUIRED_FIELDS},
             J_regressor_h36m=np.array([object()], dtype=object))
    with pytest.raises(InputError, match="bad4.npz"):
        load_body_arrays(tmp_path / "bad4.npz")


def test_missing_model_says_where_to_get_smpl(tmp_path):
    with pytest.raises(MissingFileError, match=r"smpl\.is\.tue\.mpg\.de") as info:
        load_smpl(tmp_path / "nowhere" / "smpl.npz")
    assert "nowhere" in str(info.value) and "convert-smpl" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
