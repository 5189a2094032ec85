"""Benchmark: the trained model on a test split rendered from held-out real mocap vs the procedural one.

Builds two test splits in temporary projects that share a project's params, body model and trained
checkpoints (read-only: copied): the procedural test split exactly as ``prepare`` writes it, and the
same split (same subjects, cameras, sequence count and lengths drawn the same way) with its motion
from a folder of BVH files (``synthetic.splits.test.motion_source=bvh:<folder>``). On each it runs
the ``detect2d``, ``features`` and ``evaluate`` stages and prints test MPJPE, PA-MPJPE, MPVPE, the
ratio mocap / procedural, and how many clips, sequences and frames the mocap split holds. ``--variant``
adds procedural test splits rendered with other params (the camera options, say), same ratios.

Training never saw the files (the default profile's motion is procedural). Usage, with the CMU clips
of Debian's assimp-testmodels (``apt-get download assimp-testmodels && dpkg -x ...``)::

    python benchmarks/bench_heldout_mocap.py --mocap /tmp/x/usr/share/assimp/models/BVH --out /tmp/heldout
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from hmrmamba.data.h5schema import read_split, write_split
from hmrmamba.data.mocap.sources import plan_motion
from hmrmamba.data.synthetic.maker import SyntheticConfig, SyntheticMaker, subject_ids
from hmrmamba.layout import Layout
from hmrmamba.stages import detect2d, evaluate, features
from hmrmamba.stages.common import execute


def set_dotted(params: dict, override: str) -> None:
    """Apply ``a.b.c=<yaml value>`` to the params mapping."""
    key, _, value = override.partition("=")
    node = params
    *head, last = key.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = yaml.safe_load(value)


def build_test_split(src: Path, root: Path, source: str | None, overrides: list[str] = ()) -> dict:
    """A project at ``root`` with ``src``'s params, body model and models, and its test split only."""
    params = yaml.safe_load((src / "params.yaml").read_text())
    if source is not None:
        params["synthetic"]["splits"]["test"]["motion_source"] = source
    for o in overrides:
        set_dotted(params, o)
    for sub in ("data/body_model", "models"):
        shutil.copytree(src / sub, root / sub, dirs_exist_ok=True)
    cfg = SyntheticConfig.from_params(params["synthetic"])
    plan = plan_motion(params["synthetic"], root, fps=cfg.fps, min_frames=cfg.frames[0], seed=cfg.seed)["test"]
    spec = next(s for s in cfg.splits if s.name == "test")
    maker = SyntheticMaker(cfg, Layout(root).body_model)
    frames, seqs = maker.build(spec, subject_ids(cfg)["test"], motion=None if plan.procedural_only else plan)
    write_split(Layout(root).prepared("test"), frames, seqs,
                attrs={"dataset": "synthetic", "split": "test", "image_size": cfg.image_size, "joint_set": "h36m17"})
    # the stages after prepare see the test split only (subjects and draws above are the full config's)
    params["synthetic"]["splits"] = {"test": params["synthetic"]["splits"]["test"]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for mod in (detect2d, features, evaluate):
        execute(mod.STAGE, mod.run, root=root, params=params, log_to_mlflow=False)
    return {"files": {e.label: [f.label for f in fs] for e, fs in plan.files.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="params, data/body_model and models from here")
    ap.add_argument("--mocap", type=Path, required=True, help="a folder of BVH files training never saw")
    ap.add_argument("--out", type=Path, required=True,
                    help="a folder for the two temporary projects (a finished one there is reused)")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                    help="also a procedural test split with these params overrides, e.g. "
                         "--variant tilted 'synthetic.camera.roll_deg=[-15, 15]'")
    args = ap.parse_args()
    out = {}
    runs = [("procedural", None, []), ("mocap", f"bvh:{args.mocap.resolve()}", [])]
    runs += [(v[0], None, v[1:]) for v in args.variant]
    for name, source, overrides in runs:
        root = args.out / name
        t0 = time.perf_counter()
        if (root / "metrics/evaluate.json").is_file():  # a finished run in --out is reused
            info = json.loads((root / "motion_files.json").read_text())
        else:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            info = build_test_split(args.project.resolve(), root, source, overrides)
            (root / "motion_files.json").write_text(json.dumps(info))
        m = json.loads((root / "metrics/evaluate.json").read_text())
        split = read_split(Layout(root).prepared("test"))
        out[name] = {**info, "metrics": m, "sequences": len(split.seqs["seq_len"]),
                     "frames": int(split.seqs["seq_len"].sum()), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1, default=str))
    base = out["procedural"]["metrics"]["synthetic"]
    print(f"mocap test split: {sum(len(v) for v in out['mocap']['files'].values())} clips, "
          f"{out['mocap']['sequences']} sequences, {out['mocap']['frames']} frames")
    for name in [r[0] for r in runs[1:]]:
        m = out[name]["metrics"]["synthetic"]
        for key in ("mpjpe", "pa_mpjpe", "mpvpe"):
            if key in m and key in base:
                print(f"{name} {key}: procedural {base[key]:.1f} mm, {name} {m[key]:.1f} mm, "
                      f"ratio {m[key] / base[key]:.3f}")


if __name__ == "__main__":
    main()
