"""Interpret: where does an exported model go wrong on a dataset?

Works from `export.pkl` + the dataset folder alone (no live learner needed), so it runs from the
command line after training, or on a colleague's model: the validation images are re-derived with
the same file-name-hash split the model card records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from whatsthat.errors import WhatsthatError
from whatsthat.images import ImageError
from whatsthat.model.quality import Quality, quality_from_report


@dataclass
class Interpretation:
    classes: list[str]
    report: dict  # accuracy, error_rate, per_class, confusion (rows actual, columns predicted)
    top_losses: list[dict]  # file, actual, predicted, probability, loss; worst first
    skipped: list[tuple[str, str]]  # (file, reason) for unreadable images
    files: dict[str, Path]  # name -> written file
    quality: Quality | None = None  # accuracy with interval, vs always answering the majority label, verdict

    def table(self) -> str:
        """Per-class precision / recall / F1 / support as aligned text."""
        w = max(8, *(len(c) for c in self.classes))
        lines = [f"{'class':<{w}}  precision  recall     f1  support"]
        for c, m in self.report["per_class"].items():
            lines.append(f"{c:<{w}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
        lines.append(f"{'accuracy':<{w}}  {self.report['accuracy']:9.3f}  (error rate {self.report['error_rate']:.3f}, "
                     f"{self.report['n_valid']} images)")
        return "\n".join(lines)


def validation_files(data: str | Path, card: dict, classes: list[str], split: str = "valid") -> list[Path]:
    """The images of `data` on the `split` side ("valid", "train" or "all") of the card's split."""
    from whatsthat.training.data import HashSplitter, get_dataset_images

    training = card.get("training", {})
    splitter = HashSplitter(training.get("valid_pct", 0.2), training.get("seed", 42))
    files = [f for f in get_dataset_images(data) if f.parent.name in classes]
    if split == "all":
        return files
    if split not in ("valid", "train"):
        raise WhatsthatError(f"split must be valid, train or all, not {split!r}")
    return [f for f in files if splitter.is_valid(f) == (split == "valid")]


def interpret(model: str | Path, data: str | Path, out: str | Path, *, top: int = 9, split: str = "valid") -> Interpretation:
    """Confusion matrix + top losses (PNG) and per-class metrics (JSON) of `model` on `data` into `out`."""
    from whatsthat.training.classifier import load_classifier
    from whatsthat.training.data import check_dataset
    from whatsthat.training.train import classification_report, ensure_folder

    check_dataset(data)
    out = ensure_folder(Path(out))  # before scoring every picture, not after
    clf = load_classifier(model)
    files = validation_files(data, clf.card, clf.classes, split)
    if not files:
        raise WhatsthatError(f"no {split} images of the model's classes {clf.classes} in {data}")
    rows, skipped = [], []
    for f in files:
        try:
            ranked = clf.predict(f)
        except ImageError as e:
            skipped.append((str(f), str(e)))
            continue
        probs = dict(ranked)
        actual = f.parent.name
        rows.append({
            "file": str(f),
            "actual": actual,
            "predicted": ranked[0][0],
            "probability": round(ranked[0][1], 4),
            "loss": round(-math.log(max(probs[actual], 1e-12)), 4),
        })  # fmt: skip
    index = {c: i for i, c in enumerate(clf.classes)}
    report = classification_report([index[r["predicted"]] for r in rows], [index[r["actual"]] for r in rows], clf.classes)
    worst = sorted(rows, key=lambda r: -r["loss"])[:top]
    if not rows:
        raise WhatsthatError(f"none of the {len(files)} {split} images could be read (first: {skipped[0][1]})")
    quality = quality_from_report(report, baseline_on(rows, clf.card), clf.card.get("training", {}).get("best_stage"))

    files_written = {
        "confusion_matrix": plot_confusion(report["confusion"], clf.classes, out / "confusion_matrix.png"),
        "top_losses": plot_top_losses(worst, out / "top_losses.png"),
    }
    report_path = out / "report.json"
    honest = {"baseline": {"label": quality.baseline_label, "accuracy": quality.baseline_accuracy},
              "accuracy_ci95": [round(quality.low, 4), round(quality.high, 4)], "verdict": quality.verdict()}
    report_path.write_text(json.dumps({"model": str(model), "data": str(data), "split": split, **report, **honest,
                                       "top_losses": worst, "skipped": skipped}, indent=2) + "\n", encoding="utf-8")
    files_written["report"] = report_path
    return Interpretation(clf.classes, report, worst, skipped, files_written, quality)


def baseline_on(rows: list[dict], card: dict) -> dict:
    """Always answering the model's majority training label (from its card), scored on these rows.

    Cards older than the baseline field: the most common actual label among the rows themselves.
    """
    label = card.get("metrics", {}).get("baseline", {}).get("label")
    actual = [r["actual"] for r in rows]
    if label is None:
        label = max(sorted(set(actual)), key=actual.count)
    return {"label": label, "accuracy": round(actual.count(label) / len(actual), 4)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CLI and tests have no display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    peak = max(max(r) for r in confusion) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, confusion[i][j], ha="center", va="center", color="white" if confusion[i][j] > peak / 2 else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_top_losses(rows: list[dict], path: Path) -> Path:
    """A grid of the worst images titled predicted/actual/loss/probability, like fastai's plot_top_losses."""
    from PIL import Image

    plt = _pyplot()
    n = max(1, len(rows))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows, strict=False):
        with Image.open(r["file"]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{r['predicted']}/{r['actual']}\nloss {r['loss']:.2f} p {r['probability']:.2f}", fontsize=9)
    fig.suptitle("Top losses: predicted/actual", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.4 * nrows)))  # leave the title its own strip
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
