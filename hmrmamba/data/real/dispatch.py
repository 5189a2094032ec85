"""Real benchmark datasets -> the project's HDF5 splits: what the stages call.

``params["dataset"]["name"]`` picks the reader from the registry :data:`hmrmamba.data.real.registry.READERS`:
``h36m`` (:mod:`hmrmamba.data.real.h36m`), ``3dpw`` (:mod:`hmrmamba.data.real.pw3d`) or ``3dhp``
(:mod:`hmrmamba.data.real.mpi3dhp`); a new reader is one entry there. Each reader's options live
in ``params["datasets"][<section>]`` (sections ``h36m``, ``pw3d``, ``mpi3dhp``), its files under
``dataset.root`` (or, when that is null, the section's own ``root``).

Every reader builds all its splits in memory first; only when all of them pass the schema's
validation are they written (atomically), so bad input leaves nothing behind. A dataset whose
files are absent fails before any reading, with the list of files that were expected.

Conventions shared by the readers (see ``docs/real_data.md``):

* ``joints3d`` metres in the camera frame, H36M-17 order; ``joints2d`` pixels in the original
  image; per sequence ``camera`` (fx, fy, cx, cy) and ``fps``;
* ``smpl_pose/smpl_betas/smpl_trans`` are camera-frame SMPL parameters where the dataset has fits,
  zeros otherwise; ``attrs["has_smpl"]`` says which, ``attrs["has_mesh_gt"]`` says whether a mesh
  (and so MPVPE) can be evaluated, ``attrs["mesh_gt_note"]`` says why not; the per-frame
  ``smpl_valid`` (bool) marks frames whose SMPL fit exists;
* ``valid`` (bool) marks frames to score (3DPW ``campose_valid``, 3DHP ``valid_frame``);
* ``attrs["image_size"]`` is the largest image side (an int, as the synthetic splits have); the
  exact per-sequence (width, height) is the extra sequence field ``image_wh``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmrmamba.data.real.tools import (  # noqa: F401  (re-exported: the readers' shared helpers)
    PreparedSplit,
    SplitBuilder,
    check_options,
    project_pinhole,
    require_files,
    smpl_to_camera,
    zero_smpl,
)
from hmrmamba.data.real.registry import READERS, Reader
from hmrmamba.errors import InputError

#: ``dataset.name`` -> the section of ``params["datasets"]`` holding the reader's options.
REAL_DATASETS: dict[str, str] = {name: r.section for name, r in READERS.items()}


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------


def dataset_name(params: Mapping[str, Any]) -> str:
    return str((params.get("dataset") or {}).get("name", "synthetic"))


def is_real(params: Mapping[str, Any]) -> bool:
    return dataset_name(params) in REAL_DATASETS


def reader(params: Mapping[str, Any]) -> Reader:
    """The registered reader of the configured ``dataset.name`` (an :class:`InputError` for any other)."""
    name = dataset_name(params)
    if name not in READERS:
        raise InputError(
            f"unknown dataset '{name}'",
            file="params.yaml",
            field="dataset.name",
            expected=f"'synthetic' or one of {list(READERS)}",
        )
    return READERS[name]


def _check_name(params: Mapping[str, Any]) -> str:
    return reader(params).name


def dataset_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's section of ``params["datasets"]`` (empty: the reader's defaults)."""
    section = reader(params).section
    opts = (params.get("datasets") or {}).get(section) or {}
    if not isinstance(opts, Mapping):
        raise InputError(
            f"datasets.{section} is {type(opts).__name__}",
            file="params.yaml",
            field=f"datasets.{section}",
            expected="a mapping of reader options",
        )
    return dict(opts)


def dataset_root(params: Mapping[str, Any], root: Path) -> Path:
    """Where the dataset's files are: ``dataset.root`` or ``datasets.<section>.root``."""
    from hmrmamba.config import resolve_path

    r = reader(params)
    value = (params.get("dataset") or {}).get("root") or dataset_options(params).get("root")
    if not value:
        raise InputError(
            f"no root directory for dataset '{r.name}'",
            file="params.yaml",
            field="dataset.root",
            expected=f"a path (or datasets.{r.section}.root); see docs/real_data.md",
        )
    return resolve_path(root, value, field="dataset.root")


def real_splits(params: Mapping[str, Any]) -> list[str]:
    """The split names the prepare stage writes for the configured real dataset."""
    r = reader(params)
    return r.splits(r.config(dataset_options(params)))


def real_sources(params: Mapping[str, Any]) -> tuple[str, ...]:
    """2D sources the dataset provides beyond :data:`hmrmamba.detect.sources.DETECTOR_SOURCES`."""
    r = READERS.get(dataset_name(params))
    return r.sources if r is not None else ()


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------


def build_real(
    params: Mapping[str, Any], root: Path, *, body_model: Path | None = None
) -> dict[str, PreparedSplit]:
    """Read the configured dataset into memory, all splits, validated. Writes nothing."""
    from hmrmamba.data.h5schema import validate_split
    from hmrmamba.data.real.registry import BuildContext

    r = reader(params)
    opts = dataset_options(params)
    data_root = dataset_root(params, root)
    cfg = r.config(opts)
    splits = r.build(cfg, BuildContext(data_root=data_root, root=root, options=opts, body_model=body_model))
    for split_name, sp in splits.items():
        validate_split(sp.frames, sp.seqs, file=f"<{r.name} split '{split_name}'>")
    return splits


def prepare_real(params: Mapping[str, Any], layout) -> dict[str, Any]:
    """The ``prepare`` stage for a real dataset: read, validate, then write every split."""
    from hmrmamba.data.h5schema import write_split

    name = _check_name(params)
    splits = build_real(params, layout.root, body_model=layout.body_model)
    metrics: dict[str, Any] = {"dataset": name}
    for split_name, sp in splits.items():
        write_split(layout.prepared(split_name), sp.frames, sp.seqs, sp.attrs)
        metrics[split_name] = {
            "frames": sp.num_frames,
            "sequences": int(sp.seqs["seq_len"].shape[0]),
            **sp.metrics,
        }
    return metrics


def real_detections(params: Mapping[str, Any], layout, *, split: str, source: str, data) -> Any:
    """2D keypoints the dataset ships for ``source`` on ``split``, or ``None`` to let the
    detect2d stage make them (``gt`` copies, ``sh``/``detectron``/``cpn`` simulate).

    ``data`` is the split as read by :func:`hmrmamba.data.h5schema.read_split`; the result's rows
    line up with its frames. Human3.6M: ``sh``/``detectron``/``cpn`` come from VideoPose3D's
    ``data_2d_h36m_*.npz`` (missing files are an error, never silently simulated). 3DPW:
    ``openpose`` comes from the sequence files' ``poses2d``. Which reader does what: its
    :class:`hmrmamba.data.real.registry.Reader` entry.
    """
    r = reader(params)
    opts = dataset_options(params)
    data_root = dataset_root(params, layout.root)
    if r.detections is None:
        return None
    return r.detections(data_root, r.config(opts), data=data, source=source)


def image_root(params: Mapping[str, Any], root: Path) -> Path:
    """Where the dataset's videos/images are: ``features.image_root``, else the dataset's root."""
    from hmrmamba.config import resolve_path

    value = (params.get("features") or {}).get("image_root")
    if value:
        return resolve_path(root, value, field="features.image_root")
    return dataset_root(params, root)


def real_frame_sources(params: Mapping[str, Any], layout, *, data) -> list:
    """The images of every sequence of ``data`` (a read split of the configured real dataset).

    -> one :class:`hmrmamba.data.real.frames.FrameSource` per sequence, laid out as the dataset ships
    them (see :mod:`hmrmamba.data.real.frames`); nothing is opened here.
    """
    from hmrmamba.data.real.frames import frame_sources

    return frame_sources(_check_name(params), image_root(params, layout.root), data)
