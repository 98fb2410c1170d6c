"""'Not sure' for pictures of none of the classes: each out-of-class detector against today's softmax rule.

    python bench/not_sure_bench.py [--methods knn-pooled,msp-0.6,...] [--verbose]

For the shipped bears model and for models trained here on faces-web, insects and farm (once, cached),
the out-of-class detectors of `whatsthat.model.detector` are fitted on each model's training pictures, calibrated
on its held-out pictures exactly as `whatsthat train` does, and measured on:

- none: ../shared/datasets/none (491 everyday photos of ImageNet classes, none of them in-class);
- other domains: every other shared dataset (faces, insects and farm photos for the bears model, ...);
- own valid: the model's held-out pictures. Their threshold is cross-validated (5 folds: each fold is
  judged by a threshold calibrated on the other four), so this is an honest rate on unseen in-class
  pictures, not the calibration target read back;
- right when sure: accuracy on the held-out pictures the final verdict is sure about;
- AUROC of the detector's score, held-out in-class pictures against none + other domains.

"Not sure" is the final verdict (whatsthat.model.verdict.decide): out of class *or* ambiguous (top probability
below the card's 0.6). Features are cached per model under $WHATSTHAT_BENCH_CACHE
(default /tmp/whatsthat-bench/not-sure); nothing from ../shared is written into the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from common import ROOT, machine, table

from whatsthat.model import detector as ood
from whatsthat.model.verdict import DEFAULT_THRESHOLD
from whatsthat.training.notsure import split_items

SHARED = Path(os.environ.get("WHATSTHAT_SHARED", ROOT.parent / "shared" / "datasets"))
CACHE = Path(os.environ.get("WHATSTHAT_BENCH_CACHE", "/tmp/whatsthat-bench/not-sure"))
DOMAINS = ["bears", "faces-web", "faces-fer", "insects", "farm"]
TRAINED = ["faces-web", "insects", "farm"]  # models trained by this bench (bears: the shipped model)
# same task as faces-web on other pictures (48 px grayscale crops): neither in- nor out-of-class, reported apart
SHIFTED = {"faces-web": "faces-fer", "faces-fer": "faces-web"}
# name -> (method, layer, k): the candidates; "msp-0.6" is today's rule (no detector at all)
CANDIDATES = {
    "msp-0.6": None,
    "msp": ("msp", "pooled", 0),
    "max_logit": ("max_logit", "pooled", 0),
    "energy": ("energy", "pooled", 0),
    "knn1-pooled": ("knn", "pooled", 1),
    "knn5-pooled": ("knn", "pooled", 5),
    "knn10-pooled": ("knn", "pooled", 10),
    "knn5-penultimate": ("knn", "penultimate", 5),
    "maha-pooled": ("mahalanobis", "pooled", 0),
    "maha-penultimate": ("mahalanobis", "penultimate", 0),
    # the pretrained top's features (whatsthat.model.detector, "pretrained"): what `whatsthat train` fits when its top
    # stage changed the body's top; for a model whose top did not train they are the pooled ones
    "knn1-pretrained": ("knn", "pretrained", 1),
    "maha-pretrained": ("mahalanobis", "pretrained", 0),
}


DEFAULT_METHODS = ["msp-0.6", "msp", "energy", "knn1-pooled", "knn5-pooled", "knn5-penultimate", "maha-pooled",
                   "maha-penultimate", "knn1-pretrained", "maha-pretrained"]
HEADERS = ["model (train+valid)", "method", "none: not sure", "other domains: not sure", "own valid: not sure",
           "right when sure", "AUROC", "detector ms", "same task, other photos: not sure"]


def bears_data() -> Path:
    """The shipped model's exact training data: the shared bears, imported and cleaned as docs/training.md says."""
    from whatsthat.cleaning.journal import apply_decisions, load_decisions
    from whatsthat.dataset.gather import import_folder

    data = CACHE / "bears-data"
    if not (data / "black").is_dir():
        import_folder(SHARED / "bears", data, progress=False)
        apply_decisions(data, load_decisions(ROOT / "docs" / "bears-cleaning.csv"))
    return data


def model_for(domain: str, arch: str) -> tuple[Path, Path]:
    """(export.pkl, training data) for `domain`: the shipped model for bears, else one trained once here."""
    if domain == "bears":
        return ROOT / "export.pkl", bears_data()
    model = CACHE / "models" / f"{domain}-{arch}" / "export.pkl"
    if not model.is_file():
        from whatsthat.training.train import train

        print(f"training a {arch} model on {domain} (once; cached in {model.parent})", file=sys.stderr, flush=True)
        train(SHARED / domain, model.parent, arch=arch, echo=lambda s: None)
    return model, SHARED / domain


def pretrained_top(clf) -> ood.PretrainedTop | None:
    """The pretrained top `whatsthat train` stored with the model's detector, or None (its top did not train)."""
    det = clf.detector
    return det.pretrained if det is not None and det.layer == "pretrained" else None


def features(clf, name: str, files: list[Path]) -> dict[str, torch.Tensor]:
    """pooled, pretrained and penultimate features, logits and labels of `files`, cached per model fingerprint."""
    fp = ood.model_fingerprint(clf.learn.model)
    path = CACHE / "features" / fp / f"{name}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["n"] == len(files) and "pretrained" in cached:
            return cached
    learn, model = clf.learn, clf.learn.model.eval()
    top = pretrained_top(clf)
    dl = learn.dls.test_dl(files, bs=32)
    out: dict[str, list] = {"pooled": [], "penultimate": [], "pretrained": [], "logits": []}
    with torch.inference_mode():
        for (xb,) in dl:
            xb = xb.as_subclass(torch.Tensor)
            pen, logits = ood.split_forward(model, xb, "penultimate")
            out["pooled"].append(model[0](xb).float().mean(dim=(2, 3)))
            out["pretrained"].append(ood.split_forward(model, xb, "pretrained", top)[0] if top else out["pooled"][-1])
            out["penultimate"].append(pen)
            out["logits"].append(logits)
    vocab = list(learn.dls.vocab)
    labels = [vocab.index(f.parent.name) if f.parent.name in vocab else -1 for f in files]
    res = {k: torch.cat(v) for k, v in out.items()} | {"labels": torch.tensor(labels), "n": len(files)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(res, path)
    return res


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of an out-of-class picture > score of an in-class one), ties half (Mann-Whitney)."""
    s = torch.cat([pos, neg]).double()
    ranks = torch.empty_like(s)
    order = s.argsort()
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.double)
    for v in s.unique():  # average ranks of ties
        m = s == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[: n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit(spec, train: dict, valid: dict, valid_idx: torch.Tensor, rate: float) -> ood.Detector:
    method, layer, k = spec
    # the top is not needed to score cached features; fit_detector only checks that it exists
    stand_in = ood.PretrainedTop(0, torch.nn.Identity()) if layer == "pretrained" else None
    return ood.fit_detector(train[layer], train["labels"], valid[layer][valid_idx], valid["logits"][valid_idx],
                            method=method, layer=layer, k=k or ood.DEFAULT_K, in_class_rate=rate, pretrained=stand_in)


def not_sure(det: ood.Detector | None, feats: dict, threshold: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final 'not sure' mask, detector scores or None) for cached features."""
    ambiguous = torch.softmax(feats["logits"], 1).max(1).values < threshold
    if det is None:
        return ambiguous, None
    scores = det.score_tensor(feats[det.layer], feats["logits"])
    return ambiguous | (scores > det.threshold), scores


def evaluate(spec, train: dict, valid: dict, outs: dict[str, dict], rate: float, folds: int = 5) -> dict:
    n = len(valid["labels"])
    everything = torch.arange(n)
    det = None if spec is None else fit(spec, train, valid, everything, rate)
    # cross-validated in-class rate: each fold judged by a threshold from the other folds
    valid_ns = torch.zeros(n, dtype=torch.bool)
    fold_of = torch.arange(n) % folds
    for f in range(folds):
        held = fold_of == f
        fdet = None if spec is None else fit(spec, train, valid, everything[~held], rate)
        mask, _ = not_sure(fdet, {k: v[held] for k, v in valid.items() if k != "n"}, DEFAULT_THRESHOLD)
        valid_ns[held] = mask
    right = (valid["logits"].argmax(1) == valid["labels"])[~valid_ns]
    row = {"valid": valid_ns.float().mean().item(), "right_when_sure": right.float().mean().item() if len(right) else float("nan"),
           "n_valid": n}
    _, vscores = not_sure(det, valid, DEFAULT_THRESHOLD)
    vscores = -torch.softmax(valid["logits"], 1).max(1).values if vscores is None else vscores
    neg_scores = []
    for name, feats in outs.items():
        mask, scores = not_sure(det, feats, DEFAULT_THRESHOLD)
        row[name] = mask.float().mean().item()
        row[f"n_{name}"] = len(mask)
        if name != "shifted":
            neg_scores.append(-torch.softmax(feats["logits"], 1).max(1).values if scores is None else scores)
    row["auroc"] = auroc(torch.cat(neg_scores), vscores)
    if det is not None:
        times = []  # the median: on a shared CPU the mean measures the neighbours
        for i in range(100):
            t = time.perf_counter()
            det.score_tensor(valid[det.layer][i % n : i % n + 1], valid["logits"][i % n : i % n + 1])
            times.append((time.perf_counter() - t) * 1000)
        row["ms"] = sorted(times)[len(times) // 2]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated, from: " + ", ".join(CANDIDATES))
    ap.add_argument("--rate", type=float, default=ood.DEFAULT_IN_CLASS_RATE,
                    help="calibration: share of held-out in-class pictures allowed above the threshold")
    ap.add_argument("--models", default="bears," + ",".join(TRAINED))
    ap.add_argument("--verbose", action="store_true", help="a column per other domain")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench needs the shared datasets at {SHARED} (set WHATSTHAT_SHARED)")
    from whatsthat.training.classifier import load_classifier
    from whatsthat.training.data import get_dataset_images

    methods = args.methods.split(",")
    rows = []
    print(f"# 'not sure' on {machine()}; in-class rate target {args.rate:.0%} at calibration, "
          f"ambiguous below {DEFAULT_THRESHOLD}", flush=True)
    for domain in args.models.split(","):
        model, data = model_for(domain, args.arch)
        clf = load_classifier(model)
        files = list(get_dataset_images(data))
        train_files, valid_files = split_items(files, clf.card)
        train, valid = features(clf, f"{domain}-train", train_files), features(clf, f"{domain}-valid", valid_files)
        outs = {"none": features(clf, "none", list(get_dataset_images(SHARED / "none")))}
        others = [d for d in DOMAINS if d != domain and d != SHIFTED.get(domain)]
        per = {d: features(clf, d, list(get_dataset_images(SHARED / d))) for d in others}
        outs["others"] = {k: torch.cat([per[d][k] for d in others]) for k in ("pooled", "penultimate", "pretrained", "logits", "labels")}
        if args.verbose:
            outs |= per
        if domain in SHIFTED:
            outs["shifted"] = features(clf, SHIFTED[domain], list(get_dataset_images(SHARED / SHIFTED[domain])))
        for m in methods:
            r = evaluate(CANDIDATES[m], train, valid, outs, args.rate)
            rows.append([f"{domain} ({len(train_files)}+{len(valid_files)})", m, f"{r['none']:.1%}",
                         f"{r['others']:.1%}", f"{r['valid']:.1%}", f"{r['right_when_sure']:.1%}", f"{r['auroc']:.3f}",
                         f"{r['ms']:.2f}" if "ms" in r else "-"]
                        + ([f"{r['shifted']:.1%}" if "shifted" in r else "-"])
                        + ([", ".join(f"{d} {r[d]:.0%}" for d in others)] if args.verbose else []))
        print(f"{domain}: none {outs['none']['n']}, other domains {', '.join(others)} "
              f"({len(outs['others']['labels'])} pictures)", file=sys.stderr, flush=True)
        if args.verbose:  # partial results survive an interrupted run
            print(table(HEADERS + ["per other domain"], rows[-len(methods):]), file=sys.stderr, flush=True)
    print(table(HEADERS + (["per other domain"] if args.verbose else []), rows))


if __name__ == "__main__":
    main()
