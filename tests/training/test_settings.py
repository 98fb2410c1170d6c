"""The training knobs in one object (TrainSettings): its defaults, its checks, and how train() takes it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from whatsthat.errors import WhatsthatError
from whatsthat.training.settings import FINE_TUNE_LR, KNOBS, TrainSettings


def test_the_defaults_are_the_measured_recipe():
    s = TrainSettings()
    assert (s.arch, s.pretrained, s.head_epochs, s.top_epochs, s.freeze_epochs, s.epochs) == (
        "efficientnet_lite0", True, 8, 10, 0, 0)
    assert (s.size, s.bs, s.micro_bs, s.valid_pct, s.seed, s.threshold) == (224, 32, 16, 0.2, 42, 0.6)
    assert s.lr is None and s.base_lr == FINE_TUNE_LR == 2e-3 and TrainSettings(lr=0.01).base_lr == 0.01
    assert tuple(f.name for f in dataclasses.fields(TrainSettings)) == KNOBS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": -1}, "must be 0 or more"),
        ({"head_epochs": 0, "top_epochs": 0}, "nothing to train"),
        ({"micro_bs": -1}, "micro_bs must be 0"),
        ({"size": 8}, "too small"),
        ({"bs": 0}, "batch size"),
        ({"valid_pct": 1.5}, "valid_pct must be between 0 and 1"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"workers": -2}, "workers must be 0 or more"),
        ({"threshold": 1.0}, "threshold must be between 0 and 1"),
        ({"epochs": "4"}, "epochs must be a whole number, not '4'"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"top_epochs": True}, "top_epochs must be a whole number, not True"),
        ({"pretrained": "no"}, "pretrained must be True or False"),
        ({"arch": None}, "arch must be a string"),
    ],
)
def test_a_bad_value_is_one_clear_error_when_the_settings_are_made(changes, message):
    with pytest.raises(WhatsthatError, match=message):
        TrainSettings(**changes)
    with pytest.raises(WhatsthatError, match=message):
        TrainSettings().replace(**changes)


def test_replace_changes_only_what_it_names_and_knows_its_names():
    s = TrainSettings(arch="resnet18")
    t = s.replace(epochs=2, valid_pct=0.25)
    assert (t.arch, t.epochs, t.valid_pct) == ("resnet18", 2, 0.25) and s.epochs == 0
    assert TrainSettings(lr=1).base_lr == 1  # a whole number is a number
    with pytest.raises(WhatsthatError, match="unknown training setting.*epoch.*TrainSettings has arch"):
        s.replace(epoch=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 3  # type: ignore[misc]


def test_the_settings_import_no_torch_or_fastai():
    """The CLI builds its defaults from TrainSettings, and `whatsthat --help` must stay instant."""
    code = ("import sys, whatsthat.cli, whatsthat.training.settings; "
            "print(sorted(m for m in ('torch', 'fastai', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
