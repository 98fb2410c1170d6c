"""Predict: load an exported model once, then classify images fast.

`Learner.predict` builds a DataLoader for every call, which costs more than the forward pass on a
CPU. `Classifier` runs the exported learner's *own* validation transforms (its after_item and
after_batch pipelines, so Resize/crop and Normalize are exactly those used in training) and the
model directly. Tests check it agrees with `Learner.predict`.

When the model has out-of-class statistics beside it (``whatsthat.ood``), the same forward pass also
gives each picture an out-of-class score; `judge` turns probabilities and score into a
``whatsthat.verdict.Verdict`` (sure / ambiguous / out of class). A model without them still loads and
judges by the softmax threshold alone (logged once).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from whatsthat.errors import WhatsthatError
from whatsthat.images import load_image
from whatsthat.modelfiles import ModelFiles
from whatsthat.verdict import DEFAULT_THRESHOLD, Verdict, decide

NOT_SURE = "not sure"
__all__ = ["DEFAULT_THRESHOLD", "NOT_SURE", "Classifier", "Verdict", "load_classifier", "read_card", "verdict"]
log = logging.getLogger(__name__)

if TYPE_CHECKING:  # whatsthat.ood imports torch: the page's thin kernels import this module without it
    import torch
    from torch import nn

    from whatsthat.ood import Detector, PretrainedTop

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
            from whatsthat import ood

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
            from whatsthat import ood

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
                ranked = sorted(zip(self.classes, row, strict=True), key=lambda p: -p[1])
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
                out.append(sorted(zip(self.classes, row, strict=True), key=lambda p: -p[1]))
        return out


def verdict(ranked: Sequence[tuple[str, float]], threshold: float) -> str:
    """Softmax rule only: the top label, or NOT_SURE when its probability is below `threshold`.

    Kept for callers without out-of-class scores; `Classifier.judge` / `whatsthat.verdict.decide`
    tell the two kinds of "not sure" apart."""
    if not ranked:
        return NOT_SURE
    label, prob = ranked[0]
    return label if prob >= threshold else NOT_SURE


def card_path_for(model_path: str | Path) -> Path:
    return ModelFiles(model_path).card


def read_card(model_path: str | Path) -> dict:
    """The model card beside `model_path`, or {} when there is none."""
    return ModelFiles(model_path).read_card()


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
    from whatsthat.ood import load_detector

    return Classifier(learn, read_card(path), path, load_detector(path, learn.model))


def write_card(model_path: str | Path, card: dict) -> Path:
    """(Re)write the model card beside `model_path`, atomically."""
    return ModelFiles(model_path).write_card(card)


def fit_not_sure(model_path: str | Path, data: str | Path, *, method: str | None = None, layer: str | None = None,
                 k: int | None = None, in_class_rate: float | None = None,
                 echo: Callable[[str], None] | None = None) -> dict:
    """Give an existing export.pkl out-of-class statistics from its dataset folder; update its card.

    For models trained before the detector existed (the statistics are otherwise fitted by `train`).
    Settings left None take whatsthat.ood's defaults. Returns the card's new "not_sure" entry.
    """
    from whatsthat import ood
    from whatsthat.data import check_dataset, get_dataset_images, leave_out_unreadable

    clf = load_classifier(model_path)
    check_dataset(data)
    files = list(get_dataset_images(data))
    unknown = sorted({f.parent.name for f in files} - set(clf.classes))
    if unknown:
        raise WhatsthatError(f"{data} has labels the model does not know: {', '.join(unknown)} "
                             f"(model classes: {', '.join(clf.classes)})")
    from whatsthat.train import dataset_fingerprint

    trained_on = clf.card.get("dataset", {}).get("sha256")
    if trained_on and trained_on != dataset_fingerprint(files, Path(data)) and echo:
        # still usable (e.g. more pictures since), but the split may then hold pictures the model trained on
        echo(f"note: {data} is not the exact dataset the model was trained on (its card's sha256 differs)")
    # after the checks above, which are cheap: this one decodes every picture
    readable, _ = leave_out_unreadable(files, data, echo)  # they would stop the feature pass with a traceback
    train_items, valid_items = ood.split_items(readable, clf.card)
    if not train_items or not valid_items:
        raise WhatsthatError(f"{data}: the model's split leaves no training or no held-out pictures")
    # the features `train` itself would have chosen: the pretrained top's where training changed the top
    pretrained = None
    if layer in (None, "pretrained"):
        pretrained, why_not = original_top(clf.learn.model, clf.card)
        if pretrained is None and layer == "pretrained":
            raise WhatsthatError(f"{model_path}: cannot read the pretrained top's features: {why_not}")
        if pretrained is None and echo:
            echo(f"'not sure' reads the model's own pooled features: {why_not}")
    layer = layer or ("pretrained" if pretrained is not None else ood.DEFAULT_LAYER)
    entry = ood.fit_and_save(clf.learn, clf.path, train_items, valid_items, method=method or ood.DEFAULT_METHOD,
                             layer=layer, k=k or ood.DEFAULT_K,
                             in_class_rate=in_class_rate or ood.DEFAULT_IN_CLASS_RATE,
                             pretrained=pretrained if layer == "pretrained" else None, echo=echo)
    card = {k_: v for k_, v in clf.card.items() if k_ != "not_sure"}
    write_card(clf.path, {**card, "not_sure": entry})
    return entry


def original_top(model: nn.Module, card: dict) -> tuple[PretrainedTop | None, str]:
    """The body's top as its ImageNet weights have it, for the "pretrained" features (whatsthat.ood) of a
    model whose top trained: `(PretrainedTop, "")`, or `(None, why not)`.

    `train` keeps that top itself; a model trained before it did (or whose statistics are refitted) gets
    it rebuilt from the backbone's weights on this machine. That is only right while the layers below
    the top are still exactly the pretrained ones, as after whatsthat's cached stages; after whole-body
    epochs (`--epochs`, `--freeze-epochs`) they are not, and the model's own features are used.
    """
    import torch
    from torch import nn

    from whatsthat.cached import top_cut
    from whatsthat.models import imagenet_model
    from whatsthat.ood import PretrainedTop

    arch = card.get("arch")
    if not arch or card.get("pretrained") is False:
        return None, "its card names no pretrained backbone"
    try:
        fresh = imagenet_model(arch)
    except WhatsthatError as e:
        return None, str(e)
    if fresh is None:
        return None, f"{arch}'s ImageNet weights are not on this machine"
    body = model[0]
    # vision_learner's body is the backbone's first layers, in order (cut at the pooling layer)
    reference = nn.Sequential(*list(fresh.children())[: len(body)])
    mine, theirs = body.state_dict(), reference.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        return None, f"its body is not {arch}'s"
    cut = top_cut(body, int(card.get("image_size") or 224))
    changed = {int(k.split(".")[0]) for k in mine if not torch.equal(mine[k], theirs[k])}
    if any(i < cut for i in changed):
        return None, "the layers below its top trained too (whole-body epochs), so the pretrained top no longer fits them"
    if not changed:
        return None, "its top is the pretrained one, so its own features are those"
    return PretrainedTop(cut, reference[cut:].eval()), ""
