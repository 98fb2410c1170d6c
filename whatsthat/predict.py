"""Predict: load an exported model once, then classify images fast.

`Learner.predict` builds a DataLoader for every call, which costs more than the forward pass on a
CPU. `Classifier` runs the exported learner's *own* validation transforms (its after_item and
after_batch pipelines, so Resize/crop and Normalize are exactly those used in training) and the
model directly. Tests check it agrees with `Learner.predict`.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from whatsthat.errors import WhatsthatError
from whatsthat.images import load_image

DEFAULT_THRESHOLD = 0.6  # below this top probability the app answers "not sure"
NOT_SURE = "not sure"

ImageInput = bytes | str | Path | Image.Image
Ranked = list[tuple[str, float]]


class Classifier:
    """A loaded model: `predict(image)` -> [(label, probability), ...] ranked, highest first."""

    def __init__(self, learn, card: dict | None = None, path: Path | None = None):
        import torch

        self.learn = learn
        self.card = card or {}
        self.path = path
        self.classes: list[str] = [str(c) for c in learn.dls.vocab]
        self.threshold: float = float(self.card.get("threshold", DEFAULT_THRESHOLD))
        # channels_last: oneDNN's CPU convolutions run faster on NHWC (18 vs 21 ms per bear photo for
        # efficientnet_lite0 on 2 cores, bench/predict_bench.py); the weights are the same
        self.model = learn.model.eval().to(memory_format=torch.channels_last)
        self._torch = torch
        # The validation pipelines. fastai sets their split_idx only while a DataLoader iterates; left
        # at None, RandomResizedCrop and aug_transforms would run in *training* mode (random crops,
        # flips, lighting) and predictions would jitter. split_idx=1 selects validation behaviour.
        self._after_item = learn.dls.valid.after_item
        self._after_batch = learn.dls.valid.after_batch
        self._after_item.split_idx = self._after_batch.split_idx = 1

    def _tensor(self, image: ImageInput):
        from fastai.vision.core import PILImage

        im = image if isinstance(image, Image.Image) else load_image(image)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return self._after_item(PILImage(im))

    def probabilities(self, images: Sequence[ImageInput]):
        """Softmax probabilities, one row per image, columns in `self.classes` order."""
        torch = self._torch
        xs = [self._tensor(im) for im in images]
        batch = self._after_batch(torch.stack(xs))
        # a plain tensor: fastai's TensorImage subclass costs a __torch_function__ dispatch per layer
        batch = batch.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1)

    def predict(self, image: ImageInput) -> Ranked:
        """Ranked (label, probability) pairs for one image (bytes, a path, or a PIL image)."""
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[ImageInput], batch_size: int = 1) -> list[Ranked]:
        """Ranked pairs for each image, `batch_size` images per forward pass.

        1 is the default because it was fastest per image on a 2-core CPU (42 images/s, against 34 at
        batch 8 and 30 at 16: bench/predict_bench.py); larger batches pay off on a GPU.
        """
        out: list[Ranked] = []
        for i in range(0, len(images), batch_size):
            probs = self.probabilities(images[i : i + batch_size])
            for row in probs.tolist():
                out.append(sorted(zip(self.classes, row, strict=True), key=lambda p: -p[1]))
        return out


def verdict(ranked: Sequence[tuple[str, float]], threshold: float) -> str:
    """The top label, or NOT_SURE when its probability is below `threshold` (or nothing is ranked)."""
    if not ranked:
        return NOT_SURE
    label, prob = ranked[0]
    return label if prob >= threshold else NOT_SURE


def card_path_for(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def read_card(model_path: str | Path) -> dict:
    """The model card beside `model_path`, or {} when there is none."""
    path = card_path_for(model_path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WhatsthatError(f"model card {path} is unreadable: {e}") from e


def load_classifier(path: str | Path = "export.pkl") -> Classifier:
    """Load an exported learner on the CPU; clear errors for a missing, foreign or corrupt file."""
    from fastai.learner import load_learner

    path = Path(path)
    if not path.is_file():
        raise WhatsthatError(f"model file not found: {path} (train one with `whatsthat train`)")
    head = path.read_bytes()[:64]
    if head.startswith(b"version https://git-lfs"):
        raise WhatsthatError(f"{path} is a Git LFS pointer, not the model: run `git lfs pull`")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fastai warns about pickle safety on every load
            learn = load_learner(path, cpu=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as e:
        raise WhatsthatError(f"{path} is not a loadable fastai export ({type(e).__name__}: {e})") from e
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise WhatsthatError(
            f"{path} was exported with code that is not installed here ({e}); "
            "install the versions listed in its model card"
        ) from e
    if not hasattr(learn, "dls") or not hasattr(learn.dls, "vocab"):
        raise WhatsthatError(f"{path} is not an image classifier export")
    return Classifier(learn, read_card(path), path)
