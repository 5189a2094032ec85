"""The restricted unpickler: allowed content round-trips, code never runs, SMPL pickles convert."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hmrmamba.body.body_model import convert_smpl_pickle, load_body_arrays, load_smpl
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.safe_pickle import ChumpyStub, safe_load, safe_loads
from hmrmamba.skeleton import SMPL24

# ---------------------------------------------------------------------------------------------
# refused content


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsSubprocess:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("make", [_RunsShell, _RunsSubprocess])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_code_in_reduce_is_refused_and_never_runs(tmp_path, make, protocol):
    marker = tmp_path / "pwned"
    payload = {"poses": np.zeros((2, 72)), "evil": [make(marker)]}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(InputError) as info:
        safe_load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert ("posix.system" in msg) or ("subprocess.call" in msg)
    assert not marker.exists()


def test_other_globals_are_refused_with_their_name():
    with pytest.raises(InputError, match=r"builtins\.eval"):
        safe_loads(pickle.dumps(_CallsEval()), name="x.pkl")
    with pytest.raises(InputError, match=r"x\.pkl.*collections\.Counter"):
        safe_loads(pickle.dumps(collections.Counter("ab")), name="x.pkl")
    # getattr would let a pickle reach any attribute of an allowed object
    crafted = b"cbuiltins\ngetattr\n(cbuiltins\ndict\nVitems\ntR."
    with pytest.raises(InputError, match=r"builtins\.getattr"):
        safe_loads(crafted)
    # _codecs.encode is allowed for text codecs only
    with pytest.raises(InputError, match="unreadable"):
        safe_loads(b"c_codecs\nencode\n(Vabc\nVzlib_codec\ntR.")


def test_broken_and_missing_files(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.arange(10)})[:-7])
    with pytest.raises(InputError, match="cut.pkl"):
        safe_load(path)
    with pytest.raises(MissingFileError, match="nope.pkl"):
        safe_load(tmp_path / "nope.pkl")


# ---------------------------------------------------------------------------------------------
# allowed content


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_scipy_and_containers_round_trip(protocol):
    dense = np.random.default_rng(0).normal(size=(5, 4))
    obj = collections.OrderedDict(
        f32=dense.astype(np.float32), i64=np.arange(7), u32=np.array([4294967295], dtype=np.uint32),
        strings=np.array(["ab", "c"]), scalar=np.float64(2.5), count=np.int32(3),
        csc=sp.csc_matrix(dense * (dense > 0)), csr=sp.csr_matrix(dense * (dense > 1)),
        coo=sp.coo_matrix(np.eye(3)), nested=[(1, 2.0, "x", b"raw", None, True), {"k": {1, 2}}],
        text="gender", cplx=1 + 2j,
    )
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert isinstance(back, collections.OrderedDict) and list(back) == list(obj)
    for key in ("f32", "i64", "u32", "strings"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].dtype == obj[key].dtype
    assert back["scalar"] == 2.5 and back["count"] == 3 and back["cplx"] == 1 + 2j
    for key in ("csc", "csr", "coo"):
        assert sp.issparse(back[key]) and back[key].format == key
        np.testing.assert_array_equal(back[key].toarray(), obj[key].toarray())
    assert back["nested"] == obj["nested"] and back["text"] == "gender"


# ---------------------------------------------------------------------------------------------
# a fabricated SMPL pickle with chumpy objects


class Ch:
    """Stand-in for chumpy.ch.Ch (published as module 'chumpy.ch' only while writing)."""

    def __init__(self, x):
        self.x = np.asarray(x)
        self._dirty_vars = set()
        self.label = "leaf"


class Select(Ch):
    """A derived chumpy node with no array of its own."""

    def __init__(self, a):
        self.a = a
        self.idxs = np.arange(3)


def _publish_fake_chumpy(monkeypatch):
    mod = types.ModuleType("chumpy.ch")
    pkg = types.ModuleType("chumpy")
    Ch.__module__ = Select.__module__ = "chumpy.ch"
    mod.Ch, mod.Select = Ch, Select
    monkeypatch.setitem(sys.modules, "chumpy", pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)


def _fake_smpl_dict(rng) -> dict:
    n = 6890
    v = rng.normal(scale=0.3, size=(n, 3))
    reg = sp.random(24, n, density=0.002, random_state=1, format="csc")
    reg = sp.csc_matrix(reg.multiply(1.0 / reg.sum(axis=1)))
    weights = rng.dirichlet(np.ones(24) * 0.2, size=n)
    return {
        "v_template": Ch(v),
        "shapedirs": Ch(rng.normal(scale=0.01, size=(n, 3, 10))),
        "posedirs": Ch(np.zeros((n, 3, 207))),
        "weights": Ch(weights),
        "J_regressor": reg,
        "J_regressor_prior": reg.copy(),
        "kintree_table": np.stack([np.array([4294967295] + list(SMPL24.parents[1:])), np.arange(24)]),
        "f": rng.integers(0, n, size=(13776, 3)).astype(np.uint32),
        "J": np.zeros((24, 3)),
        "weights_prior": Ch(weights),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "vert_sym_idxs": np.arange(n),
    }


@pytest.mark.parametrize("protocol", [0, 2])
def test_fabricated_smpl_pickle_converts_and_loads_through_smplx(tmp_path, monkeypatch, protocol):
    rng = np.random.default_rng(0)
    with monkeypatch.context() as m:
        _publish_fake_chumpy(m)
        data = _fake_smpl_dict(rng)
        src = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
        src.write_bytes(pickle.dumps(data, protocol=protocol))
    assert "chumpy.ch" not in sys.modules  # conversion must work without chumpy

    raw = safe_load(src)
    assert isinstance(raw["v_template"], np.ndarray)  # array-backed stubs resolve to arrays
    assert sp.issparse(raw["J_regressor"])

    dst = tmp_path / "smpl_neutral.npz"
    arrays = convert_smpl_pickle(src, dst)
    assert "chumpy.ch" not in sys.modules
    assert arrays["J_regressor"].shape == (24, 6890) and isinstance(arrays["J_regressor"], np.ndarray)
    stored = load_body_arrays(dst)
    np.testing.assert_array_equal(stored["v_template"], data["v_template"].x)
    np.testing.assert_array_equal(stored["J_regressor"], data["J_regressor"].toarray())
    np.testing.assert_array_equal(stored["f"], data["f"].astype(np.int64))

    smpl = load_smpl(dst)
    with torch.no_grad():
        out = smpl()
    np.testing.assert_allclose(out.vertices[0].numpy(), data["v_template"].x, atol=1e-6)
    np.testing.assert_allclose(out.joints[0, :24].numpy(), data["J_regressor"] @ data["v_template"].x,
                               atol=1e-5)


def test_chumpy_node_without_array_is_kept_as_stub_and_named_when_needed(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    with monkeypatch.context() as m:
        _publish_fake_chumpy(m)
        data = _fake_smpl_dict(rng)
        data["shapedirs"] = Select(data["shapedirs"])
        src = tmp_path / "derived.pkl"
        src.write_bytes(pickle.dumps(data, protocol=2))
    raw = safe_load(src)
    assert isinstance(raw["shapedirs"], ChumpyStub)
    assert raw["shapedirs"].chumpy_class == "chumpy.ch.Select"
    assert isinstance(raw["shapedirs"].state["a"], np.ndarray)  # inner leaf resolved
    with pytest.raises(InputError, match=r"derived.pkl: field 'shapedirs'.*chumpy.ch.Select"):
        convert_smpl_pickle(src, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_convert_missing_pickle_says_where_to_get_smpl(tmp_path):
    with pytest.raises(MissingFileError, match=r"smpl\.is\.tue\.mpg\.de"):
        convert_smpl_pickle(tmp_path / "SMPL_NEUTRAL.pkl", tmp_path / "out.npz")
