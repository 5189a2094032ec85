"""The generic, model-agnostic training loop: epochs, validation, checkpoints, resume, AMP, DDP, progress.

A stage supplies ``step_fn(model, batch) -> {"total": loss, ...}`` and ``val_fn(model) -> {name: value}``;
the ``Trainer`` does the rest. Resume works at epoch granularity: ``last.pt`` is written (atomically)
after every epoch with the model, optimizer, scheduler, RNG states, history and best metric, and
``fit(resume=True)`` continues at the next epoch. A run killed mid-epoch re-runs that epoch from its
start with the same RNG state and data order, so its final weights equal an uninterrupted run's.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hmrmamba.atomic import atomic_path
from hmrmamba.errors import InputError
from hmrmamba.train.checkpoint import load_checkpoint, load_model_state, load_training_state, save_checkpoint
from hmrmamba.train.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    gather_objects,
    setup_distributed,
    teardown_distributed,
    wrap_model,
)
from hmrmamba.train.ema import WeightAverage
from hmrmamba.train.seed import (
    capture_rng_states,
    restore_rng_states,
    seed_everything,
    seed_loader_epoch,
    set_deterministic,
)

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
ValFn = Callable[[nn.Module], Mapping[str, float]]
LogFn = Callable[[dict[str, float], int], None]
StopCheck = Callable[[dict[str, float], int], bool]

LAST = "last.pt"
BEST = "best.pt"
HISTORY = "history.csv"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; names the epoch and batch and the checkpoint left intact."""

    def __init__(self, *, epoch: int, batch_index: int, terms: Mapping[str, float], checkpoint: str | None):
        self.epoch = epoch
        self.batch_index = batch_index
        self.terms = dict(terms)
        self.checkpoint = checkpoint
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
        kept = (f"last good checkpoint {checkpoint} left untouched" if checkpoint
                else "no checkpoint had been written yet")
        super().__init__(f"non-finite training loss at epoch {epoch}, batch {batch_index} ({shown}); "
                         f"training stopped, {kept}. Lower the learning rate, enable grad_clip, or check "
                         f"the batch's inputs for NaN/Inf.")


@dataclass
class FitResult:
    """What ``Trainer.fit`` did: per-epoch history (one row per epoch, 1-based) and where weights are."""

    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    start_epoch: int                 # first epoch this call trained (epochs + 1 when already complete)
    stopped_early: bool = False
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside dicts / lists / tuples / namedtuples moved to ``device``; other leaves kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (int(v) if k == "epoch" else repr(float(v))) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


class Trainer:
    """Train ``model`` for ``epochs`` epochs with per-epoch validation, checkpoints and exact resume.

    ``step_fn(model, batch)`` gets the (possibly DDP/compiled) training model and a batch already on
    the device, and returns scalar tensors: ``total`` (backpropagated) and any other terms (logged as
    ``train_<name>``; ``total`` is logged as ``train_loss``). Call ``model(...)`` for the forward pass
    so that DDP synchronises gradients; reach attributes through ``unwrap_model(model)``.

    ``val_fn(model)`` gets the plain module in eval mode under ``torch.no_grad()`` and returns floats;
    names are logged with a ``val_`` prefix (added when missing). ``monitor`` names the history
    column that decides ``best.pt`` (``mode`` "min" or "max").

    Each epoch: train (tqdm bar with loss and it/s on rank 0), validate, ``scheduler.step()`` (after every
    optimiser step instead with ``scheduler_interval="step"``, e.g. for a one-cycle schedule), then
    write ``best.pt`` (when improved), ``last.pt`` and ``history.csv`` atomically on rank 0, then call
    ``log_fn(metrics, epoch)`` on rank 0 and ``stop_check(metrics, epoch)`` (True stops after this
    epoch). Metrics are averaged over ranks. ``config`` (plain dict, e.g. ``{"model": ..., "train": ...}``)
    is stored in every checkpoint so that the model can be rebuilt from it.

    ``ema_decay`` (0 < d < 1) keeps an exponential moving average of the weights
    (:class:`~hmrmamba.train.ema.WeightAverage`, updated after every optimiser step): validation, the
    monitor and ``best.pt`` use the averaged weights; ``last.pt`` holds the training weights and the
    average (``extra.ema``), so a resumed run continues both exactly.

    AMP (fp16 autocast + GradScaler) and ``torch.compile`` apply on CUDA only; on CPU they are
    ignored with a log message. Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is joined,
    the model wrapped in DDP and only rank 0 writes files; build loaders with ``make_loader``.
    """

    def __init__(self, model: nn.Module, *, step_fn: StepFn, optimizer: torch.optim.Optimizer,
                 scheduler: Any | None = None, train_loader: torch.utils.data.DataLoader,
                 val_fn: ValFn | None = None, epochs: int, ckpt_dir: str | Path, seed: int,
                 monitor: str = "val_mpjpe", mode: str = "min", log_fn: LogFn | None = None,
                 grad_clip: float | None = None, amp: bool = False, compile: bool = False,
                 progress: bool = True, stop_check: StopCheck | None = None,
                 config: Mapping[str, Any] | None = None, deterministic: bool | None = None,
                 find_unused_parameters: bool = False, device: str | torch.device | None = None,
                 scheduler_interval: str = "epoch", ema_decay: float | None = None):
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise InputError(f"epochs={epochs!r}", field="epochs", expected="an integer >= 1")
        if mode not in ("min", "max"):
            raise InputError(f"mode={mode!r}", field="mode", expected="'min' or 'max'")
        if scheduler_interval not in ("epoch", "step"):
            raise InputError(f"scheduler_interval={scheduler_interval!r}", field="scheduler_interval",
                             expected="'epoch' or 'step'")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise InputError(f"ema_decay={ema_decay!r}", field="ema_decay", expected="0 < decay < 1, or None (off)")
        if grad_clip is not None and not grad_clip > 0:
            raise InputError(f"grad_clip={grad_clip!r}", field="grad_clip", expected="a positive number or None")
        self.model = model
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.val_fn = val_fn
        self.epochs = epochs
        self.ckpt_dir = Path(ckpt_dir)
        self.seed = int(seed)
        self.monitor = monitor
        self.mode = mode
        self.log_fn = log_fn
        self.grad_clip = grad_clip
        self.amp = amp
        self.compile = compile
        self.progress = progress
        self.stop_check = stop_check
        self.config = dict(config or {})
        self.deterministic = deterministic
        self.find_unused_parameters = find_unused_parameters
        self.device = device
        self.scheduler_interval = scheduler_interval
        self.ema_decay = ema_decay

    # ------------------------------------------------------------------ paths
    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / LAST

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / BEST

    @property
    def history_path(self) -> Path:
        return self.ckpt_dir / HISTORY

    def _remove_stale_temps(self) -> None:
        """Temp files of writes interrupted by a kill (``atomic_path`` names them ``.<name>.*``)."""
        if not self.ckpt_dir.is_dir():
            return
        for name in (LAST, BEST, HISTORY):
            for tmp in self.ckpt_dir.glob(f".{name}.*"):
                log.info("removing %s left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ fit
    def fit(self, resume: bool = True) -> FitResult:
        """Train to ``epochs`` (continuing from ``last.pt`` when ``resume`` and it exists)."""
        ctx = setup_distributed(self.device)
        try:
            return self._fit(ctx, resume)
        finally:
            teardown_distributed(ctx)

    def _is_better(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        return best is None or (value < best if self.mode == "min" else value > best)

    def _fit(self, ctx: DistContext, resume: bool) -> FitResult:
        module = self.model.to(ctx.device)
        on_cuda = ctx.device.type == "cuda"
        if self.amp and not on_cuda:
            log.info("amp=True ignored: AMP is used on CUDA only (device %s)", ctx.device)
        if self.compile and not on_cuda:
            log.info("compile=True ignored: torch.compile is used on CUDA only (device %s)", ctx.device)
        amp_on = self.amp and on_cuda
        scaler = torch.amp.GradScaler("cuda", enabled=amp_on)
        if self.deterministic is not None:
            set_deterministic(self.deterministic)
        if ctx.is_main:
            self._remove_stale_temps()
        barrier(ctx)

        start, step, best, best_epoch, history, resumed = 1, 0, None, None, [], False
        ema_state = None
        if resume and self.last_path.is_file():
            ckpt = load_checkpoint(self.last_path, map_location="cpu")
            extra = ckpt.get("extra") or {}
            if (extra.get("monitor"), extra.get("mode")) != (self.monitor, self.mode):
                raise InputError(f"checkpoint tracks monitor={extra.get('monitor')!r} mode={extra.get('mode')!r}, "
                                 f"this run asks for monitor={self.monitor!r} mode={self.mode!r}",
                                 file=self.last_path, field="extra.monitor",
                                 expected="the same monitor and mode (or resume=False / a fresh ckpt_dir)")
            load_model_state(module, ckpt["model"], source=self.last_path)
            ema_state = extra.get("ema")
            if ckpt.get("optimizer") is not None:
                load_training_state(self.optimizer, ckpt["optimizer"], source=self.last_path, field="optimizer")
            if self.scheduler is not None and ckpt.get("scheduler") is not None:
                load_training_state(self.scheduler, ckpt["scheduler"], source=self.last_path, field="scheduler")
            if amp_on and extra.get("grad_scaler"):
                load_training_state(scaler, extra["grad_scaler"], source=self.last_path, field="extra.grad_scaler")
            changed = sorted(k for k in set(self.config) | set(ckpt["config"])
                             if self.config.get(k) != ckpt["config"].get(k))
            if changed:
                log.warning("resuming %s with a changed config (sections %s)", self.last_path, changed)
            states = ckpt.get("rng_states") or []
            states = states if isinstance(states, list) else [states]
            if len(states) != ctx.world_size:
                log.warning("checkpoint holds RNG states of %d rank(s), this run has %d: every rank gets "
                            "rank 0's (or its own where present); resume is no longer bit-exact",
                            len(states), ctx.world_size)
            if states:
                restore_rng_states(states[ctx.rank] if ctx.rank < len(states) else states[0],
                                   source=self.last_path)
            start, step = int(ckpt["epoch"]) + 1, int(ckpt["step"])
            best, best_epoch = ckpt.get("best_metric"), extra.get("best_epoch")
            history = [dict(r) for r in extra.get("history", [])]
            resumed = True
            if ctx.is_main:
                log.info("resuming from %s: %d epoch(s) done, continuing at epoch %d of %d",
                         self.last_path, start - 1, start, self.epochs)
                _write_history(self.history_path, history)
        else:
            if ctx.is_main and self.last_path.is_file():
                log.warning("resume=False: %s will be overwritten at the end of epoch 1", self.last_path)
            seed_everything(self.seed)
        ema = None if self.ema_decay is None else WeightAverage(module, self.ema_decay)
        if ema is not None and ema_state:
            ema.load_state_dict(ema_state, module, source=str(self.last_path))
        elif ema is not None and resumed:
            log.warning("%s holds no weight average: it starts from the resumed weights", self.last_path)

        train_model = wrap_model(module, ctx, find_unused_parameters=self.find_unused_parameters)
        if self.compile and on_cuda:
            train_model = torch.compile(train_model)

        stopped = False
        for epoch in range(start, self.epochs + 1):
            t0 = time.perf_counter()
            seed_loader_epoch(self.train_loader, self.seed, epoch)
            lr = float(self.optimizer.param_groups[0]["lr"])
            train_metrics, step = self._train_epoch(train_model, module, ctx, scaler, amp_on, epoch, step, ema)
            val_metrics = self._validate(module if ema is None else ema.module)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            local = {**train_metrics, **val_metrics, "lr": lr, "epoch_seconds": time.perf_counter() - t0}
            reduced = all_reduce_mean(local, ctx)
            row = {"epoch": epoch, **{k: reduced[k] for k in local}}          # natural column order
            if self.monitor not in row:
                raise InputError(f"monitor '{self.monitor}' is not among this epoch's metrics "
                                 f"{sorted(k for k in row if k != 'epoch')}", field="monitor",
                                 expected="a train_*/val_* metric name")
            improved = self._is_better(row[self.monitor], best)
            if improved:
                best, best_epoch = float(row[self.monitor]), epoch
            history.append(row)

            rng_here = capture_rng_states()
            rng_all = gather_objects(rng_here, ctx)
            if ctx.is_main:
                kwargs = {"model": module, "optimizer": self.optimizer, "scheduler": self.scheduler,
                          "epoch": epoch, "step": step, "best_metric": best, "rng_states": rng_all,
                          "config": self.config,
                          "extra": {"history": history, "best_epoch": best_epoch, "monitor": self.monitor,
                                    "mode": self.mode, "epochs": self.epochs, "world_size": ctx.world_size,
                                    "grad_scaler": scaler.state_dict() if amp_on else {},
                                    "ema": ema.state_dict() if ema is not None else None}}
                if improved:           # best first: a kill between the two writes re-runs this epoch
                    save_checkpoint(self.best_path, **{**kwargs, "model": module if ema is None else ema.module})
                save_checkpoint(self.last_path, **kwargs)
                _write_history(self.history_path, history)
                self._log_epoch(row, improved)
                if self.log_fn is not None:
                    self.log_fn({k: v for k, v in row.items() if k != "epoch"}, epoch)
            stop = bool(self.stop_check(dict(row), epoch)) if (self.stop_check and ctx.is_main) else False
            stop = broadcast_flag(stop, ctx)
            restore_rng_states(rng_here)     # logging/callbacks must not shift the next epoch's randomness
            if stop:
                stopped = True
                if ctx.is_main:
                    log.info("stop_check requested a stop after epoch %d", epoch)
                break
        barrier(ctx)
        return FitResult(history=history, best_metric=best, best_epoch=best_epoch, last_checkpoint=self.last_path,
                         best_checkpoint=self.best_path if best_epoch is not None else None,
                         start_epoch=start, stopped_early=stopped, resumed=resumed)

    # ------------------------------------------------------------------ epoch parts
    def _train_epoch(self, train_model: nn.Module, module: nn.Module, ctx: DistContext,
                     scaler: torch.amp.GradScaler, amp_on: bool, epoch: int, step: int,
                     ema: WeightAverage | None = None) -> tuple[dict, int]:
        train_model.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        show = self.progress and ctx.is_main
        total_batches = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        bar = tqdm(self.train_loader, total=total_batches, desc=f"epoch {epoch}/{self.epochs}", unit="it",
                   disable=not show, leave=False, dynamic_ncols=True, mininterval=0.5)
        try:
            for i, batch in enumerate(bar):
                batch = _to_device(batch, ctx.device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp_on):
                    terms = self.step_fn(train_model, batch)
                total = self._check_terms(terms)
                if not bool(torch.isfinite(total.detach())):
                    last = str(self.last_path) if self.last_path.is_file() else None
                    raise NonFiniteLossError(epoch=epoch, batch_index=i, checkpoint=last,
                                             terms={k: float(torch.as_tensor(v).detach()) for k, v in terms.items()})
                self.optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if self.grad_clip is not None:
                    scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
                scaler.step(self.optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(module)
                if self.scheduler is not None and self.scheduler_interval == "step":
                    self.scheduler.step()
                step += 1
                n += 1
                for k, v in terms.items():
                    v = torch.as_tensor(v).detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                if show and (i % 10 == 0 or i + 1 == total_batches):
                    bar.set_postfix(loss=f"{float(sums['total']) / n:.4g}", refresh=False)
        finally:
            bar.close()
        if n == 0:
            raise InputError("the training loader yielded no batches", field="train_loader",
                             expected="at least one batch per epoch (dataset size vs batch_size/drop_last)")
        out = {"train_loss": float(sums.pop("total")) / n}
        out.update({f"train_{k}": float(v) / n for k, v in sums.items()})
        return out, step

    @staticmethod
    def _check_terms(terms: Any) -> torch.Tensor:
        if not isinstance(terms, Mapping) or "total" not in terms:
            raise InputError(f"step_fn returned {type(terms).__name__}", field="step_fn",
                             expected="a dict of scalar tensors with the loss to backpropagate under 'total'")
        total = terms["total"]
        if not isinstance(total, torch.Tensor) or total.numel() != 1 or not total.requires_grad:
            raise InputError("step_fn's 'total' is not a scalar tensor that requires grad", field="step_fn.total",
                             expected="a 0-d loss tensor attached to the model's graph")
        return total.reshape(())

    def _validate(self, module: nn.Module) -> dict[str, float]:
        if self.val_fn is None:
            return {}
        module.eval()
        try:
            with torch.no_grad():
                raw = self.val_fn(module)
        finally:
            module.train()
        if not isinstance(raw, Mapping):
            raise InputError(f"val_fn returned {type(raw).__name__}", field="val_fn",
                             expected="a dict of metric name -> float")
        return {(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in raw.items()}

    def _log_epoch(self, row: Mapping[str, float], improved: bool) -> None:
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "epoch_seconds"))
        log.info("epoch %d/%d  %s  (%.1f s)%s", row["epoch"], self.epochs, shown, row["epoch_seconds"],
                 f"  new best {self.monitor}" if improved else "")
