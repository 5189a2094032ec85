"""Bad motion sources for ``prepare`` (synthetic.motion_source, synthetic.mocap): each stops the stage
through the stage frame with a one-line InputError naming the file and the field, before anything is
rendered, and leaves data/ as it was."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from .support import expect_clean_failure, load_yaml_params, make_project, write_yaml_params

MOCAP = Path(__file__).resolve().parents[1] / "fixtures" / "mocap"
CMU = "cmu_01_01_f0600.bvh"


def execute_prepare(root: Path):
    from hmrmamba.stages import prepare
    from hmrmamba.stages.common import execute

    return lambda: execute(prepare.STAGE, prepare.run, root=root, log_to_mlflow=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("motion") / "project")
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "train.h5").write_bytes(b"an earlier split, to be left alone")
    return root


def with_source(root: Path, source, **mocap) -> None:
    params = load_yaml_params(root)
    params["synthetic"]["motion_source"] = source
    params["synthetic"]["mocap"] = {"bvh_dir": None, "amass_dir": None, "joint_map": "auto", "units": "auto",
                                    "up": "y", **mocap}
    write_yaml_params(root, params)


def folder(tmp_path: Path, name: str, files: dict[str, str | bytes]) -> Path:
    d = tmp_path / name
    d.mkdir()
    for n, content in files.items():
        (d / n).write_bytes(content if isinstance(content, bytes) else content.encode())
    return d


def cmu_text(*, frame_time: str | None = None, names: dict[str, str] | None = None) -> str:
    text = (MOCAP / CMU).read_text()
    if frame_time is not None:
        text = re.sub(r"Frame Time:\s*\S+", f"Frame Time: {frame_time}", text)
    for a, b in (names or {}).items():
        text = re.sub(rf"^(\s*(?:ROOT|JOINT)\s+){a}\s*$", rf"\g<1>{b}", text, flags=re.MULTILINE)
    return text


def test_motion_folder_without_usable_files(base, tmp_path, reliability):
    empty = folder(tmp_path, "empty", {"notes.txt": "no motion here"})
    with_source(base, "bvh", bvh_dir=str(empty))
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file=str(empty),
                         field="synthetic.mocap.bvh_dir", match="no .bvh files")
    # files too short for synthetic.frames[0] (16 frames) once resampled to 25 fps: 20 frames at 120 fps
    head, rows = cmu_text().split("Frame Time:")
    lines = rows.splitlines()
    short = head.replace("Frames: 120", "Frames: 20") + "Frame Time:" + "\n".join(lines[:21]) + "\n"
    tiny = folder(tmp_path, "short", {f"{k}.bvh": short for k in range(3)})
    with_source(base, "bvh", bvh_dir=str(tiny))
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file=str(tiny),
                         field="synthetic.mocap.bvh_dir", match=r"no usable file .* 4 frames at 25 fps")
    # fewer files than splits that share the folder
    one = folder(tmp_path, "one", {"a.bvh": cmu_text()})
    with_source(base, "bvh", bvh_dir=str(one))
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file=str(one),
                         field="synthetic.mocap.bvh_dir", match="at least one motion file per split")
    reliability.bad_input("prepare (synthetic.motion_source)", "empty / too short / too few motion files", examples=3)


def test_bvh_the_joint_map_cannot_place_names_the_joints(base, tmp_path, reliability):
    bad = cmu_text(names={"LeftLeg": "LeftShin", "RightForeArm": "RightLowerArm"})
    d = folder(tmp_path, "renamed", {f"{k}.bvh": bad for k in "abc"})
    with_source(base, "bvh", bvh_dir=str(d), joint_map="cmu")
    err = expect_clean_failure(execute_prepare(base), watch=[base / "data"], field="HIERARCHY",
                               match=r"cannot place SMPL joints left_knee \(no BVH joint 'LeftLeg'\), "
                                     r"right_elbow \(no BVH joint 'RightForeArm'\)")
    assert err.file.endswith(".bvh") and str(d) in err.file and "\n" not in str(err)
    # a user's mapping that names no SMPL joint
    with_source(base, "bvh", bvh_dir=str(d), joint_map={"Hips": "hips"})
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file="params.yaml",
                         field="synthetic.mocap.joint_map.Hips")
    reliability.bad_input("prepare (synthetic.mocap.joint_map)", "BVH joints the map cannot place", examples=2)


def test_amass_file_without_poses(base, tmp_path, reliability):
    d = tmp_path / "amass"
    d.mkdir()
    T = 100
    for k in range(3):
        np.savez(d / f"{k}.npz", poses=np.zeros((T, 156)), trans=np.zeros((T, 3)), betas=np.zeros(16),
                 mocap_framerate=np.array(100.0))
    np.savez(d / "1.npz", trans=np.zeros((T, 3)), betas=np.zeros(16), mocap_framerate=np.array(100.0))
    with_source(base, "amass", amass_dir=str(d))
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file="1.npz", field="poses")
    reliability.bad_input("prepare (synthetic.mocap.amass_dir)", "AMASS file without poses")


@pytest.mark.parametrize("frame_time, shown", [("0.1", "10 fps"), ("0.0000001", "1e\\+07 fps")])
def test_mocap_at_an_unsupported_frame_rate(base, tmp_path, reliability, frame_time, shown):
    d = folder(tmp_path, "rate", {"a.bvh": cmu_text(), "b.bvh": cmu_text(frame_time=frame_time),
                                  "c.bvh": cmu_text()})
    with_source(base, "bvh", bvh_dir=str(d))
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file="b.bvh", field="Frame Time",
                         match=shown + r" \(expected a frame rate from synthetic.fps \(25\) to 1000 fps")
    reliability.bad_input("prepare (BVH Frame Time)", f"mocap at {shown}")


@pytest.mark.parametrize("weights", [{"procedural": 0, "bvh": 0}, {"procedural": -1, "bvh": 2},
                                     {"procedural": float("nan")}, {}, {"walk": 1.0}])
def test_mix_weights_must_sum_to_a_positive_number(base, tmp_path, reliability, weights):
    d = folder(tmp_path, "mix", {f"{k}.bvh": cmu_text() for k in "abc"})
    with_source(base, weights, bvh_dir=str(d))
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file="params.yaml",
                         field="synthetic.motion_source")
    reliability.bad_input("prepare (synthetic.motion_source)", f"mix {weights}")


def test_a_file_in_two_splits_and_a_missing_folder(base, tmp_path, reliability):
    d = folder(tmp_path, "both", {f"{k}.bvh": cmu_text() for k in "abc"})
    shutil.copytree(d, d / "held")
    params = load_yaml_params(base)
    params["synthetic"]["motion_source"] = "bvh"
    params["synthetic"]["mocap"]["bvh_dir"] = str(d)
    params["synthetic"]["splits"]["test"]["motion_source"] = f"bvh:{d / 'held'}"  # inside the shared folder
    write_yaml_params(base, params)
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], match="used by splits",
                         field="synthetic.")
    params["synthetic"]["splits"]["test"]["motion_source"] = f"bvh:{tmp_path / 'nowhere'}"
    write_yaml_params(base, params)
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file="nowhere",
                         field="synthetic.splits.test.motion_source")
    del params["synthetic"]["splits"]["test"]["motion_source"]
    params["synthetic"]["mocap"]["bvh_dir"] = None
    write_yaml_params(base, params)
    expect_clean_failure(execute_prepare(base), watch=[base / "data"], file="params.yaml",
                         field="synthetic.mocap.bvh_dir")
    reliability.bad_input("prepare (synthetic.motion_source)", "a file in two splits; missing folder; no bvh_dir",
                          examples=3)
