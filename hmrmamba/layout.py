"""Where each stage reads and writes, relative to the project root.

``dvc.yaml`` names the same paths (a test checks that the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def body_model(self) -> Path:
        return self.root / "data/body_model/body_model.npz"

    @property
    def downsampling(self) -> Path:
        return self.root / "data/body_model/mesh_downsampling.npz"

    def prepared(self, split: str) -> Path:
        return self.root / f"data/prepared/{split}.h5"

    def detections(self, split: str) -> Path:
        return self.root / f"data/detections/{split}.h5"

    def features(self, split: str) -> Path:
        return self.root / f"data/features/{split}.h5"

    def metrics(self, stage: str) -> Path:
        """The stage's detailed metrics (DVC-cached)."""
        return self.root / f"metrics/{stage}.json"

    def summary(self, stage: str) -> Path:
        """The stage's headline metrics (git-tracked; what ``dvc exp show`` and ``dvc metrics diff`` read)."""
        return self.root / f"metrics/summary/{stage}.json"

    def plot(self, name: str) -> Path:
        return self.root / f"plots/{name}"
