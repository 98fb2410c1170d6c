"""Session fixtures for the app/deploy tests: a tiny real model trained once, and the shipped model.

Import the fixtures into a test module with ``from model_fixture import tiny_model  # noqa: F401``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

SHIPPED_MODEL = ROOT / "export.pkl"
TINY_CLASSES = ("blue", "red")


@pytest.fixture(scope="session")
def tiny_model(tiny_training) -> Path:
    """export.pkl (+ card) of conftest's tiny model: a resnet18 trained from scratch on red/blue pictures."""
    return Path(tiny_training.model_path)


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The repository's real export.pkl (bears); skipped when it has not been trained yet."""
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL} is absent (train it with `whatsthat train`)")
    return SHIPPED_MODEL
