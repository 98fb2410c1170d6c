"""Predict: load an exported model once, then classify images fast.

`Learner.predict` builds a DataLoader for every call, which costs more than the forward pass on a
CPU. `Classifier` runs the exported learner's *own* validation transforms (its after_item and
after_batch pipelines, so Resize/crop and Normalize are exactly those used in training) and the
model directly. Tests check it agrees with `Learner.predict`.

When the model has out-of-class statistics beside it (``whatsthat.model.detector``), the same forward pass also
gives each picture an out-of-class score; `judge` turns probabilities and score into a
``whatsthat.model.verdict.Verdict`` (sure / ambiguous / out of class). A model without them still loads and
judges by the softmax threshold alone (logged once).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from whatsthat.errors import WhatsthatError
from whatsthat.images import load_image
from whatsthat.model.files import ModelFiles
from whatsthat.model.verdict import DEFAULT_THRESHOLD, Verdict, decide, rank

__all__ = ["Classifier", "Verdict", "artifact_from_export", "load_classifier"]
log = logging.getLogger(__name__)

if TYPE_CHECKING:  # whatsthat.model.detector imports torch: the page's thin kernels import this module without it
    import torch

    from whatsthat.model.detector import Detector

ImageInput = bytes | str | Path | Image.Image
Ranked = list[tuple[str, float]]


class Classifier:
    """A loaded model: `predict(image)` -> [(label, probability), ...] ranked, highest first."""

    def __init__(self, learn, card: dict | None = None, path: Path | None = None, detector: Detector | None = None):
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
        self.detector = detector
        if detector is not None and "not_sure" not in self.card:
            from whatsthat.model import detector as ood

            # statistics without a card entry (card lost or hand-edited): the file's own threshold decides
            self.card = {**self.card, "not_sure": ood.card_entry(detector)}

    def _tensor(self, image: ImageInput):
        from fastai.vision.core import PILImage

        im = image if isinstance(image, Image.Image) else load_image(image)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return self._after_item(PILImage(im))

    def _forward(self, images: Sequence[ImageInput]):
        """(softmax probabilities, out-of-class scores or None) from one forward pass."""
        torch = self._torch
        xs = [self._tensor(im) for im in images]
        batch = self._after_batch(torch.stack(xs))
        # a plain tensor: fastai's TensorImage subclass costs a __torch_function__ dispatch per layer
        batch = batch.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.detector is None:
                return torch.softmax(self.model(batch).float(), dim=1), None
            from whatsthat.model import detector as ood

            feats, logits = ood.split_forward(self.model, batch, self.detector.layer, self.detector.pretrained)
            return torch.softmax(logits, dim=1), self.detector.score(feats, logits)

    def probabilities(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Softmax probabilities, one row per image, columns in `self.classes` order."""
        return self._forward(images)[0]

    def score_many(self, images: Sequence[ImageInput], batch_size: int = 1) -> list[tuple[Ranked, float | None]]:
        """(ranked pairs, out-of-class score or None without statistics) for each image."""
        out: list[tuple[Ranked, float | None]] = []
        for i in range(0, len(images), batch_size):
            probs, scores = self._forward(images[i : i + batch_size])
            for j, row in enumerate(probs.tolist()):
                ranked = rank(self.classes, row)
                out.append((ranked, None if scores is None else float(scores[j])))
        return out

    def judge_many(self, images: Sequence[ImageInput], batch_size: int = 1) -> list[Verdict]:
        """A Verdict (sure / ambiguous / out of class, with its sentence) for each image."""
        return [decide(ranked, self.card, score) for ranked, score in self.score_many(images, batch_size)]

    def judge(self, image: ImageInput) -> Verdict:
        """The Verdict for one image (bytes, a path, or a PIL image)."""
        return self.judge_many([image])[0]

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
                out.append(rank(self.classes, row))
        return out


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
    from whatsthat.model.detector import load_detector

    return Classifier(learn, ModelFiles(path).read_card(), path, load_detector(path, learn.model))


def artifact_from_export(model_path: str | Path) -> tuple[Path, Path]:
    """Write the torch-only serving artifact (whatsthat.model.artifact) from an existing export.pkl."""
    from whatsthat.model.artifact import write_artifact

    clf = load_classifier(model_path)
    return write_artifact(clf.learn, model_path, clf.card)
