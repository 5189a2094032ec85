"""Benchmark: can a SPIN-like backbone be trained on the embedded default data within a CPU budget?

The features stage's ResNet-50 is a seeded random init; its global features carry no body (the
features stage's linear probe is at the mean-pose floor). This measures two ways of training it
on the training split's rendered crops (the same crops, boxes and 96 px size the features stage
uses) to predict root-relative 3D joints, scored by the features stage's own probe (a ridge from
the pooled 2048-d features to 3D joints, fitted on train, scored on test) beside the mean-pose floor:

- ``--mode full``: the whole network from its random init; box jitter and horizontal flips (the
  image mirrored, joints mirrored and left/right swapped); heads: 3D joints and 2D joints from the
  pooled feature, 2D joints by a soft-argmax over a heatmap on layer3 (the map GA samples);
- ``--mode layer4``: stem to layer3 frozen at the random init (BatchNorm statistics calibrated on
  512 training crops), layer3 maps computed once, then only layer4 and a 3D-joint head trained.

It prints the steps, wall seconds, the final training loss, the 3D head's test error and the probe.
Needs ``data/prepared`` and ``data/detections`` (run ``dvc repro detect2d`` first). Usage:
``python benchmarks/bench_backbone_training.py --mode full --steps 150 --batch 32 --lr 2e-3``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hmrmamba.data.h5schema import Field, read_split, read_table
from hmrmamba.features.backbone_training import normalise_crops as normalise
from hmrmamba.features.backbone_training import recolor, soft_argmax
from hmrmamba.features.crops import bbox_from_keypoints, crop_and_resize
from hmrmamba.features.extract import extract_features
from hmrmamba.features.probe import feature_probe
from hmrmamba.features.resnet import ResNet50
from hmrmamba.layout import Layout
from hmrmamba.skeleton import H36M17

CROP = 96
SPLITS = ("train", "val", "test")


def load_split(layout: Layout, split: str) -> dict[str, np.ndarray]:
    """Frames (N, H, W, 3) uint8, root-relative 3D joints (N, 17, 3) m, 2D joints (N, 17, 2) px and
    the features stage's crop boxes (N, 4) from the ``cpn`` keypoints."""
    data = read_split(layout.prepared(split), with_images=True)
    n = data.num_frames
    det, _ = read_table(layout.detections(split), {"cpn/keypoints": Field((17, 2), "f"),
                                                   "cpn/confidence": Field((17,), "f")}, rows=n)
    size = int(data.attrs["image_size"])
    boxes = bbox_from_keypoints(det["cpn/keypoints"], det["cpn/confidence"], image_size=(size, size), scale=1.2)
    j3d = data.frames["joints3d"]
    return {"image": data.frames["image"], "joints3d": j3d - j3d[:, :1], "joints2d": data.frames["joints2d"],
            "boxes": boxes}


def train_full(net: ResNet50, train: dict, *, steps: int, batch: int, lr: float, rng: np.random.Generator,
               bf16: bool = False, color: bool = False):
    """Train the whole network; returns the last step's 3D loss (mm)."""
    if bf16:
        net.to(memory_format=torch.channels_last)
    head, heatmap = nn.Linear(2048, 17 * 5), nn.Conv2d(1024, 17, 1)
    params = [*net.parameters(), *head.parameters(), *heatmap.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    flip = torch.as_tensor(H36M17.flip)
    net.train()
    loss3d = float("nan")
    for step in range(steps):
        idx = np.sort(rng.choice(len(train["image"]), batch, replace=False))
        box = train["boxes"][idx].copy()
        box[:, 2:] *= rng.uniform(0.9, 1.15, (batch, 1))
        box[:, :2] += rng.uniform(-0.06, 0.06, (batch, 2)) * box[:, 2:3]
        x = crop_and_resize(train["image"][idx], box, out_size=CROP, normalize=not color)
        if color:  # torch's generator (seeded by --seed), as the train_backbone stage draws it
            x = normalise(recolor(x))
        y3 = torch.as_tensor(train["joints3d"][idx])
        y2 = torch.as_tensor((train["joints2d"][idx] - box[:, None, :2]) / (box[:, None, 2:3] / 2), dtype=torch.float32)
        mirror = torch.as_tensor(rng.random(batch) < 0.5)
        x[mirror] = x[mirror].flip(-1)
        y3[mirror] = y3[mirror][:, flip] * torch.tensor([-1.0, 1.0, 1.0])
        y2[mirror] = y2[mirror][:, flip] * torch.tensor([-1.0, 1.0])
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pooled, mid = net.forward_features(x, map_layer="layer3")
            out = head(pooled).float()
            mid = heatmap(mid).float()
        l3 = (out[:, :51].reshape(-1, 17, 3) - y3).norm(dim=-1).mean()
        l2 = (out[:, 51:].reshape(-1, 17, 2) - y2).abs().mean()
        lh = (soft_argmax(mid) - y2).abs().mean()
        opt.zero_grad()
        (5 * l3 + l2 + lh).backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        loss3d = 1000 * float(l3)
        if step % 25 == 0:
            print(f"  step {step}: 3D {loss3d:.0f} mm", flush=True)
    net.eval()
    return loss3d, lambda feats: head(feats)[:, :51]


def trunk(net: ResNet50, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) crops -> layer3 maps (B, 1024, S/16, S/16)."""
    return net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))


def layer3_maps(net: ResNet50, data: dict) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([trunk(net, crop_and_resize(data["image"][i:i + 64], data["boxes"][i:i + 64], out_size=CROP))
                          for i in range(0, len(data["image"]), 64)])


def train_layer4(net: ResNet50, train: dict, maps: torch.Tensor, *, steps: int, batch: int, lr: float,
                 rng: np.random.Generator):
    """Train layer4 and a 3D head on fixed random layer3 maps; returns the last 3D loss (mm)."""
    head = nn.Linear(2048, 51)
    params = [*net.layer4.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    y3 = torch.as_tensor(train["joints3d"])
    net.layer4.train()
    loss3d = float("nan")
    for step in range(steps):
        idx = torch.as_tensor(rng.choice(len(y3), batch, replace=False))
        loss = (head(net.layer4(maps[idx]).mean((2, 3))).reshape(-1, 17, 3) - y3[idx]).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss3d = 1000 * float(loss)
        if step % 50 == 0:
            print(f"  step {step}: 3D {loss3d:.0f} mm", flush=True)
    net.layer4.eval()
    return loss3d, head


def calibrate_batchnorm(net: ResNet50, train: dict, *, frames: int, rng: np.random.Generator) -> None:
    """Set every BatchNorm's running statistics to the trunk's batch statistics on ``frames`` crops."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    idx = np.sort(rng.choice(len(train["image"]), frames, replace=False))
    net.train()
    with torch.no_grad():
        for s in range(0, frames, 64):
            part = idx[s:s + 64]
            trunk(net, crop_and_resize(train["image"][part], train["boxes"][part], out_size=CROP))
    net.eval()


def step_speed(*, batch: int, repeats: int = 3) -> None:
    """Seconds per AdamW step (forward, backward, update) of ResNet-50 on random 96 px crops, per precision
    and memory format, one process; the first step of each setting is untimed."""
    from hmrmamba.features.backbone_training import bf16_supported

    net = ResNet50(init_seed=0)
    x = torch.randn(batch, 3, CROP, CROP)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    rows = [("fp32", False, False), ("fp32", True, False)] + ([("bf16", True, True)] if bf16_supported() else [])
    print(f"| precision | memory format | s per step of {batch} |\n|---|---|---:|")
    for name, channels_last, bf16 in rows:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = net.forward_features(xx, map_layer="layer3")[0].float().pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        print(f"| {name} | {'channels-last' if channels_last else 'channels-first'} | {np.median(times):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=".")
    ap.add_argument("--mode", choices=("full", "layer4", "speed"), default="full",
                    help="speed: seconds per training step of random crops, fp32 vs bf16, no data needed")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--color", action="store_true", help="colour augmentation (full mode)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast, channels-last (full mode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.mode == "speed":
        step_speed(batch=args.batch)
        return
    layout = Layout(Path(args.root))
    data = {s: load_split(layout, s) for s in SPLITS}
    net = ResNet50(init_seed=args.seed)
    start = time.perf_counter()
    if args.mode == "full":
        last, head3d = train_full(net, data["train"], steps=args.steps, batch=args.batch, lr=args.lr, rng=rng,
                                     bf16=args.bf16, color=args.color)
        net.to(memory_format=torch.contiguous_format)
        feats = {s: extract_features(d["image"], None, None, boxes=d["boxes"], model=net, crop_size=CROP,
                                     batch_size=64, progress=False)["features"].astype(np.float32)
                 for s, d in data.items()}
    else:
        calibrate_batchnorm(net, data["train"], frames=512, rng=rng)
        maps = {s: layer3_maps(net, d) for s, d in data.items()}
        last, head3d = train_layer4(net, data["train"], maps["train"], steps=args.steps, batch=args.batch,
                                    lr=args.lr, rng=rng)
        with torch.no_grad():
            feats = {s: torch.cat([net.layer4(m[i:i + 128]).mean((2, 3)) for i in range(0, len(m), 128)]).numpy()
                     for s, m in maps.items()}
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = head3d(torch.as_tensor(feats["test"])).reshape(-1, 17, 3).numpy()
        train_pred = head3d(torch.as_tensor(feats["train"])).reshape(-1, 17, 3).numpy()
    head_mm = float(np.linalg.norm(pred - data["test"]["joints3d"], axis=-1).mean() * 1000)
    print(f"3D head on train, eval mode: {np.linalg.norm(train_pred - data['train']['joints3d'], axis=-1).mean() * 1000:.0f} mm")
    probe = feature_probe(*[(feats[s], data[s]["joints3d"]) for s in SPLITS])
    print(f"\n| mode | steps x batch | wall s | last train 3D (mm) | head on test (mm) | probe on test (mm) | "
          f"mean-pose floor (mm) |\n|---|---|---:|---:|---:|---:|---:|\n"
          f"| {args.mode} | {args.steps} x {args.batch} | {seconds:.0f} | {last:.0f} | {head_mm:.0f} | "
          f"{probe.probe_mm:.1f} | {probe.floor_mm:.1f} |")


if __name__ == "__main__":
    main()
