"""A trained model back from its checkpoint: what evaluation, the report and the demo all load."""

from __future__ import annotations

from pathlib import Path

from hmrmamba.errors import MissingFileError
from hmrmamba.layout import Layout

__all__ = ["load_trained"]


def load_trained(path: str | Path, layout: Layout, *, lift_only: bool):
    """Rebuild a model from a checkpoint alone (its saved config), with the project's mesh assets.

    -> (model, checkpoint dict) as :func:`hmrmamba.train.checkpoint.model_from_checkpoint` returns.
    Raises :class:`MissingFileError` when ``path`` does not exist.
    """
    from hmrmamba.models.registry import build_from_config
    from hmrmamba.train.checkpoint import model_from_checkpoint
    from hmrmamba.train.experiment import load_mesh_assets

    path = Path(path)
    if not path.exists():
        raise MissingFileError("checkpoint not found", file=path, expected="the output of the training stages")
    assets = None if lift_only else load_mesh_assets(layout)[0]
    return model_from_checkpoint(path, build=lambda cfg: build_from_config(cfg, assets=assets, lift_only=lift_only))
