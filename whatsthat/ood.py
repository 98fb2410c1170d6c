"""Out-of-class detection: does a picture look like the training pictures at all?

A softmax over three bear classes must give its whole mass to some bear, so a cat comes out
"teddy (100%)". The detector scores how far a picture's features lie from the training pictures'
features; above a threshold calibrated on held-out in-class pictures, the answer is "not sure: this
doesn't look like any of the classes" (``whatsthat.verdict``). The method was chosen by measurement
(``bench/not_sure_bench.py``; README, "Not sure").

Methods (``Detector.method``; every score is "higher = more out of class"):

- ``knn``: distance to the k-th nearest training picture, on L2-normalised features (Sun et al. 2022,
  "Out-of-distribution detection with deep nearest neighbors"). Stores the normalised training features.
- ``mahalanobis``: smallest class-conditional Mahalanobis distance with one shared, shrunk covariance
  (Lee et al. 2018). Stores class means and the precision matrix.
- ``energy`` (-logsumexp of the logits), ``max_logit`` (-max logit), ``msp`` (-max softmax, the
  baseline): no statistics beyond the threshold.

Features (``Detector.layer``) come from ``split_forward`` on a ``nn.Sequential(body, head)`` model, the
shape of every fastai ``vision_learner`` model and of the torch-only serving model:
``penultimate`` is the input of the head's last Linear layer, ``pooled`` the body's output averaged over
space.

Files: the statistics live beside the model, ``export.pkl`` -> ``export.ood.safetensors`` (safetensors:
tensors plus a JSON string of settings under the metadata key ``whatsthat_ood``; no pickle). They carry
a fingerprint of the head's last Linear weights, so statistics never pair with a different model.
The card gets ``card["not_sure"] = card_entry(detector)``: ``method``, ``layer``, ``k``, ``threshold``,
``file`` (the statistics file's name), ``model_fingerprint`` and ``calibration`` (``in_class_rate``: the
share of held-out in-class pictures allowed above the threshold; ``n_valid``, ``n_train``;
``valid_flagged``: the share actually above it; ``valid_score_quantiles``).

Serving: ``features, logits = split_forward(model, batch, layer=detector.layer)``, then
``detector.score(features, logits)``; torch only (no fastai import at module level).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from whatsthat.errors import WhatsthatError

log = logging.getLogger(__name__)

METHODS = ("knn", "mahalanobis", "energy", "max_logit", "msp")
LAYERS = ("penultimate", "pooled")
LOGIT_METHODS = ("energy", "max_logit", "msp")
META_KEY = "whatsthat_ood"
FORMAT_VERSION = 1
# the defaults the benchmark chose (see README "Not sure")
DEFAULT_METHOD = "knn"
DEFAULT_LAYER = "pooled"
DEFAULT_K = 5
DEFAULT_IN_CLASS_RATE = 0.02


def stats_path_for(model_path: str | Path) -> Path:
    """export.pkl -> export.ood.safetensors (beside it)."""
    p = Path(model_path)
    return p.with_name(p.stem + ".ood.safetensors")


def _last_linear(head: nn.Module) -> int:
    mods = list(head.children())
    for i in range(len(mods) - 1, -1, -1):
        if isinstance(mods[i], nn.Linear):
            return i
    raise WhatsthatError("the model's head has no Linear layer: cannot find its penultimate features")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the head's last Linear weights: names the trained model cheaply."""
    head = model[1]
    w = list(head.children())[_last_linear(head)].weight.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16]


def split_forward(model: nn.Module, batch: torch.Tensor, layer: str = DEFAULT_LAYER) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of `batch` in one forward pass of `model` = nn.Sequential(body, head).

    `layer` picks the features: "penultimate" (input of the head's last Linear) or "pooled" (the
    body's output averaged over space). Call under torch.inference_mode() with the model in eval mode.
    """
    if layer not in LAYERS:
        raise WhatsthatError(f"unknown feature layer {layer!r}; choose one of: {', '.join(LAYERS)}")
    if not isinstance(model, nn.Sequential) or len(model) != 2:
        raise WhatsthatError("out-of-class scores need a model of the form nn.Sequential(body, head)")
    body, head = model[0], model[1]
    x = body(batch)
    pooled = x.float().mean(dim=(2, 3)) if x.dim() == 4 else x.float()
    mods = list(head.children()) if isinstance(head, nn.Sequential) else [head]
    cut = _last_linear(head) if isinstance(head, nn.Sequential) else 0
    penultimate = x
    for i, m in enumerate(mods):
        if i == cut:
            penultimate = x
        x = m(x)
    feats = pooled if layer == "pooled" else penultimate.float().flatten(1)
    return feats, x.float()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


@dataclass
class Detector:
    """Scores pictures by how unlike the training pictures they are; `threshold` separates "out of class"."""

    method: str
    layer: str
    threshold: float
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    k: int = DEFAULT_K
    model_fingerprint: str = ""
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise WhatsthatError(f"unknown out-of-class method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.layer not in LAYERS:
            raise WhatsthatError(f"unknown feature layer {self.layer!r}; choose one of: {', '.join(LAYERS)}")

    @property
    def needs_logits(self) -> bool:
        return self.method in LOGIT_METHODS

    def score_tensor(self, features: torch.Tensor | None, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Scores as a 1-d float tensor (higher = more out of class)."""
        with torch.inference_mode():
            if self.needs_logits:
                if logits is None:
                    raise WhatsthatError(f"the {self.method} score needs the logits")
                logits = logits.float()
                if self.method == "energy":
                    return -torch.logsumexp(logits, dim=1)
                if self.method == "max_logit":
                    return -logits.max(dim=1).values
                return -torch.softmax(logits, dim=1).max(dim=1).values
            if features is None:
                raise WhatsthatError(f"the {self.method} score needs the features")
            if self.method == "knn":
                bank = self.tensors["bank"]
                sims = _normalise(features) @ bank.T
                k = min(self.k, bank.shape[0])
                kth = sims.topk(k, dim=1).values[:, -1]
                return torch.sqrt(torch.clamp(2 - 2 * kth, min=0))  # Euclidean distance of unit vectors
            # mahalanobis
            means, precision = self.tensors["means"], self.tensors["precision"]
            z = _normalise(features) if self.calibration.get("normalised", True) else features.float()
            d = z[:, None, :] - means[None, :, :]  # (n, classes, dim)
            m = torch.einsum("ncd,de,nce->nc", d, precision, d)
            return m.min(dim=1).values

    def score(self, features: torch.Tensor | None, logits: torch.Tensor | None = None) -> list[float]:
        """One score per picture, higher = more out of class; above `threshold` means out of class."""
        return [float(s) for s in self.score_tensor(features, logits)]

    def save(self, path: str | Path) -> Path:
        """Write the statistics atomically to `path` (safetensors)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"version": FORMAT_VERSION, "method": self.method, "layer": self.layer, "threshold": self.threshold,
                "k": self.k, "model_fingerprint": self.model_fingerprint, "calibration": self.calibration}
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.tensors.items()}
        if not tensors:  # safetensors wants at least a header; an empty file would be ambiguous
            tensors = {"none": torch.zeros(1)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ood-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Read statistics written by `save`; a clear WhatsthatError when the file is not one."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get(META_KEY)
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise WhatsthatError(f"out-of-class statistics {path} are unreadable: {e}") from e
        if raw is None:
            raise WhatsthatError(f"{path} is not a whatsthat out-of-class statistics file (no {META_KEY} metadata)")
        try:
            meta = json.loads(raw)
            tensors.pop("none", None)
            det = cls(method=meta["method"], layer=meta["layer"], threshold=float(meta["threshold"]), tensors=tensors,
                      k=int(meta.get("k", DEFAULT_K)), model_fingerprint=str(meta.get("model_fingerprint", "")),
                      calibration=dict(meta.get("calibration", {})))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise WhatsthatError(f"out-of-class statistics {path} have malformed settings: {e}") from e
        missing = {"knn": ["bank"], "mahalanobis": ["means", "precision"]}.get(det.method, [])
        if [t for t in missing if t not in tensors]:
            raise WhatsthatError(f"out-of-class statistics {path} lack {missing} for method {det.method}")
        return det


def load_detector(model_path: str | Path, model: nn.Module | None = None) -> Detector | None:
    """The detector stored beside `model_path`, or None (with a log note) for a model without one.

    With `model`, statistics made for a different model (another fingerprint) are ignored, also with a
    note: a retrained export.pkl beside stale statistics must not judge pictures by the old features.
    """
    path = stats_path_for(model_path)
    if not path.is_file():
        log.info("%s has no out-of-class statistics (%s): 'not sure' falls back to the softmax threshold; "
                 "`whatsthat not-sure fit %s DATA` adds them", model_path, path.name, model_path)
        return None
    det = Detector.load(path)
    if model is not None and det.model_fingerprint and det.model_fingerprint != model_fingerprint(model):
        log.warning("%s was made for another model than %s (fingerprints differ): ignored; 'not sure' falls back "
                    "to the softmax threshold. Run `whatsthat not-sure fit` again", path, model_path)
        return None
    return det


# --- fitting (training time) ------------------------------------------------------------------------


def fit_detector(train_features: torch.Tensor, train_labels: torch.Tensor, valid_features: torch.Tensor,
                 valid_logits: torch.Tensor | None = None, *, method: str = DEFAULT_METHOD, layer: str = DEFAULT_LAYER,
                 k: int = DEFAULT_K, in_class_rate: float = DEFAULT_IN_CLASS_RATE, shrinkage: float = 0.1,
                 fingerprint: str = "") -> Detector:
    """Fit `method` on training features, calibrate its threshold on held-out in-class pictures.

    The threshold is the (1 - in_class_rate) quantile of the held-out pictures' scores: that share of
    in-class pictures would be called out of class.
    """
    if not 0 < in_class_rate < 1:
        raise WhatsthatError(f"in_class_rate must be between 0 and 1, not {in_class_rate}")
    if len(valid_features) == 0 or len(train_features) == 0:
        raise WhatsthatError("out-of-class calibration needs training and held-out pictures")
    tensors: dict[str, torch.Tensor] = {}
    if method == "knn":
        tensors["bank"] = _normalise(train_features)
    elif method == "mahalanobis":
        z = _normalise(train_features)
        classes = sorted(set(train_labels.tolist()))
        means = torch.stack([z[train_labels == c].mean(0) for c in classes])
        centred = z - means[torch.searchsorted(torch.tensor(classes), train_labels)]
        cov = centred.T @ centred / max(1, len(z) - len(classes))
        # shrink towards a scaled identity: with fewer pictures than dimensions the covariance is singular
        dim = cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * torch.eye(dim) * cov.diagonal().mean()
        tensors["means"], tensors["precision"] = means, torch.linalg.inv(cov.double()).float()
    det = Detector(method=method, layer=layer, threshold=float("inf"), tensors=tensors, k=k,
                   model_fingerprint=fingerprint, calibration={"normalised": True})
    scores = det.score_tensor(valid_features, valid_logits)
    det.threshold = float(torch.quantile(scores.double(), 1 - in_class_rate))
    qs = [0.5, 0.9, 0.95, 0.98, 0.99]
    det.calibration.update({
        "in_class_rate": in_class_rate,
        "n_train": len(train_features),
        "n_valid": len(valid_features),
        "valid_flagged": round(float((scores > det.threshold).float().mean()), 4),
        "valid_score_quantiles": {str(q): round(float(torch.quantile(scores.double(), q)), 5) for q in qs},
    })
    return det


def card_entry(det: Detector, file: str | None = None) -> dict:
    """What the model card records as card["not_sure"] (see the module docstring)."""
    return {"method": det.method, "layer": det.layer, "k": det.k, "threshold": det.threshold,
            "file": file, "model_fingerprint": det.model_fingerprint, "calibration": det.calibration}


def extract(learn, items: Sequence, layer: str = DEFAULT_LAYER, bs: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, logits, labels) of `items` through a fastai learner's validation transforms."""
    model = learn.model.eval()
    dl = learn.dls.test_dl(list(items), with_labels=True, bs=bs)
    feats, logits, labels = [], [], []
    with torch.inference_mode():
        for xb, yb in dl:
            f, lg = split_forward(model, xb.as_subclass(torch.Tensor), layer)
            feats.append(f)
            logits.append(lg)
            labels.append(yb.as_subclass(torch.Tensor).long())
    return torch.cat(feats), torch.cat(logits), torch.cat(labels)


def fit_and_save(learn, model_path: str | Path, train_items: Sequence | None = None, valid_items: Sequence | None = None,
                 *, method: str = DEFAULT_METHOD, layer: str = DEFAULT_LAYER, k: int = DEFAULT_K,
                 in_class_rate: float = DEFAULT_IN_CLASS_RATE, echo: Callable[[str], None] | None = None) -> dict:
    """Fit the detector on a trained learner, write it beside `model_path`, return the card entry.

    `train_items`/`valid_items` default to the learner's own split (what `train()` passes).
    """
    t0 = time.time()
    train_items = list(learn.dls.train_ds.items if train_items is None else train_items)
    valid_items = list(learn.dls.valid_ds.items if valid_items is None else valid_items)
    xt, _, yt = extract(learn, train_items, layer)
    xv, lv, _ = extract(learn, valid_items, layer)
    det = fit_detector(xt, yt, xv, lv, method=method, layer=layer, k=k, in_class_rate=in_class_rate,
                       fingerprint=model_fingerprint(learn.model))
    path = det.save(stats_path_for(Path(model_path).resolve()))
    if echo:
        echo(f"'not sure' detector: {method} on {layer} features of {len(xt)} training pictures, threshold "
             f"{det.threshold:.4f} ({det.calibration['valid_flagged']:.1%} of {len(xv)} held-out pictures above it); "
             f"{time.time() - t0:.0f}s, wrote {path.name}")
    return card_entry(det, path.name)


def split_items(files: Sequence[Path], card: dict) -> tuple[list[Path], list[Path]]:
    """(train, valid) files by the split the model was trained with: the card's valid_pct and seed, by
    file-name hash, so the threshold is calibrated on pictures the model did not train on."""
    from whatsthat.data import HashSplitter

    training = card.get("training", {})
    splitter = HashSplitter(float(training.get("valid_pct", 0.2)), int(training.get("seed", 42)))
    return [f for f in files if not splitter.is_valid(f)], [f for f in files if splitter.is_valid(f)]
