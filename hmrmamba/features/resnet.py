"""ResNet-50 in plain PyTorch, with torchvision-compatible parameter names.

The module tree (``conv1``, ``bn1``, ``layer1``..``layer4`` of Bottleneck blocks with
``conv1/2/3``, ``bn1/2/3`` and ``downsample.0/.1`` on the first block of each stage, ``fc``) gives
a state dict whose 320 keys and shapes equal torchvision's ``resnet50`` (v1.5: the stride sits on
the 3x3 convolution). A torchvision or SPIN checkpoint therefore loads without renaming (see
:mod:`hmrmamba.features.weights`).

For inference, :meth:`ResNet50.fuse_bn` folds every BatchNorm into the preceding convolution,
and the network runs in ``channels_last`` memory format, which oneDNN prefers on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from hmrmamba.errors import InputError

#: channels and stride (input pixels per cell) of the feature maps the features stage can cache
MAP_CHANNELS: dict[str, int] = {"layer3": 1024, "layer4": 2048}
MAP_STRIDE: dict[str, int] = {"layer3": 16, "layer4": 32}

#: (number of blocks, bottleneck width, stride of the first block) per stage, torchvision's resnet50.
RESNET50_STAGES: tuple[tuple[int, int, int], ...] = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
EXPANSION = 4
FEATURE_DIM = 2048


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand, plus identity or projection shortcut."""

    def __init__(self, *, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, 4*width, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into ``conv`` in place (conv gains a bias)."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight = nn.Parameter(weight)  # elementwise product keeps conv.weight's memory format
        conv.bias = nn.Parameter(bias)


class ResNet50(nn.Module):
    """ResNet-50 backbone. Input: (B, 3, H, W) ImageNet-normalised RGB; H, W >= 32.

    Args:
        num_classes: output size of ``fc`` (1000 keeps torchvision's checkpoint shape).
        init_seed: seed of the random initialisation (torchvision's scheme: Kaiming-normal
            fan-out convolutions, unit BatchNorm). The global RNG is left untouched.
    """

    def __init__(self, num_classes: int = 1000, *, init_seed: int = 0):
        super().__init__()
        if num_classes < 1:
            raise InputError(f"num_classes={num_classes}", field="num_classes", expected="an integer >= 1")
        # Build on the meta device (no default init, no global-RNG use), then allocate and seed.
        with torch.device("meta"):
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            in_channels = 64
            for index, (blocks, width, stride) in enumerate(RESNET50_STAGES, start=1):
                layers = []
                for b in range(blocks):
                    layers.append(Bottleneck(in_channels=in_channels, width=width, stride=stride if b == 0 else 1))
                    in_channels = width * EXPANSION
                setattr(self, f"layer{index}", nn.Sequential(*layers))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(FEATURE_DIM, num_classes)
        self.to_empty(device="cpu")
        self.fused = False
        self.reset_parameters(init_seed=init_seed)

    def reset_parameters(self, *, init_seed: int = 0) -> None:
        """Seeded torchvision-style initialisation; does not touch the global RNG."""
        gen = torch.Generator().manual_seed(int(init_seed))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                std = (2.0 / fan_out) ** 0.5
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                    if m.bias is not None:
                        m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features ** 0.5
                with torch.no_grad():
                    m.weight.copy_((torch.rand(m.weight.shape, generator=gen) * 2 - 1) * bound)
                    m.bias.copy_((torch.rand(m.bias.shape, generator=gen) * 2 - 1) * bound)

    def forward_features(self, x: torch.Tensor, *, map_layer: str = "layer4") -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) normalised -> (pooled layer4 (B, 2048), feature map of ``map_layer``).

        The map is ``layer4`` (B, 2048, ceil(H/32), ceil(W/32)) or ``layer3`` (B, 1024, ceil(H/16),
        ceil(W/16)): twice the resolution, for small crops where layer4 has only 2 x 2 cells.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"got shape {tuple(x.shape)}", field="x", expected="(B, 3, H, W) images")
        if map_layer not in MAP_CHANNELS:
            raise InputError(f"unknown map layer {map_layer!r}", field="map_layer", expected=f"one of {sorted(MAP_CHANNELS)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        mid = self.layer3(self.layer2(self.layer1(x)))
        x = self.layer4(mid)
        return torch.flatten(self.avgpool(x), 1), (x if map_layer == "layer4" else mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised -> logits (B, num_classes)."""
        return self.fc(self.forward_features(x)[0])

    def fuse_bn(self) -> ResNet50:
        """Fold every BatchNorm into its convolution, in place, for inference; returns ``self``.

        Only valid in eval mode (running statistics); the BN modules become ``nn.Identity`` so the
        fused model's state dict no longer matches torchvision's. Calling it twice is a no-op.
        """
        if self.training:
            raise InputError("fuse_bn() needs eval mode", field="model.training", expected="call .eval() first")
        if self.fused:
            return self
        pairs = [(self, "conv1", "bn1")]
        for m in self.modules():
            if isinstance(m, Bottleneck):
                pairs += [(m, "conv1", "bn1"), (m, "conv2", "bn2"), (m, "conv3", "bn3")]
                if m.downsample is not None:
                    pairs.append((m.downsample, "0", "1"))
        for parent, conv_name, bn_name in pairs:
            _fuse_conv_bn(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, bn_name, nn.Identity())
        self.fused = True
        return self


def resnet50_conv_macs(height: int, width: int | None = None) -> int:
    """Multiply-accumulates of all convolutions of ResNet-50 (no fc) for one (3, height, width) image."""
    width = height if width is None else width

    def out(size: int, k: int, s: int, p: int) -> int:
        return (size + 2 * p - k) // s + 1

    h, w = out(height, 7, 2, 3), out(width, 7, 2, 3)
    macs = h * w * 64 * 3 * 49
    h, w = out(h, 3, 2, 1), out(w, 3, 2, 1)
    cin = 64
    for blocks, width_c, stride in RESNET50_STAGES:
        for b in range(blocks):
            s = stride if b == 0 else 1
            ho, wo = out(h, 3, s, 1), out(w, 3, s, 1)
            macs += h * w * cin * width_c            # conv1 1x1 at input resolution
            macs += ho * wo * width_c * width_c * 9  # conv2 3x3 strided
            macs += ho * wo * width_c * width_c * EXPANSION  # conv3 1x1
            if b == 0:
                macs += ho * wo * cin * width_c * EXPANSION  # downsample 1x1 strided
            cin = width_c * EXPANSION
            h, w = ho, wo
    return macs
