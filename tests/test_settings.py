"""hmrmamba.settings: params.yaml as typed, frozen settings, consistent with every layer that reads them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hmrmamba.config import PARAMS_SCHEMA, load_params
from hmrmamba.errors import InputError
from hmrmamba.profiles import available_profiles, compose
from hmrmamba.settings import (
    H36MOptions,
    LiftLoss,
    MeshLoss,
    MPI3DHPOptions,
    PW3DOptions,
    Settings,
    parse_settings,
    schema_keys,
    section_settings,
)

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_parse_into_the_values_of_the_file():
    params = load_params(ROOT / "params.yaml")
    s = parse_settings(params)
    assert s.train_lift.epochs == params["train_lift"]["epochs"] == 10 and s.train_lift.flip == 0.5
    assert s.train_mesh.epochs == 1 and s.synthetic.splits["train"].sequences == 120
    assert s.train_lift.lr == pytest.approx(4.0e-3)
    assert s.train_lift.loss == LiftLoss(mpjpe=1.0, temporal=0.5, velocity=0.5, reprojection=0.5)
    assert s.train_mesh.loss == MeshLoss(vertex=1.0, joint=1.0, normal=0.1, edge=20.0)
    assert s.train_mesh.checkpoint_dir == "models/mesh" and s.train_mesh.loss_frames == 4
    assert s.synthetic.splits["test"].sequences == 12 and s.synthetic.splits["test"].subjects == 3
    assert s.synthetic.camera.person_fraction == (0.45, 0.8)
    assert s.detect2d.sources == ("gt", "sh", "detectron", "cpn") and s.detect2d.noise_scale == 2.0
    assert s.features.bbox_scale == 1.2 and s.features.crop_size == 96
    assert s.features.keep_spatial is True and s.features.map_layer == "layer3"
    assert s.efficiency.scan.ref_batch == 16 and s.efficiency.scaling.frames == (16, 64, 243)
    assert s.datasets.h36m.test_cameras == (3,) and s.datasets.mpi3dhp.joints3d == "univ_annot3"
    assert s.train_seed("train_lift") == 0


@pytest.mark.parametrize("profile", available_profiles(ROOT))
def test_every_profile_validates(profile):
    s = parse_settings(compose(ROOT, profile))
    assert s.profile == profile
    if profile.startswith("paper-"):
        assert s.train_lift.epochs == 100 and s.train_lift.loss.velocity == 20.0
        assert s.features.crop_size == 224 and s.train_mesh.loss_frames is None
        assert s.features.map_layer == "layer4"  # SPIN's 7 x 7 x 2048 map for the 2048-channel GA


def test_settings_are_frozen_and_deeply_immutable():
    s = parse_settings(load_params(ROOT / "params.yaml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.train_lift.epochs = 50
    with pytest.raises(TypeError):
        s.synthetic.splits["extra"] = None
    assert isinstance(s.results.seeds, tuple)


def test_absent_keys_take_the_one_default():
    s = parse_settings({})
    assert s == Settings()
    assert s.dataset.name == "synthetic" and s.features.bbox_scale == 1.2 and s.report.dir == "reports"
    assert s.train_lift.checkpoint_dir == "models/lift" and s.train_mesh.checkpoint_dir == "models/mesh"
    # the stage fallbacks the code always had for an absent key
    assert s.detect2d.noise_scale == 1.0 and s.synthetic.blur_prob == 0.3 and s.runtime.threads == 0
    # a training stage's seed falls back to the top-level seed
    assert parse_settings({"seed": 7}).train_seed("train_mesh") == 7
    assert parse_settings({"seed": 7, "train_mesh": {"seed": 3}}).train_seed("train_mesh") == 3
    assert section_settings({"features": {"crop_size": 128}}, "features").crop_size == 128


def test_values_are_still_checked_by_the_schema_rules():
    with pytest.raises(InputError, match="field 'train_lift.epochs': invalid value -1"):
        parse_settings({"train_lift": {"epochs": -1}})
    with pytest.raises(InputError, match="field 'train_lift.loss': invalid value {'velocity': 'x'}"):
        parse_settings({"train_lift": {"loss": {"velocity": "x"}}})
    with pytest.raises(InputError, match="field 'synthetic.camera': is a list"):
        parse_settings({"synthetic": {"camera": [1, 2]}})
    with pytest.raises(InputError, match="field 'synthetic.splits.train.subjects': missing key"):
        parse_settings({"synthetic": {"splits": {"train": {"sequences": 3}}}})


def test_every_schema_rule_names_a_settings_key():
    keys = schema_keys()
    sections = {".".join(k.split(".")[:2]) for k in keys if k.count(".") >= 2}
    stray = [k for k in PARAMS_SCHEMA if k not in keys and k not in sections]
    assert stray == []


def test_loss_sections_match_the_loss_weights():
    from hmrmamba.train.losses import LiftLossWeights, MeshLossWeights

    for ours, theirs in ((LiftLoss, LiftLossWeights), (MeshLoss, MeshLossWeights)):
        assert [(f.name, f.default) for f in dataclasses.fields(ours)] == \
               [(f.name, f.default) for f in dataclasses.fields(theirs)]


def test_efficiency_section_matches_the_efficiency_settings():
    from hmrmamba.efficiency.benchmark import EfficiencySettings
    from hmrmamba.settings import EfficiencySection

    flat = {}
    for f in dataclasses.fields(EfficiencySection):
        if "section" in f.metadata:
            flat |= {f"{f.name}_{g.name}": g.default for g in dataclasses.fields(f.metadata["section"])}
        else:
            flat[f.name] = f.default
    theirs = {f.name: f.default for f in dataclasses.fields(EfficiencySettings)}
    assert flat == theirs


@pytest.mark.parametrize("module,cls,options", [
    ("hmrmamba.data.real.h36m", "H36MConfig", H36MOptions),
    ("hmrmamba.data.real.pw3d", "PW3DConfig", PW3DOptions),
    ("hmrmamba.data.real.mpi3dhp", "MPI3DHPConfig", MPI3DHPOptions),
])
def test_reader_option_names_match_what_each_reader_accepts(monkeypatch, module, cls, options):
    import importlib

    mod = importlib.import_module(module)
    seen = {}

    def capture(p, known, *, section):
        seen["known"] = set(known)

    monkeypatch.setattr(mod, "check_options", capture)
    getattr(mod, cls).from_params({})
    assert seen["known"] == {f.name for f in dataclasses.fields(options)}


def test_the_reader_registry_and_its_settings_sections_agree():
    from hmrmamba.data.real.registry import READERS
    from hmrmamba.settings import DatasetsSettings

    assert {r.section for r in READERS.values()} == {f.name for f in dataclasses.fields(DatasetsSettings)}
    assert sorted(READERS) == ["3dhp", "3dpw", "h36m"]
    assert READERS["3dpw"].sources == ("openpose",) and READERS["3dhp"].detections is None
