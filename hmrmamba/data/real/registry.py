"""The registry of real-data readers: one :class:`Reader` per ``dataset.name``.

Each entry says where the reader's options live (``params["datasets"][section]``), how they
become the reader's config, which splits it writes, how it builds them, and which 2D keypoints
the dataset ships itself. :mod:`hmrmamba.data.real.dispatch` (what the stages call) dispatches through
this table only; adding a dataset is one reader module (built on :mod:`hmrmamba.data.real.tools`)
plus one entry in :data:`READERS`.

The reader modules are imported when an entry is used, not when this table is: reading the
synthetic data never loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["READERS", "BuildContext", "Reader"]


@dataclass(frozen=True)
class BuildContext:
    """What a reader's ``build`` gets besides its config: the dataset's files, the project, the body model."""

    data_root: Path
    root: Path
    options: Mapping[str, Any]
    body_model: Path | None = None

    def optional_path(self, key: str, section: str) -> Path | None:
        """``datasets.<section>.<key>`` resolved inside the project, or None when unset."""
        from hmrmamba.config import resolve_path

        value = self.options.get(key)
        return None if value in (None, "") else resolve_path(self.root, value, field=f"datasets.{section}.{key}")


@dataclass(frozen=True)
class Reader:
    """One real dataset: its options section and the functions the stages need.

    ``config(options) -> cfg``; ``splits(cfg) -> split names``; ``build(cfg, ctx) -> {split:
    PreparedSplit}``; ``detections(data_root, cfg, data, source) -> Detections | None`` (None: let
    the detect2d stage make them); ``sources``: 2D sources it ships beyond
    :data:`hmrmamba.detect.sources.DETECTOR_SOURCES`.
    """

    name: str
    section: str
    module: str
    config: Callable[[Mapping[str, Any]], Any]
    splits: Callable[[Any], list[str]]
    build: Callable[[Any, BuildContext], dict]
    detections: Callable[..., Any] | None = None
    sources: tuple[str, ...] = ()


# -- Human3.6M (VideoPose3D's npz files) ------------------------------------------------------

def _h36m_config(opts: Mapping[str, Any]) -> Any:
    from hmrmamba.data.real.h36m import H36MConfig

    return H36MConfig.from_params(opts)


def _h36m_build(cfg: Any, ctx: BuildContext) -> dict:
    from hmrmamba.data.real.h36m import build_h36m

    return build_h36m(ctx.data_root, cfg, smpl_fits=ctx.optional_path("smpl_fits", "h36m"),
                      body_model=ctx.body_model)


def _h36m_detections(data_root: Path, cfg: Any, *, data: Any, source: str) -> Any:
    from hmrmamba.data.real.h36m import h36m_detections

    if source == "gt" or source not in cfg.detections:
        return None
    return h36m_detections(data_root, cfg, data=data, source=source)


# -- 3DPW (sequenceFiles/*.pkl) ---------------------------------------------------------------

def _pw3d_config(opts: Mapping[str, Any]) -> Any:
    from hmrmamba.data.real.pw3d import PW3DConfig

    return PW3DConfig.from_params(opts)


def _pw3d_build(cfg: Any, ctx: BuildContext) -> dict:
    from hmrmamba.data.real.pw3d import build_pw3d

    return build_pw3d(ctx.data_root, cfg, smpl_male=ctx.optional_path("smpl_male", "pw3d"),
                      smpl_female=ctx.optional_path("smpl_female", "pw3d"),
                      h36m_regressor=ctx.optional_path("h36m_regressor", "pw3d"))


def _pw3d_detections(data_root: Path, cfg: Any, *, data: Any, source: str) -> Any:
    from hmrmamba.data.real.pw3d import pw3d_openpose

    return pw3d_openpose(data_root, cfg, data=data) if source == "openpose" else None


# -- MPI-INF-3DHP (test set annot_data.mat) ---------------------------------------------------

def _3dhp_config(opts: Mapping[str, Any]) -> Any:
    from hmrmamba.data.real.mpi3dhp import MPI3DHPConfig

    return MPI3DHPConfig.from_params(opts)


def _3dhp_build(cfg: Any, ctx: BuildContext) -> dict:
    from hmrmamba.data.real.mpi3dhp import build_3dhp

    return build_3dhp(ctx.data_root, cfg)


#: ``dataset.name`` -> its reader.
READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("h36m", section="h36m", module="hmrmamba.data.real.h36m", config=_h36m_config,
           splits=lambda cfg: list(cfg.splits()), build=_h36m_build, detections=_h36m_detections),
    Reader("3dpw", section="pw3d", module="hmrmamba.data.real.pw3d", config=_pw3d_config,
           splits=lambda cfg: list(cfg.splits), build=_pw3d_build, detections=_pw3d_detections,
           sources=("openpose",)),
    Reader("3dhp", section="mpi3dhp", module="hmrmamba.data.real.mpi3dhp", config=_3dhp_config,
           splits=lambda cfg: [cfg.split], build=_3dhp_build),
)}
