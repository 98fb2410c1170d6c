"""Suggest: the pictures whose label is probably wrong, and the junk, found before anyone pages through.

A model that trained on a picture has memorised its label, wrong or not, so the cleaner's "worst loss
first" hides a mislabelled picture on a late page. Here every picture is judged by models that never
saw it (out-of-fold), in four steps:

1. **One feature pass per body.** Every picture goes once through each pretrained body of `--arch`
   (by default two: efficientnet_lite2 at 260 px and train's efficientnet_lite0 at 224, because the
   suggestions are only as good as the features, and two bodies err less often than one; see
   DEFAULT_BODIES), with the validation transforms `whatsthat train` uses; the body's output,
   pooled as the head pools it (max and average), is kept. The features of a picture depend only on its bytes, the backbone and
   the size, so they are kept on disk (`FeatureCache`, keyed by each file's sha256): a second run on
   the same data, or on the data after a cleaning round, computes only the pictures it has not seen.
2. **K folds** (5 by default), **twice per body** (`repeated_out_of_fold`). The pictures are dealt into
   folds, class by class, in the order of a seeded hash of their file name (so a rerun gives the same
   folds); each round has its own seed, so its own split, and the rounds' outputs are averaged. For each fold a fresh head,
   the head `whatsthat train` builds, trains on the other folds' features with the head stage's
   recipe (whatsthat.training.cached.fit_head: AdamW, one cycle, 8 epochs, batch 64, 5x the base learning rate), and
   gives the fold's pictures their class probabilities. Beside it an out-of-class detector
   (whatsthat.model.detector, Mahalanobis on the average-pooled features, as "not sure" uses) is fitted on the
   same training folds and scores the fold's pictures: how far each lies from every class. The
   bodies' probabilities are averaged, and their distances on a log scale.
3. **A second opinion.** Each picture's 10 nearest other pictures (cosine on the pooled features)
   vote with their labels; the vote and the heads' probabilities are averaged. Both are out of sample
   (a picture is never its own neighbour), and the two kinds of model err differently: on the shared
   datasets with injected noise the average kept the recall and cut the wrong relabels by a third
   (bench/suggest_bench.py; docs/suggest.md has the runs).
4. **Decide** (`decide`). The probabilities go to cleanlab's confident learning
   (`cleanlab.filter.find_label_issues`, `cleanlab.rank.get_label_quality_scores`), which flags the
   pictures whose given label is unlikely against what the classes look like (judged among the
   pictures that are not junk: junk would inflate the estimated noise rate); a flagged picture whose
   most likely label is another one is a `relabel` to it, and so is one whose most likely label is
   another at 60% or more (RELABEL_SURE), flagged or not. A picture far from every class is a
   `delete` (a logo, a book cover, a product grid), not a relabel: its Mahalanobis distance to the
   nearest class or its distance to its nearest pictures, each in units of its spread over the
   dataset, the larger of the two, lies beyond Tukey's fence (as cleanlab's Datalab flags outliers). Everything
   else is `keep`.

Each suggestion carries a `score` in [0, 1], the confidence that its action is right (for a relabel the
out-of-sample probability of the new label; for a delete 0.5 at the fence, towards 1 farther out; for
a keep the probability of the given label), and `why`, one short phrase. Nothing here moves a file:
the cleaner (whatsthat.cleaning.cleaner) shows the suggestions pre-marked, and only the maintainer's click makes
one a decision, applied through the journal (whatsthat.cleaning.journal).

What it finds, measured (docs/suggest.md): most injected label flips and nearly all pictures from other
domains where the classes are easy to tell apart (farm, insects, web faces); on hard classes (the
48 px FER faces) many wrong relabels, because a head on ImageNet features tells happy from sad only
about three times in four; and on the shared bears only the junk that looks unlike a bear photo
(logos, cartoons, product grids), not the bear-themed junk (book covers, rugs, drawings of bears).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from whatsthat.cleaning.journal import file_sha256
from whatsthat.errors import WhatsthatError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

DEFAULT_FOLDS = 5
# Two pretrained bodies, each at its own resolution, whose heads' probabilities are averaged. lite2 alone, against
# lite0 alone, raised the best achievable precision at 80% recall from 39% to 71% on faces-web and from 59% to 79%
# on the hardest insects draw (docs/suggest.md); the two together err less often than either (out-of-fold agreement
# with the given labels +2 to +4 points on the FER faces) and cut the wrong suggestions: mean precision over the
# shared noisy sets +3.5 points at the same recall, for lite0's feature pass (about half of lite2's). `whatsthat
# train` keeps lite0 alone: it pays the body on every epoch.
DEFAULT_BODIES = ("efficientnet_lite2", "efficientnet_lite0")  # each at its NATIVE_SIZE
NATIVE_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}  # else 224
DEFAULT_ROUNDS = 2  # per body; repeated K-fold: each round its own seeded split (repeated_out_of_fold)
DEFAULT_SEED = 42
DEFAULT_HEAD_EPOCHS = 8  # the head stage of `whatsthat train` (whatsthat.training.train.train's head_epochs)
DEFAULT_LR = 2e-3  # train's base learning rate (whatsthat.training.cached.fit_head trains the head at a multiple of it)
MIN_PER_FOLD = 2  # pictures of each class per fold, at least: a class needs 2 * folds pictures
FEATURES_VERSION = 1  # bump when the feature pass changes what it computes: older cache files are ignored
ACTIONS = ("relabel", "delete", "keep")
KNN = 10  # neighbours for the distance to the nearest pictures (cleanlab Datalab's default k)
FENCE = 1.5  # Tukey's fence: junk lies more than 1.5 interquartile ranges above the third quartile
RELABEL_MIN = 0.5  # a relabel only where another label is more likely than not (2 classes: any other best label)
# ...and a relabel wherever another label is at least this likely, flagged by confident learning or not: its
# per-class thresholds (each class's mean confidence) pass over a picture whose true class the models give 60-77%
# when that class's own pictures average more. On the shared noisy sets: recall +2 points on average (web faces
# and insects +3 to +4, each up to 2 pictures over the floor), precision -2.5; on the shared bears it adds wrong
# relabels of brown-coated black bears to grizzly (precision 50% -> 33%). docs/suggest.md has the runs.
RELABEL_SURE = 0.6


@dataclass(frozen=True)
class Suggestion:
    """What to do with one picture, how sure, and why. `path` is `<label>/<file>` under the dataset."""

    path: str
    action: str  # relabel, delete or keep
    label: str | None  # the suggested label (relabel only)
    given: str  # the label it has now (its folder)
    score: float  # confidence that `action` is right, in [0, 1]
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SuggestReport:
    """Every picture's suggestion (keeps included), most confident change first; how it was made."""

    root: Path
    classes: list[str]
    items: list[Suggestion]
    folds: int
    arch: str  # the bodies, "+"-joined
    seconds: float = 0.0
    feature_seconds: float = 0.0
    cached: int = 0  # pictures whose features came from the cache, for every body
    skipped: list[str] = field(default_factory=list)  # unreadable files, left out
    accuracy: float = 0.0  # how often the out-of-sample best label is the given one
    # path -> the out-of-sample class probabilities (in `classes` order) each suggestion was decided from: for
    # analysis (bench/suggest_bench.py's best cut-off), not in the JSON
    probs: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def suggestions(self) -> list[Suggestion]:
        """The suggested changes (relabel, delete), most confident first."""
        return [s for s in self.items if s.action != "keep"]

    def to_json(self, keep: bool = False) -> list[dict]:
        """The JSON list `whatsthat suggest --json` prints: the changes, or with `keep` every picture."""
        return [s.to_dict() for s in (self.items if keep else self.suggestions)]

    def summary(self) -> str:
        changes = self.suggestions
        n_del = sum(s.action == "delete" for s in changes)
        cache = f", features of {self.cached} from the cache" if self.cached else ""
        skipped = f"; {len(self.skipped)} unreadable file(s) left out" if self.skipped else ""
        return (f"{len(changes)} suggestion(s) for {len(self.items)} pictures: {n_del} delete, "
                f"{len(changes) - n_del} relabel ({self.folds} folds, agreeing with {self.accuracy:.1%} of the given "
                f"labels, {self.seconds:.0f}s{cache}{skipped})")

    def table(self, limit: int | None = None, keep: bool = False) -> str:
        """The suggestions (with `keep`, every picture) as aligned text, one per line, then the summary line."""
        items = self.items if keep else self.suggestions
        rows = items[:limit] if limit else items
        w = max([len(s.path) for s in rows] + [4])
        lines = [f"{'score':>5}  {'action':<16}  {'path':<{w}}  why"]
        for s in rows:
            action = f"relabel {s.label}" if s.action == "relabel" else s.action
            lines.append(f"{s.score:5.2f}  {action:<16}  {s.path:<{w}}  {s.why}")
        if limit and len(items) > limit:
            lines.append(f"... and {len(items) - limit} more (--json lists them all)")
        lines.append(self.summary())
        return "\n".join(lines)


# --- folds --------------------------------------------------------------------------------------


def assign_folds(paths: Sequence[str], labels: Sequence[int], folds: int, seed: int = DEFAULT_SEED) -> list[int]:
    """A fold for each picture: class by class, in the order of a seeded hash of the file name, dealt round.

    Stratified (each fold holds its share of every class) and reproducible: the same names and seed
    give the same folds, whatever order the files were listed in.
    """
    out = [0] * len(paths)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for members in by_class.values():
        ranked = sorted(members, key=lambda i: hashlib.sha1(f"{seed}:{Path(paths[i]).name}".encode()).digest())
        for rank, i in enumerate(ranked):
            out[i] = rank % folds
    return out


def check_enough(counts: dict[str, int], folds: int) -> None:
    """A clear one-line WhatsthatError when the dataset is too small for `folds` folds."""
    if folds < 2:
        raise WhatsthatError(f"folds must be 2 or more, not {folds}")
    need = MIN_PER_FOLD * folds
    small = {label: n for label, n in counts.items() if n < need}
    if small:
        shown = ", ".join(f"{label} has {n}" for label, n in sorted(small.items()))
        fewer = min(counts.values()) // MIN_PER_FOLD
        way_out = f"add pictures, or use fewer folds (--folds {fewer})" if fewer >= 2 else "add pictures"
        raise WhatsthatError(f"too few pictures to suggest anything: {shown}, and {folds} folds need at least {need} "
                             f"pictures of every class; {way_out}")


# --- the feature cache ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/whatsthat/features (~/.cache/whatsthat/features): never inside the dataset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whatsthat" / "features"


class FeatureCache:
    """The pooled body features of one dataset's pictures on disk, by picture content (sha256).

    One safetensors file per dataset folder, backbone, size and feature version: `features` (float16,
    pictures x dims) and, in its metadata, each row's sha256. A picture's features depend on its bytes
    only, so one that was relabelled (moved to another folder) keeps them, and a cleaning round costs
    only the pictures it added. The file keeps the dataset's current pictures and, up to as many again,
    older ones (an undone deletion brings its picture back). Written atomically; an unreadable or
    foreign file is ignored and written anew, never an error.
    """

    def __init__(self, folder: str | Path, data: str | Path, arch: str, size: int, pretrained: bool = True):
        root = str(Path(data).resolve())
        key = hashlib.sha256(root.encode()).hexdigest()[:12]
        weights = "" if pretrained else "-random"
        self.path = Path(folder) / f"{Path(root).name}-{key}-{arch}{weights}-{size}px-v{FEATURES_VERSION}.safetensors"

    def load(self) -> dict[str, torch.Tensor]:
        """sha256 -> features, for every picture in the file ({} when there is none or it is unreadable)."""
        from safetensors import SafetensorError, safe_open

        if not self.path.is_file():
            return {}
        try:
            with safe_open(str(self.path), framework="pt") as f:
                shas = json.loads((f.metadata() or {}).get("sha256", "[]"))
                feats = f.get_tensor("features")
        except (SafetensorError, OSError, ValueError, KeyError):
            return {}
        if not isinstance(shas, list) or len(shas) != len(feats):
            return {}
        return dict(zip(shas, feats, strict=True))

    def save(self, current: dict[str, torch.Tensor], older: dict[str, torch.Tensor]) -> None:
        """Keep `current` (sha256 -> features) and up to as many of `older`; a failed write only loses the cache."""
        import torch
        from safetensors.torch import save_file

        rows = dict(current)
        for sha, row in list(older.items())[-len(current) :] if current else []:
            rows.setdefault(sha, row)
        if not rows:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".features-", suffix=".safetensors")
            os.close(fd)
            try:
                save_file({"features": torch.stack(list(rows.values())).half().contiguous()}, tmp,
                          metadata={"sha256": json.dumps(list(rows))})
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError:
            pass


# --- the feature pass ----------------------------------------------------------------------------


@dataclass
class Features:
    """The pooled features of every picture (rows in the order of the files), and the head that reads them."""

    x: torch.Tensor  # (pictures, 2 * channels): the head's pooling, max then average (fastai's AdaptiveConcatPool2d)
    head: nn.Module  # train's head after its pooling: each fold trains a copy
    classes: list[str]
    seconds: float = 0.0
    cached: int = 0  # rows that came from the cache

    @property
    def pooled(self) -> torch.Tensor:
        """The average-pooled half: the body's output averaged over space ("pooled" in whatsthat.model.detector)."""
        return self.x[:, self.x.shape[1] // 2 :]


def compute_features(data: Path, files: Sequence[Path], *, exclude: Sequence[str] = (), arch: str = DEFAULT_BODIES[0],
                     size: int = NATIVE_SIZE[DEFAULT_BODIES[0]], seed: int = DEFAULT_SEED, pretrained: bool = True,
                     cache: FeatureCache | None = None, bar: bool = False,
                     echo: Callable[[str], None] | None = None) -> Features:
    """Every picture of `files` once through the body, with train's validation transforms; `exclude` as ImageFiles.

    The learner is built as `whatsthat train` builds it (same DataBlock, backbone, weights and head), so
    the head each fold trains is train's head. Pictures whose features are in `cache` are not decoded.
    Features are rounded to float16 whether computed or read, so a rerun from the cache gives the
    same answer as the first run.
    """
    import torch
    from fastai.torch_core import set_seed
    from fastai.vision.learner import create_head, vision_learner

    from whatsthat.progress import Progress
    from whatsthat.training.backbones import ensure_torchvision_weights, get_arch
    from whatsthat.training.cpu import INFERENCE_BS, big_buffers_on_heap, channels_last
    from whatsthat.training.data import make_dataloaders

    echo = echo or (lambda s: None)
    t0 = time.time()
    spec = get_arch(arch)
    if pretrained and spec.torchvision:
        ensure_torchvision_weights(arch)  # a clear message offline, not a socket traceback
    set_seed(seed, reproducible=True)
    dls = make_dataloaders(data, size=size, seed=seed, stats=spec.stats, exclude=exclude)
    head = {} if spec.body_features is None else {"custom_head": create_head(spec.body_features, dls.c)}
    learn = vision_learner(dls, spec.builder(), pretrained=pretrained, normalize=False, **head)
    body, full_head = learn.model[0].eval(), learn.model[1]

    shas = [file_sha256(f) for f in files]
    known = cache.load() if cache is not None else {}
    todo = [i for i, sha in enumerate(shas) if sha not in known]
    rows: dict[str, torch.Tensor] = {sha: known[sha] for sha in shas if sha in known}
    if todo:
        dl = dls.test_dl([files[i] for i in todo], with_labels=False, bs=INFERENCE_BS)
        progress = Progress("[suggest] computing body features", len(dl), bar=bar, echo=echo)
        pool = full_head[:2]  # AdaptiveConcatPool2d + Flatten: what the head does first
        out = []
        with big_buffers_on_heap(), channels_last(body), torch.inference_mode():
            for b, batch in enumerate(dl):
                xb = batch[0].as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last)
                out.append(pool(body(xb)).half())
                progress.update(b + 1)
        seconds = progress.close()
        echo(f"[suggest] {arch} body features of {len(todo)} pictures in {seconds:.0f}s"
             + (f" ({len(files) - len(todo)} from the cache)" if len(todo) < len(files) else ""))
        rows |= {shas[i]: row.clone() for i, row in zip(todo, torch.cat(out), strict=True)}
        if cache is not None:
            cache.save({sha: rows[sha] for sha in shas}, known)
    x = torch.stack([rows[sha] for sha in shas]).float()
    return Features(x, full_head[2:], [str(c) for c in dls.vocab], time.time() - t0, len(files) - len(todo))


# --- out-of-fold probabilities and how far each picture lies from the classes ---------------------


def out_of_fold(features: Features, labels: torch.Tensor, fold: torch.Tensor, *, head_epochs: int = DEFAULT_HEAD_EPOCHS,
                lr: float = DEFAULT_LR, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities, Mahalanobis distance to the nearest class) of every picture, from the other folds."""
    import torch

    from whatsthat.model.detector import fit_detector
    from whatsthat.training.cached import evaluate, fit_head

    n, k = len(labels), len(features.classes)
    probs, far = torch.zeros(n, k), torch.zeros(n)
    pooled = features.pooled
    for f in sorted(set(fold.tolist())):
        held, train = fold == f, fold != f
        missing = sorted(set(range(k)) - set(labels[train].tolist()))
        if missing:
            names = ", ".join(features.classes[c] for c in missing)
            raise WhatsthatError(f"fold {f} leaves no training picture of {names}: add pictures, or use fewer folds")
        torch.manual_seed(seed + f)  # the head's dropout
        head = copy.deepcopy(features.head)  # every fold starts from train's initial head
        for p in head.parameters():
            p.requires_grad_(True)
        fit_head(head, features.x[train], labels[train], head_epochs, lr=lr, seed=seed + f)
        probs[held] = evaluate(head, features.x[held]).softmax(1)
        det = fit_detector(pooled[train], labels[train], pooled[held], method="mahalanobis", layer="pooled")
        far[held] = det.score_tensor(pooled[held])
    return probs, far


def repeated_out_of_fold(features: Features, rel: Sequence[str], labels: torch.Tensor, folds: int, *,
                         rounds: int = DEFAULT_ROUNDS, head_epochs: int = DEFAULT_HEAD_EPOCHS,
                         seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """out_of_fold `rounds` times, each on its own seeded split (seed, seed + 1, ...): probabilities averaged,
    distances averaged on a log scale (their geometric mean).

    One split's heads vary with the split and the heads' random start: on the shared datasets with
    injected noise, the best achievable precision at 80% recall of one split's probabilities moved
    by up to 20 points between seeds. Averaging the rounds is repeated K-fold cross-validation: each
    picture still judged only by models that never saw it.
    """
    import torch

    probs, log_far = 0.0, 0.0
    for r in range(rounds):
        fold = torch.tensor(assign_folds(rel, labels.tolist(), folds, seed + r))
        p, far = out_of_fold(features, labels, fold, head_epochs=head_epochs, seed=seed + r * folds)
        probs, log_far = probs + p / rounds, log_far + far.clamp_min(1e-12).log() / rounds
    return probs, log_far.exp()


@dataclass
class Neighbours:
    """Each picture's `k` nearest other pictures by cosine similarity of the pooled features."""

    index: torch.Tensor  # (pictures, k)
    similarity: torch.Tensor  # (pictures, k), nearest first

    @property
    def distance(self) -> torch.Tensor:
        """Mean cosine distance to the k nearest (cleanlab Datalab's outlier measure): high for a picture unlike all."""
        return 1 - self.similarity.mean(1)

    def vote(self, labels: torch.Tensor, classes: int) -> torch.Tensor:
        """Class probabilities from the neighbours' labels (each picture's own label not among them), smoothed."""
        import torch

        counts = torch.nn.functional.one_hot(labels[self.index], classes).sum(1).double() + 0.5
        return (counts / counts.sum(1, keepdim=True)).float()


def nearest(features: torch.Tensor, k: int = KNN) -> Neighbours:
    """The `k` nearest other pictures of each picture, in blocks of rows (10,000 pictures need no 400 MB matrix)."""
    import torch

    z = torch.nn.functional.normalize(features.float(), dim=1)
    k = max(1, min(k, len(z) - 1))
    index, similarity = [], []
    for i in range(0, len(z), 1024):
        sims = z[i : i + 1024] @ z.T
        sims[torch.arange(len(sims)), torch.arange(i, i + len(sims))] = -2.0  # not its own neighbour
        top = sims.topk(k, dim=1)
        index.append(top.indices)
        similarity.append(top.values)
    return Neighbours(torch.cat(index), torch.cat(similarity))


# --- deciding ------------------------------------------------------------------------------------


def _spread(v: np.ndarray) -> np.ndarray:
    """`v` centred on its median, in units of its interquartile range (robust to the junk it is looking for)."""
    import numpy as np

    q1, median, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return (v - median) / max(float(q3 - q1), 1e-12)


def decide(paths: Sequence[str], labels: np.ndarray, probs: np.ndarray, far: np.ndarray, neighbours: np.ndarray,
           classes: Sequence[str]) -> list[Suggestion]:
    """One Suggestion per picture (`paths` as <label>/<file>), most confident change first, then the keeps.

    - delete: the picture lies far from every class. Its distance to the nearest class (Mahalanobis,
      whatsthat.model.detector, fitted on the other folds) and to its nearest pictures (cosine, k = 10) are each
      put in units of their spread over the dataset, and the larger counts; above Tukey's fence (the
      third quartile plus 1.5 interquartile ranges, as cleanlab's Datalab flags outliers) it is junk.
    - relabel: confident learning (cleanlab.filter.find_label_issues on the out-of-sample probabilities
      `probs` of the pictures that are not junk) says the given label is an issue, and another label is
      more likely (RELABEL_MIN); or, flagged or not, another label is at least RELABEL_SURE likely.
    - keep: everything else.
    """
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    labels = np.asarray(labels, dtype=np.int64)
    # far from every class's centre, or far from every other picture: either measure alone, in units of its
    # spread. The class centres miss junk where a class is broad (web faces: a logo lies no farther from
    # "happy" than many faces do, yet has no face near it); the neighbours miss junk that comes in groups.
    junk = np.maximum(_spread(np.log(np.maximum(far, 1e-12))), _spread(np.asarray(neighbours, dtype=np.float64)))
    q1, q3 = np.quantile(junk, [0.25, 0.75])
    spread = max(float(q3 - q1), 1e-12)
    fence = q3 + FENCE * spread
    # confident learning on the pictures that are not junk: a junk picture's label is neither right nor wrong,
    # and counted in it would raise the estimated noise rate, so flag more relabels among the real pictures
    real = junk <= fence
    if len(set(labels[real].tolist())) < probs.shape[1]:  # a class that is all junk: judge every picture
        real[:] = True
    issues = np.zeros(len(labels), dtype=bool)
    issues[real] = find_label_issues(labels[real], probs[real], n_jobs=1)
    quality = get_label_quality_scores(labels, probs)  # the folds' probability of the given label
    pred = probs.argmax(1)
    order = junk.argsort().argsort()  # rank of each picture's junk score
    out = []
    for i, path in enumerate(paths):
        given, best = classes[labels[i]], classes[pred[i]]
        if junk[i] > fence:
            out.append(Suggestion(path, "delete", None, given, round(1 - 0.5 * math.exp(-(junk[i] - fence) / spread), 4),
                                  f"unlike every class (farther out than {order[i]} of the {len(paths)} pictures; "
                                  f"nearest: {best})"))
        elif pred[i] != labels[i] and probs[i, pred[i]] >= (RELABEL_MIN if issues[i] else RELABEL_SURE):
            out.append(Suggestion(path, "relabel", best, given, round(float(probs[i, pred[i]]), 4),
                                  f"looks like {best} ({probs[i, pred[i]]:.0%}), not {given} ({quality[i]:.0%})"))
        else:
            why = f"looks like {given} ({quality[i]:.0%})" if pred[i] == labels[i] else \
                  f"unsure: {best} {probs[i, pred[i]]:.0%}, {given} {quality[i]:.0%}"
            out.append(Suggestion(path, "keep", None, given, round(float(quality[i]), 4), why))
    changes = sorted((s for s in out if s.action != "keep"), key=lambda s: (-s.score, s.path))
    keeps = sorted((s for s in out if s.action == "keep"), key=lambda s: (s.score, s.path))
    return changes + keeps


# --- the whole step ------------------------------------------------------------------------------


def bodies_for(arch: str | Sequence[str] | None = None, size: int | None = None) -> list[tuple[str, int]]:
    """(backbone, image size) of each feature pass: DEFAULT_BODIES, or the backbones named, each at its own size
    (NATIVE_SIZE, else 224) unless `size` is given."""
    arch = DEFAULT_BODIES if arch is None else arch
    chosen = [arch] if isinstance(arch, str) else list(dict.fromkeys(arch))  # each once, in the order given
    if not chosen:
        raise WhatsthatError("name at least one backbone (--arch)")
    return [(name, size or NATIVE_SIZE.get(name, 224)) for name in chosen]


def suggest(data: str | Path, *, arch: str | Sequence[str] | None = None, size: int | None = None,
            folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED, head_epochs: int = DEFAULT_HEAD_EPOCHS,
            rounds: int = DEFAULT_ROUNDS, pretrained: bool = True, cache: bool | str | Path = True,
            progress: bool | None = None, echo: Callable[[str], None] | None = None) -> SuggestReport:
    """Suggest a delete, relabel or keep for every picture of the folder-per-class dataset `data`.

    `arch`: one backbone or several (default DEFAULT_BODIES); each body's heads and out-of-class
    distances are averaged, the neighbours come from the first. `size`: every body's image size
    (default each one's own). `rounds`: splits per body. `cache`: True keeps the features under
    default_cache_dir(), a folder keeps them there, False computes them every time.
    `pretrained=False` (tests only) uses random bodies. `progress`: a bar (True), plain lines
    (False), or a bar only on a terminal (None). Moves nothing.
    """
    import torch

    from whatsthat.training.data import check_dataset, get_dataset_images, leave_out_unreadable

    echo = echo or (lambda s: print(s, file=sys.stderr))
    t0 = time.time()
    data = Path(data)
    bodies = bodies_for(arch, size)
    if min(s for _, s in bodies) < 32:
        raise WhatsthatError(f"image size {size} is too small; use 32 or more (224 is the usual)")
    if head_epochs < 1:
        raise WhatsthatError(f"head_epochs must be 1 or more, not {head_epochs}")
    if rounds < 1:
        raise WhatsthatError(f"rounds must be 1 or more, not {rounds}")
    check_dataset(data)  # a missing folder or a single class: its own clear message
    readable, unreadable = leave_out_unreadable(get_dataset_images(data), data, echo)
    counts = check_dataset(data, unreadable) if unreadable else check_dataset(data)
    check_enough(counts, folds)
    rel = [f.relative_to(data).as_posix() for f in readable]
    bar = sys.stderr.isatty() if progress is None else progress
    heads, log_far, seconds, cached, first = 0.0, 0.0, 0.0, len(rel), None
    for name, px in bodies:
        store = None
        if cache:
            store = FeatureCache(default_cache_dir() if cache is True else Path(cache), data, name, px, pretrained)
        features = compute_features(data, readable, exclude=unreadable, arch=name, size=px, seed=seed,
                                    pretrained=pretrained, cache=store, bar=bar, echo=echo)
        labels = torch.tensor([features.classes.index(r.split("/")[0]) for r in rel])
        p, far = repeated_out_of_fold(features, rel, labels, folds, rounds=rounds, head_epochs=head_epochs, seed=seed)
        # the bodies' opinions averaged as the rounds' are: probabilities, and distances on a log scale
        heads, log_far = heads + p / len(bodies), log_far + far.clamp_min(1e-12).log() / len(bodies)
        seconds, cached, first = seconds + features.seconds, min(cached, features.cached), first or features
    near = nearest(first.pooled)
    # two out-of-sample opinions, averaged: the folds' heads, and the vote of each picture's 10 nearest others
    probs = (heads + near.vote(labels, len(first.classes))) / 2
    items = decide(rel, labels.numpy(), probs.numpy(), log_far.exp().numpy(), near.distance.numpy(), first.classes)
    accuracy = float((probs.argmax(1) == labels).float().mean())
    report = SuggestReport(data, first.classes, items, folds, "+".join(name for name, _ in bodies), time.time() - t0,
                           seconds, cached, unreadable, accuracy,
                           {r: [round(v, 4) for v in row] for r, row in zip(rel, probs.tolist(), strict=True)})
    echo(f"[suggest] {report.summary()}")
    return report


def load_suggestions(path: str | Path) -> list[Suggestion]:
    """Suggestions from a file `whatsthat suggest DATA --json` wrote (a list of objects); a clear error otherwise."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise WhatsthatError(f"cannot read suggestions file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise WhatsthatError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise WhatsthatError(f"{path}: expected a JSON list of suggestions (whatsthat suggest DATA --json)")
    out = []
    for i, item in enumerate(items, 1):
        try:
            s = Suggestion(path=str(item["path"]), action=str(item["action"]), label=item.get("label") or None,
                           given=str(item.get("given") or Path(str(item["path"])).parent.name),
                           score=float(item.get("score", 0.0)), why=str(item.get("why", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise WhatsthatError(f"{path}: suggestion {i} is not a suggestion ({e!r}): {item!r}") from None
        if s.action not in ACTIONS or (s.action == "relabel" and not s.label):
            raise WhatsthatError(f"{path}: suggestion {i} has action {s.action!r}" +
                                 (" without a label" if s.action == "relabel" else " (use relabel, delete or keep)"))
        out.append(s)
    return out
