"""How credible a demo output is without ground truth: ``python -m hmrmamba.demo.quality OUT_DIR``.

Read from ``OUT_DIR/meshes.npz`` and ``summary.json`` (written by ``hmrmamba demo``), over the
frames where the followed person was detected:

- **detected**: the fraction of frames with a detection;
- **bone std**: each of the 16 H36M-17 bones' length std over time (mm); mean and max over bones.
  A body does not change size, so anything above a few mm is the model's wobble;
- **roughness**: the meshes' mean umbrella-Laplacian magnitude over the template body's
  (:func:`hmrmamba.evaluate.metrics.umbrella_laplacian`; 1 = as smooth as the template);
- **jitter**: mean acceleration of the pelvis-relative joints, ``|x(t+1) - 2 x(t) + x(t-1)|`` mm per
  frame squared, over runs of consecutive detected frames (and of the camera-frame joints, which
  adds the translation's jitter);
- **detector frames/s**: frames over the seconds of the ``detect`` step.

``--smooth SIGMA`` (several allowed) reports the same numbers for the output smoothed as
``hmrmamba demo --smooth SIGMA`` would have written it (:mod:`hmrmamba.demo.smoothing`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hmrmamba.errors import InputError, MissingFileError

__all__ = ["acceleration_mm", "output_quality"]


def acceleration_mm(points: np.ndarray, valid: np.ndarray) -> float:
    """points (N, J, 3) m, valid (N,) bool -> mean |second difference| in mm/frame^2 over the triples of
    consecutive valid frames (NaN when there are none)."""
    ok = valid[:-2] & valid[1:-1] & valid[2:]
    if not ok.any():
        return float("nan")
    acc = points[2:] - 2 * points[1:-1] + points[:-2]
    return float(np.linalg.norm(acc[ok], axis=-1).mean() * 1000.0)


def output_quality(out_dir: str | Path, body_model: str | Path, smooth: float = 0.0) -> dict[str, float]:
    """The numbers of the module docstring for one demo output folder; ``body_model`` is the npz whose
    ``v_template`` is the reference for the roughness; ``smooth``: first smooth the (unsmoothed) output
    as ``hmrmamba demo --smooth`` would (:func:`hmrmamba.demo.smoothing.smooth_runs`)."""
    from hmrmamba.evaluate.metrics import mesh_edges, umbrella_laplacian
    from hmrmamba.skeleton import H36M17

    out_dir = Path(out_dir)
    path = out_dir / "meshes.npz"
    if not path.is_file():
        raise MissingFileError("demo output not found", file=path, expected="a folder written by `hmrmamba demo`")
    with np.load(path, allow_pickle=False) as m:
        det = m["detected"].astype(bool)
        joints, verts, faces, trans = m["joints"], m["vertices"], m["faces"], m["translation"]
    if not det.any():
        raise InputError("no detected frame", file=path, field="detected", expected="at least one detection")
    if smooth:
        from hmrmamba.demo.smoothing import smooth_runs

        joints, verts, trans = (smooth_runs(a, det, smooth).astype(np.float32) for a in (joints, verts, trans))
    parent, child = np.array(H36M17.bones).T
    bones = np.linalg.norm(joints[det][:, child] - joints[det][:, parent], axis=-1) * 1000.0
    with np.load(body_model, allow_pickle=False) as b:
        template = b["v_template"].astype(np.float32)
    edges = mesh_edges(faces)
    rough = float(umbrella_laplacian(verts[det], edges).mean() / umbrella_laplacian(template, edges))
    rel = joints - joints[:, :1]
    cam = rel + np.nan_to_num(trans)[:, None, :]
    out = {"frames": len(det), "detected": float(det.mean()),
           "bone_std_mean_mm": float(bones.std(0).mean()), "bone_std_max_mm": float(bones.std(0).max()),
           "roughness": rough, "jitter_mm": acceleration_mm(rel, det), "jitter_camera_mm": acceleration_mm(cam, det),
           "jumps": _jump_count(path), "smooth": smooth}
    summary = out_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        detect = s.get("seconds", {}).get("detect")
        if detect:
            out["detector_fps"] = float(s["frames"]) / float(detect)
        out["fps"] = float(s.get("frames_per_second", float("nan")))
    return out


def _jump_count(path: Path) -> int:
    """Frames flagged ``person_jump`` (0 for outputs written before the flag existed)."""
    with np.load(path, allow_pickle=False) as m:
        return int(m["person_jump"].sum()) if "person_jump" in m.files else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hmrmamba.demo.quality", description=__doc__.splitlines()[0])
    ap.add_argument("out_dirs", nargs="+", help="folders written by `hmrmamba demo`")
    ap.add_argument("--body-model", help="body model npz (default: the project's data/body_model)")
    ap.add_argument("--smooth", type=float, nargs="+", default=[0.0], metavar="SIGMA",
                    help="also as if written with `hmrmamba demo --smooth SIGMA` (frames; several allowed)")
    args = ap.parse_args(argv)
    if args.body_model is None:
        from hmrmamba.config import find_project_root
        from hmrmamba.layout import Layout

        body = Layout(find_project_root()).body_model
    else:
        body = Path(args.body_model)
    cols = ("smooth", "frames", "detected", "bone_std_mean_mm", "bone_std_max_mm", "roughness", "jitter_mm",
            "jitter_camera_mm", "jumps", "detector_fps", "fps")
    print("| output | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for d in args.out_dirs:
        for sigma in args.smooth:
            q = output_quality(d, body, smooth=sigma)
            print(f"| {d} | " + " | ".join(f"{q.get(c, float('nan')):.3g}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
