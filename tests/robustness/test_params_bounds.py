"""params.yaml that is small but hostile, or valid key by key but absurd, and typos in every section.

* a 3.6 KB YAML alias bomb ("billion laughs"), also under an unknown key, is refused in well under a
  second, and the message never spells the value out;
* 50k levels of nesting give a one-line :class:`InputError`, not a ``RecursionError``;
* a file over the size limit is refused before it is parsed;
* each synthetic key may be valid while their product (sequences x frames x image pixels) is absurd;
* an unknown key in any section (nested ones too) names the key, the nearest valid name and the
  valid ones, and stops a stage before it touches anything (``train_lift.epocs: 50``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml

from hmrmamba.config import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_params, load_yaml_bounded
from hmrmamba.errors import InputError
from hmrmamba.settings import MAX_SYNTHETIC_FRAMES, parse_settings

from .support import expect_clean_failure, run_stage_process

ROOT = Path(__file__).resolve().parents[2]


def committed() -> dict:
    return load_params(ROOT / "params.yaml")


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """``width ** levels`` strings from a few hundred bytes of anchors and aliases."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["top level", "unknown key", "known key"])
def test_alias_bomb_is_refused_quickly_without_expanding(tmp_path, reliability, where):
    bomb = alias_bomb(levels=10, width=50)  # 50**10 ~ 1e17 strings once expanded
    if where == "top level":
        text = bomb + "\n"
    elif where == "unknown key":
        text = "seed: 0\ntrain_lift:\n  epochs: 2\n  bogus:\n    " + bomb.replace("\n", "\n    ") + "\n"
    else:
        text = "seed: 0\nexperiment:\n  overrides:\n    " + bomb.replace("\n", "\n    ") + "\n"
    assert 2_000 < len(text.encode()) < 4_000  # a few KB, as in the report
    path = write(tmp_path, text)
    t0 = time.perf_counter()
    err = expect_clean_failure(lambda: load_params(path), file=str(path), match="expands to more than")
    assert time.perf_counter() - t0 < 1.0
    assert str(MAX_YAML_NODES) in str(err)
    assert "lol" not in str(err) and len(str(err)) < 300 and "\n" not in str(err)
    reliability.bad_input("load_params", f"alias bomb ({where})")


def test_moderate_aliases_still_load(tmp_path):
    """Anchors and aliases are YAML: a few of them stay fine (only the expanded size is bounded)."""
    path = write(tmp_path, "base: &b {epochs: 2, batch_size: 4}\ncopy: *b\nmore: [*b, *b]\n")
    data = load_yaml_bounded(path)
    assert data["copy"] == {"epochs": 2, "batch_size": 4} and data["more"][1]["batch_size"] == 4


@pytest.mark.parametrize("kind", ["sequences", "mappings"])
def test_deep_nesting_is_a_one_line_input_error(tmp_path, reliability, kind):
    n = 50_000
    text = "seed: 0\nx: " + ("[" * n + "]" * n if kind == "sequences" else "{a: " * n + "1" + "}" * n) + "\n"
    path = write(tmp_path, text)
    t0 = time.perf_counter()
    err = expect_clean_failure(lambda: load_params(path), file=str(path), match=f"deeper than {MAX_YAML_DEPTH}")
    assert not isinstance(err, RecursionError) and "\n" not in str(err)
    assert time.perf_counter() - t0 < 5.0
    reliability.bad_input("load_params", f"{n} levels of nested {kind}")


def test_nesting_at_the_limit_loads(tmp_path):
    depth = MAX_YAML_DEPTH - 1
    path = write(tmp_path, "x: " + "[" * depth + "]" * depth + "\n")
    node = load_yaml_bounded(path)["x"]
    levels = 0
    while isinstance(node, list):
        levels += 1
        node = node[0] if node else None
    assert levels == depth


def test_recursive_alias_is_refused(tmp_path, reliability):
    path = write(tmp_path, "seed: 0\nx: &a [1, *a]\n")
    expect_clean_failure(lambda: load_params(path), file=str(path), match="recursive alias")
    reliability.bad_input("load_params", "recursive alias")


def test_oversized_file_is_refused_before_parsing(tmp_path, reliability):
    path = write(tmp_path, "seed: 0\n" + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    expect_clean_failure(lambda: load_params(path), file=str(path), match=f"larger than {MAX_YAML_BYTES} bytes")
    reliability.bad_input("load_params", "params file over the size limit")


def test_invalid_yaml_is_one_line(tmp_path):
    path = write(tmp_path, "seed: [0\ntrain_lift: {epochs: 2\n")
    err = expect_clean_failure(lambda: load_params(path), file=str(path), match="invalid YAML")
    assert "\n" not in str(err)


def test_absurd_product_of_valid_synthetic_keys_is_refused(tmp_path, reliability):
    params = committed()
    params["synthetic"]["splits"] = {"train": {"sequences": 1_000_000, "subjects": 8}}
    params["synthetic"]["frames"] = [48, 1_000_000]
    params["synthetic"]["image_size"] = 4096
    # each value on its own is within its rule
    parse_settings({"synthetic": {"splits": {"train": {"sequences": 1_000_000, "subjects": 8}}, "frames": [1, 1],
                                  "image_size": 16}})
    parse_settings({"synthetic": {"splits": {"train": {"sequences": 1, "subjects": 1}}, "frames": [1, 1_000_000],
                                  "image_size": 16}})
    path = write(tmp_path, yaml.safe_dump(params))
    t0 = time.perf_counter()
    err = expect_clean_failure(lambda: load_params(path), file=str(path), field="synthetic", match="1e\\+12 frames")
    assert time.perf_counter() - t0 < 1.0
    assert str(MAX_SYNTHETIC_FRAMES) in str(err) and "GiB" in str(err)
    reliability.bad_input("load_params", "1e6 sequences x 1e6 frames x 4096 px (synthetic)")


def test_a_large_but_sane_synthetic_dataset_is_accepted():
    s = parse_settings({"synthetic": {"splits": {"train": {"sequences": 2000, "subjects": 50}}, "frames": [48, 200],
                                      "image_size": 128}})  # 4e5 frames, 18 GiB of images
    assert s.synthetic.splits["train"].sequences == 2000 and s.synthetic.image_size == 128


#: (dotted key with a typo, the valid name the message must suggest)
TYPOS = [
    ("train_lift.epocs", "epochs"),
    ("train_mesh.batchsize", "batch_size"),
    ("train_lift.loss.temporl", "temporal"),
    ("train_mesh.loss.vertx", "vertex"),
    ("synthetic.camera.heigth", "height"),
    ("synthetic.splits.train.sequence", "sequences"),
    ("synthetic.image_sise", "image_size"),
    ("features.bbox_scal", "bbox_scale"),
    ("detect2d.noise_scal", "noise_scale"),
    ("body_model.sourc", "source"),
    ("dataset.nam", "name"),
    ("runtime.thread", "threads"),
    ("tracking.url", "uri"),
    ("experiment.varient", "variant"),
    ("evaluate.splt", "split"),
    ("report.clip", "clips"),
    ("results.seed", "seeds"),
    ("efficiency.repeat", "repeats"),
    ("efficiency.scan.dimm", "dim"),
    ("efficiency.scaling.scop", "scope"),
    ("efficiency.linear.variants", "variant"),
    ("datasets.h36m.strid", "stride"),
    ("datasets.pw3d.split", "splits"),
    ("datasets.mpi3dhp.joint3d", "joints3d"),
    ("datasets.h63m", "h36m"),
    ("trainlift", "train_lift"),
]


@pytest.mark.parametrize("key,suggested", TYPOS)
def test_unknown_key_in_every_section_names_key_and_nearest(tmp_path, reliability, key, suggested):
    params = committed()
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = 50
    path = write(tmp_path, yaml.safe_dump(params, sort_keys=False))
    err = expect_clean_failure(lambda: load_params(path), file=str(path), field=key,
                               match=f"unknown key; did you mean '{suggested}'\\?")
    assert isinstance(err, InputError) and "\n" not in str(err)
    assert f"'{suggested}'" in err.expected  # the valid names are listed
    reliability.bad_input("load_params", f"unknown key {key}")


def test_unknown_key_holding_a_huge_value_is_not_spelled_out():
    params = copy.deepcopy(committed())
    big = list(range(10)) * 1
    for _ in range(6):
        big = [big] * 10  # shared references: 10 million leaves if walked
    params["train_lift"]["epocs"] = big
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="epocs': unknown key; did you mean 'epochs'") as info:
        parse_settings(params)
    assert time.perf_counter() - t0 < 1.0 and len(str(info.value)) < 400


def test_huge_invalid_value_is_shown_bounded():
    big = "x" * 10_000_000
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="train_lift.epochs") as info:
        parse_settings({"train_lift": {"epochs": [[big] * 1000] * 1000}})
    assert time.perf_counter() - t0 < 1.0 and len(str(info.value)) < 400


def test_typo_stops_the_stage_before_any_work(tmp_path, reliability):
    """``train_lift.epocs: 50`` exits 2 with one line, and the trained models stay as they were."""
    params = committed()
    params["train_lift"]["epocs"] = 50
    write(tmp_path, yaml.safe_dump(params, sort_keys=False))
    ckpt = tmp_path / "models/lift"
    ckpt.mkdir(parents=True)
    for name in ("best.pt", "last.pt", "history.csv"):
        (ckpt / name).write_bytes(b"trained " + name.encode())
    proc = run_stage_process(tmp_path, "train_lift", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "field 'train_lift.epocs': unknown key; did you mean 'epochs'?" in lines[0]
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    assert (ckpt / "best.pt").read_bytes() == b"trained best.pt"
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "mlflow.db").exists()
    reliability.bad_input("stage train_lift", "train_lift.epocs: 50 (typo) from params.yaml")
