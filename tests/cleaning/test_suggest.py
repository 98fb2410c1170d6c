"""whatsthat suggest: folds, the decision rule, the feature cache, the command, and the cleaner's Suggested view.

The end-to-end runs use generated pictures (a blue picture filed under red, a dark logo among the blues)
and efficientnet_lite0's offline ImageNet weights at a small size; the recall and precision on real
pictures are measured by bench/suggest_bench.py, not here.
"""

from __future__ import annotations

import builtins
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, draw_image
from PIL import Image, ImageDraw

from whatsthat.cleaning import journal as clean
from whatsthat.cleaning.suggest import (
    FeatureCache,
    Suggestion,
    SuggestReport,
    assign_folds,
    check_enough,
    decide,
    load_suggestions,
    nearest,
    out_of_fold,
    repeated_out_of_fold,
    suggest,
)
from whatsthat.cli import main
from whatsthat.errors import WhatsthatError

SIZE = 96  # small pictures: seconds on a CPU; the body still sees a 3x3 map


@pytest.fixture
def noisy_data(make_dataset) -> Path:
    """14 red and 14 blue pictures, one blue filed under red, one dark logo among the blues."""
    root = make_dataset(n=14, classes=("red", "blue"))
    draw_image("blue", 64, seed=100).save(root / "red" / "oops_blue.jpg", quality=90)
    im = Image.new("RGB", (90, 64), (20, 20, 20))
    ImageDraw.Draw(im).text((5, 20), "LOGO 2024", fill=(255, 255, 0))
    im.save(root / "blue" / "junk_logo.jpg")
    return root


# --- folds and the size check ---------------------------------------------------------------------


def test_folds_are_stratified_seeded_and_independent_of_listing_order():
    paths = [f"a/{i}.jpg" for i in range(23)] + [f"b/{i}.jpg" for i in range(11)]
    labels = [0] * 23 + [1] * 11
    folds = assign_folds(paths, labels, 5, seed=42)
    for c, n in ((0, 23), (1, 11)):
        sizes = np.bincount([f for f, y in zip(folds, labels, strict=True) if y == c], minlength=5)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n  # each class dealt evenly over the folds
    shuffled = list(reversed(range(len(paths))))
    again = assign_folds([paths[i] for i in shuffled], [labels[i] for i in shuffled], 5, seed=42)
    assert [again[shuffled.index(i)] for i in range(len(paths))] == folds  # by name, not by position
    assert assign_folds(paths, labels, 5, seed=1) != folds


def test_a_dataset_too_small_for_the_folds_gets_one_clear_line():
    with pytest.raises(WhatsthatError, match=r"too few pictures.*b has 6.*at least 10.*--folds 3") as e:
        check_enough({"a": 30, "b": 6}, 5)
    assert "\n" not in str(e.value)
    with pytest.raises(WhatsthatError, match="add pictures$"):
        check_enough({"a": 3, "b": 30}, 5)
    with pytest.raises(WhatsthatError, match="folds must be 2 or more"):
        check_enough({"a": 30, "b": 30}, 1)
    check_enough({"a": 10, "b": 10}, 5)


def test_the_command_says_what_is_wrong_in_one_line(make_dataset, tmp_path, capsys):
    small = make_dataset(n=6, root=tmp_path / "small")
    assert main(["suggest", str(small)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("whatsthat suggest: error: too few pictures") and err.count("\n") == 1
    assert "Traceback" not in err
    assert main(["suggest", str(tmp_path / "absent")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    (tmp_path / "one" / "only").mkdir(parents=True)
    draw_image("red").save(tmp_path / "one" / "only" / "a.jpg")
    assert main(["suggest", str(tmp_path / "one")]) == 1
    assert "at least two label folders" in capsys.readouterr().err


# --- the decision rule ----------------------------------------------------------------------------


def _clusters(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of two tight clusters (labels 0 and 1), as the body would give for two clean classes."""
    rng = np.random.default_rng(seed)
    centres = np.eye(2, 16) * 5
    labels = np.array([0] * n + [1] * n)
    return centres[labels] + rng.normal(0, 0.3, (2 * n, 16)), labels


def test_decide_relabels_a_confident_label_issue_and_deletes_a_picture_far_from_every_class():
    x, labels = _clusters()
    paths = [f"{'ab'[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    probs = np.where(labels[:, None] == np.arange(2), 0.95, 0.05)
    probs[3] = [0.03, 0.97]  # filed under a, the folds say b
    probs[50] = [0.45, 0.55]  # filed under b, and b is (just) the more likely: no relabel
    x[10] = np.ones(16) * 3 + np.arange(16)  # nothing like either class
    far = np.linalg.norm(x[:, None, :] - np.eye(2, 16)[None] * 5, axis=2).min(1) ** 2
    near = nearest(torch.tensor(x)).distance.numpy()
    items = decide(paths, labels, probs, far, near, ["a", "b"])
    by_path = {s.path: s for s in items}
    assert len(items) == len(paths) and {s.action for s in items} == {"relabel", "delete", "keep"}
    assert by_path["a/003.jpg"] == Suggestion("a/003.jpg", "relabel", "b", "a", 0.97, "looks like b (97%), not a (3%)")
    assert by_path["a/010.jpg"].action == "delete" and by_path["a/010.jpg"].label is None
    assert by_path["a/010.jpg"].why.startswith("unlike every class (farther out than 79 of the 80 pictures")
    assert by_path["b/050.jpg"] == Suggestion("b/050.jpg", "keep", None, "b", 0.55, "looks like b (55%)")
    changes = [s for s in items if s.action != "keep"]
    assert [s.path for s in items[: len(changes)]] == [s.path for s in changes]  # the changes first...
    assert [s.score for s in changes] == sorted((s.score for s in changes), reverse=True)  # ...by score
    assert all(0 <= s.score <= 1 for s in items)
    assert by_path["a/000.jpg"] == Suggestion("a/000.jpg", "keep", None, "a", 0.95, "looks like a (95%)")


def test_another_label_at_relabel_sure_is_a_relabel_even_where_confident_learning_passes_over_it():
    """cleanlab counts a picture as truly b only above b's own pictures' mean confidence (here 0.95), so a picture
    filed under a that the folds give b at 62% is no issue to it; RELABEL_SURE (0.6) makes it a relabel, and
    one at 55% stays a keep."""
    from cleanlab.filter import find_label_issues

    from whatsthat.cleaning.suggest import RELABEL_SURE

    x, labels = _clusters()
    paths = [f"{'ab'[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    probs = np.where(labels[:, None] == np.arange(2), 0.95, 0.05)
    probs[4], probs[5] = [0.38, 0.62], [0.45, 0.55]
    assert not find_label_issues(labels, probs, n_jobs=1)[[4, 5]].any()  # confident learning alone misses both
    far = np.linalg.norm(x[:, None, :] - np.eye(2, 16)[None] * 5, axis=2).min(1) ** 2
    near = nearest(torch.tensor(x)).distance.numpy()
    by_path = {s.path: s for s in decide(paths, labels, probs, far, near, ["a", "b"])}
    assert RELABEL_SURE == 0.6
    assert by_path["a/004.jpg"] == Suggestion("a/004.jpg", "relabel", "b", "a", 0.62, "looks like b (62%), not a (38%)")
    assert by_path["a/005.jpg"].action == "keep" and by_path["a/005.jpg"].why == "unsure: b 55%, a 45%"


def test_the_bodies_default_to_lite2_and_lite0_each_at_its_own_size_or_the_one_asked():
    from whatsthat.cleaning.suggest import DEFAULT_BODIES, bodies_for

    assert bodies_for() == bodies_for(DEFAULT_BODIES) == [("efficientnet_lite2", 260), ("efficientnet_lite0", 224)]
    assert bodies_for(size=96) == [("efficientnet_lite2", 96), ("efficientnet_lite0", 96)]
    assert bodies_for("efficientnet_lite1") == [("efficientnet_lite1", 240)]
    assert bodies_for(["resnet18", "efficientnet_lite0", "resnet18"]) == [("resnet18", 224), ("efficientnet_lite0", 224)]
    with pytest.raises(WhatsthatError, match="at least one backbone"):
        bodies_for([])


def test_a_picture_with_no_neighbour_is_junk_even_near_a_class_centre():
    """Junk is far from every class OR from every other picture: one measure beyond the fence is enough."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * 40)
    paths = [f"{'ab'[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    probs = np.where(labels[:, None] == np.arange(2), 0.95, 0.05)
    far, near = rng.uniform(1, 2, 80), rng.uniform(0.2, 0.3, 80)
    far[7], near[7] = 1.0, 0.40  # nearest of all to its class's centre, yet no picture near it (a broad class)
    by_path = {s.path: s for s in decide(paths, labels, probs, far, near, ["a", "b"])}
    assert by_path["a/007.jpg"].action == "delete"
    assert [p for p, s in by_path.items() if s.action != "keep"] == ["a/007.jpg"]


def test_repeated_folds_average_seeded_splits_and_rerun_the_same():
    from fastai.vision.learner import create_head

    from whatsthat.cleaning.suggest import Features

    x, labels = _clusters(n=20)
    torch.manual_seed(0)
    features = Features(torch.tensor(np.hstack([x, x]), dtype=torch.float32), create_head(16, 2)[2:], ["a", "b"])
    rel = [f"{'ab'[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    y = torch.tensor(labels)
    probs, far = repeated_out_of_fold(features, rel, y, 5, rounds=2, head_epochs=2, seed=7)
    assert probs.shape == (40, 2) and far.shape == (40,) and (far > 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(40), atol=1e-5)
    again = repeated_out_of_fold(features, rel, y, 5, rounds=2, head_epochs=2, seed=7)
    assert torch.equal(probs, again[0]) and torch.equal(far, again[1])
    # one round is out_of_fold on the seed's folds; two average it with the next seed's split
    rounds = [out_of_fold(features, y, torch.tensor(assign_folds(rel, labels.tolist(), 5, 7 + r)), head_epochs=2,
                          seed=7 + 5 * r) for r in range(2)]
    assert torch.allclose(probs, (rounds[0][0] + rounds[1][0]) / 2, atol=1e-6)
    assert torch.allclose(far, (rounds[0][1] * rounds[1][1]).sqrt(), rtol=1e-4)


def test_rounds_below_one_get_a_clear_message(tmp_path):
    with pytest.raises(WhatsthatError, match="rounds must be 1 or more"):
        suggest(tmp_path, rounds=0)


def test_the_neighbours_vote_leaves_each_picture_out():
    x, labels = _clusters(n=12)
    near = nearest(torch.tensor(x), k=5)
    assert near.index.shape == (24, 5) and not (near.index == torch.arange(24)[:, None]).any()
    votes = near.vote(torch.tensor(labels), 2)
    assert torch.allclose(votes.sum(1), torch.ones(24)) and (votes.argmax(1).numpy() == labels).all()
    assert votes[0].tolist() == pytest.approx([5.5 / 6, 0.5 / 6])  # five neighbours of its class, smoothed
    flipped = torch.tensor(labels)
    flipped[0] = 1  # a picture's own label never votes for it
    assert nearest(torch.tensor(x), k=5).vote(flipped, 2)[0].tolist() == pytest.approx([5.5 / 6, 0.5 / 6])


def test_the_pooled_features_are_the_heads_average_pooling():
    from fastai.vision.learner import create_head

    from whatsthat.cleaning.suggest import Features

    body_out = torch.randn(3, 8, 4, 4)
    x = create_head(8, 2)[:2](body_out)  # what the feature pass stores
    assert torch.allclose(Features(x, torch.nn.Identity(), ["a", "b"]).pooled, body_out.mean((2, 3)))


# --- the feature cache ----------------------------------------------------------------------------


def test_the_feature_cache_keeps_rows_by_content_and_shrugs_off_a_broken_file(tmp_path):
    cache = FeatureCache(tmp_path / "cache", tmp_path / "data", "efficientnet_lite0", 224)
    assert cache.load() == {} and cache.path.parent == tmp_path / "cache"
    rows = {"a" * 64: torch.ones(4), "b" * 64: torch.zeros(4)}
    cache.save(rows, {"c" * 64: torch.full((4,), 2.0)})
    loaded = cache.load()
    assert list(loaded) == ["a" * 64, "b" * 64, "c" * 64] and loaded["c" * 64].dtype == torch.float16
    assert FeatureCache(tmp_path / "cache", tmp_path / "other", "efficientnet_lite0", 224).path != cache.path
    assert FeatureCache(tmp_path / "cache", tmp_path / "data", "efficientnet_lite0", 160).path != cache.path
    cache.path.write_bytes(b"not safetensors")
    assert cache.load() == {}


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_suggest_finds_the_mislabelled_picture_and_the_junk_and_reruns_from_the_cache(noisy_data, tmp_path):
    lines: list[str] = []
    report = suggest(noisy_data, size=SIZE, cache=tmp_path / "cache", echo=lines.append)
    assert isinstance(report, SuggestReport) and report.classes == ["blue", "red"] and report.cached == 0
    assert len(report.items) == 30 and report.folds == 5
    top = report.suggestions[:2]
    assert {(s.path, s.action, s.label, s.given) for s in top} == {
        ("red/oops_blue.jpg", "relabel", "blue", "red"), ("blue/junk_logo.jpg", "delete", None, "blue")}
    # the probabilities each suggestion was decided from, for analysis: one row per picture, in class order
    assert set(report.probs) == {s.path for s in report.items}
    assert all(abs(sum(row) - 1) < 1e-3 for row in report.probs.values())
    relabel = next(s for s in top if s.action == "relabel")
    assert abs(report.probs[relabel.path][0] - relabel.score) < 1e-3  # blue's probability, the relabel's score
    # both bodies (lite2 and lite0), each its own feature pass and its own cache file
    assert report.arch == "efficientnet_lite2+efficientnet_lite0"
    assert [line.split()[1] for line in lines if "body features of 30 pictures" in line] == [
        "efficientnet_lite2", "efficientnet_lite0"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    again = suggest(noisy_data, size=SIZE, cache=tmp_path / "cache", echo=lines.append)
    assert again.cached == 30 and again.items == report.items  # from the cache: the same answer
    # a cleaning round: only the moved picture's folder changes; its features are found by content
    (noisy_data / "red" / "oops_blue.jpg").rename(noisy_data / "blue" / "oops_blue.jpg")
    after = suggest(noisy_data, size=SIZE, cache=tmp_path / "cache", echo=lines.append)
    assert after.cached == 30 and "red/oops_blue.jpg" not in [s.path for s in after.suggestions]


@pytest.mark.slow
def test_the_command_prints_one_json_list_ordered_by_score(noisy_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["suggest", str(noisy_data), "--size", str(SIZE), "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert items and all(set(i) == {"path", "action", "label", "given", "score", "why"} for i in items)
    assert all(i["action"] in ("relabel", "delete") and (i["label"] is None) == (i["action"] == "delete") for i in items)
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    assert all((noisy_data / i["path"]).is_file() and i["given"] == i["path"].split("/")[0] for i in items)
    assert list((tmp_path / "xdg" / "whatsthat" / "features").glob("*.safetensors"))  # the cache, outside DATA
    assert not list(noisy_data.glob(".*"))
    assert main(["suggest", str(noisy_data), "--size", str(SIZE), "--json", "--all"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 30
    assert main(["suggest", str(noisy_data), "--size", str(SIZE), "--limit", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["score", "action", "path", "why"] and "more (--json lists them all)" in table[2]
    assert table[-1].startswith(f"{len(items)} suggestion(s) for 30 pictures")
    # --arch names the bodies (here one): only its feature pass runs
    assert main(["suggest", str(noisy_data), "--size", str(SIZE), "--json", "--arch", "efficientnet_lite1"]) == 0
    err = capsys.readouterr().err
    assert [line.split()[1] for line in err.splitlines() if "body features of" in line] == ["efficientnet_lite1"]


def test_suggestions_files_load_or_say_what_is_wrong(tmp_path):
    good = tmp_path / "s.json"
    good.write_text(json.dumps([{"path": "a/1.jpg", "action": "relabel", "label": "b", "given": "a", "score": 0.9,
                                 "why": "looks like b"}, {"path": "a/2.jpg", "action": "delete"}]))
    assert load_suggestions(good)[1] == Suggestion("a/2.jpg", "delete", None, "a", 0.0, "")
    for text, why in (("{", "not valid JSON"), ('{"path": "a"}', "expected a JSON list"),
                      ('[{"action": "delete"}]', "suggestion 1 is not a suggestion"),
                      ('[{"path": "a/1.jpg", "action": "relabel"}]', "without a label"),
                      ('[{"path": "a/1.jpg", "action": "burn"}]', "use relabel, delete or keep")):
        good.write_text(text)
        with pytest.raises(WhatsthatError, match=why):
            load_suggestions(good)
    with pytest.raises(WhatsthatError, match="cannot read suggestions file"):
        load_suggestions(tmp_path / "absent.json")


def test_the_suggest_module_imports_no_torch_until_it_works():
    """The cleaner imports it at module level, and the CLI's --help must stay instant."""
    code = "import sys, whatsthat.cleaning.suggest; print(sorted(m for m in ('torch', 'fastai', 'cleanlab') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the cleaner's Suggested view -----------------------------------------------------------------


@pytest.fixture
def cleaner_with_suggestions(tiny_training, tmp_path, monkeypatch):
    """A Cleaner over a copy of the tiny model's data, with three suggestions (two blues, one red)."""
    from fastai.learner import Learner
    from IPython.display import display

    from whatsthat.cleaning.cleaner import Cleaner
    from whatsthat.training.backbones import get_arch
    from whatsthat.training.data import make_dataloaders

    monkeypatch.setattr(builtins, "display", display, raising=False)
    data = tmp_path / "data"
    shutil.copytree(tiny_training.card["dataset"]["path"], data)
    dls = make_dataloaders(data, size=64, bs=8, stats=get_arch("resnet18").stats)
    learn = Learner(dls, copy.deepcopy(tiny_training.learn.model), loss_func=tiny_training.learn.loss_func)
    suggestions = [Suggestion("red/red_003.jpg", "relabel", "blue", "red", 0.9, "looks like blue (90%), not red (10%)"),
                   Suggestion("blue/blue_001.jpg", "delete", None, "blue", 0.8, "unlike every class"),
                   Suggestion("blue/blue_002.jpg", "keep", None, "blue", 0.99, "looks like blue (99%)"),
                   Suggestion("blue/blue_004.jpg", "delete", None, "blue", 0.6, "unlike every class"),
                   Suggestion("red/gone.jpg", "delete", None, "red", 0.99, "no longer there")]
    with learn.no_bar():
        cleaner = Cleaner(learn, data, page_size=2, suggestions=suggestions)
    return cleaner, data


@pytest.mark.slow
def test_the_cleaner_opens_on_the_suggestions_and_applies_only_what_was_accepted(cleaner_with_suggestions):
    cleaner, data = cleaner_with_suggestions
    before = {p: clean.file_sha256(data / p) for p in ("red/red_003.jpg", "blue/blue_001.jpg", "blue/blue_004.jpg")}
    icc = cleaner.icc
    assert icc.dd_cats.options[0] == "Suggested" and icc.dd_cats.value == "Suggested"
    # the changes still on disk, most confident first; keeps and missing files are not suggestions
    assert list(cleaner.suggested) == ["red/red_003.jpg", "blue/blue_001.jpg", "blue/blue_004.jpg"]
    assert cleaner.files == ["red/red_003.jpg", "blue/blue_001.jpg"] and cleaner.pages == 2
    assert "most confident suggestion first" in cleaner._page_label.value
    # pre-marked: the dropdown shows the suggestion, the caption says so and why, the border is dashed...
    relabel, delete = icc.iw.widget.children
    assert [dd.value for dd in cleaner.dropdowns] == ["blue", "<Delete>"]
    assert "suggested (90%): → move to blue" in relabel.children[2].value and "looks like blue" in relabel.children[2].value
    assert "whatsthat-suggested" in delete._dom_classes and delete.layout.border_top.startswith("3px dashed")
    assert [b.description for b in delete.children[3].children] == ["Accept", "Dismiss"]
    # ...but not a decision: nothing to apply until the maintainer clicks
    assert cleaner.decisions() == [] and cleaner._apply_button.disabled
    assert "3 suggestion(s) to review" in cleaner._summary.value
    assert clean.apply_decisions(data, cleaner.decisions()).batch is None

    delete.children[3].children[0].click()  # Accept
    assert [(d.path, d.action, d.sha256) for d in cleaner.decisions()] == [
        ("blue/blue_001.jpg", "delete", before["blue/blue_001.jpg"])]
    assert cleaner.review["blue/blue_001.jpg"] == "accepted" and len(delete.children) == 3  # no more buttons
    assert "✓ suggestion accepted" in delete.children[2].value and delete.layout.border_top.startswith("3px solid")
    relabel.children[1].value = "<Keep>"  # dismissing by the dropdown: no decision
    assert cleaner.review["red/red_003.jpg"] == "dismissed" and len(cleaner.decisions()) == 1
    assert "suggestion dismissed" in relabel.children[2].value
    cleaner.show_page(1)  # the last suggestion: accept everything on this page
    assert cleaner.files == ["blue/blue_004.jpg"]
    cleaner._accept_page_button.click()
    assert {d.path for d in cleaner.decisions()} == {"blue/blue_001.jpg", "blue/blue_004.jpg"}
    assert "to review" not in cleaner._summary.value

    report = cleaner.apply()  # the engine's one path: journaled, undoable
    assert sorted(a for a, _ in report.trashed) == ["blue/blue_001.jpg", "blue/blue_004.jpg"] and not report.relabelled
    assert (data / "red/red_003.jpg").is_file() and not (data / "blue/blue_001.jpg").exists()
    (batch,) = clean.batches(data)
    assert sorted(a["src"] for a in batch.actions) == ["blue/blue_001.jpg", "blue/blue_004.jpg"]
    assert cleaner.view_files() == [data.resolve() / "red/red_003.jpg"]  # applied ones are gone from the view

    cleaner.undo()
    assert all(clean.file_sha256(data / p) == h for p, h in before.items())
    assert cleaner.review["blue/blue_001.jpg"] == "open"  # back, and suggested again
    cleaner.show_page(0)
    assert cleaner.files == ["red/red_003.jpg", "blue/blue_001.jpg"] and cleaner.dropdowns[1].value == "<Delete>"


@pytest.mark.slow
def test_changing_a_suggestion_makes_it_a_decision_and_forget_reopens_it(cleaner_with_suggestions):
    cleaner, data = cleaner_with_suggestions
    cleaner.dropdowns[1].value = "red"  # suggested: delete; the maintainer says: it is a red one
    assert cleaner.review["blue/blue_001.jpg"] == "changed"
    assert [(d.path, d.action, d.label) for d in cleaner.decisions()] == [("blue/blue_001.jpg", "relabel", "red")]
    assert "changed" in cleaner.icc.iw.widget.children[1].children[2].value
    cleaner.select(category="blue", split="Train")  # the categories are still there, after Suggested
    assert all(f.startswith("blue/") for f in cleaner.files) and "worst loss first" in cleaner._page_label.value
    cleaner.select(category="Suggested")
    assert cleaner.files == ["red/red_003.jpg", "blue/blue_001.jpg"] and cleaner.dropdowns[1].value == "red"
    cleaner.forget()
    assert cleaner.decisions() == [] and cleaner.review["blue/blue_001.jpg"] == "open"
    assert cleaner.dropdowns[1].value == "<Delete>"  # pre-marked again
    cleaner.dismiss(["blue/blue_001.jpg"])
    assert cleaner.dropdowns[1].value == "<Keep>" and cleaner.decisions() == []
    with pytest.raises(WhatsthatError, match="no suggestion for blue/blue_002.jpg"):
        cleaner.accept(["blue/blue_002.jpg"])
    assert cleaner.accept() == ["red/red_003.jpg", "blue/blue_004.jpg"]  # every open one


def test_a_report_for_another_dataset_is_refused(tmp_path):
    from whatsthat.cleaning.cleaner import _suggested_changes

    report = SuggestReport(tmp_path / "elsewhere", ["a"], [], 5, "efficientnet_lite0")
    (tmp_path / "data").mkdir()
    with pytest.raises(WhatsthatError, match="run suggest on this dataset"):
        _suggested_changes((tmp_path / "data").resolve(), report)
