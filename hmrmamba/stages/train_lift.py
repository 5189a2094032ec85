"""DVC stage ``train_lift``: stage 1, geometry-aware lifting (paper §3.3, eq. 14)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hmrmamba.layout import Layout
from hmrmamba.settings import TrainLiftSettings
from hmrmamba.stages.common import main as stage_main

STAGE = "train_lift"


def objective(s: TrainLiftSettings, image_size: float):
    from dataclasses import asdict

    from hmrmamba.train.losses import LiftLossWeights
    from hmrmamba.train.objectives import LiftObjective, loss_weights

    return LiftObjective(weights=loss_weights(LiftLossWeights, asdict(s.loss)), image_size=image_size, flip=s.flip)


def run(params: Mapping[str, Any], layout: Layout) -> dict:
    from hmrmamba.train.experiment import train_stage

    return train_stage(STAGE, params, layout, objective_factory=objective, lift_only=True)


if __name__ == "__main__":
    stage_main(STAGE, run)
