"""The training knobs in one object: `train(data, out, settings)`, train.ipynb and `whatsthat train`'s defaults.

`TrainSettings()` is the measured recipe (docs/training.md): efficientnet_lite0, 8 head epochs on cached
body features, then 10 epochs of the body's top layers on cached activations. Change what you need,
e.g. `TrainSettings(arch="resnet34", epochs=4)` for more of the course's fine_tune. A bad value is one
clear error when the settings are made, before any slow work. Stdlib only: the CLI builds its
defaults from it without importing torch or fastai.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from whatsthat.errors import WhatsthatError
from whatsthat.model.verdict import DEFAULT_THRESHOLD

FINE_TUNE_LR = 2e-3  # fastai's fine_tune default: the base learning rate when `lr` is None


@dataclass(frozen=True)
class TrainSettings:
    """How to train: the backbone, the stages and their epochs, the pictures, the split, the threshold.

    The stages run in this order (whatsthat.training.train): `head_epochs`, `top_epochs` (both on cached
    activations, seconds each), `freeze_epochs` of fastai's frozen fit, `epochs` with every layer training.
    """

    arch: str = "efficientnet_lite0"  # or efficientnet_lite1/2, resnet18/34 (torchvision downloads those once)
    pretrained: bool = True  # False: random weights, every layer trains from the start (for tests)
    head_epochs: int = 8  # the head alone, on cached body features
    top_epochs: int = 10  # then the body's top layers with the head, on cached activations of the layers below
    mirrors: bool = False  # the top stage from the head's best epoch, on every picture and its mirror
    freeze_epochs: int = 0  # then fastai frozen-body epochs, fine_tune's first stage (the course uses 1)
    epochs: int = 0  # then every layer training, on augmented pictures (the course uses 4)
    size: int = 224  # training image size in pixels
    bs: int = 32  # batch size
    micro_bs: int = 16  # the unfrozen epochs' batches in micro-batches of this many pictures (0: off)
    valid_pct: float = 0.2  # share of the pictures held out for validation (split by a hash of the file name)
    seed: int = 42  # seed of the split and the training run
    lr: float | None = None  # base learning rate; None: FINE_TUNE_LR
    workers: int = 0  # data loader worker processes
    threshold: float = DEFAULT_THRESHOLD  # "not sure" below this top probability
    freeze_bn: bool = True  # the body's BatchNorm statistics stay frozen while it trains (train.FrozenBatchNormStats)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        if min(self.epochs, self.freeze_epochs, self.head_epochs, self.top_epochs) < 0:
            raise WhatsthatError("epochs, freeze_epochs, head_epochs and top_epochs must be 0 or more")
        if self.epochs + self.freeze_epochs + self.head_epochs + self.top_epochs == 0:
            raise WhatsthatError("nothing to train: epochs, freeze_epochs, head_epochs and top_epochs are all 0")
        if self.micro_bs < 0:
            raise WhatsthatError(f"micro_bs must be 0 (off) or more, not {self.micro_bs}")
        if self.size < 32:
            raise WhatsthatError(f"image size {self.size} is too small; use 32 or more (224 is the usual)")
        if self.bs < 1:
            raise WhatsthatError(f"bs (the batch size) must be 1 or more, not {self.bs}")
        if not 0 < self.valid_pct < 1:
            raise WhatsthatError(f"valid_pct must be between 0 and 1, not {self.valid_pct}")
        if self.lr is not None and not self.lr > 0:
            raise WhatsthatError(f"lr must be a positive number (or None for {FINE_TUNE_LR}), not {self.lr}")
        if self.workers < 0:
            raise WhatsthatError(f"workers must be 0 or more, not {self.workers}")
        if not 0 < self.threshold < 1:
            raise WhatsthatError(f"threshold must be between 0 and 1, not {self.threshold}")

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else FINE_TUNE_LR

    def replace(self, **changes: Any) -> TrainSettings:
        """A copy with `changes` (field names of TrainSettings); an unknown name is a clear error."""
        unknown = sorted(set(changes) - set(KNOBS))
        if unknown:
            raise WhatsthatError(f"unknown training setting(s) {', '.join(unknown)}; TrainSettings has {', '.join(KNOBS)}")
        return dataclasses.replace(self, **changes)


# the annotations are strings (from __future__ import annotations): what each one accepts
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float),
                                       "float | None": (int, float, type(None))}  # fmt: skip
_WORDS = {"str": "a string", "bool": "True or False", "int": "a whole number", "float": "a number",
          "float | None": "a number or None"}  # fmt: skip


def _check_type(name: str, value: object, annotation: object) -> None:
    ok = _TYPES[str(annotation)]
    if isinstance(value, bool) and bool not in ok:  # True is an int to Python, not an epoch count to us
        ok = ()
    if not isinstance(value, ok):
        raise WhatsthatError(f"training setting {name} must be {_WORDS[str(annotation)]}, not {value!r}")


KNOBS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainSettings))
