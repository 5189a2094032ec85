"""Stage-1 validation MPJPE of `tiny` under different eq. 14 loss weights, on the project's data.

Trains the lifter (the same model, data windows and optimiser settings as the `train_lift` stage of the
default profile, without the Trainer's checkpointing) for a few epochs per weight setting and prints a
markdown table of validation MPJPE (middle frames of stride-16 windows, pelvis-centred, mm). It needs the
data stages' outputs (`dvc repro features`).

    .venv/bin/python benchmarks/bench_lift_loss.py [--epochs 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from hmrmamba.config import find_project_root
from hmrmamba.data.loading import load_split_arrays
from hmrmamba.layout import Layout
from hmrmamba.train.losses import LiftLossWeights, lift_loss
from hmrmamba.models.registry import build

#: (label, weights or None for plain MPJPE)
SETTINGS = [
    ("MPJPE only", None),
    ("1, 0.5, 20, 0.5 (paper)", LiftLossWeights(velocity=20.0)),
    ("1, 0.5, 20, 0", LiftLossWeights(velocity=20.0, reprojection=0.0)),
    ("1, 0.5, 2, 0.5", LiftLossWeights(velocity=2.0)),
    ("1, 0.5, 0.5, 0.5 (default profile)", LiftLossWeights(velocity=0.5)),
    ("1, 0.5, 0, 0.5", LiftLossWeights(velocity=0.0)),
]


def val_mpjpe(model, windows) -> float:
    """Mean per-joint error (mm) of ``model`` over ``windows``, pelvis-centred, all frames."""
    model.eval()
    errs = []
    with torch.no_grad():
        for b in torch.utils.data.DataLoader(windows, batch_size=64):
            p = model(b["kp2d"], b["conf"], b["feats"], lift_only=True).pose3d
            p, g = p - p[..., :1, :], b["joints3d"] - b["joints3d"][..., :1, :]
            errs.append((p - g).norm(dim=-1).mean(-1).flatten())
    return float(torch.cat(errs).mean()) * 1000.0


def train_once(weights, *, train, val, epochs: int, seed: int, image_size: float) -> float:
    torch.manual_seed(seed)
    model = build("tiny", lift_only=True)
    feats = torch.as_tensor(train.arrays["feats"])
    model.set_feature_stats(feats.mean(0), feats.std(0))
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train.windows(length=16, stride=4, centred=False), batch_size=16,
                                         shuffle=True, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)
    for _ in range(epochs):
        model.train()
        for b in loader:
            out = model(b["kp2d"], b["conf"], b["feats"], lift_only=True)
            if weights is None:
                loss = (out.pose3d - b["joints3d"]).norm(dim=-1).mean()
            else:
                loss = lift_loss(out.pose3d, b["joints3d"], b["kp2d_px"], b["conf"], b["mask"], weights,
                                 camera=b["camera"], root=b["root"], image_size=image_size)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return val_mpjpe(model, val.windows(length=16, stride=16, centred=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layout = Layout(find_project_root())
    train = load_split_arrays(layout, "train", detector="cpn")
    val = load_split_arrays(layout, "val", detector="cpn")
    size = float(train.split.attrs["image_size"])
    mean = torch.as_tensor(train.arrays["joints3d"].mean(0))
    floor = float((mean - torch.as_tensor(val.arrays["joints3d"])).norm(dim=-1).mean()) * 1000.0
    print(f"mean-pose floor on val: {floor:.1f} mm; {args.epochs} epochs each, seed {args.seed}\n")
    print("| eq. 14 weights (mpjpe, temporal, velocity, reprojection) | val MPJPE (mm) | seconds |")
    print("|---|---|---|")
    for label, weights in SETTINGS:
        t0 = time.perf_counter()
        err = train_once(weights, train=train, val=val, epochs=args.epochs, seed=args.seed, image_size=size)
        print(f"| {label} | {err:.1f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
