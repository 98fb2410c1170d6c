"""'Not sure' for pictures of none of the classes: verdict wording, the detector, its files, old models."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED_BEARS, draw_image
from model_fixture import shipped_model, tiny_model  # noqa: F401  (pytest fixtures)
from PIL import Image
from torch import nn

from whatsthat.errors import WhatsthatError
from whatsthat.model import detector as ood
from whatsthat.model import verdict
from whatsthat.model.verdict import decide

SHARED_NONE = ROOT.parent / "shared" / "datasets" / "none"
BEARS_CARD = {"name": "black / grizzly / teddy", "classes": ["black", "grizzly", "teddy"], "threshold": 0.6,
              "not_sure": {"method": "knn", "threshold": 1.0}}


# --- verdict: kinds and wording (pure Python) -----------------------------------------------------


def test_decide_out_of_class_names_every_class():
    v = decide([("teddy", 0.99), ("grizzly", 0.01), ("black", 0.0)], BEARS_CARD, ood_score=1.2)
    assert (v.kind, v.label, v.not_sure) == ("out_of_class", None, True)
    assert v.message == "Not sure: this doesn't look like black, grizzly or teddy"
    assert v.ood_score == 1.2


def test_decide_ambiguous_names_the_two_classes():
    v = decide([("grizzly", 0.55), ("black", 0.45), ("teddy", 0.0)], BEARS_CARD, ood_score=0.5)
    assert (v.kind, v.label) == ("ambiguous", None)
    assert v.message == "Not sure: between grizzly (55%) and black (45%)"


def test_decide_sure_and_the_threshold_edges():
    v = decide([("grizzly", 0.9996), ("black", 0.0004)], BEARS_CARD, ood_score=1.0)  # at the threshold: in class
    assert (v.kind, v.label, v.message) == ("sure", "grizzly", "grizzly (99%)")  # never rounded up to a certain 100%
    assert decide([("a", 0.6), ("b", 0.4)], BEARS_CARD, 0.0).kind == "sure"
    assert decide([("a", 0.59), ("b", 0.41)], BEARS_CARD, 0.0).kind == "ambiguous"
    assert decide([], BEARS_CARD, 0.0).kind == "out_of_class"


def test_decide_wording_of_labels_and_two_classes():
    card = {"classes": ["ants", "honey_bees"], "not_sure": {"threshold": 0.1}}
    assert decide([("ants", 1.0), ("honey_bees", 0.0)], card, 0.5).message == (
        "Not sure: this doesn't look like ants or honey bees")
    assert decide([("honey_bees", 0.5), ("ants", 0.5)], card, 0.0).message == (
        "Not sure: between honey bees (50%) and ants (50%)")
    assert verdict.join_or(["a", "b", "c"]) == "a, b or c"


def test_decide_without_statistics_falls_back_to_softmax_and_logs_once(caplog):
    card = {"name": "fallback-test-model", "classes": ["a", "b"], "threshold": 0.6}
    with caplog.at_level(logging.INFO, logger="whatsthat.model.verdict"):
        first = decide([("a", 0.99), ("b", 0.01)], card, ood_score=5.0)  # a score without a threshold: ignored
        second = decide([("a", 0.55), ("b", 0.45)], card, ood_score=None)
    assert (first.kind, second.kind) == ("sure", "ambiguous")
    notes = [r for r in caplog.records if "fallback-test-model" in r.getMessage()]
    assert len(notes) == 1 and "softmax" in notes[0].getMessage()


def test_decide_with_statistics_but_no_score_is_the_softmax_rule():
    assert decide([("teddy", 0.99), ("black", 0.01)], BEARS_CARD, None).kind == "sure"


def test_verdict_module_stays_light():
    import subprocess
    import sys

    code = "import sys, whatsthat.model.verdict, whatsthat.training.classifier; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the detector ---------------------------------------------------------------------------------


def toy_model(n_classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, n_classes))
    return nn.Sequential(body, head).eval()


def test_split_forward_matches_the_model_and_cuts_where_documented():
    model = toy_model()
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        pen, logits = ood.split_forward(model, x, "penultimate")
        pooled, logits2 = ood.split_forward(model, x, "pooled")
        assert torch.allclose(logits, model(x)) and torch.allclose(logits, logits2)
        assert pen.shape == (4, 6) and pooled.shape == (4, 8)
        assert torch.allclose(pooled, model[0](x).mean(dim=(2, 3)))
        assert torch.allclose(pen, model[1][:4](model[0](x)))
    with pytest.raises(WhatsthatError, match="layer"):
        ood.split_forward(model, x, "middle")
    with pytest.raises(WhatsthatError, match="Sequential"):
        ood.split_forward(nn.Linear(3, 3), x)


def deep_toy_model(seed: int = 0) -> nn.Sequential:
    """A body of three layers (its top: the last two), a head: the shape the pretrained top cuts."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    return nn.Sequential(body, head).eval()


def test_pretrained_features_come_from_the_top_as_it_was_and_travel_with_the_statistics(tmp_path):
    """The top trains after the detector's reference is taken: the features stay the pretrained top's,
    the file carries its weights, and loading rebuilds it on the trained model's lower layers."""
    model = deep_toy_model()
    top = ood.PretrainedTop(1, copy.deepcopy(model[0][1:]))
    with torch.no_grad():  # "training" the top: its weights move, the lower layer's do not
        for prm in model[0][1:].parameters():
            prm.add_(torch.randn_like(prm))
    x = torch.randn(30, 3, 8, 8)
    with torch.inference_mode():
        feats, logits = ood.split_forward(model, x, "pretrained", top)
        assert torch.allclose(logits, model(x))
        assert torch.allclose(feats, top.module(model[0][:1](x)).mean(dim=(2, 3)))
        assert not torch.allclose(feats, ood.split_forward(model, x, "pooled")[0])
    det = ood.fit_detector(feats, torch.arange(30) % 3, feats, logits, layer="pretrained", pretrained=top,
                           fingerprint=ood.model_fingerprint(model))  # fmt: skip
    path = det.save(ood.stats_path_for(tmp_path / "export.pkl"))

    back = ood.load_detector(tmp_path / "export.pkl", model)
    assert (back.layer, back.cut) == ("pretrained", 1) and not any(k.startswith("top.") for k in back.tensors)
    with torch.inference_mode():
        again, _ = ood.split_forward(model, x, "pretrained", back.pretrained)
    assert torch.allclose(again, feats, atol=1e-6)
    assert back.score(again, logits) == pytest.approx(det.score(feats, logits), rel=1e-5)

    with pytest.raises(WhatsthatError, match="with its model"):
        ood.load_detector(tmp_path / "export.pkl")
    with pytest.raises(WhatsthatError, match="pretrained top"):
        ood.split_forward(model, x, "pretrained")
    with pytest.raises(WhatsthatError, match="need the body's top as it was before training: pass it"):
        ood.fit_detector(feats, torch.arange(30) % 3, feats, layer="pretrained")
    other = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)), model[1])  # another top
    det.model_fingerprint = ""
    det.save(path)
    with pytest.raises(WhatsthatError, match="does not fit this model"):
        ood.load_detector(tmp_path / "export.pkl", other)


def clusters(n: int, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight clusters on the positive axes: stand-ins for in-class features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.zeros(3, dim)
    centres[0, 0] = centres[1, 1] = centres[2, 2] = 1.0
    return centres[labels] + 0.05 * torch.randn(n, dim, generator=g), labels


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_fit_calibrates_and_separates(method):
    xt, yt = clusters(90)
    xv, _ = clusters(200, seed=1)
    det = ood.fit_detector(xt, yt, xv, method=method, layer="pooled", in_class_rate=0.05)
    scores = det.score_tensor(xv)
    assert det.calibration["valid_flagged"] == pytest.approx(float((scores > det.threshold).float().mean()))
    assert 0.02 <= det.calibration["valid_flagged"] <= 0.06  # the calibration target, not 0 and not half
    far = torch.zeros(20, 16)
    far[:, 5:] = 1.0  # a direction no training picture has
    assert all(s > det.threshold for s in det.score(far))


@pytest.mark.parametrize("n", [12, 200])  # fewer and more pictures than feature dimensions
def test_mahalanobis_low_rank_form_is_the_exact_inverse(n):
    x, y = clusters(n, dim=40)
    det = ood.fit_detector(x, y, x, method="mahalanobis", layer="pooled", shrinkage=0.2)
    z = torch.nn.functional.normalize(x.double(), dim=1)
    means = torch.stack([z[y == c].mean(0) for c in range(3)])
    centred = z - means[y]
    cov = centred.T @ centred / (n - 3)
    cov = 0.8 * cov + 0.2 * torch.eye(40) * cov.diagonal().mean()
    q = torch.nn.functional.normalize(torch.randn(7, 40, dtype=torch.float64), dim=1)
    d = q[:, None] - means[None]
    expected = torch.einsum("ncd,de,nce->nc", d, torch.linalg.inv(cov), d).min(1).values
    assert det.score_tensor(q.float()).double() == pytest.approx(expected, rel=1e-4)
    assert det.tensors["basis"].shape[0] <= min(n - 3, 40)


def test_logit_methods_need_logits():
    xt, yt = clusters(30)
    logits = torch.tensor([[5.0, 0.0], [1.0, 0.9]])
    det = ood.fit_detector(xt, yt, xt[:2], logits, method="msp", layer="pooled")
    s = det.score(None, logits)
    assert s[1] > s[0]  # the flatter softmax is the more out-of-class
    with pytest.raises(WhatsthatError, match="logits"):
        det.score(xt[:2])


@pytest.mark.parametrize("method", ["knn", "mahalanobis", "energy"])
def test_statistics_round_trip(tmp_path, method):
    xt, yt = clusters(60)
    logits = torch.randn(60, 3)
    det = ood.fit_detector(xt, yt, xt, logits, method=method, layer="penultimate", k=3, fingerprint="abc")
    path = det.save(tmp_path / "export.ood.safetensors")
    back = ood.Detector.load(path)
    assert (back.method, back.layer, back.k, back.model_fingerprint) == (method, "penultimate", 3, "abc")
    assert back.threshold == det.threshold and back.calibration == det.calibration
    assert back.score(xt[:5], logits[:5]) == pytest.approx(det.score(xt[:5], logits[:5]))
    assert not list(tmp_path.glob(".ood-*"))  # the atomic write leaves no temp file


def test_unreadable_statistics_are_a_clear_error(tmp_path):
    bad = tmp_path / "export.ood.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WhatsthatError, match="unreadable"):
        ood.Detector.load(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bad))  # a safetensors file, but not ours
    with pytest.raises(WhatsthatError, match="not a whatsthat"):
        ood.Detector.load(bad)


# --- with a real model ----------------------------------------------------------------------------


def noise_and_flat(n: int = 6) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(n)]
    flat = [Image.new("RGB", (224, 224), c) for c in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0),
                                                      (0, 255, 0), (0, 0, 255)][:n]]
    return noise + flat


@pytest.mark.slow
def test_train_writes_statistics_and_card_entry(tiny_training):
    model = Path(tiny_training.model_path)
    stats = ood.stats_path_for(model)
    assert stats.is_file() and stats.name == "export.ood.safetensors"
    card = json.loads(model.with_name("export.card.json").read_text())
    entry = card["not_sure"]
    assert entry["file"] == stats.name and entry["method"] == ood.DEFAULT_METHOD
    assert entry["calibration"]["n_valid"] == card["dataset"]["n_valid"]
    from whatsthat.training.classifier import load_classifier

    clf = load_classifier(model)
    assert clf.detector is not None and clf.detector.threshold == pytest.approx(entry["threshold"])
    assert clf.detector.model_fingerprint == ood.model_fingerprint(clf.learn.model)


@pytest.mark.slow
def test_tiny_model_flags_noise(tiny_model):  # noqa: F811
    """The tiny model (random init, 26 pictures) has crude features: noise is still far from its classes."""
    from whatsthat.training.classifier import load_classifier

    clf = load_classifier(tiny_model)
    noise = clf.judge_many(noise_and_flat()[:6])
    inside = clf.judge_many([draw_image(c, 64, seed=100 + i) for c in ("red", "blue") for i in range(6)])
    assert [v.kind for v in noise] == ["out_of_class"] * 6
    assert min(v.ood_score for v in noise) > max(v.ood_score for v in inside)


@pytest.mark.slow
def test_shipped_model_flags_noise_and_flat_colours(shipped_model):  # noqa: F811
    """With the statistics shipped beside export.pkl (`whatsthat not-sure fit`, see docs/not-sure.md)."""
    from whatsthat.training.classifier import load_classifier

    if not ood.stats_path_for(shipped_model).is_file():
        pytest.skip(f"{ood.stats_path_for(shipped_model).name} is absent: run `whatsthat not-sure fit` (docs/not-sure.md)")
    clf = load_classifier(shipped_model)
    assert clf.detector is not None, "the shipped statistics do not belong to the shipped export.pkl"
    assert [v.kind for v in clf.judge_many(noise_and_flat())] == ["out_of_class"] * 12


@pytest.mark.slow
def test_model_without_statistics_loads_and_falls_back(tiny_model, tmp_path, caplog):  # noqa: F811
    from whatsthat.training.classifier import load_classifier

    old = tmp_path / "export.pkl"
    shutil.copy(tiny_model, old)
    card = json.loads(tiny_model.with_name("export.card.json").read_text())
    card.pop("not_sure")
    old.with_name("export.card.json").write_text(json.dumps(card))
    with caplog.at_level(logging.INFO):
        clf = load_classifier(old)
        v = clf.judge(draw_image("red", 64, seed=3))
    assert clf.detector is None and v.ood_score is None and v.kind in ("sure", "ambiguous")
    assert any("no out-of-class statistics" in r.getMessage() for r in caplog.records)
    probs = clf.probabilities([draw_image("red", 64, seed=3)])[0]
    assert (v.kind == "sure") == (float(probs.max()) >= clf.threshold)  # exactly the old rule


@pytest.mark.slow
def test_statistics_of_another_model_are_ignored(tiny_model, tmp_path, caplog):  # noqa: F811
    from whatsthat.training.classifier import load_classifier

    model = tmp_path / "export.pkl"
    shutil.copy(tiny_model, model)
    det = ood.Detector.load(ood.stats_path_for(tiny_model))
    det.model_fingerprint = "0" * 16
    det.save(ood.stats_path_for(model))
    with caplog.at_level(logging.WARNING):
        assert load_classifier(model).detector is None
    assert any("another model" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_cli_predict_json_and_not_sure_fit(tiny_training, tmp_path, capsys):
    from whatsthat.cli import main

    model = tmp_path / "export.pkl"
    shutil.copy(tiny_training.model_path, model)
    card = dict(tiny_training.card)
    card.pop("not_sure")
    model.with_name("export.card.json").write_text(json.dumps(card))
    noise = tmp_path / "noise.png"
    noise_and_flat(1)[0].save(noise)
    red = tmp_path / "red.jpg"
    draw_image("red", 64, seed=2).save(red)

    assert main(["predict", str(noise), "--json", "--model", str(model)]) == 0
    out = capsys.readouterr()
    before = json.loads(out.out)
    assert before["ood_score"] is None and before["verdict"] in ("sure", "ambiguous")
    assert "no out-of-class statistics" in out.err

    data = Path(tiny_training.card["dataset"]["path"])
    assert main(["not-sure", "fit", str(model), str(data)]) == 0
    assert ood.stats_path_for(model).is_file()
    assert "not_sure" in json.loads(model.with_name("export.card.json").read_text())
    capsys.readouterr()

    assert main(["predict", str(noise), str(red), "--json", "--model", str(model)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got[0]) == {"image", "label", "verdict", "message", "ood_score", "ood_threshold", "probabilities"}
    assert got[0]["verdict"] == "out_of_class" and got[0]["label"] is None
    assert got[0]["ood_score"] > got[0]["ood_threshold"]
    assert got[0]["message"].startswith("Not sure: this doesn't look like")
    assert main(["predict", str(noise), "--model", str(model)]) == 0
    assert "not sure (out of class)" in capsys.readouterr().out


@pytest.mark.slow
def test_not_sure_fit_rejects_foreign_labels(tiny_model, tmp_path, make_dataset):  # noqa: F811
    from whatsthat.cli import main

    data = make_dataset(4, classes=("red", "green"))
    assert main(["not-sure", "fit", str(tiny_model), str(data)]) == 1


@pytest.mark.slow
@pytest.mark.shared
def test_shipped_model_flags_noise_flat_and_none(shipped_model, tmp_path):  # noqa: F811
    """The shipped bears model, its statistics fitted here from the shared bears (raw, uncleaned)."""
    if not SHARED_BEARS.is_dir():
        pytest.skip(f"{SHARED_BEARS} is absent")
    from whatsthat.training.classifier import load_classifier
    from whatsthat.training.notsure import fit_not_sure

    model = tmp_path / "export.pkl"
    shutil.copy(shipped_model, model)
    shutil.copy(shipped_model.with_name("export.card.json"), model.with_name("export.card.json"))
    fit_not_sure(model, SHARED_BEARS)
    clf = load_classifier(model)
    assert [v.kind for v in clf.judge_many(noise_and_flat())] == ["out_of_class"] * 12
    bears = sorted(SHARED_BEARS.glob("*/*.jpg"))[::10]
    sure = [v.kind == "sure" for v in clf.judge_many(bears)]
    assert sum(sure) >= 0.9 * len(sure)
    if SHARED_NONE.is_dir():
        others = sorted(SHARED_NONE.glob("*/*.jpg"))[::10]
        flagged = [v.kind != "sure" for v in clf.judge_many(others)]
        assert sum(flagged) >= 0.8 * len(flagged)


# --- the Mahalanobis fit on degenerate features: it never fails to converge, on any CPU -----------------


def exact_scores(x: torch.Tensor, y: torch.Tensor, q: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """The Mahalanobis score by the definition: the shrunk covariance, inverted with a plain solve (on the
    features normalised in float32, as the detector normalises them)."""
    z = torch.nn.functional.normalize(x.float(), dim=1).double()
    classes = sorted(set(y.tolist()))
    means = torch.stack([z[y == c].mean(0) for c in classes])
    centred = z - means[torch.searchsorted(torch.tensor(classes), y)]
    cov = centred.T @ centred / max(1, len(z) - len(classes))
    shrunk = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(z.shape[1], dtype=torch.float64)
    d = torch.nn.functional.normalize(q.float(), dim=1).double()[:, None] - means[None]
    return torch.einsum("ncd,ncd->nc", d, torch.linalg.solve(shrunk, d.transpose(1, 2)).transpose(1, 2)).min(1).values


def eigh_statistics(x: torch.Tensor, y: torch.Tensor, shrinkage: float) -> dict[str, torch.Tensor]:
    """The statistics as the code before SVD computed them (eigh of the covariance), for comparison."""
    z = torch.nn.functional.normalize(x.float(), dim=1).double()
    classes = sorted(set(y.tolist()))
    means = torch.stack([z[y == c].mean(0) for c in classes])
    centred = z - means[torch.searchsorted(torch.tensor(classes), y)]
    cov = centred.T @ centred / max(1, len(z) - len(classes))
    floor = shrinkage * float(cov.diagonal().mean())
    evals, evecs = torch.linalg.eigh((1 - shrinkage) * cov)
    keep = evals > 1e-9 * float(evals.max())
    return {"means": means, "basis": evecs[:, keep].T, "weights": 1 / (evals[keep] + floor) - 1 / floor, "floor": floor}


def test_statistics_agree_with_the_eigh_fit_on_ordinary_features():
    x, y = clusters(120, dim=40)
    det = ood.fit_detector(x, y, x, method="mahalanobis", layer="pooled")
    old = eigh_statistics(x, y, 0.1)
    assert det.tensors["means"].double() == pytest.approx(old["means"], abs=1e-6)
    assert float(det.tensors["floor"]) == pytest.approx(old["floor"], rel=1e-5)
    assert sorted(det.tensors["weights"].tolist()) == pytest.approx(sorted(old["weights"].tolist()), rel=1e-4)
    # the same subspace (the basis vectors agree up to sign): the projections onto it agree
    new_p = det.tensors["basis"].double().T @ det.tensors["basis"].double()
    old_p = old["basis"].T @ old["basis"]
    assert torch.allclose(new_p, old_p, atol=1e-5)


def degenerate(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    if kind == "rank-1":  # every picture on one line through the origin's neighbourhood
        direction = torch.randn(64, generator=g)
        return torch.ones(60, 64) + torch.randn(60, 1, generator=g) * direction, y
    if kind == "duplicated":  # 6 distinct pictures, each 10 times
        base = torch.randn(6, 64, generator=g)
        return base.repeat(10, 1), torch.arange(6).repeat(10) % 3
    if kind == "tiny-variance":  # JPEG-noise-sized differences around one picture
        return torch.ones(60, 64) + 1e-5 * torch.randn(60, 64, generator=g), y
    if kind == "one-per-class":  # nothing varies within a class
        return torch.randn(3, 64, generator=g), torch.arange(3)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["rank-1", "duplicated", "tiny-variance"])
def test_degenerate_features_fit_and_score_exactly(kind):
    x, y = degenerate(kind)
    det = ood.fit_detector(x, y, x, method="mahalanobis", layer="pooled")
    q = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(det.score_tensor(q)).all()
    assert det.score_tensor(q).double() == pytest.approx(exact_scores(x, y, q, 0.1), rel=1e-3)


@pytest.mark.parametrize("kind", ["constant", "one-per-class", "not-finite"])
def test_features_that_cannot_give_a_detector_say_why(kind):
    if kind == "constant":
        x, y = torch.full((60, 64), 0.5), torch.arange(60) % 2
    elif kind == "not-finite":
        x, y = degenerate("rank-1")
        x[3, 5] = float("nan")
    else:
        x, y = degenerate(kind)
    with pytest.raises(ood.DetectorUnavailable, match="vary|finite"):
        ood.fit_detector(x, y, x, method="mahalanobis", layer="pooled")


def test_when_the_svd_fails_the_cholesky_form_gives_the_same_scores(monkeypatch):
    # what MKL's eigh did on AVX-512 CPUs, for the SVD: the fit takes the form that cannot fail
    x, y = degenerate("rank-1")
    q = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    want = ood.fit_detector(x, y, x, method="mahalanobis", layer="pooled").score_tensor(q)

    def no_convergence(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", no_convergence)
    det = ood.fit_detector(x, y, x, method="mahalanobis", layer="pooled")
    assert det.score_tensor(q) == pytest.approx(want, rel=1e-4)
    assert det.score_tensor(q).double() == pytest.approx(exact_scores(x, y, q, 0.1), rel=1e-3)
