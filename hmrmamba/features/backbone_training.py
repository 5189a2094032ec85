"""Training the image backbone on the training split's rendered crops: the project's SPIN analogue.

SPIN's ResNet-50 (the paper's image features) was trained to recover SMPL meshes from person crops.
Here the same architecture learns, from the rendered training frames only, the targets such a
backbone is trained for that need no SMPL regressor head:

* root-relative 3D joints (J, 3) in metres, from the pooled 2048-d feature (a linear head);
* 2D joints (J, 2) in the crop's normalised coordinates ([-1, 1], x right, y down), from the pooled
  feature (a linear head);
* the same 2D joints read off the map GA samples (``features.map_layer``): one 1x1-conv heatmap per
  joint, turned into a location by a soft-argmax, so the map's cells learn where the joints are.

Crops are made as the ``features`` stage makes them (the same 2D source, box scale and crop size),
then augmented: box scale and shift jitter, horizontal mirroring (image, joints and left/right
names), and colour: channels permuted, gained and shifted, some made grey, so that no clothing
colour can stand in for a body part. Every random draw uses torch's global generator, which the
:class:`~hmrmamba.train.loop.Trainer` seeds per run and stores in its checkpoints (exact resume).

The loss is ``w3d * MPJPE(3D) + w2d * L1(2D pooled) + wmap * L1(2D from the map)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hmrmamba.errors import InputError
from hmrmamba.features.crops import IMAGENET_MEAN, IMAGENET_STD, crop_and_resize
from hmrmamba.features.resnet import MAP_CHANNELS, ResNet50

__all__ = ["BackboneNet", "CropBatcher", "CropTargets", "backbone_objective", "backbone_validation",
           "bf16_supported", "normalise_crops", "recolor", "soft_argmax"]


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively: a CPU with AVX512-BF16 / AMX (oneDNN),
    or a CUDA GPU that supports bf16."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, J, h, w) -> expected cell centres (B, J, 2) in normalised map coordinates, x then y.

    A cell (r, c) has its centre at x = (c + 0.5) / w * 2 - 1, y = (r + 0.5) / h * 2 - 1, the
    convention of ``grid_sample(align_corners=False)`` and of :func:`crop_and_resize`'s crops.
    """
    b, j, h, w = logits.shape
    prob = logits.float().flatten(2).softmax(-1).reshape(b, j, h, w)
    gy = (torch.arange(h, dtype=prob.dtype, device=prob.device) + 0.5) / h * 2 - 1
    gx = (torch.arange(w, dtype=prob.dtype, device=prob.device) + 0.5) / w * 2 - 1
    return torch.stack([(prob.sum(2) * gx).sum(-1), (prob.sum(3) * gy).sum(-1)], -1)


def recolor(x: torch.Tensor, *, grey_prob: float = 0.2, gain: tuple[float, float] = (0.6, 1.4),
            shift: float = 0.15) -> torch.Tensor:
    """x: (B, 3, S, S) crops in [0, 1] -> (B, 3, S, S) in [0, 1]: per sample, the colour channels
    permuted, each scaled by a gain in ``gain``, all shifted by up to ``shift``, and with
    probability ``grey_prob`` replaced by their mean. Draws from torch's global generator."""
    b = x.shape[0]
    perm = torch.argsort(torch.rand(b, 3), dim=1)
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    x = x * (gain[0] + (gain[1] - gain[0]) * torch.rand(b, 3, 1, 1))
    x = x + shift * (2 * torch.rand(b, 1, 1, 1) - 1)
    grey = (torch.rand(b) < grey_prob)[:, None, None, None]
    x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    return x.clamp_(0.0, 1.0)


def normalise_crops(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) crops in [0, 1] -> ImageNet-normalised, channels-last (as :func:`crop_and_resize` gives)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).reshape(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@dataclass
class CropTargets:
    """What the backbone learns from, one row per training frame.

    images (N, H, W, 3) uint8, boxes (N, 4) cx, cy, w, h px (the ``features`` stage's), joints3d
    (N, J, 3) m root-relative, joints2d (N, J, 2) px in the image.
    """

    images: np.ndarray
    boxes: np.ndarray
    joints3d: np.ndarray
    joints2d: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        for name, want in (("boxes", (n, 4)), ("joints3d", (n, None, 3)), ("joints2d", (n, None, 2))):
            got = getattr(self, name).shape
            if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
                raise InputError(f"got shape {tuple(got)}", field=name, expected=f"{want} (None: any)")
        if self.joints3d.shape[1] != self.joints2d.shape[1]:
            raise InputError(f"{self.joints3d.shape[1]} 3D vs {self.joints2d.shape[1]} 2D joints",
                             field="joints2d", expected="as many joints as joints3d")

    def __len__(self) -> int:
        return len(self.images)


class _Rows(torch.utils.data.Dataset):
    """Row indices 0..n-1: the loader shuffles them; :class:`CropBatcher` turns a batch into crops."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


class CropBatcher:
    """Collate function: a list of row indices -> the augmented batch
    ``{"image": (B, 3, S, S) normalised channels-last, "joints3d": (B, J, 3), "joints2d": (B, J, 2)}``.

    Augmentation (``augment``): box side scaled by U(``scale``), centre shifted by U(±``shift``) of
    the side, mirrored with probability ``flip`` (``flip_index``: each joint's mirror), then
    :func:`recolor` when ``color``. Without ``augment`` the crops are exactly the features stage's.
    """

    def __init__(self, data: CropTargets, *, crop_size: int, flip_index: tuple[int, ...], augment: bool = True,
                 flip: float = 0.5, scale: tuple[float, float] = (0.9, 1.15), shift: float = 0.06,
                 color: bool = True):
        if len(flip_index) != data.joints3d.shape[1]:
            raise InputError(f"{len(flip_index)} mirror indices for {data.joints3d.shape[1]} joints",
                             field="flip_index", expected="one per joint")
        self.data, self.crop_size, self.augment = data, int(crop_size), augment
        self.flip_index = torch.as_tensor(flip_index)
        self.flip, self.scale, self.shift, self.color = float(flip), scale, float(shift), color

    def dataset(self) -> torch.utils.data.Dataset:
        return _Rows(len(self.data))

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: contiguous reads from an h5py dataset
        b = len(idx)
        box = torch.as_tensor(self.data.boxes[idx], dtype=torch.float32).clone()
        j3 = torch.as_tensor(self.data.joints3d[idx], dtype=torch.float32).clone()
        j2 = torch.as_tensor(self.data.joints2d[idx], dtype=torch.float32)
        if self.augment:
            side = box[:, 2:3] * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(b, 1))
            box[:, :2] += self.shift * (2 * torch.rand(b, 2) - 1) * side
            box[:, 2:4] = side
        x = crop_and_resize(np.asarray(self.data.images[idx]), box, out_size=self.crop_size, normalize=False)
        # joints in the crop's normalised frame: (p - centre) / (side / 2)
        j2 = (j2 - box[:, None, :2]) / (box[:, None, 2:3] / 2)
        if self.augment:
            mirror = torch.rand(b) < self.flip
            if bool(mirror.any()):
                x[mirror] = x[mirror].flip(-1)
                sign3, sign2 = torch.tensor([-1.0, 1.0, 1.0]), torch.tensor([-1.0, 1.0])
                j3[mirror] = j3[mirror][:, self.flip_index] * sign3
                j2[mirror] = j2[mirror][:, self.flip_index] * sign2
            if self.color:
                x = recolor(x)
        return {"image": normalise_crops(x), "joints3d": j3, "joints2d": j2}


class BackboneNet(nn.Module):
    """The ResNet-50 with its training heads. ``backbone`` is what the ``features`` stage loads.

    forward: image (B, 3, S, S) -> {"joints3d": (B, J, 3), "joints2d": (B, J, 2), "map2d": (B, J, 2)}.
    """

    def __init__(self, *, num_joints: int, map_layer: str = "layer3", init_seed: int = 0):
        super().__init__()
        if map_layer not in MAP_CHANNELS:
            raise InputError(f"unknown map layer {map_layer!r}", field="map_layer",
                             expected=f"one of {sorted(MAP_CHANNELS)}")
        self.num_joints, self.map_layer = int(num_joints), map_layer
        self.backbone = ResNet50(init_seed=init_seed)
        gen = torch.Generator().manual_seed(int(init_seed) + 1)
        self.joints = nn.Linear(2048, self.num_joints * 5)
        self.heatmap = nn.Conv2d(MAP_CHANNELS[map_layer], self.num_joints, 1)
        with torch.no_grad():  # seeded, away from the global RNG: the backbone's init_seed fixes all
            for m in (self.joints, self.heatmap):
                bound = 1.0 / float(np.sqrt(m.weight[0].numel()))
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
                m.bias.zero_()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled, fmap = self.backbone.forward_features(image, map_layer=self.map_layer)
        out = self.joints(pooled).float()
        j = self.num_joints
        return {"joints3d": out[:, :3 * j].reshape(-1, j, 3), "joints2d": out[:, 3 * j:].reshape(-1, j, 2),
                "map2d": soft_argmax(self.heatmap(fmap))}


def backbone_objective(weights: Mapping[str, float], *, bf16: bool):
    """The Trainer's ``step_fn``: model, batch -> {"total", "mpjpe_mm", "joints2d", "map2d"}."""
    w3, w2, wm = (float(weights[k]) for k in ("joints3d", "joints2d", "map2d"))

    def step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.autocast(batch["image"].device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch["image"])
        l3 = (out["joints3d"] - batch["joints3d"]).norm(dim=-1).mean()
        l2 = (out["joints2d"] - batch["joints2d"]).abs().mean()
        lm = (out["map2d"] - batch["joints2d"]).abs().mean()
        return {"total": w3 * l3 + w2 * l2 + wm * lm, "mpjpe_mm": 1000 * l3.detach(),
                "joints2d": l2.detach(), "map2d": lm.detach()}

    return step


def backbone_validation(batcher: CropBatcher, *, batch_size: int, bf16: bool):
    """The Trainer's ``val_fn``: the 3D head's MPJPE (mm) and the map's 2D error (crop half-sides)
    on every row of ``batcher``'s data, unaugmented, BatchNorm in eval mode."""

    def validate(model: nn.Module) -> dict[str, Any]:
        n = len(batcher.data)
        device = next(model.parameters()).device
        err3, err2 = 0.0, 0.0
        for start in range(0, n, batch_size):
            batch = {k: v.to(device) for k, v in batcher(list(range(start, min(n, start + batch_size)))).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch["image"])
            err3 += float((out["joints3d"] - batch["joints3d"]).norm(dim=-1).mean(1).sum())
            err2 += float((out["map2d"] - batch["joints2d"]).norm(dim=-1).mean(1).sum())
        return {"val_mpjpe": 1000 * err3 / n, "val_map2d": err2 / n}

    return validate
