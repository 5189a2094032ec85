"""A tiny end-to-end run of the training engine on a toy regression problem.

Use it to check a machine's DDP setup before a long job::

    python -m torch.distributed.run --nproc_per_node=2 --master_addr 127.0.0.1 \\
        -m hmrmamba.train._selftest --ckpt-dir /tmp/hmrmamba-selftest

The test suite runs it in subprocesses for the kill/resume and DDP checks. ``--noisy`` adds dropout
and input noise drawn from torch, numpy and Python's ``random`` so that resume must restore every
RNG; ``--kill-at-step K`` SIGKILLs the process just before optimizer step K (0-based, counted over
the whole run) to simulate a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hmrmamba.train.distributed import make_loader
from hmrmamba.train.loop import FitResult, Trainer


def toy_dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    """``x: (n, 4)``, ``y: (n, 2)`` with ``y = tanh(x) @ W + 0.05 noise``; fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.randn(4, 2, generator=g)
    y = torch.tanh(x) @ w + 0.05 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, y)


def toy_model(*, seed: int = 0, hidden: int = 16, dropout: float = 0.0) -> nn.Module:
    """A 4 -> hidden -> 2 MLP initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 2))


def mse_step(*, noisy: bool = False, kill_at_step: int | None = None) -> Callable[[nn.Module, Any], dict]:
    """A ``step_fn``: MSE loss (``total``) and MAE; optional noise and a simulated crash."""
    calls = [0]

    def step(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        if kill_at_step is not None and calls[0] == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        x, y = batch
        if noisy:
            x = x + 0.01 * torch.randn_like(x) + float(np.random.normal(0, 0.01)) + random.gauss(0, 0.01)
        pred = model(x)
        return {"total": torch.nn.functional.mse_loss(pred, y), "mae": (pred - y).abs().mean()}

    return step


def mse_val(dataset: TensorDataset) -> Callable[[nn.Module], dict[str, float]]:
    """A ``val_fn``: MSE over the whole dataset."""
    x, y = dataset.tensors

    def val(model: nn.Module) -> dict[str, float]:
        dev = next(model.parameters()).device
        return {"mse": float(torch.nn.functional.mse_loss(model(x.to(dev)), y.to(dev)))}

    return val


def json_lines_logger(path: str | Path) -> Callable[[dict[str, float], int], None]:
    """A ``log_fn`` appending ``{"epoch": e, **metrics}`` as one JSON line per call."""
    def log_fn(metrics: dict[str, float], epoch: int) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
    return log_fn


def run(*, ckpt_dir: str | Path, epochs: int = 4, batch_size: int = 8, n: int = 64, seed: int = 0,
        lr: float = 1e-2, noisy: bool = False, kill_at_step: int | None = None, log_file: str | None = None,
        resume: bool = True, progress: bool = False, **trainer_kwargs: Any) -> FitResult:
    """Train the toy MLP (Adam, ExponentialLR 0.99, grad clip 1.0) and return the ``FitResult``."""
    data = toy_dataset(n, seed=1234)
    model = toy_model(seed=seed, dropout=0.1 if noisy else 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    trainer = Trainer(model, step_fn=mse_step(noisy=noisy, kill_at_step=kill_at_step), optimizer=opt,
                      scheduler=sched, train_loader=make_loader(data, batch_size=batch_size, shuffle=True,
                                                                seed=seed),
                      val_fn=mse_val(data), epochs=epochs, ckpt_dir=ckpt_dir, seed=seed, monitor="val_mse",
                      grad_clip=1.0, progress=progress, config={"model": {"hidden": 16}, "seed": seed},
                      log_fn=json_lines_logger(log_file) if log_file else None, **trainer_kwargs)
    return trainer.fit(resume=resume)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hmrmamba.train._selftest", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--n", type=int, default=64, help="dataset size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--noisy", action="store_true")
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--log-file", default=None)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    res = run(ckpt_dir=a.ckpt_dir, epochs=a.epochs, batch_size=a.batch_size, n=a.n, seed=a.seed, lr=a.lr,
              noisy=a.noisy, kill_at_step=a.kill_at_step, log_file=a.log_file, resume=not a.no_resume,
              progress=a.progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"start_epoch": res.start_epoch, "best_epoch": res.best_epoch,
                          "best_metric": res.best_metric, "epochs_done": len(res.history)}))


if __name__ == "__main__":
    main()
