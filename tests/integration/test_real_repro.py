"""``dvc repro features`` on a fabricated mini Human3.6M, videos included: prepare -> detect2d -> features."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DATA_STAGES = ["body_model", "prepare", "detect2d", "train_backbone", "features"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def test_dvc_repro_features_on_mini_h36m_videos(tmp_path, make_project):
    from fabricate import write_mini_h36m
    from hmrmamba.data.h5schema import Field, read_split, read_table
    from hmrmamba.data.real.h36m import H36M32_TO_17, world_to_camera
    from hmrmamba.data.real.h36m_cameras import h36m_camera
    from hmrmamba.layout import Layout

    mini = write_mini_h36m(tmp_path / "h36m", subjects=("S1", "S9"), actions=("Walking", "Photo 1"), frames=10,
                           videos=True, video_cameras=(0, 3))
    overrides = ["synthetic.image_size=64", "features.batch_size=16", "features.crop_size=32", "runtime.threads=1",
                 "dataset.name=h36m", f"datasets.h36m.root={mini.root}",
                 "datasets.h36m.train_subjects=[S1]", "datasets.h36m.test_subjects=[S9]",
                 "datasets.h36m.train_cameras=[0,3]"]
    root = make_project(tmp_path / "repo", overrides)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "hmrmamba", root / "hmrmamba", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONSAFEPATH": "1",
           "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
           "GIT_CONFIG_NOSYSTEM": "1", "OMP_NUM_THREADS": "1"}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "hmrmamba test"],
                ["git", "config", "user.email", "test@example.invalid"], ["dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-q", "-m", "mini h36m project"]):
        _run(cmd, root, env)

    out = _run(["dvc", "repro", "features"], root, env)
    assert re.findall(r"Running stage '([^']+)'", out) == DATA_STAGES

    lay = Layout(root)
    feat_metrics = json.loads(lay.metrics("features").read_text())
    for split in ("train", "val", "test"):
        data = read_split(lay.prepared(split))
        # row counts: every 2nd of each sequence's 50 fps frames
        full = {s: {a: v.shape[0] for a, v in acts.items()} for s, acts in mini.positions_3d.items()}
        want_rows = sum((full[s][a] + 1) // 2 for s, a in zip(data.seqs["subject"], data.seqs["motion"]))
        assert data.num_frames == want_rows == feat_metrics[split]["frames"]
        det, _ = read_table(lay.detections(split), {"cpn/keypoints": Field((17, 2), "f", finite=True)},
                            rows=data.num_frames)
        feats, attrs = read_table(lay.features(split), {"features": Field((2048,), "f", finite=True),
                                                        "boxes": Field((4,), "f", finite=True)}, rows=data.num_frames)
        assert attrs["image_source"] == "video" and float(np.std(feats["features"].astype(np.float32))) > 0
        for i, name in enumerate(data.seqs["seq_name"]):  # values match the fabricated input
            s, a, c = str(data.seqs["subject"][i]), str(data.seqs["motion"][i]), int(data.seqs["camera_index"][i])
            rows = slice(int(data.seqs["seq_start"][i]), int(data.seqs["seq_start"][i] + data.seqs["seq_len"][i]))
            np.testing.assert_allclose(det["cpn/keypoints"][rows], mini.positions_2d["cpn"][s][a][c][::2], atol=1e-4)
            cam = h36m_camera(s, c)
            j3d = world_to_camera(mini.positions_3d[s][a][::2][:, list(H36M32_TO_17)], cam)
            np.testing.assert_allclose(data.frames["joints3d"][rows], j3d, atol=1e-5)
            assert name == f"{s}/{a}/{cam.camera_id}"
    assert sorted(read_split(lay.prepared("test")).seqs["seq_name"]) == ["S9/Photo 1/60457274",
                                                                         "S9/Walking/60457274"]

    again = _run(["dvc", "repro", "features"], root, env)
    assert "Data and pipelines are up to date" in again
