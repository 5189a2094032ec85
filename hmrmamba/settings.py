"""Typed settings: ``params.yaml`` parsed once into frozen dataclasses, one per section.

:func:`parse_settings` is the one place that turns the raw params mapping into settings:

* every value is checked against the rules of :data:`hmrmamba.config.PARAMS_SCHEMA` (type, range);
* every key of every section, nested ones included (``train_lift.loss``, ``synthetic.camera``,
  ``synthetic.splits.<name>``, ``efficiency.scan``, ``datasets.h36m`` ...), must be a field of the
  section's dataclass here; an unknown key stops before any work with the file, the key, the
  nearest valid name and the valid ones::

      params.yaml: field 'train_lift.epocs': unknown key; did you mean 'epochs'? (expected one of [...])

* keys that are absent take the defaults below: every default lives here, once. Where a stage had
  a fallback for an absent key (``detect2d.noise_scale`` 1.0, ``synthetic.blur_prob`` 0.3, ...) the
  default is that fallback, so settings built from a partial params mapping behave as the stages
  always did; ``conf/config.yaml`` sets every key explicitly anyway;
* cross-field sanity: the synthetic dataset's size (sequences x frames x image pixels) is bounded.

:func:`hmrmamba.config.validate_params` (called by ``load_params``, the stage frame and
``write_params``) runs this, so ``train_lift.epocs: 50`` fails in every entry point.

Values whose valid set lives in another layer stay checked there, once: variant names and their
overrides (:mod:`hmrmamba.models.registry`), the options of the real-data readers
(:mod:`hmrmamba.data.real.registry`), the efficiency settings' own rules (:mod:`hmrmamba.efficiency.benchmark`).
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hmrmamba.errors import InputError

PARAMS_FILE = "params.yaml"


def _section(cls: type) -> Any:
    """A nested settings section (a dataclass) with all-default values."""
    return field(default_factory=cls, metadata={"section": cls})


def _map_of(cls: type | None = None, default: Mapping[str, Any] | None = None, *,
            keys: tuple[str, ...] = ()) -> Any:
    """A mapping of free names (``cls`` sections as values when given); ``keys`` restricts the names."""
    frozen = types.MappingProxyType(dict(default or {}))
    return field(default_factory=lambda: frozen, metadata={"map_of": cls, "keys": keys})


# ---------------------------------------------------------------------------------------------
# the sections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeSettings:
    threads: int = 0  # torch CPU threads; 0 = torch's default
    keep_freed_memory: bool = True  # glibc malloc: no mmap for large blocks, no trimming (hmrmamba.allocator)


@dataclass(frozen=True)
class FlowsSettings:
    workers: int | None = None  # local Dask worker processes; None: CPU cores / runtime.threads (1 on a GPU)
    scheduler: str | None = None  # a running Dask scheduler's address; None: a local cluster per flow


@dataclass(frozen=True)
class TrackingSettings:
    uri: str | None = None  # null: sqlite:///<project>/mlflow.db
    fallback_local: bool = False


@dataclass(frozen=True)
class DatasetSettings:
    name: str = "synthetic"  # synthetic | a name of hmrmamba.data.real.registry.READERS
    root: str | None = None


@dataclass(frozen=True)
class BodyModelSettings:
    source: str = "procedural"
    smpl_path: str | None = None
    h36m_regressor: str | None = None
    downsampling_path: str | None = None
    downsample_sizes: tuple[int, ...] = (1723, 431)
    seed: int = 0


@dataclass(frozen=True)
class SplitCounts:
    sequences: int
    subjects: int
    motion_source: Any = None  # None: synthetic.motion_source; else this split's own (hmrmamba.data.mocap.sources)


@dataclass(frozen=True)
class MocapSettings:
    """``synthetic.mocap``: folders of motion files and how BVH is read (checked in hmrmamba.data.mocap.sources)."""

    bvh_dir: str | None = None
    amass_dir: str | None = None
    joint_map: Any = "auto"  # auto | cmu | mixamo | biovision | asf | {bvh joint: smpl joint}
    units: Any = "auto"      # auto | m | cm | mm | inch | cmu | metres per file unit
    up: str = "y"            # the files' up axis: y | z


@dataclass(frozen=True)
class CameraSettings:
    distance: tuple[float, float] = (3.5, 6.0)
    height: tuple[float, float] = (-0.2, 1.2)
    yaw_deg: tuple[float, float] = (-180.0, 180.0)
    person_fraction: tuple[float, float] = (0.45, 0.8)
    pitch_deg: tuple[float, float] = (0.0, 0.0)  # extra tilt away from the person (positive: down)
    roll_deg: tuple[float, float] = (0.0, 0.0)   # turn about the optical axis
    focal: tuple[float, float] | None = None     # focal length in image widths; None: from person_fraction
    partial_prob: float = 0.0                    # share of sequences whose person partly leaves the frame
    partial_cut: tuple[float, float] = (0.1, 0.4)  # how much of the person's box lies past the edge


_DEFAULT_SPLITS = {"train": SplitCounts(40, 8), "val": SplitCounts(6, 2), "test": SplitCounts(12, 3)}


@dataclass(frozen=True)
class SyntheticSettings:
    splits: Mapping[str, SplitCounts] = _map_of(SplitCounts, _DEFAULT_SPLITS)
    frames: tuple[int, int] = (48, 80)
    fps: float = 25
    image_size: int = 128
    motions: Any = "all"  # "all" or a list of motion kinds
    occluder_prob: float = 0.3
    blur_prob: float = 0.3
    appearance: str = "clothing"  # or "parts" (the legacy left/right part colour code)
    betas_scale: float = 1.5
    max_travel: float = 1.0
    seed: int = 0
    camera: CameraSettings = _section(CameraSettings)
    motion_source: Any = "procedural"  # procedural | bvh | amass | bvh:<folder> | amass:<folder> | {source: weight}
    mocap: MocapSettings = _section(MocapSettings)


@dataclass(frozen=True)
class Detect2DSettings:
    sources: tuple[str, ...] = ("gt", "sh", "detectron", "cpn")
    noise_scale: float = 1.0
    files: Mapping[str, str] = _map_of()  # split -> keypoints file, for source 'file'
    seed: int = 0


@dataclass(frozen=True)
class FeaturesSettings:
    backbone: str = "resnet50"
    weights: str | None = None
    init_seed: int = 0
    bbox_source: str = "cpn"
    bbox_scale: float = 1.2
    crop_size: int = 96
    batch_size: int = 64
    keep_spatial: bool = True
    map_layer: str = "layer3"  # which ResNet stage the cached map is (docs/model.md: "GA's feature maps")
    import_path: Any = None  # one path, or {split: path}
    image_root: str | None = None


@dataclass(frozen=True)
class BackboneLoss:
    """The backbone training's loss weights (:func:`hmrmamba.features.backbone_training.backbone_objective`)."""

    joints3d: float = 5.0  # MPJPE of the pooled feature's 3D joints, metres
    joints2d: float = 1.0  # L1 of the pooled feature's 2D joints, crop half-sides
    map2d: float = 1.0  # L1 of the 2D joints read off the GA map (soft-argmax), crop half-sides


@dataclass(frozen=True)
class TrainBackboneSettings:
    """The ``train_backbone`` stage: the ResNet-50 trained on the training split's crops (the SPIN analogue)."""

    enabled: bool = False  # false: the features stage uses features.weights, else the seeded random init
    epochs: int = 4  # passes over the training frames
    batch_size: int = 32
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-4
    warmup: float = 0.15  # fraction of the steps the one-cycle schedule climbs to lr
    min_lr_ratio: float = 0.05  # ... then decays to lr x this
    grad_clip: float | None = 5.0
    precision: str = "auto"  # auto: bf16 where the CPU has it (AVX512-BF16/AMX), else fp32
    flip: float = 0.5
    color: bool = True
    box_scale: tuple[float, float] = (0.9, 1.15)
    box_shift: float = 0.06
    val_frames: int = 512  # validation crops (evenly spaced over the val split)
    seed: int = 0
    resume: bool = True
    checkpoint_dir: str = "models/backbone"
    loss: BackboneLoss = _section(BackboneLoss)


@dataclass(frozen=True)
class ExperimentSettings:
    variant: str = "tiny"
    detector: str = "cpn"
    overrides: Mapping[str, Any] = _map_of()  # checked by hmrmamba.models.registry.resolve_config


@dataclass(frozen=True)
class LiftLoss:
    """Eq. 14 weights (the fields of :class:`hmrmamba.train.losses.LiftLossWeights`, paper defaults)."""

    mpjpe: float = 1.0
    temporal: float = 0.5
    velocity: float = 20.0
    reprojection: float = 0.5


@dataclass(frozen=True)
class MeshLoss:
    """Eq. 15 weights (the fields of :class:`hmrmamba.train.losses.MeshLossWeights`, paper defaults)."""

    vertex: float = 1.0
    joint: float = 1.0
    normal: float = 0.1
    edge: float = 20.0


@dataclass(frozen=True)
class TrainSettings:
    """What both training stages share (``train_lift``, ``train_mesh``)."""

    epochs: int = 12
    batch_size: int = 16
    lr: float = 4.0e-3
    weight_decay: float = 0.01
    lr_decay: float = 0.99
    ema: float = 0.0  # decay of the weights' moving average used for validation and best.pt; 0: off
    window: int = 16
    stride: int = 4
    grad_clip: float | None = None
    amp: bool = False
    compile: bool = False
    resume: bool = True
    seed: int | None = None  # null: the top-level seed
    checkpoint_dir: str = "models/lift"
    log_checkpoint: bool = True
    # read by hmrmamba.train.experiment.train_stage; not set in conf/ (the splits trained / validated on)
    train_split: str = "train"
    val_split: str = "val"


@dataclass(frozen=True)
class TrainLiftSettings(TrainSettings):
    loss: LiftLoss = _section(LiftLoss)
    flip: float = 0.0  # probability of mirroring a training window (hmrmamba.data.augment)


@dataclass(frozen=True)
class TrainMeshSettings(TrainSettings):
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1.0e-3
    checkpoint_dir: str = "models/mesh"
    loss: MeshLoss = _section(MeshLoss)
    loss_frames: int | None = None  # supervised frames per window; null: all


@dataclass(frozen=True)
class EvaluateSettings:
    split: str = "test"
    batch_size: int = 64


@dataclass(frozen=True)
class ReportSettings:
    dir: str = "reports"
    clips: int = 3
    frames_per_clip: int = 4


@dataclass(frozen=True)
class ResultsSettings:
    seeds: tuple[int, ...] = (0,)
    table1: tuple[str, ...] = ()
    table2: tuple[str, ...] = ()
    table3: tuple[str, ...] = ()
    output: str = "docs/results.md"


@dataclass(frozen=True)
class ScalingSettings:
    variants: tuple[str, ...] = ("hmrmamba-s", "pmce")
    frames: tuple[int, ...] = (16, 64, 243, 1024)
    scope: str = "lifter"
    repeats: int = 2
    warmup: int = 0
    profile_frames: int = 243


@dataclass(frozen=True)
class LinearSettings:
    variant: str = "hmrmamba-s"
    frames: tuple[int, ...] = (243, 486)


@dataclass(frozen=True)
class ScanSettings:
    batch: int = 64
    dim: int = 256
    length: int = 243
    dstate: int = 16
    repeats: int = 3
    ref_batch: int = 16
    ref_repeats: int = 1


@dataclass(frozen=True)
class EfficiencySection:
    """The keys of the ``efficiency`` section (its values: :class:`hmrmamba.efficiency.benchmark.EfficiencySettings`)."""

    variants: tuple[str, ...] = ("tiny", "mlp", "hmrmamba-s", "hmrmamba-s-vanilla", "hmrmamba-l", "pmce")
    frames: int = 16
    batch: int = 1
    repeats: int = 3
    warmup: int = 0
    profile_rows: int = 8
    quick: bool = False
    cuda: bool = True
    scaling: ScalingSettings = _section(ScalingSettings)
    linear: LinearSettings = _section(LinearSettings)
    scan: ScanSettings = _section(ScanSettings)


# The real-data readers' options: the names are checked here, the values (and their defaults) by
# each reader's own config (hmrmamba.data.real.registry); None means "the reader's default".

@dataclass(frozen=True)
class H36MOptions:
    root: Any = None
    train_subjects: Any = None
    test_subjects: Any = None
    val_subjects: Any = None
    train_cameras: Any = None
    test_cameras: Any = None
    stride: Any = None
    actions: Any = None
    positions_3d: Any = None
    detections: Any = None
    smpl_fits: Any = None


@dataclass(frozen=True)
class PW3DOptions:
    root: Any = None
    splits: Any = None
    smpl_male: Any = None
    smpl_female: Any = None
    h36m_regressor: Any = None


@dataclass(frozen=True)
class MPI3DHPOptions:
    root: Any = None
    sequences: Any = None
    joints3d: Any = None
    split: Any = None


@dataclass(frozen=True)
class DatasetsSettings:
    h36m: H36MOptions = _section(H36MOptions)
    pw3d: PW3DOptions = _section(PW3DOptions)
    mpi3dhp: MPI3DHPOptions = _section(MPI3DHPOptions)


@dataclass(frozen=True)
class Settings:
    """All of ``params.yaml``, typed; :attr:`present` holds which sections the mapping had."""

    profile: str = "default"
    seed: int = 0
    runtime: RuntimeSettings = _section(RuntimeSettings)
    flows: FlowsSettings = _section(FlowsSettings)
    tracking: TrackingSettings = _section(TrackingSettings)
    dataset: DatasetSettings = _section(DatasetSettings)
    body_model: BodyModelSettings = _section(BodyModelSettings)
    synthetic: SyntheticSettings = _section(SyntheticSettings)
    detect2d: Detect2DSettings = _section(Detect2DSettings)
    features: FeaturesSettings = _section(FeaturesSettings)
    train_backbone: TrainBackboneSettings = _section(TrainBackboneSettings)
    experiment: ExperimentSettings = _section(ExperimentSettings)
    train_lift: TrainLiftSettings = _section(TrainLiftSettings)
    train_mesh: TrainMeshSettings = _section(TrainMeshSettings)
    evaluate: EvaluateSettings = _section(EvaluateSettings)
    report: ReportSettings = _section(ReportSettings)
    results: ResultsSettings = _section(ResultsSettings)
    efficiency: EfficiencySection = _section(EfficiencySection)
    datasets: DatasetsSettings = _section(DatasetsSettings)

    def train(self, stage: str) -> TrainLiftSettings | TrainMeshSettings:
        """The settings of training stage ``stage`` (``train_lift`` or ``train_mesh``)."""
        if stage not in ("train_lift", "train_mesh"):
            raise InputError(f"unknown training stage {stage!r}", field="stage",
                             expected="'train_lift' or 'train_mesh'")
        return getattr(self, stage)

    def train_seed(self, stage: str) -> int:
        """``<stage>.seed``, or the top-level seed when that is null."""
        s = self.train(stage).seed
        return self.seed if s is None else s


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------

#: Most frames the synthetic dataset may hold over all splits (the default holds about 3.7k).
MAX_SYNTHETIC_FRAMES = 2_000_000
#: Most bytes of stored RGB images the synthetic dataset may need (the default needs about 230 MB).
MAX_SYNTHETIC_IMAGE_BYTES = 64 << 30


def _known(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def unknown_key_error(key: str, valid: list[str], *, prefix: str, file: str | Path) -> InputError:
    """The one-line error for an unknown params key: the dotted key, the nearest valid name, the valid ones."""
    from hmrmamba.config import short_repr

    shown = key if isinstance(key, str) and len(key) <= 60 else short_repr(key, 60)
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6) if isinstance(key, str) else []
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return InputError(f"unknown key{hint}", file=file, field=f"{prefix}{shown}",
                      expected=f"one of {sorted(valid)}")


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def _parse(cls: type, node: Any, prefix: str, file: str | Path) -> Any:
    """``cls`` from the mapping ``node`` (keys checked; nested sections parsed; absent: defaults)."""
    where = prefix.rstrip(".")
    if node is None:
        node = {}
    if not isinstance(node, Mapping):
        raise InputError(f"is a {type(node).__name__}", file=file, field=where or None,
                         expected=f"a mapping of {cls.__name__} keys")
    valid = _known(cls)
    for key in node:
        if key not in valid:
            raise unknown_key_error(key, valid, prefix=prefix, file=file)
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in node:
            if f.default is MISSING and f.default_factory is MISSING:
                raise InputError("missing key", file=file, field=f"{prefix}{f.name}",
                                 expected=f"keys {valid}")
            continue
        value = node[f.name]
        if "section" in f.metadata:
            kw[f.name] = _parse(f.metadata["section"], value, f"{prefix}{f.name}.", file)
        elif "map_of" in f.metadata:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise InputError(f"is a {type(value).__name__}", file=file, field=f"{prefix}{f.name}",
                                 expected="a mapping")
            item, keys = f.metadata["map_of"], f.metadata["keys"]
            out = {}
            for k, v in value.items():
                if keys and k not in keys:
                    raise unknown_key_error(k, list(keys), prefix=f"{prefix}{f.name}.", file=file)
                out[k] = _parse(item, v, f"{prefix}{f.name}.{k}.", file) if item else _freeze(v)
            kw[f.name] = types.MappingProxyType(out)
        else:
            kw[f.name] = _freeze(value)
    return cls(**kw)


def _check_sizes(s: Settings, params: Mapping[str, Any], file: str | Path) -> None:
    """Each key may be valid while their product is absurd: bound what the synthetic dataset would hold."""
    if "synthetic" not in params:
        return
    syn = s.synthetic
    sequences = sum(c.sequences for c in syn.splits.values())
    frames = sequences * syn.frames[1]
    image_bytes = frames * syn.image_size * syn.image_size * 3
    if frames > MAX_SYNTHETIC_FRAMES or image_bytes > MAX_SYNTHETIC_IMAGE_BYTES:
        raise InputError(
            f"{sequences} sequences x up to {syn.frames[1]} frames = {frames:.3g} frames of "
            f"{syn.image_size}x{syn.image_size} px ({image_bytes / 2**30:.3g} GiB of images)",
            file=file, field="synthetic",
            expected=f"at most {MAX_SYNTHETIC_FRAMES} frames and {MAX_SYNTHETIC_IMAGE_BYTES >> 30} GiB of "
                     f"images over all splits (sum of splits.*.sequences x frames[1] x image_size^2 x 3 bytes)")


def parse_settings(params: Mapping[str, Any], *, file: str | Path = PARAMS_FILE) -> Settings:
    """``params`` (a params.yaml mapping, possibly partial) -> :class:`Settings`, every key and value checked."""
    from hmrmamba.config import check_values

    if not isinstance(params, Mapping):
        raise InputError(f"top level is {type(params).__name__}", file=file, expected="a YAML mapping")
    check_values(params, file=file)
    s = _parse(Settings, params, "", file)
    _check_sizes(s, params, file)
    _check_backbone_source(s, file)
    return s


def _check_backbone_source(s: Settings, file: str | Path) -> None:
    """The features come from one backbone: the trained one, a weights file, or imported features."""
    if not s.train_backbone.enabled:
        return
    other = ("features.weights", s.features.weights) if s.features.weights else (
        ("features.import_path", s.features.import_path) if s.features.import_path else None)
    if other is not None:
        raise InputError(f"is true while {other[0]} is set ({other[1]!r}): the trained backbone would be unused",
                         file=file, field="train_backbone.enabled",
                         expected=f"false with {other[0]}, or {other[0]}: null to use the trained backbone")


def load_settings(path: str | Path | None = None) -> Settings:
    """:class:`Settings` of the params.yaml at ``path`` (default: the project root's)."""
    from hmrmamba.config import find_project_root, load_params

    path = Path(path) if path else find_project_root() / PARAMS_FILE
    return parse_settings(load_params(path), file=path)


def section_settings(params: Mapping[str, Any], name: str, *, file: str | Path = PARAMS_FILE) -> Any:
    """One section's settings from a params mapping (checked again: use where only the raw dict is at hand)."""
    cls = next((f.metadata["section"] for f in fields(Settings) if f.name == name and "section" in f.metadata),
               None)
    if cls is None:
        raise unknown_key_error(name, [f.name for f in fields(Settings)], prefix="", file=file)
    return getattr(parse_settings({name: params.get(name) or {}}, file=file), name)


def schema_keys() -> set[str]:
    """Every dotted key the settings know (``*`` for free names of a mapping of sections)."""
    out: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        for f in fields(cls):
            if "section" in f.metadata:
                walk(f.metadata["section"], f"{prefix}{f.name}.")
            elif f.metadata.get("map_of"):
                out.add(f"{prefix}{f.name}")
                walk(f.metadata["map_of"], f"{prefix}{f.name}.*.")
            else:
                out.add(f"{prefix}{f.name}")

    walk(Settings, "")
    return out


__all__ = [name for name, v in list(globals().items())
           if (isinstance(v, type) and is_dataclass(v)) or name in (
               "parse_settings", "load_settings", "section_settings", "schema_keys", "unknown_key_error",
               "MAX_SYNTHETIC_FRAMES", "MAX_SYNTHETIC_IMAGE_BYTES")]
