"""Small matplotlib figures written atomically as PNG (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hmrmamba.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` as PNG (atomically) and close it -> the path."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
    return Path(path)


def per_joint_bar(path: str | Path, joint_names: Sequence[str], series: Mapping[str, np.ndarray], *,
                  title: str, ylabel: str = "MPJPE (mm)") -> Path:
    """Grouped bars: one group per joint, one bar per series (e.g. stage 1 vs mesh)."""
    plt = _pyplot()
    x = np.arange(len(joint_names))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [n.replace("_", "\n") for n in joint_names], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def training_curves(path: str | Path, history: Sequence[Mapping[str, float]], *, title: str) -> Path:
    """Train loss and validation MPJPE per epoch, side by side."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h.get("train_loss", np.nan) for h in history], marker="o")
    a.set_xlabel("epoch")
    a.set_ylabel("train loss")
    for key in ("val_mpjpe", "val_pa_mpjpe"):
        b.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key.replace("val_", ""))
    b.set_xlabel("epoch")
    b.set_ylabel("validation error (mm)")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_png(fig, path)


def contact_sheet(path: str | Path, images: np.ndarray, *, keypoints: np.ndarray | None = None,
                  parents: Sequence[int] | None = None, columns: int = 6, titles: Sequence[str] | None = None
                  ) -> Path:
    """A grid of frames (N, H, W, 3) uint8, optionally with 2D skeletons (N, J, 2) px drawn on top."""
    plt = _pyplot()
    n = len(images)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 1.9), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i])
        if keypoints is not None and parents is not None:
            for c, p in enumerate(parents):
                if p >= 0:
                    ax.plot(keypoints[i, [p, c], 0], keypoints[i, [p, c], 1], "-", color="yellow", lw=0.8)
            ax.scatter(keypoints[i, :, 0], keypoints[i, :, 1], s=2, c="red")
        if titles is not None:
            ax.set_title(titles[i], fontsize=6)
    fig.tight_layout(pad=0.2)
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, dpi=100, format=fmt)
    plt.close(fig)
    return Path(path)
