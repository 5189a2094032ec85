"""The generic training engine: a model-agnostic ``Trainer`` with atomic checkpoints, exact resume,
seeded data order, AMP/compile on CUDA and DDP under ``torchrun``. See docs/training.md."""

from hmrmamba.train.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
    save_checkpoint,
)
from hmrmamba.train.distributed import (
    DistContext,
    all_reduce_mean,
    is_main_process,
    make_loader,
    rank_and_world,
    setup_distributed,
    teardown_distributed,
    unwrap_model,
    wrap_model,
)
from hmrmamba.train.loop import FitResult, NonFiniteLossError, Trainer
from hmrmamba.train.seed import (
    capture_rng_states,
    epoch_seed,
    loader_generator,
    restore_rng_states,
    seed_everything,
    seed_loader_epoch,
    seed_worker,
    set_deterministic,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "DistContext",
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "all_reduce_mean",
    "capture_rng_states",
    "epoch_seed",
    "is_main_process",
    "load_checkpoint",
    "load_model_state",
    "loader_generator",
    "make_loader",
    "model_from_checkpoint",
    "rank_and_world",
    "restore_rng_states",
    "save_checkpoint",
    "seed_everything",
    "seed_loader_epoch",
    "seed_worker",
    "set_deterministic",
    "setup_distributed",
    "teardown_distributed",
    "unwrap_model",
    "wrap_model",
]
