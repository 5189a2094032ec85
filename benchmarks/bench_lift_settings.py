"""Stage-1 MPJPE of `tiny` under named settings of the lifter or its training, on the project's data.

Each setting trains the stage-1 lifter with the real ``train_lift`` stage (``train_stage``: the
default profile's data windows, objective, optimiser groups and validation) for ``--epochs`` epochs
per seed, then scores its best-on-val checkpoint on the test split. Prints a markdown table of val
and test MPJPE (mm, mean ± std over seeds) and seconds per epoch.

    .venv/bin/python benchmarks/bench_lift_settings.py --study scan [--epochs 4] [--seeds 0 1 2] [--threads 1]
    .venv/bin/python benchmarks/bench_lift_settings.py --study schedule --epochs 12

Studies (docs/model.md, docs/training.md):

- ``scan``: the dual scan's local order and direction (lifter overrides ``kinematic_scan`` /
  ``bidirectional``): ``limbs, one-way`` (the first version's order, both branches forward only),
  ``tree, one-way`` (the depth-first walk of the kinematic tree, revisiting pelvis and thorax),
  ``tree, both ways`` (the walk, each branch also scanned reversed by its own Mamba);
- ``schedule``: the learning-rate decay per epoch (``train_lift.lr_decay``) over ``--epochs``;
- ``epochs``: 12 against 20 epochs of stage 1 (a setting's own ``epochs`` overrides ``--epochs``);
- ``flip``: training windows mirrored with probability 0.5 (``train_lift.flip``) or never.

It copies the split files it reads (prepared, detections, features) into ``--work`` (default: a
temporary folder) first, so other jobs rewriting ``data/`` cannot change a measurement half-way,
and writes nothing into the project. ``--map-dim 0`` (the default here) makes GA sample the global
features over time only, which is 3-4x cheaper per epoch than the 6x6 maps and leaves the scans,
which are what is compared, the same; ``--map-dim auto`` uses the cached maps like the stage.
Needs the data stages' outputs (``dvc repro features``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

#: study -> setting -> (lifter overrides, train_lift overrides)
STUDIES: dict[str, dict[str, tuple[dict, dict]]] = {
    "scan": {
        "limbs, one-way": ({"kinematic_scan": "limbs", "bidirectional": False}, {}),
        "tree, one-way": ({"kinematic_scan": "tree", "bidirectional": False}, {}),
        "tree, both ways": ({"kinematic_scan": "tree", "bidirectional": True}, {}),
    },
    "schedule": {
        "lr_decay 0.99": ({}, {"lr_decay": 0.99}),
        "lr_decay 0.9": ({}, {"lr_decay": 0.9}),
        "lr_decay 0.8": ({}, {"lr_decay": 0.8}),
    },
    "epochs": {
        "12 epochs": ({}, {"epochs": 12}),
        "20 epochs": ({}, {"epochs": 20}),
    },
    "flip": {
        "no flip": ({}, {"flip": 0.0}),
        "flip 0.5": ({}, {"flip": 0.5}),
    },
}


def copy_inputs(root: Path, work: Path) -> None:
    """The split files train_stage reads, copied under ``work`` (same relative paths)."""
    for kind in ("prepared", "detections", "features"):
        for split in ("train", "val", "test"):
            src = root / "data" / kind / f"{split}.h5"
            dst = work / "data" / kind / f"{split}.h5"
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


def run_one(params: dict, layout, overrides: dict, train: dict, *, seed: int, epochs: int, tag: str) -> dict:
    """Train one setting and seed -> {"val": best val MPJPE, "test": its test MPJPE, "sec": s/epoch}."""
    from hmrmamba.data.loading import load_split_arrays
    from hmrmamba.stages.train_lift import STAGE, objective
    from hmrmamba.train.experiment import train_stage
    from hmrmamba.train.objectives import validation
    from hmrmamba.train.trained import load_trained

    p = dict(params)
    p["experiment"] = {**params["experiment"], "overrides": {**params["experiment"]["overrides"], **overrides}}
    p[STAGE] = {**params[STAGE], "epochs": epochs, **train, "seed": seed, "resume": False, "log_checkpoint": False,
                "checkpoint_dir": f"models/{tag}-s{seed}"}
    summary = train_stage(STAGE, p, layout, objective_factory=objective, lift_only=True)
    model, _ = load_trained(layout.root / p[STAGE]["checkpoint_dir"] / "best.pt", layout, lift_only=True)
    maps = model.map_dim > 0
    test = load_split_arrays(layout, "test", detector=p["experiment"]["detector"], with_maps=maps)
    score = validation(test, length=int(p[STAGE]["window"]), lift_only=True)(model.eval())
    return {"val": summary["best_val_mpjpe"], "test": score["mpjpe"], "sec": summary["seconds_per_epoch"],
            "params": summary["params_m"]}


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def main() -> None:
    from hmrmamba.config import find_project_root, load_params
    from hmrmamba.layout import Layout

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--study", choices=list(STUDIES), default="scan")
    ap.add_argument("--settings", nargs="+", help="a subset of the study's settings (default: all)")
    ap.add_argument("--map-dim", default="0", help="GA's map channels: 0 (global features only) or 'auto'")
    ap.add_argument("--work", type=Path, default=None, help="where to copy the inputs and train (kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = find_project_root()
    params = load_params(root / "params.yaml")
    if args.map_dim != "auto":
        params["experiment"] = {**params["experiment"],
                                "overrides": {**params["experiment"]["overrides"], "map_dim": int(args.map_dim)}}
    study = STUDIES[args.study]
    unknown = sorted(set(args.settings or ()) - set(study))
    if unknown:
        ap.error(f"--settings {unknown}: not in study {args.study!r} ({', '.join(study)})")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_lift_settings-"))
    copy_inputs(root, work)
    layout = Layout(work)
    rows = {}
    for name in args.settings or list(study):
        model_overrides, train_overrides = study[name]
        for seed in args.seeds:
            t0 = time.perf_counter()
            r = run_one(params, layout, model_overrides, train_overrides, seed=seed, epochs=args.epochs,
                        tag=name.replace(", ", "-").replace(" ", "_").replace(".", ""))
            rows.setdefault(name, []).append(r)
            print(f"# {name}, seed {seed}: val {r['val']:.1f} mm, test {r['test']:.1f} mm, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n`tiny` stage 1, variant overrides {params['experiment']['overrides']}, detector "
          f"{params['experiment']['detector']}, {args.epochs} epochs, seeds {args.seeds}, "
          f"{args.threads} thread(s); work dir {work}\n")
    print(f"| {args.study} setting | lifter params | val MPJPE (mm) | test MPJPE (mm) | s / epoch |")
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        print(f"| {name} | {rs[0]['params'] * 1e3:.1f}k | {mean_std([r['val'] for r in rs])} | "
              f"{mean_std([r['test'] for r in rs])} | {statistics.mean(r['sec'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
