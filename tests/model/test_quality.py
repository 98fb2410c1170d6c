"""Code checks of the honest-numbers module: the Wilson interval, the majority baseline, the verdicts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from whatsthat.model.quality import (
    MIN_VALID,
    card_quality,
    majority_baseline,
    quality_from_report,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # textbook values (Newcombe 1998, table I; Brown, Cai & DasGupta 2001), 95%
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (5, 10, 0.2366, 0.7634),
        (100, 100, 0.9630, 1.0),
    ],
)
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 1), (3, 7), (50, 92), (91, 92), (137, 160), (160, 160)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    ci = stats.binomtest(40, 50).proportion_ci(confidence_level=0.9, method="wilson")
    assert wilson_interval(40, 50, 0.9) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_interval_rejects_nonsense():
    for args in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(*args)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=95)


def test_majority_baseline_uses_training_counts_scored_on_validation():
    b = majority_baseline({"happy": 300, "sad": 200}, {"happy": 40, "sad": 60})
    assert b == {"label": "happy", "accuracy": 0.4}  # the validation set need not share the imbalance
    assert majority_baseline({"b": 5, "a": 5}, {"a": 1, "b": 3})["label"] == "a"  # ties: deterministic


def _report(accuracy: float, supports: dict[str, int]) -> dict:
    return {"accuracy": accuracy, "n_valid": sum(supports.values()),
            "per_class": {k: {"support": v} for k, v in supports.items()}}


FACES = {"happy": 106, "sad": 54}  # 66.2% happy


@pytest.mark.parametrize(
    ("accuracy", "level", "says"),
    [
        (0.55, "no better", "no better than always answering 'happy' (66.2%)"),
        (0.70, "no better", "barely better than always answering 'happy' (66.2%)"),  # inside the noise
        (0.78, "barely better", "barely better than always answering 'happy'"),
        (0.90, "good", "avoids 70%"),
    ],
)
def test_levels_and_plain_words(accuracy, level, says):
    q = quality_from_report(_report(accuracy, FACES))
    assert q.level == level and says in q.baseline_line()
    assert q.verdict().startswith("verdict: good enough to deploy" if level == "good" else "verdict: not good enough")
    assert q.deployable == (level == "good")
    assert f"on {sum(FACES.values())} validation pictures" in q.accuracy_line()
    assert "95% interval" in q.accuracy_line()
    # a visitor's words (the page's model card): the count, the interval as "likely", a warning unless good
    right = round(accuracy * sum(FACES.values()))
    assert q.plain_line().startswith(f"Right on {right} of 160 test photos (likely {round(q.low * 100)}\u2013")
    assert (q.warning() is None) == (level == "good")
    if q.warning():
        assert says in q.warning() and q.warning()[0].isupper()


def test_too_few_pictures_cannot_be_judged():
    q = quality_from_report(_report(1.0, {"a": 10, "b": 9}))  # "100% accuracy" on 19 pictures
    assert q.level == "too few" and not q.deployable
    assert "cannot tell yet" in q.verdict() and str(MIN_VALID) in q.verdict()
    assert q.low < 0.85  # the interval says how little 19 pictures prove


def test_card_quality_reads_new_and_old_cards():
    new = {"metrics": {**_report(0.9, FACES), "baseline": {"label": "sad", "accuracy": 0.5}},
           "training": {"best_stage": "head (cached features) epoch 7"}}
    q = card_quality(new)
    assert (q.baseline_label, q.baseline_accuracy, q.best_stage) == ("sad", 0.5, "head (cached features) epoch 7")
    assert any("head (cached features) epoch 7" in line for line in q.lines())
    assert q.lines()[-1].startswith("verdict:")
    old = {"metrics": _report(0.9, FACES)}  # before baselines were recorded: the validation majority
    assert card_quality(old).baseline_label == "happy" and card_quality(old).best_stage is None


def test_quality_module_is_light():
    # the page's kernel shows these facts without torch: importing the module must not pull it in
    code = "import sys, whatsthat.model.quality; bad = {'torch', 'fastai', 'scipy'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
