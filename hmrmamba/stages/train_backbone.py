"""DVC stage ``train_backbone``: the ResNet-50 trained on the training split's rendered crops.

The SPIN analogue (:mod:`hmrmamba.features.backbone_training`): the paper's image features come
from SPIN's backbone, trained for mesh recovery; without it, the embedded default trains the same
architecture on its own training frames (never on val or test; val only picks the best epoch).
The ``features`` stage then loads ``<checkpoint_dir>/best.pt``.

With ``train_backbone.enabled: false`` (the paper profiles, which load SPIN's checkpoint through
``features.weights``) it trains nothing and removes any checkpoint an earlier enabled run left.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hmrmamba.layout import Layout
from hmrmamba.stages.common import main as stage_main

STAGE = "train_backbone"
CHECKPOINTS = ("last.pt", "best.pt", "history.csv", "curve.png")
log = logging.getLogger(__name__)


def load_crop_targets(params: Mapping[str, Any], layout: Layout, split: str, *, max_frames: int | None = None):
    """The split's rendered frames, the features stage's crop boxes and the joints, as
    :class:`~hmrmamba.features.backbone_training.CropTargets`; ``max_frames`` evenly spaced rows."""
    import numpy as np

    from hmrmamba.data.h5schema import FRAME_FIELDS, read_split
    from hmrmamba.errors import InputError
    from hmrmamba.features.backbone_training import CropTargets
    from hmrmamba.features.crops import bbox_from_keypoints
    from hmrmamba.settings import section_settings
    from hmrmamba.stages.features import image_hw, read_detections

    fs = section_settings(params, "features")
    path = layout.prepared(split)
    data = read_split(path, with_images=True)
    if "image" not in data.frames:
        raise InputError("no rendered frames to train the backbone on", file=path, field="frames/image",
                         expected=FRAME_FIELDS["image"].describe("N") + " (synthetic data; for real data set "
                                  "train_backbone.enabled: false and features.weights)")
    n = data.num_frames
    kp, conf = read_detections(layout, split, fs.bbox_source, n)
    height, width = (int(v) for v in image_hw(data)[0])
    boxes = bbox_from_keypoints(kp, conf, image_size=(height, width), scale=fs.bbox_scale)
    rows = np.arange(n) if max_frames is None or max_frames >= n else np.unique(
        np.linspace(0, n - 1, max_frames).round().astype(np.int64))
    j3d = data.frames["joints3d"][rows]
    return CropTargets(images=data.frames["image"][rows], boxes=boxes[rows], joints3d=j3d - j3d[:, :1],
                       joints2d=data.frames["joints2d"][rows])


def one_cycle(optimizer, *, total_steps: int, warmup: float, min_ratio: float):
    """OneCycleLR stepped after every optimiser step: from lr/25 up to lr over the first ``warmup``
    fraction of ``total_steps`` (cosine), then down to lr x ``min_ratio``."""
    import torch

    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(2, total_steps),
        pct_start=warmup, div_factor=25.0, final_div_factor=1.0 / (25.0 * min_ratio) if min_ratio > 0 else 1e4,
        cycle_momentum=False)


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from dataclasses import asdict

    import torch

    from hmrmamba import mlflow_runs
    from hmrmamba.config import resolve_path
    from hmrmamba.errors import InputError
    from hmrmamba.features.backbone_training import (BackboneNet, CropBatcher, backbone_objective,
                                                     backbone_validation, bf16_supported)
    from hmrmamba.settings import section_settings
    from hmrmamba.skeleton import H36M17
    from hmrmamba.train import Trainer, make_loader, seed_everything
    from hmrmamba.report.plots import training_curves
    from hmrmamba.train.experiment import discard_stale_checkpoints, input_fingerprint
    from hmrmamba.train.optim import NO_DECAY_RULE, build_adamw

    s = section_settings(params, STAGE)
    fs = section_settings(params, "features")
    ckpt_dir = resolve_path(layout.root, s.checkpoint_dir, field=f"{STAGE}.checkpoint_dir")
    if not s.enabled:
        for name in CHECKPOINTS:
            (ckpt_dir / name).unlink(missing_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        source = f"features.weights ({fs.weights})" if fs.weights else "the seeded random init"
        log.info("train_backbone.enabled is false: nothing trained; the features stage uses %s", source)
        return {"enabled": False, "features_from": source}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the Trainer puts the model
    if s.precision == "bf16" and not bf16_supported(device):
        raise InputError(f"this {device.upper()} has no native bfloat16 (CPU: AVX512-BF16/AMX)", file="params.yaml",
                         field=f"{STAGE}.precision", expected="'auto' or 'fp32' on this machine")
    bf16 = s.precision == "bf16" or (s.precision == "auto" and bf16_supported(device))
    seed_everything(s.seed)
    train = load_crop_targets(params, layout, "train")
    val = load_crop_targets(params, layout, "val", max_frames=s.val_frames)
    net = BackboneNet(num_joints=train.joints3d.shape[1], map_layer=fs.map_layer, init_seed=fs.init_seed)
    net = net.to(memory_format=torch.channels_last)
    aug = {"crop_size": fs.crop_size, "flip_index": H36M17.flip}
    batcher = CropBatcher(train, **aug, flip=s.flip, scale=tuple(s.box_scale), shift=s.box_shift, color=s.color)
    loader = make_loader(batcher.dataset(), batch_size=s.batch_size, shuffle=True, seed=s.seed, drop_last=True,
                         collate_fn=batcher)
    optimizer = build_adamw(net, lr=s.lr, weight_decay=s.weight_decay)
    config = {"stage": STAGE, "train": {k: v for k, v in asdict(s).items() if k not in ("resume",)},
              "features": {k: getattr(fs, k) for k in ("crop_size", "map_layer", "init_seed", "bbox_source",
                                                        "bbox_scale")},
              "precision": "bf16" if bf16 else "fp32", "optimizer": NO_DECAY_RULE,
              "inputs": input_fingerprint([layout.prepared("train"), layout.prepared("val"),
                                           layout.detections("train"), layout.detections("val")])}
    discard_stale_checkpoints(ckpt_dir, config)
    trainer = Trainer(net, step_fn=backbone_objective(asdict(s.loss), bf16=bf16), optimizer=optimizer,
                      scheduler=one_cycle(optimizer, total_steps=s.epochs * len(loader), warmup=s.warmup,
                                          min_ratio=s.min_lr_ratio), scheduler_interval="step",
                      train_loader=loader, val_fn=backbone_validation(CropBatcher(val, **aug, augment=False),
                                                                      batch_size=64, bf16=bf16),
                      epochs=s.epochs, ckpt_dir=ckpt_dir, seed=s.seed, monitor="val_mpjpe", mode="min",
                      log_fn=lambda m, e: mlflow_runs.log_metrics(m, step=e), grad_clip=s.grad_clip,
                      config=config)
    result = trainer.fit(resume=s.resume)
    png = training_curves(ckpt_dir / "curve.png", result.history,
                          title=f"{STAGE}: ResNet-50 on {len(train)} training crops")
    for path in (png, ckpt_dir / "history.csv"):
        mlflow_runs.log_artifact(path)
    last = result.history[-1]
    return {"enabled": True, "precision": config["precision"], "device": device, "epochs": len(result.history),
            "train_frames": len(train), "val_frames": len(val), "best_epoch": result.best_epoch,
            "best_val_mpjpe": result.best_metric, "final_train_mpjpe": last.get("train_mpjpe_mm"),
            "final_val_map2d": last.get("val_map2d"), "resumed": bool(result.resumed),
            "seconds_per_epoch": round(sum(h.get("epoch_seconds", 0) for h in result.history)
                                       / max(1, len(result.history)), 2)}


if __name__ == "__main__":
    stage_main(STAGE, run)
