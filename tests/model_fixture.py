"""Session fixtures for the app/deploy tests: a tiny real model trained once, and the shipped model.

Import the fixtures into a test module with ``from model_fixture import tiny_model  # noqa: F401``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, draw_image

SHIPPED_MODEL = ROOT / "export.pkl"
TINY_CLASSES = ("blue", "red")


_built: dict[str, Path] = {}  # one training per test session, shared by every module importing the fixture


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """export.pkl (+ card) of a resnet18 trained from scratch for 1 epoch on generated red/blue pictures."""
    # a fixture imported into several modules is a separate definition in each: cache the result here
    if "tiny" not in _built:
        _built["tiny"] = _train_tiny(tmp_path_factory.mktemp("tiny_model"))
    return _built["tiny"]


def _train_tiny(root: Path) -> Path:
    from whatsthat.train import train

    data = root / "data"
    for c in TINY_CLASSES:
        (data / c).mkdir(parents=True)
        for i in range(12):
            draw_image(c, 64, seed=i).save(data / c / f"{c}_{i:03d}.jpg", quality=90)
    home = root / "home"
    home.mkdir()
    # session scope runs outside the per-test isolated home: keep fastai/torch caches in tmp too
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME"):
            mp.setenv(var, str(home))
        result = train(
            data, root / "model", arch="resnet18", pretrained=False, epochs=1, size=64, bs=8, echo=lambda s: None
        )
    return Path(result.model_path)


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The repository's real export.pkl (bears); skipped when it has not been trained yet."""
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL} is absent (train it with `whatsthat train`)")
    return SHIPPED_MODEL
