"""The configured image backbone (``params.yaml: features``) and where its weights came from."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmrmamba.errors import InputError, MissingFileError
from hmrmamba.layout import Layout

__all__ = ["BACKBONES", "build_backbone", "trained_backbone_path"]

log = logging.getLogger(__name__)

#: The backbones ``features.backbone`` may name.
BACKBONES: tuple[str, ...] = ("resnet50",)


def trained_backbone_path(tb: Any, layout: Layout) -> Path | None:
    """The ``train_backbone`` stage's ``best.pt`` when ``tb`` (its
    :class:`~hmrmamba.settings.TrainBackboneSettings`) is enabled, else None."""
    from hmrmamba.config import resolve_path

    if not tb.enabled:
        return None
    return resolve_path(layout.root, tb.checkpoint_dir, field="train_backbone.checkpoint_dir") / "best.pt"


def build_backbone(p: Mapping[str, Any] | Any, layout: Layout, *, trained: Path | None = None):
    """-> (model, note on where its weights came from) for the ``features`` settings ``p``.

    ``p``: a :class:`hmrmamba.settings.FeaturesSettings`, or the raw ``features`` mapping (parsed
    into one, so absent keys take the settings' defaults). ``trained``: the ``train_backbone``
    stage's checkpoint (:func:`trained_backbone_path`), loaded in place of ``features.weights``.
    """
    from hmrmamba.config import resolve_path
    from hmrmamba.features.resnet import ResNet50
    from hmrmamba.features.weights import load_backbone_weights
    from hmrmamba.settings import FeaturesSettings, section_settings

    s = p if isinstance(p, FeaturesSettings) else section_settings({"features": dict(p)}, "features")
    if s.backbone not in BACKBONES:
        raise InputError(f"unknown backbone '{s.backbone}'", file="params.yaml",
                         field="features.backbone", expected="'resnet50'")
    model = ResNet50(init_seed=int(s.init_seed))
    if trained is not None:
        if not Path(trained).is_file():
            raise MissingFileError("trained backbone not found", file=trained,
                                   expected="the train_backbone stage's checkpoint (run `dvc repro train_backbone`)")
        report = load_backbone_weights(model, trained)
        return model, f"trained on the training split by the train_backbone stage: {trained} ({report.summary()})"
    if s.weights:
        path = resolve_path(layout.root, s.weights, field="features.weights")
        report = load_backbone_weights(model, path)
        return model, f"loaded {path} ({report.summary()})"
    note = f"seeded random init (init_seed={int(s.init_seed)}); set features.weights for pretrained"
    log.warning("features: %s", note)
    return model, note
