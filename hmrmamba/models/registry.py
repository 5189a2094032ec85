"""The model family: the full :class:`HMRMamba` and the variant table it is built from.

``VARIANTS`` holds every variant's hyper-parameters as plain dicts (YAML-ready)::

    {"num_joints", "joint_set", "feat_dim", "max_frames",      # shared by both stages
     ["causal"],                                               # optional: the streaming form
     "lifter": {"kind": "sta-mamba" | "transformer" | "mlp", ...constructor arguments},
     "reconstructor": {...MotionGuidedReconstructor arguments except the mesh assets}}

``build(name, config=None, assets=..., **overrides)`` deep-merges ``config`` (same nesting) and the
flat ``overrides`` (``ga=False``, ``depth=5``, or dotted ``"lifter.dim"`` via ``config``) over the
table entry, checks every key, and builds the model. ``resolve_config`` returns the merged dict
(save it next to a checkpoint; ``build_from_config`` rebuilds from it).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.models.baselines import MLPLifter, TransformerLifter
from hmrmamba.models.lifter import GeometryAwareLifter, LifterState
from hmrmamba.models.outputs import HMROutput
from hmrmamba.models.reconstructor import MeshAssets, MotionGuidedReconstructor, MotionState

__all__ = [
    "LIFTER_KINDS",
    "TABLE3_ABLATIONS",
    "VARIANTS",
    "HMRMamba",
    "StreamState",
    "build",
    "build_from_config",
    "resolve_config",
    "variant_config",
    "variant_names",
]


@dataclass
class StreamState:
    """Recurrent state of a causal :class:`HMRMamba` (``causal=True``) for B streams: the lifter's
    and the reconstructor's (None when lift-only). Constant size, whatever the number of frames."""

    lifter: LifterState
    recon: MotionState | None


class HMRMamba(nn.Module):
    """Two-stage model: kp2d (B, T, J, 2), conf (B, T, J), feats (B, T, F)[, spatial (B, T, C, h, w)]
    -> :class:`HMROutput` (pose3d; and per-frame vertices, joints, coarse unless lift-only)."""

    def __init__(self, lifter: nn.Module, reconstructor: nn.Module | None = None, *, lift_only: bool = False):
        super().__init__()
        self.lifter = lifter
        self.reconstructor = reconstructor
        self.lift_only = lift_only or reconstructor is None
        # Per-channel feature standardisation (buffers, not parameters), set from the training
        # split by :meth:`set_feature_stats`: backbone features (random-init or pretrained) have a
        # large shared component and very different channel scales, which otherwise swamp the
        # keypoint embedding. Checkpoints carry the statistics.
        feat_dim = int(getattr(lifter, "feat_dim", 2048))
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_std", torch.ones(feat_dim))

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-3) -> None:
        """mean, std: (F,) per-channel statistics of the training features."""
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=self.feat_mean.dtype))
        self.feat_std.copy_(torch.as_tensor(std, dtype=self.feat_std.dtype).clamp_min(eps))

    @property
    def map_dim(self) -> int:
        """Channels of the image feature maps the lifter's GA samples at the joints (0: none needed)."""
        return int(getattr(self.lifter, "map_dim", 0))

    def set_map_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """mean, std: (C,) per-channel statistics of the training feature maps (``map_dim > 0``)."""
        self.lifter.set_map_stats(mean, std)

    def forward(self, kp2d: torch.Tensor, conf: torch.Tensor | None = None, feats: torch.Tensor | None = None,
                spatial: torch.Tensor | None = None, *, lift_only: bool | None = None,
                decode_frames: torch.Tensor | None = None) -> HMROutput:
        """kp2d (B, T, J, 2) in [-1, 1], conf (B, T, J), feats (B, T, F), spatial (B, T, C, h, w) or None
        (GA's feature maps; required when :attr:`map_dim` > 0) -> HMROutput; ``lift_only`` (default: the attribute) skips stage 2 (stage-1 training).

        ``decode_frames`` (K,) long, optional: stage 2 decodes meshes only for these frames of the
        window (the mesh fields then have K frames; pose3d keeps all T). The motion context still
        reads every frame, so a decoded frame equals the same frame of a full decode."""
        if feats is not None and feats.shape[-1:] == self.feat_mean.shape:  # else the lifter's check names it
            feats = (feats - self.feat_mean) / self.feat_std
        pose3d = self.lifter(kp2d, conf, feats, spatial)
        only = self.lift_only if lift_only is None else lift_only
        if only or self.reconstructor is None:
            return HMROutput(pose3d=pose3d)
        rec = self.reconstructor(pose3d, feats, decode_frames)
        return HMROutput(pose3d=pose3d, vertices=rec.vertices, joints=rec.joints, coarse=rec.coarse,
                         coevo_joints=rec.coevo_joints)

    @property
    def causal(self) -> bool:
        """True when no output depends on a later frame (built with ``causal=True``): :meth:`step` works."""
        return bool(getattr(self.lifter, "causal", False)) and (
            self.reconstructor is None or bool(getattr(self.reconstructor, "causal", False)))

    def init_state(self, batch: int = 1) -> StreamState:
        """The state before frame 0 of ``batch`` streams (a causal model only)."""
        if not self.causal:
            raise InputError("this model reads future frames and cannot run frame by frame", field="causal",
                             expected="a model built with causal=True (e.g. variant 'tiny-online')")
        return StreamState(lifter=self.lifter.init_state(batch),
                           recon=None if self.lift_only or self.reconstructor is None
                           else self.reconstructor.init_state())

    def step(self, kp2d: torch.Tensor, conf: torch.Tensor | None, feats: torch.Tensor | None,
             state: StreamState) -> tuple[HMROutput, StreamState]:
        """One frame: kp2d (B, 1, J, 2) in [-1, 1], conf (B, 1, J), feats (B, 1, F), state -> (HMROutput
        with T = 1, new state). Stepping a clip frame by frame equals ``forward`` on the whole clip."""
        if not self.causal:
            raise InputError("this model reads future frames and cannot run frame by frame", field="causal",
                             expected="a model built with causal=True (e.g. variant 'tiny-online')")
        if feats is not None and feats.shape[-1:] == self.feat_mean.shape:
            feats = (feats - self.feat_mean) / self.feat_std
        pose3d, lifter_state = self.lifter.step(kp2d, conf, feats, state.lifter)
        if state.recon is None:
            return HMROutput(pose3d=pose3d), StreamState(lifter=lifter_state, recon=None)
        rec, recon_state = self.reconstructor.step(pose3d, feats, state.recon)
        out = HMROutput(pose3d=pose3d, vertices=rec.vertices, joints=rec.joints, coarse=rec.coarse,
                        coevo_joints=rec.coevo_joints)
        return out, StreamState(lifter=lifter_state, recon=recon_state)


LIFTER_KINDS: dict[str, type[nn.Module]] = {
    "sta-mamba": GeometryAwareLifter,
    "transformer": TransformerLifter,
    "mlp": MLPLifter,
}

_SHARED = ("num_joints", "joint_set", "feat_dim", "max_frames", "causal")

_PAPER_COMMON = {"num_joints": 17, "joint_set": "h36m17", "feat_dim": 2048, "max_frames": 16}

#: ``kinematic_scan``/``bidirectional``: the dual scan's local order (the depth-first tree walk) and
#: one-way branches, chosen by benchmarks/bench_lift_settings.py --study scan (docs/model.md); a saved config without
#: them rebuilds with the lifter's defaults, the first version's ("limbs", one-way).
#: ``map_dim``: channels of the feature maps GA samples at the joints (eq. 8): SPIN's layer4 (2048) at
#: paper size; the training stages set it from the cached features (0 when none are cached).
_STA_S = {"kind": "sta-mamba", "dim": 256, "depth": 3, "scan": "dual", "ga": True, "ga_heads": 8,
          "ga_points": 4, "d_state": 16, "d_conv": 4, "expand": 2, "mlp_ratio": 4.0, "fusion_kernel": 3,
          "drop_path": 0.1, "use_conf": True, "backend": "auto", "map_dim": 2048,
          "kinematic_scan": "tree", "bidirectional": False}

_RECON_PAPER = {"context": "motion", "em": True, "im": True, "motion_dim": 192, "motion_heads": 8,
                "gru_hidden": 1024, "gru_layers": 2, "context_dim": None, "decoder_dim": 64, "decoder_depth": 3,
                "joint_heads": 8, "vertex_heads": 2, "decoder_mlp_ratio": 4.0, "drop_path": 0.1,
                "upsample_mode": "learnable", "residual": "fine", "coarse_init": "template"}

_RECON_TINY = {**_RECON_PAPER, "motion_dim": 32, "motion_heads": 4, "context_dim": 64, "decoder_dim": 16,
               "decoder_depth": 1, "joint_heads": 2, "vertex_heads": 1, "decoder_mlp_ratio": 2.0, "drop_path": 0.0,
               "upsample_mode": "fixed", "residual": "coarse"}

#: Every variant's defaults, one table. Paper sizes: S 79.63M / L 89.04M / PMCE 102.80M parameters.
VARIANTS: dict[str, dict[str, Any]] = {
    "hmrmamba-s": {**_PAPER_COMMON, "lifter": dict(_STA_S), "reconstructor": dict(_RECON_PAPER)},
    "hmrmamba-l": {**_PAPER_COMMON, "lifter": {**_STA_S, "depth": 5}, "reconstructor": dict(_RECON_PAPER)},
    "hmrmamba-s-vanilla": {**_PAPER_COMMON, "lifter": {**_STA_S, "scan": "bi"},
                           "reconstructor": dict(_RECON_PAPER)},
    "pmce": {**_PAPER_COMMON,
             "lifter": {"kind": "transformer", "dim": 256, "depth": 3, "num_heads": 8, "mlp_ratio": 2.0,
                        "drop_path": 0.2, "use_conf": True},
             "reconstructor": {**_RECON_PAPER, "context": "gru", "upsample_mode": "conv", "drop_path": 0.2}},
    # CPU demo size: trains a few epochs on ~3k frames in minutes on 2 cores. At this width a shared
    # per-token head and the gated scans alone learn slowly, and per-frame global features are
    # memorised, hence: the whole 2D pose in every token, a per-joint output layer, and a
    # regularised feature path (clip-centred, channel dropout, 16-channel bottleneck).
    "tiny": {**_PAPER_COMMON,
             "lifter": {**_STA_S, "dim": 32, "depth": 1, "ga_heads": 4, "ga_points": 2, "d_state": 8,
                        "mlp_ratio": 2.0, "drop_path": 0.0, "frame_pose": True, "head": "joint",
                        "feat_centre": True, "feat_dropout": 0.5, "feat_proj": 16, "map_dim": 1024},
             "reconstructor": dict(_RECON_TINY)},
    # The PMCE-like baseline at the CPU-demo size (transformer lifter, GRU image context).
    "pmce-tiny": {**_PAPER_COMMON,
                  "lifter": {"kind": "transformer", "dim": 32, "depth": 1, "num_heads": 4, "mlp_ratio": 2.0,
                             "drop_path": 0.0, "use_conf": True, "frame_pose": True, "head": "joint",
                             "feat_centre": True, "feat_dropout": 0.5, "feat_proj": 16},
                  "reconstructor": {**_RECON_TINY, "context": "gru", "gru_hidden": 64, "gru_layers": 1}},
    # `tiny` in its causal form for streaming (`hmrmamba demo --online`, hmrmamba.demo.streaming.Tracker):
    # forward-only temporal scans, GA and motion attention over the last max_frames frames only.
    "tiny-online": {**_PAPER_COMMON, "causal": True,
                    "lifter": {**_STA_S, "dim": 32, "depth": 1, "ga_heads": 4, "ga_points": 2, "d_state": 8,
                               "mlp_ratio": 2.0, "drop_path": 0.0, "frame_pose": True, "head": "joint",
                               "feat_centre": True, "feat_dropout": 0.5, "feat_proj": 16, "map_dim": 0},
                    "reconstructor": dict(_RECON_TINY)},
    # Trivial per-frame MLP lifter on the 2D pose alone, with the tiny reconstructor: the floor for the CPU
    # demo (with random-init image features it memorises them and does worse: docs/model.md).
    "mlp": {**_PAPER_COMMON,
            "lifter": {"kind": "mlp", "dim": 128, "depth": 2, "use_conf": True, "use_feats": False},
            "reconstructor": dict(_RECON_TINY)},
}

#: Table 3 rows (GA, EM, IM) as overrides of ``hmrmamba-s``.
TABLE3_ABLATIONS: tuple[dict[str, bool], ...] = (
    {"ga": True, "em": False, "im": False},
    {"ga": True, "em": True, "im": False},
    {"ga": True, "em": False, "im": True},
    {"ga": False, "em": True, "im": True},
    {"ga": True, "em": True, "im": True},
)


def variant_names() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(VARIANTS)


def variant_config(name: str) -> dict[str, Any]:
    """A deep copy of the table entry for ``name`` (raises ``InputError`` for unknown names)."""
    if name not in VARIANTS:
        raise InputError(f"unknown model {name!r}", field="model", expected=f"one of {variant_names()}")
    return copy.deepcopy(VARIANTS[name])


def _accepted(cls: type, exclude: tuple[str, ...] = ()) -> set[str]:
    return {p for p in inspect.signature(cls.__init__).parameters if p not in ("self",) + exclude}


def _lifter_keys(kind: str) -> set[str]:
    return _accepted(LIFTER_KINDS[kind]) - set(_SHARED) | {"kind"}


_ASSET_KEYS = ("upsample", "vertex_init", "joint_regressor", "coarse_offsets", "rest_coarse", "rest_joints",
               "parents")
_RECON_KEYS = _accepted(MotionGuidedReconstructor, _ASSET_KEYS) - set(_SHARED)


def _check_config(cfg: Mapping[str, Any]) -> None:
    allowed_top = set(_SHARED) | {"variant", "lifter", "reconstructor"}
    extra = set(cfg) - allowed_top
    if extra:
        raise InputError(f"unknown keys {sorted(extra)}", field="model config", expected=f"keys {sorted(allowed_top)}")
    kind = cfg["lifter"].get("kind")
    if kind not in LIFTER_KINDS:
        raise InputError(f"unknown lifter kind {kind!r}", field="lifter.kind", expected=f"one of {sorted(LIFTER_KINDS)}")
    extra = set(cfg["lifter"]) - _lifter_keys(kind)
    if extra:
        raise InputError(f"unknown keys {sorted(extra)} for lifter kind {kind!r}", field="lifter",
                         expected=f"keys {sorted(_lifter_keys(kind))}")
    extra = set(cfg["reconstructor"]) - _RECON_KEYS
    if extra:
        raise InputError(f"unknown keys {sorted(extra)}", field="reconstructor", expected=f"keys {sorted(_RECON_KEYS)}")


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(name: str, config: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Table entry of ``name`` <- ``config`` (nested) <- flat ``overrides`` -> the full, checked config.

    A flat override goes to the shared keys, else to the lifter, else to the reconstructor; a key both
    stages take (e.g. ``drop_path``) must be given nested in ``config`` instead.
    """
    cfg = _merge(variant_config(name), config or {})
    cfg.setdefault("lifter", {})
    cfg.setdefault("reconstructor", {})
    cfg["variant"] = name
    kind = cfg["lifter"].get("kind")
    lifter_keys = _lifter_keys(kind) if kind in LIFTER_KINDS else set(cfg["lifter"])
    for key, value in overrides.items():
        if key in _SHARED:
            cfg[key] = value
            continue
        in_l, in_r = key in lifter_keys, key in _RECON_KEYS
        if in_l and in_r:
            raise InputError(f"override {key!r} is ambiguous (lifter and reconstructor both take it)",
                             field=key, expected=f"config={{'lifter': {{'{key}': ...}}}} or {{'reconstructor': ...}}")
        if in_l:
            cfg["lifter"][key] = value
        elif in_r:
            cfg["reconstructor"][key] = value
        else:
            raise InputError(f"unknown override {key!r} for model {name!r}", field=key,
                             expected=f"one of {sorted(set(_SHARED) | lifter_keys | _RECON_KEYS)}")
    _check_config(cfg)
    return cfg


def build_from_config(cfg: Mapping[str, Any], *, assets: MeshAssets | None = None,
                      lift_only: bool = False) -> HMRMamba:
    """Build from a resolved config (:func:`resolve_config`); ``assets`` are required unless ``lift_only``."""
    _check_config(cfg)
    shared = {k: cfg[k] for k in _SHARED if k in cfg}
    lcfg = dict(cfg["lifter"])
    kind = lcfg.pop("kind")
    cls = LIFTER_KINDS[kind]
    accepted = _accepted(cls)
    if shared.get("causal") and "causal" not in accepted:
        raise InputError(f"lifter kind {kind!r} has no causal form", field="causal",
                         expected="causal: false, or lifter kind 'sta-mamba'")
    lifter = cls(**{k: v for k, v in shared.items() if k in accepted}, **lcfg)
    if lift_only:
        return HMRMamba(lifter, None, lift_only=True)
    if assets is None:
        raise InputError("mesh assets are needed to build the reconstructor", field="assets",
                         expected="MeshAssets (mesh_assets_from_hierarchy(...) for real meshes, "
                                  "random_mesh_assets() for size/cost checks) or lift_only=True")
    shared_r = {k: v for k, v in shared.items() if k in _accepted(MotionGuidedReconstructor)}
    recon = MotionGuidedReconstructor(**{k: getattr(assets, k) for k in _ASSET_KEYS}, **shared_r,
                                      **cfg["reconstructor"])
    return HMRMamba(lifter, recon)


def build(name: str, config: Mapping[str, Any] | None = None, *, assets: MeshAssets | None = None,
          lift_only: bool = False, **overrides: Any) -> HMRMamba:
    """Build variant ``name`` (see ``VARIANTS``) with ``config``/``overrides`` merged over its defaults."""
    return build_from_config(resolve_config(name, config, **overrides), assets=assets, lift_only=lift_only)
