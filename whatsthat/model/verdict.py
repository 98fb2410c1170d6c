"""The answer a visitor sees: sure, ambiguous between classes, or out of class ("none of these").

Pure Python on purpose (no torch, no numpy): the page's thin kernels import it, and the model process
sends them only the ranked probabilities and one out-of-class score.

Three kinds of answer, decided in this order:

1. ``out_of_class``: the detector's score (``whatsthat.model.detector``; higher = less like the training pictures)
   is above the threshold calibrated at training time, ``card["not_sure"]["threshold"]``. The picture
   looks like none of the classes: "Not sure: this doesn't look like black, grizzly or teddy".
2. ``ambiguous``: the top softmax probability is below ``card["threshold"]`` (0.6 by default): the
   picture looks like the classes, but like two of them: "Not sure: between grizzly (55%) and black (45%)".
3. ``sure``: "grizzly (97%)".

A model trained before the detector existed has no ``card["not_sure"]`` (or the caller has no score):
then only rule 2 applies, which is the rule of old, and the log says so once per model.

Card fields read here: ``threshold`` (float, the softmax rule) and ``not_sure`` (dict, written by
``whatsthat.model.detector.card_entry``: ``method``, ``threshold``, ``layer``, ``calibration``...; only
``threshold`` is read here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.6  # below this top probability the answer is "ambiguous"
NOT_SURE = "not sure"  # what the page and the CLI answer when the verdict is not "sure"
KINDS = ("sure", "ambiguous", "out_of_class")

log = logging.getLogger(__name__)
_noted_fallback: set[str] = set()  # models whose fallback was already logged (once per process)


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of KINDS
    label: str | None  # the top label when sure, else None
    ranked: tuple[tuple[str, float], ...]  # (label, probability), highest first
    message: str  # one sentence for a visitor
    ood_score: float | None = None  # the detector's score, when there was one
    reason: str = ""  # why not sure, e.g. "between grizzly (55%) and black (45%)"; "" when sure

    @property
    def not_sure(self) -> bool:
        return self.kind != "sure"


def _pretty(label: str) -> str:
    return str(label).replace("_", " ")


def _pct(p: float) -> str:
    # never round a non-certain answer up to "100%" or a non-zero one down to "0%"
    pct = round(100 * p)
    if pct == 100 and p < 1:
        pct = 99
    if pct == 0 and p > 0:
        return "<1%"
    return f"{pct}%"


def join_or(labels: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    names = [_pretty(x) for x in labels]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]


def ood_threshold(card: dict) -> float | None:
    """The detector's calibrated threshold from the card, or None for a model without one."""
    entry = card.get("not_sure")
    if not isinstance(entry, dict) or not isinstance(entry.get("threshold"), int | float):
        return None
    return float(entry["threshold"])


def decide(ranked: Sequence[tuple[str, float]], card: dict | None = None, ood_score: float | None = None) -> Verdict:
    """Sure, ambiguous or out of class, with the sentence to show (see the module docstring)."""
    card = card or {}
    ranked = tuple((str(label), float(p)) for label, p in ranked)
    classes = [str(c) for c in card.get("classes") or [label for label, _ in sorted(ranked)]]
    if not ranked:
        return _not_sure("out_of_class", ranked, "nothing to compare this picture with", ood_score)
    limit = ood_threshold(card)
    if limit is not None and ood_score is not None:
        if ood_score > limit:
            return _not_sure("out_of_class", ranked, f"this doesn't look like {join_or(classes)}", ood_score)
    else:
        key = str(card.get("name") or classes)
        if key not in _noted_fallback:
            _noted_fallback.add(key)
            why = "the model has no out-of-class statistics" if limit is None else "no out-of-class score was given"
            log.info("'not sure' for %s: %s, so only the softmax rule (top probability below %s) applies; "
                     "`whatsthat not-sure fit` adds them", key, why, card.get("threshold", DEFAULT_THRESHOLD))
    top, p = ranked[0]
    if p < float(card.get("threshold", DEFAULT_THRESHOLD)):
        if len(ranked) > 1:
            second, q = ranked[1]
            why = f"between {_pretty(top)} ({_pct(p)}) and {_pretty(second)} ({_pct(q)})"
        else:
            why = f"maybe {_pretty(top)} ({_pct(p)})"
        return _not_sure("ambiguous", ranked, why, ood_score)
    return Verdict("sure", top, ranked, f"{_pretty(top)} ({_pct(p)})", ood_score)


def _not_sure(kind: str, ranked: tuple[tuple[str, float], ...], reason: str, ood_score: float | None) -> Verdict:
    return Verdict(kind, None, ranked, f"Not sure: {reason}", ood_score, reason)


def rank(classes: Sequence[str], probabilities: Sequence[float]) -> list[tuple[str, float]]:
    """(label, probability) pairs, highest first: the one order every answer is shown in."""
    return sorted(zip(classes, (float(p) for p in probabilities), strict=True), key=lambda p: -p[1])


def softmax_answer(ranked: Sequence[tuple[str, float]], threshold: float) -> str:
    """Softmax rule only: the top label, or NOT_SURE when its probability is below `threshold`.

    For callers without out-of-class scores; `decide` tells the two kinds of "not sure" apart."""
    if not ranked:
        return NOT_SURE
    label, prob = ranked[0]
    return label if prob >= threshold else NOT_SURE
