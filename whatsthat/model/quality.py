"""How good is a model, said honestly: accuracy with its 95% interval, the majority-class baseline, a verdict.

Pure Python on purpose (no torch, fastai or scipy at import): the web page's kernel must show these
facts from the model card without importing torch, and the CLI prints the same sentences.

The facts come from the card's `metrics` (written by whatsthat.training.train): `accuracy`, `n_valid`,
`per_class[label]["support"]`, and, in cards from this version on, `baseline` (the majority label of
the *training* pictures and how often it is right on the validation pictures). Older cards lack
`baseline`; it is then derived from the validation supports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Below this many validation pictures an accuracy says little: the 95% interval is wider than ±15 points.
MIN_VALID = 30
# "Good enough to deploy": the model removes at least this share of the errors of always answering the
# majority class, and the whole 95% interval lies above that baseline. 0.5 means a model must make at most
# half the mistakes of guessing; below that it is "barely better than guessing" however many pictures.
MIN_ERROR_REDUCTION = 0.5


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n` (Wilson 1927; Agresti & Coull 1998).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not zero-width at 0% or 100%:
    100 correct out of 100 gives (0.963, 1.0), not (1.0, 1.0).
    """
    if n <= 0:
        raise ValueError("a proportion needs at least one observation")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamp the rounding noise at the ends (p = 0 or 1 must give exactly 0 or 1 there)
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


def majority_baseline(train_counts: dict[str, int], valid_counts: dict[str, int]) -> dict:
    """Always answering the most common training label: which label, and its accuracy on validation."""
    if not train_counts or not valid_counts:
        raise ValueError("need the label counts of both the training and the validation pictures")
    label = max(sorted(train_counts), key=lambda k: train_counts[k])  # ties: alphabetical, deterministic
    n = sum(valid_counts.values())
    return {"label": label, "accuracy": round(valid_counts.get(label, 0) / n, 4) if n else 0.0}


@dataclass(frozen=True)
class Quality:
    accuracy: float
    n: int
    low: float  # 95% Wilson interval of the accuracy
    high: float
    baseline_label: str
    baseline_accuracy: float
    best_stage: str | None = None

    @property
    def error_reduction(self) -> float:
        """Share of the baseline's mistakes this model avoids (1.0: none left; 0 or less: no better)."""
        base_err = 1 - self.baseline_accuracy
        return (base_err - (1 - self.accuracy)) / base_err if base_err > 0 else 0.0

    @property
    def level(self) -> str:
        """'too few', 'no better', 'barely better' or 'good'."""
        if self.n < MIN_VALID:
            return "too few"
        if self.accuracy <= self.baseline_accuracy or self.low <= self.baseline_accuracy:
            return "no better"  # within the noise of always giving the majority answer
        if self.error_reduction < MIN_ERROR_REDUCTION:
            return "barely better"
        return "good"

    @property
    def deployable(self) -> bool:
        return self.level == "good"

    def accuracy_line(self) -> str:
        """'accuracy 85.0% (95% interval 78.6-89.8%) on 160 validation pictures'."""
        return (f"accuracy {self.accuracy:.1%} (95% interval {self.low:.1%}-{self.high:.1%}) "
                f"on {self.n} validation pictures")

    def plain_line(self) -> str:
        """The accuracy for a visitor: 'Right on 92 of 92 test photos (likely 96-100% on new photos).'"""
        right = round(self.accuracy * self.n)
        low, high = round(self.low * 100), round(self.high * 100)
        return f"Right on {right} of {self.n} test photos (likely {low}\u2013{high}% on new photos)."

    def warning(self) -> str | None:
        """What a visitor must not miss, when it holds: too few test photos, or (barely) no better than guessing."""
        if self.level == "good":
            return None
        line = self.baseline_line()
        return line[0].upper() + line[1:] + "."

    def baseline_line(self) -> str:
        """How the model compares with always answering the majority label."""
        guess = f"always answering '{self.baseline_label}' ({self.baseline_accuracy:.1%})"
        if self.level == "too few":
            return f"{guess} is the baseline; with {self.n} validation pictures the comparison is not reliable"
        if self.accuracy <= self.baseline_accuracy:
            return f"this model is no better than {guess}"
        if self.level == "no better":
            return (f"this model is barely better than {guess}: the difference is within the noise of "
                    f"{self.n} pictures")
        if self.level == "barely better":
            return f"this model is barely better than {guess}: it avoids only {self.error_reduction:.0%} of the mistakes guessing makes"
        return f"{guess} would make {1 - self.baseline_accuracy:.1%} errors; this model avoids {self.error_reduction:.0%} of them"

    def verdict(self) -> str:
        """One line: is it good enough to deploy, and what to try next."""
        if self.level == "too few":
            return (f"verdict: cannot tell yet, only {self.n} validation pictures; gather more pictures "
                    f"(at least {MIN_VALID} held out for validation) and retrain")
        if self.level == "good":
            nxt = "to improve further: clean the top losses (whatsthat clean) and retrain"
            if self.high - self.low > 0.1:
                nxt += ", and add pictures to narrow the interval"
            return f"verdict: good enough to deploy ({self.accuracy:.1%} vs {self.baseline_accuracy:.1%} by guessing); {nxt}"
        return (f"verdict: not good enough to deploy ({self.accuracy:.1%} vs {self.baseline_accuracy:.1%} by always "
                f"answering '{self.baseline_label}'); try more and cleaner pictures per class (whatsthat gather, "
                f"whatsthat clean), then --mirrors (the top stage on every picture and its mirror, "
                f"slower), a bigger backbone (--arch efficientnet_lite2) or --epochs 2 for whole-body epochs on "
                f"augmented pictures")

    def lines(self) -> list[str]:
        out = [self.accuracy_line(), self.baseline_line()]
        if self.best_stage:
            out.append(f"exported the best stage by validation loss: {self.best_stage}")
        out.append(self.verdict())
        return out


def quality_from_report(report: dict, baseline: dict | None = None, best_stage: str | None = None) -> Quality:
    """Quality of a classification report (whatsthat.training.train.classification_report, or a card's metrics).

    `baseline` is {"label", "accuracy"}; without it the majority class of the report's own supports is used.
    """
    n = int(report.get("n_valid") or sum(m["support"] for m in report["per_class"].values()))
    if n <= 0:
        raise ValueError("the report has no validation pictures")
    correct = round(report["accuracy"] * n)
    low, high = wilson_interval(correct, n)
    if baseline is None:
        support = {k: m["support"] for k, m in report["per_class"].items()}
        baseline = majority_baseline(support, support)
    return Quality(report["accuracy"], n, low, high, baseline["label"], baseline["accuracy"], best_stage)


def card_quality(card: dict) -> Quality:
    """Quality facts of a model card (the page and the CLI show these)."""
    metrics = card["metrics"]
    return quality_from_report(metrics, metrics.get("baseline"), card.get("training", {}).get("best_stage"))
