"""Features of real splits: frames from the datasets' own video/image layouts, and imported features."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fabricate import draw_keypoints, write_mini_3dhp, write_mini_3dpw, write_mini_h36m
from hmrmamba.features.importing import load_feature_file, match_rows
from hmrmamba.data.real.frames import (
    FrameSource,
    h36m_video_paths,
    iter_frames,
    require_sources,
    source_scale,
    split_frame_index,
)
from hmrmamba.data.h5schema import Field, read_split, read_table
from hmrmamba.data.real.dispatch import real_frame_sources
from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.features import ResNet50, crop_and_resize, extract_features
from hmrmamba.features.sequences import scale_boxes, sequence_boxes
from hmrmamba.layout import Layout
from hmrmamba.profiles import compose
from hmrmamba.stages import detect2d, features, prepare
from hmrmamba.stages.common import execute
from hmrmamba.data.video import VideoReader

ROOT = Path(__file__).resolve().parents[1]
FEATURE_FIELDS = {"features": Field((2048,), "f", finite=True), "boxes": Field((4,), "f", finite=True)}


def _params(dataset: str, root: str, **section) -> dict:
    params = compose(ROOT, "default", ["runtime.threads=1", "features.batch_size=8", "features.crop_size=32",
                                       f"dataset.name={dataset}", f"dataset.root={root}"])
    key = {"h36m": "h36m", "3dpw": "pw3d", "3dhp": "mpi3dhp"}[dataset]
    params["datasets"][key].update(section)
    if dataset != "h36m":
        params["detect2d"]["sources"] = ["gt", "cpn"]
    return params


def _run(stage, root: Path, params: dict) -> dict:
    return execute(stage.STAGE, stage.run, root=root, params=params, log_to_mlflow=False)


@pytest.fixture(scope="module")
def h36m_project(tmp_path_factory):
    """A project with a mini Human3.6M (videos included), prepared and detected: (root, params, mini)."""
    root = tmp_path_factory.mktemp("h36m_project")
    mini = write_mini_h36m(root / "raw", subjects=("S1", "S9"), actions=("Walking", "Photo 1"), frames=8,
                           extra_2d_frames=3, videos=True)
    params = _params("h36m", "raw", train_subjects=["S1"], test_subjects=["S9"], train_cameras=[0, 2])
    _run(prepare, root, params)
    _run(detect2d, root, params)
    return root, params, mini


def _copy(project, tmp_path) -> Path:
    shutil.copytree(project, tmp_path / "p")
    return tmp_path / "p"


# ---------------------------------------------------------------------------------------------
# frame sources
# ---------------------------------------------------------------------------------------------


def test_split_frame_index_known_answer():
    np.testing.assert_array_equal(split_frame_index(np.array([3, 2]), stride=2), [0, 2, 4, 0, 2])
    np.testing.assert_array_equal(split_frame_index(np.array([2, 0, 1])), [0, 1, 0])
    with pytest.raises(InputError, match="stride"):
        split_frame_index(np.array([2]), stride=0)


def test_h36m_video_names_follow_the_dataset_and_accept_original_action_names(tmp_path):
    paths = h36m_video_paths(tmp_path, "S1", "Photo 1", "54138969")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "S1/Videos/Photo 1.54138969.mp4", "S1/Videos/TakingPhoto 1.54138969.mp4"]
    assert len(h36m_video_paths(tmp_path, "S1", "Walking 1", "54138969")) == 1
    src = FrameSource("S1/Photo 1/54138969", paths[0], np.arange(2), (1000, 1002), alternatives=tuple(paths[1:]))
    assert src.missing() == [paths[0]] and src.resolved().path == paths[0]
    paths[1].parent.mkdir(parents=True)
    paths[1].write_bytes(b"x")
    assert src.missing() == [] and src.resolved().path == paths[1]


def test_h36m_sources_map_rows_to_every_second_video_frame(h36m_project):
    root, params, mini = h36m_project
    data = read_split(Layout(root).prepared("test"))
    sources = real_frame_sources(params, Layout(root), data=data)
    assert [s.seq_name for s in sources] == list(data.seqs["seq_name"])
    i = list(data.seqs["seq_name"]).index("S9/Photo 1/60457274")
    src = sources[i]
    assert src.path == root / "raw/S9/Videos/Photo 1.60457274.mp4" and src.kind == "video"
    n_full = mini.positions_3d["S9"]["Photo 1"].shape[0]  # 11 mocap frames; the video has 3 more
    np.testing.assert_array_equal(src.frames, np.arange(0, n_full, 2))
    assert VideoReader(src.path).num_frames == n_full + 3
    frames = np.stack(list(iter_frames(src)))
    np.testing.assert_array_equal(frames, VideoReader(src.path).read()[0:n_full:2])
    assert source_scale(src, frames.shape[1:3]) == pytest.approx((0.064, 64 / 1002))


def test_short_video_and_changed_aspect_are_clear_errors(tmp_path, h36m_project):
    from hmrmamba.data.video import write_video

    video = write_video(tmp_path / "v.mp4", np.zeros((3, 16, 16, 3), np.uint8), fps=50)
    src = FrameSource("S9/Walking/1", video, np.arange(0, 8, 2), (1000, 1002))
    with pytest.raises(InputError, match="v.mp4.*has 3 frames.*needs frame 6"):
        list(iter_frames(src))
    with pytest.raises(InputError, match="16x8"):
        source_scale(src, (8, 16))


def test_downscaled_frames_crop_like_the_originals():
    """Invariance: a box scaled onto a 2x-downscaled image crops (nearly) the same pixels."""
    yy, xx = np.mgrid[0:128, 0:160].astype(np.float64)
    full = np.stack([128 + 100 * np.sin(xx / 17), 128 + 100 * np.cos(yy / 13), 128 + 60 * np.sin((xx + yy) / 23)], -1)
    full = full.round().astype(np.uint8)
    small = full.reshape(64, 2, 80, 2, 3).astype(np.float64).mean(axis=(1, 3)).round().astype(np.uint8)
    boxes = np.array([[70.3, 60.8, 64.0, 64.0], [90.0, 50.0, 48.0, 48.0]], np.float32)
    a = crop_and_resize(np.stack([full, full]), boxes, out_size=16, normalize=False)
    b = crop_and_resize(np.stack([small, small]), scale_boxes(boxes, sx=0.5, sy=0.5), out_size=16, normalize=False)
    assert float((a - b).abs().mean()) < 0.01 and float((a - b).abs().max()) < 0.06
    np.testing.assert_allclose(scale_boxes(boxes, sx=1.0, sy=1.0), boxes)
    np.testing.assert_allclose(scale_boxes(np.array([[-0.5, 9.5, 10, 4]]), sx=0.1, sy=0.5), [[-0.5, 4.5, 1, 2]])


def test_sequence_boxes_never_borrow_across_sequences():
    kp = np.zeros((4, 17, 2), np.float32)
    kp[:2] = np.random.default_rng(0).uniform(100, 200, (2, 17, 2))
    conf = np.ones((4, 17), np.float32)
    conf[2] = 0  # first frame of the second sequence has no confident joint
    kp[3] = 50 + np.random.default_rng(1).uniform(0, 20, (17, 2))
    boxes = sequence_boxes(kp, conf, seq_start=np.array([0, 2]), seq_len=np.array([2, 2]),
                           image_hw=np.array([[300, 400], [60, 80]]))
    np.testing.assert_allclose(boxes[2], [39.5, 29.5, 80, 80])  # the second sequence's whole image
    assert boxes[1, 0] > 100


# ---------------------------------------------------------------------------------------------
# the features stage on real splits
# ---------------------------------------------------------------------------------------------


def test_features_stage_streams_h36m_videos_with_boxes_from_the_detections(tmp_path, h36m_project):
    project, params, _ = h36m_project
    root = _copy(project, tmp_path)
    metrics = _run(features, root, params)
    lay = Layout(root)
    model = ResNet50(init_seed=0)
    for split in ("train", "val", "test"):
        data = read_split(lay.prepared(split))
        out, attrs = read_table(lay.features(split), FEATURE_FIELDS, rows=data.num_frames)
        assert metrics[split]["frames"] == data.num_frames and attrs["image_source"] == "video"
        det, _ = read_table(lay.detections(split), {"cpn/keypoints": Field((17, 2), "f"),
                                                    "cpn/confidence": Field((17,), "f")})
        want = sequence_boxes(det["cpn/keypoints"], det["cpn/confidence"], seq_start=data.seqs["seq_start"],
                              seq_len=data.seqs["seq_len"], image_hw=data.seqs["image_wh"][:, ::-1])
        np.testing.assert_allclose(out["boxes"], want)  # boxes in original pixels, from the chosen source
    # parity with the in-memory extractor on one sequence's decoded frames
    test = read_split(lay.prepared("test"))
    out, _ = read_table(lay.features("test"), FEATURE_FIELDS)
    i = 1
    a, n = int(test.seqs["seq_start"][i]), int(test.seqs["seq_len"][i])
    src = real_frame_sources(params, lay, data=test)[i]
    frames = np.stack(list(iter_frames(src)))
    ref = extract_features(frames, None, None, model=model, crop_size=32, batch_size=3, progress=False,
                           boxes=scale_boxes(out["boxes"][a:a + n], sx=64 / 1000, sy=64 / 1002))
    np.testing.assert_allclose(out["features"][a:a + n].astype(np.float32),
                               ref["features"].astype(np.float32), rtol=2e-2, atol=2e-2)
    assert float(np.std(out["features"][a:a + n].astype(np.float32), axis=0).mean()) > 0  # frames differ


def test_missing_videos_fail_before_any_work_listing_all_of_them(tmp_path, h36m_project):
    project, params, _ = h36m_project
    root = _copy(project, tmp_path)
    gone = [root / "raw/S1/Videos/Walking.54138969.mp4", root / "raw/S9/Videos/Photo 1.60457274.mp4"]
    for p in gone:
        p.unlink()
    with pytest.raises(MissingFileError) as err:
        _run(features, root, params)
    msg = str(err.value)
    assert "2 expected image source(s) missing" in msg and all(str(p) in msg for p in gone)
    assert not (root / "data/features").exists()  # nothing written, not even the first split


def test_image_root_param_points_elsewhere(tmp_path, h36m_project):
    project, params, _ = h36m_project
    root = _copy(project, tmp_path)
    (root / "videos").mkdir()
    for s in ("S1", "S9"):
        shutil.move(root / "raw" / s, root / "videos" / s)
    with pytest.raises(MissingFileError, match="image_root"):
        _run(features, root, params)
    params = {**params, "features": {**params["features"], "image_root": "videos"}}
    assert _run(features, root, params)["test"]["source"] == "video"


@pytest.mark.parametrize("dataset", ["3dpw", "3dhp"])
def test_features_stage_reads_3dpw_and_3dhp_image_folders(tmp_path, dataset):
    if dataset == "3dpw":
        write_mini_3dpw(tmp_path / "raw", splits={"test": (1,), "train": (1,), "validation": (1,)}, frames=6,
                        images=True)
        params = _params(dataset, "raw")
    else:
        write_mini_3dhp(tmp_path / "raw", sequences=("TS1", "TS5"), frames=8, images=True)
        params = _params(dataset, "raw", sequences=["TS1", "TS5"])
    _run(prepare, tmp_path, params)
    _run(detect2d, tmp_path, params)
    metrics = _run(features, tmp_path, params)
    lay = Layout(tmp_path)
    split = "test"
    data = read_split(lay.prepared(split))
    sources = real_frame_sources(params, lay, data=data)
    if dataset == "3dhp":
        assert [s.files[0].name for s in sources] == ["img_000001.jpg"] * 2
        assert sources[1].files[-1].relative_to(tmp_path / "raw").as_posix() == \
            "mpi_inf_3dhp_test_set/TS5/imageSequence/img_000008.jpg"
    else:
        assert sources[0].files[-1].relative_to(tmp_path / "raw").as_posix() == \
            f"imageFiles/{data.seqs['subject'][0]}/image_00005.jpg"
    out, attrs = read_table(lay.features(split), FEATURE_FIELDS, rows=data.num_frames)
    assert attrs["image_source"] == "images" and metrics[split]["frames"] == data.num_frames
    assert np.isfinite(out["features"].astype(np.float32)).all()
    (sources[0].files[2]).unlink()
    with pytest.raises(MissingFileError, match=sources[0].files[2].name):
        _run(features, tmp_path, params)


def test_require_sources_lists_a_missing_folder_once(tmp_path):
    files = tuple(tmp_path / "seq" / f"image_{t:05d}.jpg" for t in range(500))
    src = FrameSource("seq/0", tmp_path / "seq", np.arange(500), (1080, 1920), files)
    with pytest.raises(MissingFileError, match=r"1 expected image source\(s\) missing"):
        require_sources({"test": [src]}, dataset="3dpw", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# imported features
# ---------------------------------------------------------------------------------------------


def _feature_rows(root: Path, splits=("train", "val", "test"), *, seed=0):
    """Every (seq_name, source frame) of the splits (and the 50 fps frames in between) with random features."""
    names, frames = [], []
    for split in splits:
        data = read_split(Layout(root).prepared(split))
        for name, n_full in zip(data.seqs["seq_name"], data.seqs["source_frames"]):
            names += [name] * int(n_full)
            frames += list(range(int(n_full)))
    names, frames = np.array(names), np.array(frames)
    _, idx = np.unique(np.rec.fromarrays([names, frames]), return_index=True)  # val == test: drop repeats
    names, frames = names[np.sort(idx)], frames[np.sort(idx)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(names))
    return names[perm], frames[perm], rng.normal(0, 1, (len(names), 2048)).astype(np.float32)


def test_import_npz_matches_rows_by_sequence_and_frame(tmp_path, h36m_project):
    project, params, _ = h36m_project
    root = _copy(project, tmp_path)
    names, frames, feats = _feature_rows(root)
    bbox = np.tile(np.array([[500.0, 500.0, 300.0, 300.0]], np.float32), (len(names), 1))
    bbox[:, 0] += frames
    np.savez(root / "feats.npz", features=feats, seq_name=names, frame=frames, bbox=bbox)
    params = {**params, "features": {**params["features"], "import_path": "feats.npz"}}
    metrics = _run(features, root, params)
    test = read_split(Layout(root).prepared("test"))
    out, attrs = read_table(Layout(root).features("test"), FEATURE_FIELDS, rows=test.num_frames)
    assert attrs["backbone"] == "imported" and metrics["test"]["rows_in_file"] == len(names)
    i = list(test.seqs["seq_name"]).index("S9/Walking/60457274")
    a = int(test.seqs["seq_start"][i])
    for t in range(int(test.seqs["seq_len"][i])):  # row t is the file's (name, frame 2t)
        k = np.nonzero((names == "S9/Walking/60457274") & (frames == 2 * t))[0][0]
        np.testing.assert_allclose(out["features"][a + t], feats[k].astype(np.float16))
        np.testing.assert_allclose(out["boxes"][a + t], bbox[k])


def test_import_h5_without_boxes_uses_the_detections_and_per_split_paths(tmp_path, h36m_project):
    project, params, _ = h36m_project
    root = _copy(project, tmp_path)
    for split in ("train", "val", "test"):
        names, frames, feats = _feature_rows(root, (split,), seed=1)
        with h5py.File(root / f"{split}.h5", "w") as h5:
            h5["features"], h5["seq_name"], h5["frame"] = feats, names.astype("S"), frames
    params = {**params, "features": {**params["features"],
                                     "import_path": {s: f"{s}.h5" for s in ("train", "val", "test")}}}
    _run(features, root, params)
    lay = Layout(root)
    data = read_split(lay.prepared("val"))
    out, _ = read_table(lay.features("val"), FEATURE_FIELDS, rows=data.num_frames)
    det, _ = read_table(lay.detections("val"), {"cpn/keypoints": Field((17, 2), "f"),
                                                "cpn/confidence": Field((17,), "f")})
    want = sequence_boxes(det["cpn/keypoints"], det["cpn/confidence"], seq_start=data.seqs["seq_start"],
                          seq_len=data.seqs["seq_len"], image_hw=data.seqs["image_wh"][:, ::-1])
    np.testing.assert_allclose(out["boxes"], want)


def test_import_errors_name_file_and_key(tmp_path, h36m_project):
    project, params, _ = h36m_project
    root = _copy(project, tmp_path)
    names, frames, feats = _feature_rows(root)
    p = {**params, "features": {**params["features"], "import_path": "f.npz"}}

    used = np.nonzero((names == "S9/Walking/60457274") & (frames == 4))[0][0]
    keep = np.arange(len(names)) != used
    np.savez(root / "f.npz", features=feats[keep], seq_name=names[keep], frame=frames[keep])
    with pytest.raises(InputError, match=r"f.npz.*1 of the \d+ frames of split 'val' have no feature row.*"
                                         r"\('S9/Walking/60457274', 4\)"):
        _run(features, root, p)
    dup_names, dup_frames = names.copy(), frames.copy()
    dup_names[1], dup_frames[1] = names[0], frames[0]
    np.savez(root / "f.npz", features=feats, seq_name=dup_names, frame=dup_frames)
    with pytest.raises(InputError, match="f.npz.*duplicated"):
        _run(features, root, p)
    np.savez(root / "f.npz", features=feats[:, :100], seq_name=names, frame=frames)
    with pytest.raises(InputError, match=r"f.npz: field 'features'.*\(M, 2048\)"):
        _run(features, root, p)
    np.savez(root / "f.npz", features=feats, seq_name=np.array(list(names), dtype=object), frame=frames)
    with pytest.raises(InputError, match="f.npz.*pickled"):
        _run(features, root, p)
    np.savez(root / "f.npz", features=feats, frame=frames)
    with pytest.raises(InputError, match="f.npz: field 'seq_name': missing key"):
        _run(features, root, p)
    torch.save({"features": torch.zeros(2, 2048)}, root / "db.pt")
    with pytest.raises(InputError, match="db.pt.*not read"):
        _run(features, root, {**p, "features": {**p["features"], "import_path": "db.pt"}})
    with pytest.raises(MissingFileError, match="nope.npz"):
        _run(features, root, {**p, "features": {**p["features"], "import_path": "nope.npz"}})
    with pytest.raises(InputError, match="no feature file for split 'val'"):
        _run(features, root, {**p, "features": {**p["features"], "import_path": {"train": "f.npz"}}})
    assert not (root / "data/features").exists()


def test_match_rows_known_answer(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, features=np.arange(4 * 2048, dtype=np.float32).reshape(4, 2048),
             seq_name=np.array(["b", "a", "b", "a"]), frame=np.array([0, 0, 1, 7]))
    imported = load_feature_file(path)
    rows = match_rows(imported, seq_name=np.array(["a", "b", "b", "a"]), frame=np.array([7, 1, 0, 0]))
    np.testing.assert_array_equal(rows, [3, 2, 0, 1])
    with pytest.raises(InputError, match=r"1 of the 1 frames .*\('a', 3\)"):
        match_rows(imported, seq_name=np.array(["a"]), frame=np.array([3]))


def test_fabricated_frames_show_the_keypoints():
    kp = np.array([[[100.0, 200.0], [900.0, 800.0]]])
    img = draw_keypoints(kp, image_wh=(1000, 1000), size_hw=(50, 50), radius=1.0)
    assert img.shape == (1, 50, 50, 3)
    assert img[0, 10, 5].max() > 150 and img[0, 40, 45].max() > 150 and img[0, 25, 25].max() < 100
