"""One training stage, end to end: data, model, optimiser, Trainer, MLflow curves.

Both stages share this; they differ in the objective, the learning rate, the batch size and
where they start (stage 2 loads stage-1 weights and fine-tunes the whole network).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrmamba.errors import InputError
from hmrmamba.layout import Layout
from hmrmamba.train.distributed import is_main_process

log = logging.getLogger(__name__)


def experiment_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``experiment`` section (variant, detector, ablation flags) with validation."""
    from hmrmamba.detect.sources import DETECTOR_SOURCES
    from hmrmamba.models.registry import variant_names

    exp = dict(params.get("experiment") or {})
    variant = exp.get("variant", "tiny")
    if variant not in variant_names():
        raise InputError(f"unknown variant '{variant}'", file="params.yaml", field="experiment.variant",
                         expected=f"one of {variant_names()}")
    detector = exp.get("detector", "cpn")
    sources = list(params.get("detect2d", {}).get("sources", DETECTOR_SOURCES))
    if detector not in sources:
        raise InputError(f"detector '{detector}' was not produced by detect2d", file="params.yaml",
                         field="experiment.detector", expected=f"one of detect2d.sources {sources}")
    return {"variant": variant, "detector": detector, "overrides": dict(exp.get("overrides") or {})}


def checkpoint_dir(params: Mapping[str, Any], layout: Layout, stage: str) -> Path:
    """``<stage>.checkpoint_dir`` resolved inside the project (``..`` escapes refused)."""
    from hmrmamba.config import resolve_path

    return resolve_path(layout.root, params[stage]["checkpoint_dir"], field=f"{stage}.checkpoint_dir")


def load_mesh_assets(layout: Layout):
    """Mesh hierarchy, template and H36M regressor from the body_model stage -> MeshAssets."""
    from hmrmamba.body.body_model import load_body_arrays
    from hmrmamba.body.mesh_sampling import load_mesh_downsampling
    from hmrmamba.models.reconstructor import mesh_assets_from_hierarchy

    arrays = load_body_arrays(layout.body_model)
    hierarchy = load_mesh_downsampling(layout.downsampling)
    return mesh_assets_from_hierarchy(hierarchy, arrays["v_template"], arrays["J_regressor_h36m"]), arrays


def build_model(params: Mapping[str, Any], layout: Layout, *, lift_only: bool):
    """-> (model, resolved config) for the configured variant and ablation overrides."""
    from hmrmamba.data.loading import map_shape
    from hmrmamba.models.registry import build, resolve_config

    exp = experiment_settings(params)
    overrides = dict(exp["overrides"])
    lifter = resolve_config(exp["variant"], **overrides)["lifter"]
    if "map_dim" in lifter and "map_dim" not in overrides and lifter["map_dim"]:
        # GA samples the maps the features stage cached, at their width (none cached: over time only)
        shape = map_shape(layout, "train")
        overrides["map_dim"] = shape[0] if shape else 0
        if not shape:
            log.warning("%s has no feature maps (features.keep_spatial: false): GA samples the global "
                        "features over time only", layout.features("train"))
    assets = None if lift_only else load_mesh_assets(layout)[0]
    model = build(exp["variant"], assets=assets, lift_only=lift_only, **overrides)
    cfg = resolve_config(exp["variant"], **overrides)
    return model, cfg


def map_statistics(maps: np.ndarray, *, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of feature maps (N, C, h, w) over frames and cells, in float64 chunks
    (the maps stay float16 in memory) -> ((C,), (C,)) float32."""
    total = np.zeros(maps.shape[1]); square = np.zeros(maps.shape[1])
    for start in range(0, len(maps), chunk):
        x = maps[start:start + chunk].astype(np.float64)
        total += x.sum((0, 2, 3)); square += (x * x).sum((0, 2, 3))
    count = max(1, maps.shape[0] * maps.shape[2] * maps.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean * mean, 0.0))
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


def input_fingerprint(paths: list[Path]) -> dict[str, list[int]]:
    """Size and modification time of each input file: a resumed run must see the same inputs."""
    out = {}
    for path in paths:
        st = Path(path).stat()
        out[str(Path(path).name)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def discard_stale_checkpoints(ckpt_dir: Path, config: Mapping[str, Any]) -> None:
    """Remove checkpoints written for other params or inputs, so ``resume`` never continues them."""
    from hmrmamba.train.checkpoint import load_checkpoint

    last = ckpt_dir / "last.pt"
    if not last.exists():
        return
    try:
        stored = load_checkpoint(last).get("config")
    except InputError:
        stored = None
    if stored != config:
        log.warning("checkpoints in %s were made with other params or inputs; starting afresh", ckpt_dir)
        for name in ("last.pt", "best.pt", "history.csv"):
            (ckpt_dir / name).unlink(missing_ok=True)


def write_curves(layout: Layout, stage: str, history: list[dict[str, float]], *, title: str) -> None:
    """plots/<stage>_curve.csv and .png from the Trainer's history (also MLflow artifacts)."""
    import pandas as pd

    from hmrmamba.atomic import atomic_path
    from hmrmamba.report.plots import training_curves
    from hmrmamba.mlflow_runs import log_artifact

    csv = layout.plot(f"{stage}_curve.csv")
    with atomic_path(csv) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    png = training_curves(layout.plot(f"{stage}_curve.png"), history, title=title)
    for path in (csv, png):
        log_artifact(path)


def train_stage(stage: str, params: Mapping[str, Any], layout: Layout, *, objective_factory,
                lift_only: bool, init_from: Path | None = None) -> dict[str, Any]:
    """Train one stage with the generic Trainer and return its summary metrics.

    ``objective_factory(settings, image_size)`` gets the stage's typed settings
    (:class:`hmrmamba.settings.TrainLiftSettings` or :class:`~hmrmamba.settings.TrainMeshSettings`)."""
    from hmrmamba import mlflow_runs
    from hmrmamba.data.loading import load_split_arrays
    from hmrmamba.settings import section_settings
    from hmrmamba.train import Trainer, make_loader, seed_everything
    from hmrmamba.train.checkpoint import load_checkpoint
    from hmrmamba.train.logged_model import input_example, log_trained_model
    from hmrmamba.train.objectives import validation
    from hmrmamba.train.optim import NO_DECAY_RULE, build_adamw

    # typed and checked (also when called without execute(), e.g. from a notebook); every value below
    # comes from these settings, the raw section is kept only as the checkpoints' record of the run
    s = section_settings(params, stage)
    p = dict(params[stage])
    exp = experiment_settings(params)
    seed = s.seed if s.seed is not None else int(params.get("seed", 0) or 0)
    seed_everything(seed)
    window, stride = s.window, s.stride
    model, cfg = build_model(params, layout, lift_only=lift_only)
    maps = model.map_dim > 0
    train = load_split_arrays(layout, s.train_split, detector=exp["detector"], with_smpl=not lift_only, with_maps=maps)
    val = load_split_arrays(layout, s.val_split, detector=exp["detector"], with_maps=maps)
    dataset = train.windows(length=window, stride=stride, centred=False)
    if len(dataset) == 0:
        raise InputError("no training windows", file=str(train.split.path), field="seq_len",
                         expected=f"at least one sequence (window {window})")
    if init_from is not None:
        state = load_checkpoint(init_from)["model"]
        own = model.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if wrong:
            raise InputError(f"{len(wrong)} tensor(s) of another shape, e.g. {wrong[:3]}", file=init_from,
                             field="model", expected=f"a stage-1 checkpoint of variant '{exp['variant']}'")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise InputError(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}", file=init_from,
                             field="model", expected=f"a stage-1 checkpoint of variant '{exp['variant']}'")
        log.info("initialised from %s (%d keys new in this stage)", init_from, len(missing))
    else:
        feats = torch.as_tensor(train.arrays["feats"])
        model.set_feature_stats(feats.mean(0), feats.std(0))
        if maps:
            model.set_map_stats(*map_statistics(train.arrays["spatial"]))
    # no weight decay on A_log, D, norms and biases (hmrmamba.train.optim)
    optimizer = build_adamw(model, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=s.lr_decay)
    loader = make_loader(dataset, batch_size=s.batch_size, shuffle=True, seed=seed)
    image_size = float(train.split.attrs["image_size"])
    ckpt_dir = checkpoint_dir(params, layout, stage)
    config = {"model": cfg, "experiment": exp, "stage": stage, "train": p, "optimizer": NO_DECAY_RULE,
              "inputs": input_fingerprint([train.split.path, val.split.path] + ([init_from] if init_from else []))}
    # every input is read and checked before anything on disk is touched: a refused loss weight or a
    # missing key must never cost the user the checkpoints of an earlier run
    step_fn = objective_factory(s, image_size)
    grad_clip = s.grad_clip or None
    discard_stale_checkpoints(ckpt_dir, config)
    trainer = Trainer(model, step_fn=step_fn, optimizer=optimizer, scheduler=scheduler,
                      train_loader=loader, val_fn=validation(val, length=window, lift_only=lift_only),
                      epochs=s.epochs, ckpt_dir=ckpt_dir, seed=seed,
                      monitor="val_mpjpe", mode="min",
                      log_fn=lambda m, e: mlflow_runs.log_metrics(m, step=e),
                      grad_clip=grad_clip,
                      amp=s.amp, compile=s.compile,
                      config=config,
                      find_unused_parameters=not lift_only,
                      ema_decay=s.ema or None)
    result = trainer.fit(resume=s.resume)
    last = result.history[-1]
    write_curves(layout, stage, result.history, title=f"{stage}: {exp['variant']}, {exp['detector']} 2D")
    best_ckpt = ckpt_dir / "best.pt"
    if s.log_checkpoint and best_ckpt.exists() and is_main_process():
        log_trained_model(best_ckpt, layout, model=model, example=input_example(model, val), lift_only=lift_only,
                          variant=exp["variant"])
    return {"variant": exp["variant"], "detector": exp["detector"], "epochs": len(result.history),
            "best_epoch": result.best_epoch, "best_val_mpjpe": result.best_metric,
            "final_train_loss": last.get("train_loss"), "final_val_mpjpe": last.get("val_mpjpe"),
            "final_val_pa_mpjpe": last.get("val_pa_mpjpe"), "resumed": bool(result.resumed),
            "params_m": round(sum(x.numel() for x in model.parameters()) / 1e6, 4),
            "train_windows": len(dataset), "seconds_per_epoch": float(np.mean([h.get("epoch_seconds", 0) for h in result.history]))}
