"""The trained model with everything needed to run it on new frames.

:func:`load_inference` rebuilds the model from a checkpoint alone (its saved config, through
:func:`hmrmamba.train.trained.load_trained`, with the project's mesh assets), and the ResNet-50
and crop settings from the ``features`` section of ``params.yaml`` (the same backbone the
features stage used, so the model sees features of the kind it was trained on).

:func:`sequence_inputs` turns frames and 2D keypoints into the model's inputs the way the data
stages do (square boxes from the keypoints, crops, features, keypoints in crop coordinates), and
:func:`predict_offline` runs the model on overlapping windows (or, ``keep=None``, on the evaluation
protocol's centred stride-1 windows, :func:`hmrmamba.evaluate.protocol.predict_split`) for a non-causal
model, or once over the whole sequence for a causal one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrmamba.errors import InputError
from hmrmamba.layout import Layout

__all__ = ["Inference", "SequenceInputs", "choose_supersample", "load_inference", "predict_offline",
           "sequence_inputs"]


@dataclass
class Inference:
    """A loaded model and its input pipeline.

    model: the HMRMamba (eval mode); checkpoint: its file; variant; window: frames per offline window;
    backbone: the prepared (BN-fused) ResNet-50; crop_size, bbox_scale: as in the features stage;
    faces (F, 3) int64: the body model's triangles; vertex_colors (V, 3) in [0, 1]: part colours from
    its skinning weights; weights_note: where the backbone weights came from; map_layer: the backbone
    stage whose feature maps the model's GA samples (None: the model samples none);
    feature_reference: the training features' moments that offline videos are aligned to.
    """

    model: Any
    checkpoint: Path
    variant: str
    window: int
    backbone: Any
    crop_size: int
    bbox_scale: float
    faces: np.ndarray
    vertex_colors: np.ndarray
    weights_note: str
    map_layer: str | None = None
    #: the training split's feature moments, for :func:`hmrmamba.features.alignment.align_to` (None: the
    #: project has no features file of the model's training split)
    feature_reference: Any = None

    @property
    def causal(self) -> bool:
        return bool(getattr(self.model, "causal", False))

    @property
    def map_hw(self) -> tuple[int, int] | None:
        """(h, w) cells of the feature maps the backbone gives for the model's GA (None: no maps)."""
        if self.map_layer is None:
            return None
        from hmrmamba.features.resnet import MAP_STRIDE

        cells = -(-self.crop_size // MAP_STRIDE[self.map_layer])
        return cells, cells


def load_inference(checkpoint: str | Path | None = None, *, root: str | Path | None = None,
                   need_causal: bool = False) -> Inference:
    """Load the mesh model (default: ``<root>/<train_mesh.checkpoint_dir>/best.pt``) and the backbone.

    ``root``: the project checkout (default: the one around the current directory), which holds
    ``params.yaml`` and the body model. Raises ``InputError`` for a stage-1 (lift-only) checkpoint, a
    checkpoint of another joint set or whose weights do not fit its variant, and (``need_causal``)
    a non-causal variant.
    """
    import hmrmamba.evaluate.protocol  # noqa: F401  (imports pandas: pay it here, not in the first prediction)
    from hmrmamba.body.body_model import load_body_arrays
    from hmrmamba.config import find_project_root, load_params
    from hmrmamba.settings import parse_settings
    from hmrmamba.features.backbone import build_backbone, trained_backbone_path
    from hmrmamba.features.alignment import read_feature_moments
    from hmrmamba.features.extract import prepare_model
    from hmrmamba.render.scene import part_colors
    from hmrmamba.train.checkpoint import load_checkpoint
    from hmrmamba.train.trained import load_trained

    root = find_project_root() if root is None else Path(root)
    settings = parse_settings(load_params(root / "params.yaml"), file=root / "params.yaml")
    layout = Layout(root)
    if checkpoint is None:
        checkpoint = root / settings.train_mesh.checkpoint_dir / "best.pt"
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else None
    if model_cfg is None:
        raise InputError("checkpoint config has no 'model' section", file=checkpoint, field="config.model",
                         expected="a checkpoint written by the train_mesh stage")
    variant = str(model_cfg.get("variant", "?"))
    if cfg.get("stage") == "train_lift":
        raise InputError(f"a stage-1 (lift-only) checkpoint of variant '{variant}'", file=checkpoint,
                         field="config.stage", expected="a mesh checkpoint (train_mesh stage, models/mesh/best.pt)")
    if model_cfg.get("joint_set", "h36m17") != "h36m17" or int(model_cfg.get("num_joints", 17)) != 17:
        raise InputError(f"variant '{variant}' uses joint set {model_cfg.get('joint_set')}", file=checkpoint,
                         field="config.model.joint_set", expected="h36m17 (the demo's keypoints are H36M-17)")
    if need_causal and not model_cfg.get("causal", False):
        raise InputError(f"variant '{variant}' reads future frames (not causal)", file=checkpoint,
                         field="config.model.causal",
                         expected="a checkpoint of a causal variant such as 'tiny-online' for --online")
    model, _ = load_trained(checkpoint, layout, lift_only=False)
    model.eval()
    fs = settings.features
    map_layer = None
    if model.map_dim:  # GA samples maps: the backbone must give the same stage's maps as in training
        from hmrmamba.features.resnet import MAP_CHANNELS

        map_layer = fs.map_layer
        if MAP_CHANNELS.get(map_layer) != model.map_dim:
            raise InputError(f"features.map_layer '{map_layer}' gives {MAP_CHANNELS.get(map_layer)}-channel maps, "
                             f"the model samples {model.map_dim}-channel maps", file=root / "params.yaml",
                             field="features.map_layer",
                             expected=f"one of {[k for k, v in MAP_CHANNELS.items() if v == model.map_dim]}")
    backbone, note = build_backbone(fs, layout, trained=trained_backbone_path(settings.train_backbone, layout))
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    body = load_body_arrays(layout.body_model)
    colors = part_colors(torch.as_tensor(body["weights"], dtype=torch.float32)).numpy()
    train_features = layout.features(settings.train_mesh.train_split)
    reference = read_feature_moments(train_features) if train_features.is_file() else None
    return Inference(model=model, checkpoint=checkpoint, variant=variant,
                     window=int(train.get("window", model_cfg.get("max_frames", 16))),
                     backbone=prepare_model(backbone), crop_size=fs.crop_size,
                     bbox_scale=fs.bbox_scale, faces=body["f"].astype(np.int64),
                     vertex_colors=colors, weights_note=note, map_layer=map_layer, feature_reference=reference)


def choose_supersample(box_size: float, crop_size: int) -> int:
    """Anti-aliasing for the crops: about one sample per 1.5 source pixels, 1..4 per side. Chosen
    once per video, from the first detected frame's box (offline and online alike)."""
    return int(np.clip(np.round(float(box_size) / (1.5 * crop_size)), 1, 4))


@dataclass
class SequenceInputs:
    """Model inputs of one sequence: kp2d (N, 17, 2) in crop coordinates, conf (N, 17), feats (N, 2048),
    boxes (N, 4) cx, cy, w, h px; spatial (N, C, h, w) float16 feature maps when the model's GA
    samples them (``Inference.map_layer``), else None."""

    kp2d: np.ndarray
    conf: np.ndarray
    feats: np.ndarray
    boxes: np.ndarray
    spatial: np.ndarray | None = None


def sequence_inputs(inf: Inference, frames: Iterable[np.ndarray], keypoints: np.ndarray, confidence: np.ndarray,
                    *, image_size: tuple[int, int], batch_size: int = 16) -> Iterator[tuple[int, SequenceInputs]]:
    """Stream features: frames (H, W, 3) uint8 one by one, keypoints (N, 17, 2) px, confidence (N, 17)
    -> yields (start, SequenceInputs of that batch) in order (the frames are read once)."""
    from hmrmamba.data.loading import normalize_keypoints
    from hmrmamba.features.crops import bbox_from_keypoints
    from hmrmamba.features.extract import iter_features

    boxes = bbox_from_keypoints(keypoints, confidence, image_size=image_size, scale=inf.bbox_scale)
    first = int(np.argmax((np.asarray(confidence) > 0).any(-1)))  # as the online tracker: the first detection
    supersample = choose_supersample(float(boxes[first, 2]), inf.crop_size)
    maps = inf.map_layer is not None
    for start, feats, spatial in iter_features(frames, boxes, model=inf.backbone, crop_size=inf.crop_size,
                                               batch_size=batch_size, prepared=True, progress=False,
                                               supersample=supersample, keep_spatial=maps,
                                               map_layer=inf.map_layer or "layer4"):
        sl = slice(start, start + len(feats))
        yield start, SequenceInputs(kp2d=normalize_keypoints(keypoints[sl], boxes[sl]), conf=confidence[sl],
                                    feats=feats.astype(np.float32), boxes=boxes[sl], spatial=spatial)


@torch.no_grad()
def predict_offline(inf: Inference, inputs: SequenceInputs, *, keep: int | None = 8, batch_size: int = 16):
    """Meshes for every frame of one sequence -> :class:`hmrmamba.evaluate.protocol.Predictions`
    (pose3d (N, 17, 3), joints (N, 17, 3), vertices (N, V, 3), metres, pelvis-relative).

    A causal model runs once over the whole sequence (what streaming gives, too). A non-causal one
    runs on windows of ``inf.window`` frames: ``keep=None`` is the evaluation protocol (a window
    centred on every frame, its middle frame kept: :func:`hmrmamba.evaluate.protocol.predict_split`);
    ``keep=k`` tiles the sequence with windows every k frames and keeps each window's middle k
    frames, so every frame still has (window - k) / 2 frames of context on both sides, for
    window / k times less work (edges replicate the first/last frame, as the protocol's windows do).
    """
    from hmrmamba.data.h5schema import Split
    from hmrmamba.data.loading import SplitArrays
    from hmrmamba.data.windows import window_indices
    from hmrmamba.evaluate.protocol import Predictions, predict_split, run_batch

    n = len(inputs.kp2d)
    if n == 0:
        raise InputError("no frames", field="frames", expected="at least one frame")
    arrays = {"kp2d": inputs.kp2d, "conf": inputs.conf, "feats": inputs.feats}
    if inputs.spatial is not None:
        arrays["spatial"] = inputs.spatial
    if inf.causal:  # the causal model takes the whole sequence: the same as streaming it
        out = inf.model(*(torch.as_tensor(arrays[k])[None] for k in ("kp2d", "conf", "feats")))
        return Predictions(pose3d=out.pose3d[0].numpy(), joints=out.joints[0].numpy(),
                           vertices=out.vertices[0].numpy())
    length = inf.window
    if keep is None or keep >= length:
        seqs = {"seq_start": np.zeros(1, np.int64), "seq_len": np.array([n], np.int64),
                "camera": np.zeros((1, 4), np.float32)}
        data = SplitArrays(split=Split(path=Path("<video>"), frames={}, seqs=seqs, attrs={}), detector="demo",
                           arrays=arrays)
        return predict_split(inf.model, data, length=length, batch_size=batch_size, progress=False)
    if keep < 1:
        raise InputError(f"keep={keep}", field="keep", expected="None or 1 <= keep")
    first = (length - keep) // 2  # position of the first kept frame inside a window
    starts = np.arange(0, n, keep) - first
    out: dict[str, list[np.ndarray]] = {"pose3d": [], "joints": [], "vertices": []}
    kept = torch.arange(first, first + keep)  # stage 2 decodes only these frames of each window
    for lo in range(0, len(starts), batch_size):
        idx = np.stack([window_indices(int(s), length, 0, n - 1)[0] for s in starts[lo:lo + batch_size]])
        pred = run_batch(inf.model, {k: torch.as_tensor(v[idx]) for k, v in arrays.items()}, lift_only=False,
                         decode_frames=kept)
        out["pose3d"].append(pred.pose3d[:, first:first + keep].reshape(-1, *pred.pose3d.shape[2:]).numpy())
        for key in ("joints", "vertices"):
            out[key].append(pred[key].reshape(-1, *pred[key].shape[2:]).numpy())
    return Predictions(**{k: np.concatenate(v)[:n] for k, v in out.items()})
