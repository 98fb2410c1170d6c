"""The "not sure" detector, fitted: features of a trained fastai learner, its split, and the command
that gives an existing export.pkl its statistics (`whatsthat not-sure fit`).

The statistics themselves, their scoring and their file are whatsthat.model.detector's (torch only, what
serving loads); this module is the training side, which reads pictures through fastai.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from whatsthat.errors import WhatsthatError
from whatsthat.model.detector import (
    DEFAULT_IN_CLASS_RATE,
    DEFAULT_K,
    DEFAULT_LAYER,
    DEFAULT_METHOD,
    PretrainedTop,
    card_entry,
    fit_detector,
    model_fingerprint,
    split_forward,
    stats_path_for,
)
from whatsthat.model.files import ModelFiles
from whatsthat.training.cpu import INFERENCE_BS

if TYPE_CHECKING:
    from fastai.learner import Learner

    from whatsthat.training.cached import Cache


def extract(learn: Learner, items: Sequence, layer: str = DEFAULT_LAYER, bs: int = INFERENCE_BS,
            pretrained: PretrainedTop | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, logits, labels) of `items` through a fastai learner's validation transforms."""
    model = learn.model.eval()
    dl = learn.dls.test_dl(list(items), with_labels=True, bs=bs)
    feats, logits, labels = [], [], []
    with torch.inference_mode():
        for xb, yb in dl:
            f, lg = split_forward(model, xb.as_subclass(torch.Tensor), layer, pretrained)
            feats.append(f)
            logits.append(lg)
            labels.append(yb.as_subclass(torch.Tensor).long())
    return torch.cat(feats), torch.cat(logits), torch.cat(labels)


def extract_cached(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, layer: str = DEFAULT_LAYER,
                   bs: int = INFERENCE_BS, pretrained: PretrainedTop | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, logits, labels) as `extract` gives them, from activations cached at a cut in the body.

    `model` is nn.Sequential(the body's layers above the cut, head) (whatsthat.training.cached.Cache.model): the
    body's output, and so the features, are those of the whole model on the pictures the cache was made
    from, without decoding them or running the layers below the cut again. The cache is made at the
    pretrained top's cut, so for "pretrained" that top runs on the cached activations themselves.
    """
    model.eval()
    # the cached activations start where the pretrained top does: counted from them, its cut is 0
    relative = PretrainedTop(0, pretrained.module) if pretrained is not None else None
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(x), bs):
            f, lg = split_forward(model, x[i : i + bs].float(), layer, relative)
            feats.append(f)
            logits.append(lg)
    return torch.cat(feats), torch.cat(logits), labels.long()


def fit_and_save(learn: Learner, model_path: str | Path, train_items: Sequence | None = None, valid_items: Sequence | None = None,
                 *, cache: Cache | None = None, method: str = DEFAULT_METHOD, layer: str | None = None,
                 k: int = DEFAULT_K, in_class_rate: float = DEFAULT_IN_CLASS_RATE,
                 pretrained: PretrainedTop | None = None, echo: Callable[[str], None] | None = None) -> dict:
    """Fit the detector on a trained learner, write it beside `model_path`, return the card entry.

    `train_items`/`valid_items` default to the learner's own split (what `train()` passes). `cache`:
    the learner's split as cached activations (whatsthat.training.cached.Cache, still valid for the model), used
    instead of the pictures. `pretrained`: the top as it was before training (default: the cache's).
    `layer` None: "pretrained" when there is one (see the module docstring), else DEFAULT_LAYER.
    """
    t0 = time.time()
    pretrained = pretrained or (cache.pretrained if cache is not None else None)
    layer = layer or ("pretrained" if pretrained is not None else DEFAULT_LAYER)
    if cache is not None:
        xt, _, yt = extract_cached(cache.model, cache.train_x, cache.train_y, layer, pretrained=pretrained)
        xv, lv, _ = extract_cached(cache.model, cache.valid_x, cache.valid_y, layer, pretrained=pretrained)
    else:
        train_items = list(learn.dls.train_ds.items if train_items is None else train_items)
        valid_items = list(learn.dls.valid_ds.items if valid_items is None else valid_items)
        xt, _, yt = extract(learn, train_items, layer, pretrained=pretrained)
        xv, lv, _ = extract(learn, valid_items, layer, pretrained=pretrained)
    det = fit_detector(xt, yt, xv, lv, method=method, layer=layer, k=k, in_class_rate=in_class_rate,
                       fingerprint=model_fingerprint(learn.model), pretrained=pretrained)
    path = det.save(stats_path_for(Path(model_path).resolve()))
    if echo:
        echo(f"'not sure' detector: {method} on {layer} features of {len(xt)} training pictures, threshold "
             f"{det.threshold:.4f} ({det.calibration['valid_flagged']:.1%} of {len(xv)} held-out pictures above it); "
             f"{time.time() - t0:.0f}s, wrote {path.name}")
    return card_entry(det, path.name)


def split_items(files: Sequence[Path], card: dict) -> tuple[list[Path], list[Path]]:
    """(train, valid) files by the split the model was trained with: the card's valid_pct and seed, by
    file-name hash, so the threshold is calibrated on pictures the model did not train on."""
    from whatsthat.training.data import HashSplitter

    training = card.get("training", {})
    splitter = HashSplitter(float(training.get("valid_pct", 0.2)), int(training.get("seed", 42)))
    return [f for f in files if not splitter.is_valid(f)], [f for f in files if splitter.is_valid(f)]


def fit_not_sure(model_path: str | Path, data: str | Path, *, method: str | None = None, layer: str | None = None,
                 k: int | None = None, in_class_rate: float | None = None,
                 echo: Callable[[str], None] | None = None) -> dict:
    """Give an existing export.pkl out-of-class statistics from its dataset folder; update its card.

    For models trained before the detector existed (the statistics are otherwise fitted by `train`).
    Settings left None take whatsthat.model.detector's defaults. Returns the card's new "not_sure" entry.
    """
    from whatsthat.training.classifier import load_classifier
    from whatsthat.training.data import check_dataset, dataset_fingerprint, get_dataset_images, leave_out_unreadable

    clf = load_classifier(model_path)
    check_dataset(data)
    files = list(get_dataset_images(data))
    unknown = sorted({f.parent.name for f in files} - set(clf.classes))
    if unknown:
        raise WhatsthatError(f"{data} has labels the model does not know: {', '.join(unknown)} "
                             f"(model classes: {', '.join(clf.classes)})")
    trained_on = clf.card.get("dataset", {}).get("sha256")
    if trained_on and trained_on != dataset_fingerprint(files, Path(data)) and echo:
        # still usable (e.g. more pictures since), but the split may then hold pictures the model trained on
        echo(f"note: {data} is not the exact dataset the model was trained on (its card's sha256 differs)")
    # after the checks above, which are cheap: this one decodes every picture
    readable, _ = leave_out_unreadable(files, data, echo)  # they would stop the feature pass with a traceback
    train_items, valid_items = split_items(readable, clf.card)
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
    layer = layer or ("pretrained" if pretrained is not None else DEFAULT_LAYER)
    entry = fit_and_save(clf.learn, clf.path, train_items, valid_items, method=method or DEFAULT_METHOD,
                         layer=layer, k=k or DEFAULT_K, in_class_rate=in_class_rate or DEFAULT_IN_CLASS_RATE,
                         pretrained=pretrained if layer == "pretrained" else None, echo=echo)
    # the model has its detector now: what the card said was missing is not any more
    card = {k_: v for k_, v in clf.card.items() if k_ != "not_sure"}
    missing = {k_: v for k_, v in card.pop("missing", {}).items() if k_ != "not_sure"}
    ModelFiles(clf.path).write_card({**card, **({"missing": missing} if missing else {}), "not_sure": entry})
    return entry


def original_top(model: nn.Module, card: dict) -> tuple[PretrainedTop | None, str]:
    """The body's top as its ImageNet weights have it, for the "pretrained" features (whatsthat.model.detector) of a
    model whose top trained: `(PretrainedTop, "")`, or `(None, why not)`.

    `train` keeps that top itself; a model trained before it did (or whose statistics are refitted) gets
    it rebuilt from the backbone's weights on this machine. That is only right while the layers below
    the top are still exactly the pretrained ones, as after whatsthat's cached stages; after whole-body
    epochs (`--epochs`, `--freeze-epochs`) they are not, and the model's own features are used.
    """
    import torch
    from torch import nn

    from whatsthat.model.detector import PretrainedTop
    from whatsthat.training.backbones import imagenet_model
    from whatsthat.training.cached import top_cut

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
