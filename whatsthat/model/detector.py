"""Out-of-class detection: does a picture look like the training pictures at all?

A softmax over three bear classes must give its whole mass to some bear, so a cat comes out
"teddy (100%)". The detector scores how far a picture's features lie from the training pictures'
features; above a threshold calibrated on held-out in-class pictures, the answer is "not sure: this
doesn't look like any of the classes" (``whatsthat.model.verdict``). The method was chosen by measurement
(``bench/not_sure_bench.py``; docs/not-sure.md).

Methods (``Detector.method``; every score is "higher = more out of class"):

- ``knn``: distance to the k-th nearest training picture, on L2-normalised features (Sun et al. 2022,
  "Out-of-distribution detection with deep nearest neighbors"). Stores the normalised training features.
- ``mahalanobis``: smallest class-conditional Mahalanobis distance, on L2-normalised features, with one
  shared covariance shrunk towards the identity (Lee et al. 2018). Stores the class means and the
  precision matrix in an exact low-rank form (``_fit_mahalanobis``): aggregates, no picture's features.
- ``energy`` (-logsumexp of the logits), ``max_logit`` (-max logit), ``msp`` (-max softmax, the
  baseline): no statistics beyond the threshold.

Features (``Detector.layer``) come from ``split_forward`` on a ``nn.Sequential(body, head)`` model, the
shape of every fastai ``vision_learner`` model and of the torch-only serving model:
``penultimate`` is the input of the head's last Linear layer, ``pooled`` the body's output averaged over
space, ``pretrained`` the same as the *pretrained* body computes it (``PretrainedTop``).

Why ``pretrained``, the default whenever training changed the body's top (``whatsthat.training.cached``, the top
stage): adapting the top to the classes also teaches it to ignore what the classes do not need, and
that is what tells a bee from a beetle (measured: docs/performance.md, "Not sure"). The lower layers never train in that recipe, so their activations
are shared: the pretrained top runs on them beside the trained one, about a quarter of a forward
pass more, and its weights are stored in the statistics file (the serving environment has no ImageNet
weights of its own).

Files: the statistics live beside the model, ``export.pkl`` -> ``export.ood.safetensors`` (safetensors:
tensors plus a JSON string of settings under the metadata key ``whatsthat_ood``; no pickle; for
``pretrained`` also the pretrained top's weights, keys ``top.*``, and the cut in the settings). They carry
a fingerprint of the head's last Linear weights, so statistics never pair with a different model.
The card gets ``card["not_sure"] = card_entry(detector)``: ``method``, ``layer``, ``k``, ``threshold``,
``file`` (the statistics file's name), ``model_fingerprint`` and ``calibration`` (``in_class_rate``: the
promised bound on the share of new in-class pictures above the threshold, ``rank``: which held-out
score is the threshold (``conformal_threshold``); ``n_valid``, ``n_train``; ``shrinkage`` (mahalanobis);
``valid_flagged``: the share actually above it; ``valid_score_quantiles``).

Serving: ``features, logits = split_forward(model, batch, detector.layer, detector.pretrained)``, then
``detector.score(features, logits)``; torch only (no fastai import at module level).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from whatsthat.atomic import atomic_path
from whatsthat.errors import WhatsthatError
from whatsthat.model.files import ModelFiles

if TYPE_CHECKING:

    pass

log = logging.getLogger(__name__)

METHODS = ("knn", "mahalanobis", "energy", "max_logit", "msp")
LAYERS = ("penultimate", "pooled", "pretrained")
TOP_PREFIX = "top."  # the pretrained top's weights in the statistics file
LOGIT_METHODS = ("energy", "max_logit", "msp")
META_KEY = "whatsthat_ood"
FORMAT_VERSION = 1
# the defaults the benchmark chose (docs/not-sure.md, "Why Mahalanobis")
DEFAULT_METHOD = "mahalanobis"
DEFAULT_LAYER = "pooled"
DEFAULT_K = 5
DEFAULT_IN_CLASS_RATE = 0.03


def stats_path_for(model_path: str | Path) -> Path:
    """export.pkl -> export.ood.safetensors (beside it)."""
    return ModelFiles(model_path).detector


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


@dataclass
class PretrainedTop:
    """The body's layers from `cut` on, with the weights they had before training: `module(body[:cut](x))`
    is what the pretrained body would output for `x` (while the layers below `cut` keep theirs)."""

    cut: int
    module: nn.Module


def _pool(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(dim=(2, 3)) if x.dim() == 4 else x.float()


def split_forward(model: nn.Module, batch: torch.Tensor, layer: str = DEFAULT_LAYER,
                  pretrained: PretrainedTop | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of `batch` in one forward pass of `model` = nn.Sequential(body, head).

    `layer` picks the features: "penultimate" (input of the head's last Linear), "pooled" (the body's
    output averaged over space) or "pretrained" (the pretrained top's output averaged over space, on
    the same lower-layer activations; needs `pretrained`). Call under torch.inference_mode() with the
    model in eval mode.
    """
    if layer not in LAYERS:
        raise WhatsthatError(f"unknown feature layer {layer!r}; choose one of: {', '.join(LAYERS)}")
    if not isinstance(model, nn.Sequential) or len(model) != 2:
        raise WhatsthatError("out-of-class scores need a model of the form nn.Sequential(body, head)")
    body, head = model[0], model[1]
    reference = None
    if layer == "pretrained":
        if pretrained is None:
            raise WhatsthatError("'pretrained' features need the pretrained top (Detector.pretrained), which is not loaded")
        low = body[: pretrained.cut](batch)
        reference = _pool(pretrained.module(low))
        x = body[pretrained.cut :](low)
    else:
        x = body(batch)
    pooled = _pool(x)
    mods = list(head.children()) if isinstance(head, nn.Sequential) else [head]
    cut = _last_linear(head) if isinstance(head, nn.Sequential) else 0
    penultimate = x
    for i, m in enumerate(mods):
        if i == cut:
            penultimate = x
        x = m(x)
    feats = {"pooled": pooled, "pretrained": reference}.get(layer)
    return (penultimate.float().flatten(1) if feats is None else feats), x.float()


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
    # "pretrained" layer: where the pretrained top starts in the body, and (once `attach`ed to the model,
    # or given at fitting, which sets `cut` from it) the top itself; its weights travel in `tensors` under
    # TOP_PREFIX until attached
    cut: int = 0
    pretrained: PretrainedTop | None = None

    def __post_init__(self) -> None:
        if self.pretrained is not None:
            self.cut = self.pretrained.cut
        if self.method not in METHODS:
            raise WhatsthatError(f"unknown out-of-class method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.layer not in LAYERS:
            raise WhatsthatError(f"unknown feature layer {self.layer!r}; choose one of: {', '.join(LAYERS)}")

    def attach(self, model: nn.Module) -> None:
        """For "pretrained": rebuild the pretrained top from `model`'s own top layers (same structure) and
        the stored weights. A model whose top does not take them is the wrong model: WhatsthatError."""
        if self.layer != "pretrained" or self.pretrained is not None:
            return
        # channels_last as the model's own weights (oneDNN's faster CPU convolutions); `assign` takes
        # these tensors as the parameters, so the copied ones are freed at once
        state = {k[len(TOP_PREFIX) :]: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                 for k, v in self.tensors.items() if k.startswith(TOP_PREFIX)}  # fmt: skip
        top = copy.deepcopy(model[0][self.cut :])
        try:
            top.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, KeyError) as e:
            raise WhatsthatError(f"the out-of-class statistics' pretrained top does not fit this model: {e}") from None
        self.pretrained = PretrainedTop(self.cut, top.eval())
        self.tensors = {k: v for k, v in self.tensors.items() if not k.startswith(TOP_PREFIX)}  # held once, in `top`

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
            # mahalanobis, with the precision matrix in its low-rank form (see fit_detector)
            means, basis, weights = self.tensors["means"], self.tensors["basis"], self.tensors["weights"]
            floor = float(self.tensors["floor"])
            d = _normalise(features)[:, None, :] - means[None, :, :]  # (n, classes, dim)
            m = (d * d).sum(-1) / floor + ((d @ basis.T) ** 2 * weights).sum(-1)
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
        tensors = dict(self.tensors)
        if self.pretrained is not None:
            meta["cut"] = self.cut
            tensors |= {TOP_PREFIX + k: v for k, v in self.pretrained.module.state_dict().items()}
        # float32 weights and statistics; integer buffers (BatchNorm's step count) stay integers
        tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                   for k, v in tensors.items()}  # fmt: skip
        if not tensors:  # safetensors wants at least a header; an empty file would be ambiguous
            tensors = {"none": torch.zeros(1)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
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
                      calibration=dict(meta.get("calibration", {})), cut=int(meta.get("cut", 0)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise WhatsthatError(f"out-of-class statistics {path} have malformed settings: {e}") from e
        missing = {"knn": ["bank"], "mahalanobis": ["means", "basis", "weights", "floor"]}.get(det.method, [])
        if [t for t in missing if t not in tensors]:
            raise WhatsthatError(f"out-of-class statistics {path} lack {missing} for method {det.method}")
        if det.layer == "pretrained" and (det.cut <= 0 or not any(k.startswith(TOP_PREFIX) for k in tensors)):
            raise WhatsthatError(f"out-of-class statistics {path} use pretrained features but lack the pretrained top")
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
    if det.layer == "pretrained":
        if model is None:
            raise WhatsthatError(f"{path} reads the pretrained top's features: load it with its model")
        det.attach(model)
    return det


# --- fitting (training time) ------------------------------------------------------------------------


def fit_detector(train_features: torch.Tensor, train_labels: torch.Tensor, valid_features: torch.Tensor,
                 valid_logits: torch.Tensor | None = None, *, method: str = DEFAULT_METHOD, layer: str = DEFAULT_LAYER,
                 k: int = DEFAULT_K, in_class_rate: float = DEFAULT_IN_CLASS_RATE, shrinkage: float = 0.1,
                 fingerprint: str = "", pretrained: PretrainedTop | None = None) -> Detector:
    """Fit `method` on training features, calibrate its threshold on held-out in-class pictures.

    The threshold is a conformal quantile of the held-out pictures' scores (`conformal_threshold`): a
    new in-class picture like them lands above it with probability at most `in_class_rate`.
    `pretrained`: the pretrained top the "pretrained" features came from (kept with the statistics).
    """
    if layer == "pretrained" and pretrained is None:
        raise WhatsthatError("'pretrained' features need the body's top as it was before training: pass it as "
                             "`pretrained` (whatsthat train keeps it while the top trains; whatsthat.training.classifier."
                             "original_top rebuilds it from the ImageNet weights), or use the pooled features")  # fmt: skip
    if not 0 < in_class_rate < 1:
        raise WhatsthatError(f"in_class_rate must be between 0 and 1, not {in_class_rate}")
    if len(valid_features) == 0 or len(train_features) == 0:
        raise DetectorUnavailable("out-of-class calibration needs training and held-out pictures")
    tensors: dict[str, torch.Tensor] = {}
    if method == "knn":
        tensors["bank"] = _normalise(train_features)
    elif method == "mahalanobis":
        tensors = _fit_mahalanobis(train_features, train_labels, shrinkage)
    det = Detector(method=method, layer=layer, threshold=float("inf"), tensors=tensors, k=k,
                   model_fingerprint=fingerprint,
                   calibration={"shrinkage": shrinkage} if method == "mahalanobis" else {},
                   pretrained=pretrained if layer == "pretrained" else None)
    scores = det.score_tensor(valid_features, valid_logits)
    det.threshold, rank = conformal_threshold(scores, in_class_rate)
    qs = [0.5, 0.9, 0.95, 0.98, 0.99]
    det.calibration.update({
        "in_class_rate": in_class_rate,
        "rank": rank,
        "n_train": len(train_features),
        "n_valid": len(valid_features),
        "valid_flagged": round(float((scores > det.threshold).float().mean()), 4),
        "valid_score_quantiles": {str(q): round(float(torch.quantile(scores.double(), q)), 5) for q in qs},
    })
    return det


def conformal_threshold(scores: torch.Tensor, rate: float) -> tuple[float, int]:
    """(threshold, rank): the k-th smallest of n held-out scores, k = ceil((n + 1)(1 - rate)), at most n.

    For a new picture exchangeable with the held-out ones, P(score > threshold) = (n + 1 - k) / (n + 1)
    <= rate (split conformal prediction). A plain (1 - rate) quantile of a small set is optimistic:
    of 51 held-out pictures, a 98% quantile flags about 4% of new ones. With n < 1/rate - 1 the
    guarantee is out of reach and the threshold is the largest score: the log says so.
    """
    n = len(scores)
    k = math.ceil((n + 1) * (1 - rate))
    if k > n:
        log.info("only %d held-out pictures: too few to promise at most %.1f%% in-class 'not sure'; "
                 "the threshold is the largest held-out score (about %.1f%%)", n, 100 * rate, 100 / (n + 1))
        k = n
    return float(scores.double().sort().values[k - 1]), k


class DetectorUnavailable(WhatsthatError):
    """The training pictures cannot give a detector (too few, features that do not vary, not finite).

    Not an error of the model: `whatsthat train` exports it without a detector and says why."""


def _fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor, shrinkage: float) -> dict[str, torch.Tensor]:
    """Class means and one shared covariance of L2-normalised features, shrunk towards a scaled identity.

    With fewer pictures than dimensions the covariance is singular, hence the shrinkage: cov' =
    (1 - s) cov + s m I, m the mean variance. Its inverse is stored exactly but compactly: cov has rank
    r <= pictures - classes, so cov'^-1 = I / floor + V diag(w) V^T with floor = s m, V the r principal
    directions of the centred features with variance e > 0 (of (1 - s) cov), and w = 1 / (e + floor) - 1 / floor.
    For 368 pictures and 1280 features that is 365 x 1280 numbers instead of 1280 x 1280.

    Why an SVD of the centred features and not an eigendecomposition of cov: cov has d - r eigenvalues
    that are exactly zero, and some LAPACK builds (MKL on AVX-512 CPUs) give up on `eigh` of such a matrix
    ("failed to converge ... too many repeated eigenvalues"), so the fit passed on one machine and
    failed on another. The SVD works on the r-dimensional data itself. Should it still fail, the same
    inverse comes from Woodbury's identity and a Cholesky factor (`_woodbury_basis`), which no input can
    make fail: the matrix it factors has every eigenvalue >= floor > 0.
    """
    if not 0 < shrinkage <= 1:
        raise WhatsthatError(f"shrinkage must be in (0, 1], not {shrinkage}")
    if not bool(torch.isfinite(features).all()):
        raise DetectorUnavailable("the training pictures' features are not all finite numbers")
    z = _normalise(features).double()
    classes = sorted(set(labels.tolist()))
    means = torch.stack([z[labels == c].mean(0) for c in classes])
    centred = z - means[torch.searchsorted(torch.tensor(classes), labels)]
    dof = max(1, len(z) - len(classes))
    variance = float((centred * centred).sum()) / dof  # trace(cov), without forming cov
    floor = shrinkage * variance / z.shape[1]
    # below ~1e-12 of a unit vector's squared length the "variation" is float rounding of identical pictures
    if not floor > 1e-12 * shrinkage:
        raise DetectorUnavailable("the training pictures' features do not vary (identical or near-identical "
                                  "pictures), so there is nothing to measure a new picture's distance against")
    y = centred * math.sqrt((1 - shrinkage) / dof)  # (1 - s) cov = y^T y
    y = y[(y != 0).any(dim=1)]  # a picture equal to its class mean adds nothing
    if len(y) == 0 or shrinkage == 1:
        basis, weights = torch.zeros(0, z.shape[1], dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    else:
        try:
            _, sv, vh = torch.linalg.svd(y, full_matrices=False)
            e = sv * sv
            keep = e > 1e-9 * float(e.max())
            basis, weights = vh[keep], 1 / (e[keep] + floor) - 1 / floor
        except torch.linalg.LinAlgError as err:
            log.warning("the SVD of the training features did not converge (%s); using the Cholesky form", err)
            basis, weights = _woodbury_basis(y, floor)
    return {"means": means.float(), "basis": basis.contiguous().float(), "weights": weights.float(),
            "floor": torch.tensor([floor], dtype=torch.float32)}


def _woodbury_basis(y: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(basis, weights) with (floor I + y^T y)^-1 = I / floor + basis^T diag(weights) basis, by Woodbury.

    (floor I + y^T y)^-1 = I / floor - y^T (floor I_n + y y^T)^-1 y / floor; the n x n matrix in the middle
    has every eigenvalue >= floor > 0, so its Cholesky factor L always exists (a direct method: no
    iteration to fail), and basis = L^-1 y, every weight -1 / floor.
    """
    gram = y @ y.T + floor * torch.eye(len(y), dtype=y.dtype)
    chol = torch.linalg.cholesky(gram)
    basis = torch.linalg.solve_triangular(chol, y, upper=False)
    return basis, torch.full((len(y),), -1 / floor, dtype=y.dtype)


def card_entry(det: Detector, file: str | None = None) -> dict:
    """What the model card records as card["not_sure"] (see the module docstring)."""
    return {"method": det.method, "layer": det.layer, "k": det.k, "threshold": det.threshold,
            "file": file, "model_fingerprint": det.model_fingerprint, "calibration": det.calibration}
