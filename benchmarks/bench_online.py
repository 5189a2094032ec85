"""Streaming (online) vs offline windows: accuracy on the embedded test split and latency per frame.

Trains ``tiny`` and its causal twin ``tiny-online`` briefly with the project's stages (train_lift,
then train_mesh from its best checkpoint) in a temporary project that links this checkout's
``data/`` (run ``dvc repro features`` first), then on the test split:

- offline: centred stride-1 windows, middle frame scored (the evaluation protocol), both models;
- online: ``tiny-online`` stepped frame by frame through each sequence with
  :class:`hmrmamba.demo.streaming.OnlineModel` (recurrent state carried, no window re-run);

and measures the per-frame latency of one online step (its parts: crop + ResNet-50 feature, lifter
step, reconstructor step) against re-running a 16-frame window per frame. Prints markdown tables.

    OMP_NUM_THREADS=1 python benchmarks/bench_online.py --lift-epochs 3 --mesh-epochs 1 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hmrmamba.config import find_project_root, load_params
from hmrmamba.layout import Layout


def train(root: Path, params: dict, variant: str, lift_epochs: int, mesh_epochs: int) -> tuple[Path, float]:
    """Both training stages for ``variant`` in a temporary project under ``root`` -> (mesh best.pt, seconds)."""
    from hmrmamba.stages import train_lift, train_mesh

    p = copy.deepcopy(params)
    p["experiment"] = {**p.get("experiment", {}), "variant": variant, "overrides": {}}
    for stage, epochs in (("train_lift", lift_epochs), ("train_mesh", mesh_epochs)):
        p[stage] = {**p[stage], "epochs": epochs, "resume": False, "log_checkpoint": False,
                    "checkpoint_dir": f"models/{variant}/{stage}"}
    layout = Layout(root)
    start = time.perf_counter()
    train_lift.run(p, layout)
    train_mesh.run(p, layout)
    return root / p["train_mesh"]["checkpoint_dir"] / "best.pt", time.perf_counter() - start


def evaluate(model, data, pred) -> dict[str, float]:
    from hmrmamba.evaluate.protocol import evaluate_predictions

    summary, _, _ = evaluate_predictions(pred, data)
    return {k: summary[k] for k in ("mpjpe", "pa_mpjpe", "accel")}


@torch.no_grad()
def predict_online(model, data):
    """Every test sequence streamed frame by frame -> Predictions (one row per frame)."""
    from hmrmamba.evaluate.protocol import Predictions
    from hmrmamba.demo.streaming import OnlineModel

    online = OnlineModel(model)
    a = data.arrays
    pose, joints, verts = [], [], []
    for start, n in zip(data.split.seqs["seq_start"], data.split.seqs["seq_len"]):
        online.reset()
        for i in range(int(start), int(start + n)):
            r = online.step(a["kp2d"][i], a["conf"][i], a["feats"][i])
            pose.append(r.pose3d)
            joints.append(r.joints)
            verts.append(r.vertices)
    return Predictions(pose3d=np.stack(pose), joints=np.stack(joints), vertices=np.stack(verts))


@torch.no_grad()
def latency(root: Path, model_online, model_offline, data, repeats: int) -> dict[str, float]:
    """Median milliseconds per frame of each part of an online step, and of a 16-frame window re-run."""
    from hmrmamba.data.h5schema import open_h5
    from hmrmamba.features.crops import bbox_from_keypoints
    from hmrmamba.features.extract import iter_features, prepare_model
    from hmrmamba.stages.features import build_backbone

    params = load_params(root / "params.yaml")
    fp = params["features"]
    backbone = prepare_model(build_backbone(fp, Layout(root))[0])
    with open_h5(Layout(root).prepared("test")) as h5:
        frames = np.asarray(h5["frames/image"][:repeats])
    kp_px = data.arrays["kp2d_px"][:repeats]
    conf = data.arrays["conf"][:repeats]
    times: dict[str, list[float]] = {"feature (box + crop + ResNet-50)": [], "lifter step": [],
                                     "reconstructor step": [], "window re-run (16 frames, tiny)": []}
    state = model_online.init_state(1)
    a = data.arrays
    for i in range(repeats):
        t0 = time.perf_counter()
        box = bbox_from_keypoints(kp_px[i:i + 1], conf[i:i + 1], image_size=frames.shape[1:3],
                                  scale=float(fp.get("bbox_scale", 1.2)))
        list(iter_features(frames[i:i + 1], box, model=backbone, crop_size=int(fp["crop_size"]), batch_size=1,
                           prepared=True, progress=False))
        t1 = time.perf_counter()
        kp = torch.as_tensor(a["kp2d"][i]).view(1, 1, 17, 2)
        c = torch.as_tensor(a["conf"][i]).view(1, 1, 17)
        f = torch.as_tensor(a["feats"][i]).view(1, 1, -1)
        f = (f - model_online.feat_mean) / model_online.feat_std
        pose, lifter_state = model_online.lifter.step(kp, c, f, state.lifter)
        t2 = time.perf_counter()
        _, recon_state = model_online.reconstructor.step(pose, f, state.recon)
        t3 = time.perf_counter()
        state.lifter, state.recon = lifter_state, recon_state
        w = slice(max(0, i - 15), max(0, i - 15) + 16)
        model_offline(torch.as_tensor(a["kp2d"][w])[None], torch.as_tensor(a["conf"][w])[None],
                      torch.as_tensor(a["feats"][w])[None])
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(dt * 1000.0)
    return {k: float(np.median(v[1:] if len(v) > 1 else v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lift-epochs", type=int, default=3)
    parser.add_argument("--mesh-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-frames", type=int, default=50)
    parser.add_argument("--keep", type=Path, help="copy the trained mesh checkpoints here (<variant>.pt)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hmrmamba.data.loading import load_split_arrays
    from hmrmamba.evaluate.protocol import predict_split
    from hmrmamba.stages.evaluate import load_trained

    home = find_project_root()
    params = load_params(home / "params.yaml")
    window = int(params["train_mesh"]["window"])
    with tempfile.TemporaryDirectory(prefix="bench_online_") as tmp:
        root = Path(tmp)
        (root / "data").symlink_to(home / "data", target_is_directory=True)
        (root / "params.yaml").write_text((home / "params.yaml").read_text())
        layout = Layout(root)
        data = load_split_arrays(layout, "test", detector=params["experiment"]["detector"])
        rows, models, train_s = {}, {}, {}
        for variant in ("tiny", "tiny-online"):
            ckpt, train_s[variant] = train(root, params, variant, args.lift_epochs, args.mesh_epochs)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ckpt, args.keep / f"{variant}.pt")
            models[variant] = load_trained(ckpt, layout, lift_only=False)[0]
            pred = predict_split(models[variant], data, length=window, progress=False)
            rows[f"{variant}, offline centred windows of {window}"] = evaluate(models[variant], data, pred)
        start = time.perf_counter()
        pred = predict_online(models["tiny-online"], data)
        online_s = time.perf_counter() - start
        rows["tiny-online, online (frame by frame, state carried)"] = evaluate(models["tiny-online"], data, pred)
        lat = latency(home, models["tiny-online"], models["tiny"], data, args.latency_frames)
    frames = len(data.arrays["kp2d"])
    print(f"Test split: {frames} frames in {data.split.num_seqs} sequences; training {args.lift_epochs} + "
          f"{args.mesh_epochs} epochs (tiny {train_s['tiny']:.0f} s, tiny-online {train_s['tiny-online']:.0f} s); "
          f"{torch.get_num_threads()} thread(s).\n")
    print("| model, mode | MPJPE (mm) | PA-MPJPE (mm) | accel (mm/frame²) |")
    print("|---|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['mpjpe']:.1f} | {m['pa_mpjpe']:.1f} | {m['accel']:.1f} |")
    print(f"\nOnline stepping of the whole test split: {online_s:.2f} s, "
          f"{online_s / frames * 1000:.2f} ms per frame (model only).\n")
    total = sum(v for k, v in lat.items() if not k.startswith("window"))
    print("| part of one online frame | ms (median) | share |")
    print("|---|---:|---:|")
    for k, v in lat.items():
        if not k.startswith("window"):
            print(f"| {k} | {v:.2f} | {v / total:.0%} |")
    print(f"| **online step total** | **{total:.2f}** | 100% |")
    print(f"| for comparison: {next(k for k in lat if k.startswith('window'))} per frame | "
          f"{lat[next(k for k in lat if k.startswith('window'))]:.2f} | |")


if __name__ == "__main__":
    main()
