"""Model checks: train → export → load → predict round trips, the model card, the split, the weights."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest
from conftest import draw_image, image_bytes
from fastai.callback.core import Callback
from fastai.vision.core import PILImage

from whatsthat.errors import WhatsthatError
from whatsthat.model.files import ModelFiles
from whatsthat.training.backbones import ensure_torchvision_weights, weights_cache_path
from whatsthat.training.classifier import load_classifier
from whatsthat.training.data import (
    HashSplitter,
    ImageFiles,
    check_dataset,
    describe_unreadable,
    get_dataset_images,
    unreadable_images,
)
from whatsthat.training.settings import TrainSettings
from whatsthat.training.train import classification_report, train


def test_hash_splitter_is_stable_when_files_disappear(make_dataset):
    root = make_dataset(n=30)
    files = list(get_dataset_images(root))
    split = HashSplitter(0.2, seed=1)
    train_idx, valid_idx = split(files)
    valid = {files[i].name for i in valid_idx}
    assert 0 < len(valid) < len(files) and len(train_idx) + len(valid_idx) == len(files)
    # drop a third of the files (as cleaning would): everyone else keeps their side
    kept = files[::3]
    _, valid2 = split(kept)
    assert {kept[i].name for i in valid2} == {f.name for f in kept if f.name in valid}
    # a different seed gives a different split
    assert {files[i].name for i in HashSplitter(0.2, seed=2)(files)[1]} != valid


def test_hash_splitter_rejects_bad_pct():
    with pytest.raises(WhatsthatError, match="valid_pct"):
        HashSplitter(1.5)


def test_check_dataset_messages(tmp_path, make_dataset):
    with pytest.raises(WhatsthatError, match="not found"):
        check_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WhatsthatError, match="no images"):
        check_dataset(tmp_path / "empty")
    one = make_dataset(n=3, classes=("red",), root=tmp_path / "one")
    with pytest.raises(WhatsthatError, match=r"only \['red'\]"):
        check_dataset(one)
    two = make_dataset(n=3, root=tmp_path / "two")
    (two / ".trash").mkdir()
    draw_image("blue").save(two / ".trash" / "x.jpg")
    assert check_dataset(two) == {"blue": 3, "red": 3}  # the trash is never training data


def _break_some(root):
    """Three kinds of file a scraped or hand-filled folder holds: a web page saved as .jpg, an empty
    file, a JPEG cut short in the download. Returns their paths under `root`."""
    (root / "red" / "page.jpg").write_text("<html><body>403 Forbidden</body></html>")
    (root / "blue" / "empty.png").write_bytes(b"")
    good = (root / "blue").glob("*.jpg").__next__().read_bytes()
    (root / "blue" / "cut.jpg").write_bytes(good[: len(good) // 2])
    return ["blue/cut.jpg", "blue/empty.png", "red/page.jpg"]


def test_unreadable_images_are_found_and_left_out(make_dataset, tmp_path):
    root = make_dataset(n=4, size=256)
    broken = _break_some(root)
    files = list(get_dataset_images(root))
    bad = unreadable_images(files)
    assert sorted(f.relative_to(root).as_posix() for f, _ in bad) == broken
    assert dict((f.name, why) for f, why in bad)["page.jpg"] == "not an image"
    assert "truncated" in dict((f.name, why) for f, why in bad)["cut.jpg"]
    line = describe_unreadable(bad, root, limit=2)
    assert line.startswith("skipping 3 file(s)") and line.endswith("; and 1 more") and "left where they are" in line
    kept = ImageFiles(broken)(root)
    assert len(kept) == len(files) - 3 and not {f.name for f in kept} & {"page.jpg", "empty.png", "cut.jpg"}
    assert check_dataset(root, broken) == {"blue": 4, "red": 4}
    # nothing is deleted: the files stay for the maintainer to look at
    assert all((root / b).exists() for b in broken)
    # a label whose every picture is broken is no label at all
    with pytest.raises(WhatsthatError, match=r"only \['blue'\]"):
        check_dataset(root, [f.relative_to(root).as_posix() for f in (root / "red").iterdir()])


@pytest.mark.slow
def test_train_and_not_sure_fit_skip_unreadable_files(make_dataset, tmp_path):
    from whatsthat.training.notsure import fit_not_sure

    root = make_dataset(n=8)
    broken = _break_some(root)
    lines: list[str] = []
    result = train(root, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=1, top_epochs=0,
                   epochs=0, echo=lines.append)
    assert any(line.startswith("skipping 3 file(s)") for line in lines)
    assert result.card["dataset"]["unreadable"] == broken
    assert result.card["dataset"]["n_images"] == 16
    assert load_classifier(result.model_path).classes == ["blue", "red"]
    lines.clear()
    assert fit_not_sure(result.model_path, root, echo=lines.append)["calibration"]["n_train"] + \
        result.card["dataset"]["n_valid"] == 16
    assert any(line.startswith("skipping 3 file(s)") for line in lines)


def test_classification_report_counts():
    r = classification_report([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["a", "b"])
    assert r["confusion"] == [[1, 1], [1, 2]]
    assert r["accuracy"] == 0.6 and r["error_rate"] == 0.4
    assert r["per_class"]["b"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}


def test_train_rejects_bad_options(make_dataset, tmp_path):
    data = make_dataset(n=4)
    with pytest.raises(WhatsthatError, match="unknown architecture"):
        train(data, tmp_path, arch="vgg99")
    with pytest.raises(WhatsthatError, match="nothing to train"):
        train(data, tmp_path, epochs=0, freeze_epochs=0, head_epochs=0, top_epochs=0)
    with pytest.raises(WhatsthatError, match="too small"):
        train(data, tmp_path, size=8)
    with pytest.raises(WhatsthatError, match="micro_bs must be 0"):
        train(data, tmp_path, micro_bs=-1)
    with pytest.raises(WhatsthatError, match="too small"):
        train(data, tmp_path, TrainSettings(size=8))
    with pytest.raises(WhatsthatError, match="unknown training setting"):
        train(data, tmp_path, TrainSettings(), epoch=1)
    with pytest.raises(WhatsthatError, match="settings must be a TrainSettings, not dict"):
        train(data, tmp_path, {"epochs": 1})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_torchvision_weights_say_the_way_out(make_dataset, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/resnet18-f37072fd.pth"
    with pytest.raises(WhatsthatError) as e:
        ensure_torchvision_weights("resnet18", url=url, timeout=5)
    msg = str(e.value)
    assert "cannot download the pretrained resnet18 weights" in msg
    assert "--arch efficientnet_lite0" in msg and "resnet18-f37072fd.pth" in msg
    assert not list(weights_cache_path(url).parent.glob("*.part"))  # no half-written file left behind


def test_torchvision_weights_are_downloaded_into_the_cache(tmp_path):
    payload = b"fake-checkpoint-bytes" * 100

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = ensure_torchvision_weights("resnet18", url=f"http://127.0.0.1:{server.server_port}/w.pth")
    finally:
        server.shutdown()
    assert path.read_bytes() == payload and path.name == "resnet18-f37072fd.pth"
    assert ensure_torchvision_weights("resnet18", url="http://127.0.0.1:1/unused") == path  # cached: no request


def test_train_without_weights_fails_before_training(make_dataset, tmp_path, monkeypatch):
    # offline default: resnet18 needs torchvision's download; make it fail fast and check the message
    import whatsthat.training.backbones as models

    monkeypatch.setattr(models, "torchvision_weights_url", lambda name: f"http://127.0.0.1:{_closed_port()}/{name}.pth")
    with pytest.raises(WhatsthatError, match="efficientnet_lite0"):
        train(make_dataset(n=4), tmp_path / "out", arch="resnet18", epochs=1)
    assert not (tmp_path / "out" / "export.pkl").exists()


def _assert_round_trip(result, files):
    clf = load_classifier(result.model_path)
    assert clf.classes == list(result.learn.dls.vocab)
    for f in files:
        live = result.learn.predict(PILImage.create(f))[2].tolist()
        loaded = clf.learn.predict(PILImage.create(f))[2].tolist()
        fast = dict(clf.predict(f.read_bytes()))
        assert loaded == pytest.approx(live, abs=1e-5)  # export → load changes nothing
        assert [fast[c] for c in clf.classes] == pytest.approx(live, abs=1e-4)  # the fast path agrees
    return clf


@pytest.mark.slow
def test_round_trip_random_resnet18(tiny_training):
    data = tiny_training.card["dataset"]["path"]
    files = list(get_dataset_images(data))[:6]
    clf = _assert_round_trip(tiny_training, files)
    card = json.loads(ModelFiles(tiny_training.model_path).card.read_text())
    assert card["classes"] == ["blue", "red"] and card["arch"] == "resnet18" and card["pretrained"] is False
    assert card["dataset"]["n_images"] == 32 and len(card["dataset"]["sha256"]) == 64
    assert set(card["metrics"]) >= {"error_rate", "accuracy", "valid_loss", "per_class", "confusion"}
    assert [h["epoch"] for h in card["training"]["history"]] == [0, 1]
    assert {"torch", "fastai", "python"} <= set(card["versions"])
    assert clf.card == card and clf.threshold == card["threshold"]
    ranked = clf.predict(files[0])
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schedule", "stages"),
    [
        ({}, ["head (cached features)"] * 8 + ["top (cached activations)"] * 10),  # whatsthat's default
        ({"head_epochs": 0, "top_epochs": 0, "freeze_epochs": 1, "epochs": 1}, ["frozen", "unfrozen"]),  # the course's fine_tune
    ],
)
def test_round_trip_pretrained_efficientnet_learns(make_dataset, tmp_path, schedule, stages):
    data = make_dataset(n=16, classes=("red", "blue", "green"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, echo=lambda s: None, **schedule)
    assert [h["stage"] for h in result.history] == stages
    # trained in channels_last (whatsthat.training.cpu), exported in the usual layout
    assert all(p.is_contiguous() for p in result.learn.model.parameters())
    # real ImageNet features separate these easily: a random guess would be 0.67 error
    assert result.error_rate <= 0.34
    clf = _assert_round_trip(result, list(get_dataset_images(data))[::8])
    many = clf.predict_many([image_bytes(draw_image(c, 64, seed=99)) for c in ("red", "blue", "green")])
    assert len(many) == 3 and all(len(r) == 3 for r in many)


def test_head_on_cached_features_trains_only_the_head(make_dataset, tmp_path):
    import torch

    data = make_dataset(n=10)
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=3, top_epochs=0,
                   epochs=0, echo=lambda s: None)
    from whatsthat.model.networks import efficientnet_lite0

    fresh = efficientnet_lite0(pretrained=True)
    body = result.learn.model[0]
    # the body is untouched (weights and BatchNorm statistics), the head learned
    for (name, a), b in zip(body.state_dict().items(), list(fresh.state_dict().values())[: len(body.state_dict())],
                            strict=True):
        assert torch.equal(a, b), name
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_load_classifier_errors(tmp_path):
    with pytest.raises(WhatsthatError, match="not found"):
        load_classifier(tmp_path / "missing.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle at all")
    with pytest.raises(WhatsthatError, match="not a loadable fastai export"):
        load_classifier(junk)
    lfs = tmp_path / "lfs.pkl"
    lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    with pytest.raises(WhatsthatError, match="git lfs pull"):
        load_classifier(lfs)


class Sabotage(Callback):
    """Wreck the head after every unfrozen step: the run's last epoch is then far worse than its head stage."""

    def before_fit(self):
        self.learned = self.learn.model[1][-1].weight.detach().clone()  # the head stage's final Linear

    def after_step(self):
        import torch

        with torch.no_grad():  # every answer the head learnt, reversed and very confident
            self.learn.model[1][-1].weight.copy_(-100 * self.learned / self.learned.abs().max())


@pytest.mark.slow
def test_a_model_worse_than_its_head_stage_is_never_exported(make_dataset, tmp_path):
    data = make_dataset(n=16, classes=("red", "blue", "green"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=4, top_epochs=0,
                   epochs=1, echo=lambda s: None, callbacks=[Sabotage()])
    head, unfrozen = result.history[3], result.history[4]
    assert unfrozen["stage"] == "unfrozen" and unfrozen["valid_loss"] > 2 * head["valid_loss"]  # the case is forced
    card = json.loads(ModelFiles(result.model_path).card.read_text())
    assert card["training"]["best_stage"] == "head (cached features) epoch 3"
    # what was exported is the head stage's model, not the wrecked one: same validation loss when reloaded
    assert card["metrics"]["valid_loss"] == pytest.approx(head["valid_loss"], abs=2e-3)
    clf = load_classifier(result.model_path)
    with clf.learn.no_bar(), clf.learn.no_logging():
        reloaded = clf.learn.validate(dl=result.learn.dls.valid)[0]
    assert reloaded == pytest.approx(head["valid_loss"], abs=2e-3)
    assert any("head (cached features) epoch 3" in line for line in result.quality.lines())


class CountSteps(Callback):
    """Count optimiser steps and the batch sizes the model sees (GradientAccumulation cancels the rest)."""

    def before_fit(self):
        self.steps, self.sizes = 0, set()

    def before_batch(self):
        if self.training:
            self.sizes.add(len(self.yb[0]))

    def after_step(self):
        self.steps += 1


@pytest.mark.slow
def test_unfrozen_epochs_run_in_micro_batches_with_one_step_per_batch(make_dataset, tmp_path):
    data = make_dataset(n=20, classes=("red", "blue"))
    counter = CountSteps()
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, micro_bs=4, head_epochs=2,
                   top_epochs=0, epochs=1, echo=lambda s: None, callbacks=[counter])
    n_train = len(result.learn.dls.train_ds)
    assert counter.sizes == {4}  # the model saw micro-batches only
    assert counter.steps == (n_train // 4 * 4) // 8  # one optimiser step per 8 pictures, as at bs 8
    assert result.learn.dls.train.bs == 8  # the learner's own loader is put back
    assert result.card["training"]["batch_size"] == 8 and result.card["training"]["micro_batch_size"] == 4
    # off: the batches are what --bs says
    off = CountSteps()
    train(data, tmp_path / "m0", arch="efficientnet_lite0", size=64, bs=8, micro_bs=0, head_epochs=2, top_epochs=0,
          epochs=1, echo=lambda s: None, callbacks=[off])
    assert off.sizes == {8} and off.steps == n_train // 8


@pytest.mark.slow
def test_unlearnable_data_gets_the_baseline_warning(tmp_path, capsys):
    # random labels on look-alike pictures, 3:1 imbalanced: nothing to learn beyond "always say cats"
    import random

    from whatsthat.cli import main

    rng = random.Random(0)
    data = tmp_path / "random"
    for label, n in (("cats", 150), ("dogs", 50)):
        (data / label).mkdir(parents=True)
        for i in range(n):
            draw_image(rng.choice(["red", "blue", "green"]), 40, seed=rng.randrange(10**6)).save(
                data / label / f"{label}_{i:03d}.jpg")
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "--arch", "efficientnet_lite0", "--size", "48",
                 "--bs", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    card = json.loads((tmp_path / "m" / "export.card.json").read_text())
    assert card["metrics"]["baseline"]["label"] == "cats" and card["metrics"]["n_valid"] >= 30
    assert card["quality"]["level"] == "no better" and card["quality"]["deployable"] is False
    assert any("than always answering 'cats'" in line for line in out)
    assert out[-1].startswith("verdict: not good enough to deploy")
    lo, hi = card["metrics"]["accuracy_ci95"]
    assert lo <= card["metrics"]["accuracy"] <= hi
    # interpret says the same, its verdict last
    assert main(["interpret", str(data), "--model", str(tmp_path / "m" / "export.pkl"),
                 "--out", str(tmp_path / "i")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any("always answering 'cats'" in line for line in out)
    assert out[-1].startswith("verdict: not good enough to deploy")
