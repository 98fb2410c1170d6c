"""Visitors' flagged photos into the data: the journal's `add` (copy in, undo takes it out) and the
cleaner's "Flagged by visitors" view. The pulled folders are made by the real store and pull (SQLite)."""

from __future__ import annotations

import builtins
import copy
import shutil
from pathlib import Path

import pytest
from conftest import draw_image, image_bytes

from whatsthat.cleaning import journal as clean
from whatsthat.cleaning.journal import Decision, StaleDecisionError
from whatsthat.dataset.manifest import read_manifest, write_manifest
from whatsthat.errors import WhatsthatError
from whatsthat.flags.pull import pull_flags
from whatsthat.flags.store import NONE_OF_THESE, Caps, Flag, open_store


def pulled_folder(tmp_path: Path, flags: list[tuple[str, str]], classes=("red", "blue")) -> Path:
    """Flags (visitor label, model answer), each with a photo, stored and pulled as the maintainer would."""
    url = f"sqlite:///{tmp_path / 'flags.db'}"
    with open_store(url, classes=list(classes), caps=Caps(per_client_per_minute=100)) as store:
        for i, (label, answer) in enumerate(flags):
            photo = image_bytes(draw_image(label if label in classes else "green", 96, seed=100 + i), "JPEG")
            store.add(Flag("fp-1", [(answer, 0.9), ("x", 0.1)], 0.3, label, f"flag {i}", photo, "c"))
    out = tmp_path / "flagged"
    pull_flags(url, out)
    return out


@pytest.fixture
def data(make_dataset) -> Path:
    root = make_dataset(3)
    write_manifest(root, [{"url": f"file:///{p.name}", "label": p.parent.name, "file": f"{p.parent.name}/{p.name}",
                           "sha256": clean.file_sha256(p), "status": "ok"} for p in sorted(root.rglob("*.jpg"))])
    return root


def test_an_add_copies_the_photo_in_with_its_provenance_and_undo_takes_it_out(data, tmp_path):
    flagged = pulled_folder(tmp_path, [("red", "blue")])
    (src,) = (flagged / "red").iterdir()
    rows_before = [{k: v for k, v in r.items() if v} for r in read_manifest(data)]
    report = clean.apply_decisions(data, [Decision(str(src), "add", "red", sha256=clean.file_sha256(src))])
    assert report.added == [(str(src), f"red/{src.name}")] and "added 1" in report.summary()
    assert (data / "red" / src.name).read_bytes() == src.read_bytes() and src.is_file()  # copied, not moved
    row = read_manifest(data)[-1]
    assert (row["file"], row["label"], row["status"], row["backend"], row["url"], row["flag_answer"]) == \
        (f"red/{src.name}", "red", "ok", "flag", "flag:1", "blue")  # the flag's provenance, in the dataset
    assert "1 added" in clean.batches(data)[-1].summary()

    again = clean.apply_decisions(data, [Decision(str(src), "add", "red")])
    assert again.batch is None and "already added in batch" in again.skipped[0]

    undone = clean.undo(data)
    assert undone.removed == [(f"red/{src.name}", str(src))] and "removed 1 added" in undone.summary()
    assert not (data / "red" / src.name).exists() and src.is_file()
    # the same rows (the flag's columns stay in the file, empty)
    assert [{k: v for k, v in r.items() if v} for r in read_manifest(data)] == rows_before
    assert clean.apply_decisions(data, [Decision(str(src), "add", "red")]).added  # and it can be added again


def test_adds_are_checked_before_anything_moves(data, tmp_path):
    flagged = pulled_folder(tmp_path, [("red", "blue"), ("blue", "red")])
    (red,), (blue,) = (flagged / "red").iterdir(), (flagged / "blue").iterdir()
    sha = clean.file_sha256(red)
    red.write_bytes(red.read_bytes() + b"\0")  # changed after it was looked at
    with pytest.raises(StaleDecisionError) as e:
        clean.apply_decisions(data, [Decision(str(red), "add", "red", sha256=sha),
                                     Decision(str(blue), "add", "Bad Label")])
    assert "bytes changed" in str(e.value) and "bad label 'Bad Label'" in str(e.value)
    assert not list(data.rglob("flag-*"))
    with pytest.raises(WhatsthatError, match="absolute path of a picture outside"):
        Decision("flagged/red/flag-1.jpg", "add", "red")
    inside = next((data / "red").iterdir())
    with pytest.raises(StaleDecisionError, match="already inside the dataset"):
        clean.apply_decisions(data, [Decision(str(inside), "add", "blue")])


def test_the_same_picture_is_not_added_twice_and_a_lost_source_goes_to_the_trash(data, tmp_path):
    flagged = pulled_folder(tmp_path, [("red", "blue")])
    (src,) = (flagged / "red").iterdir()
    clean.apply_decisions(data, [Decision(str(src), "add", "red")])
    copy_ = tmp_path / "elsewhere" / "red" / "same.jpg"
    copy_.parent.mkdir(parents=True)
    shutil.copy(src, copy_)
    report = clean.apply_decisions(data, [Decision(str(copy_), "add", "blue")])
    assert report.batch is None and f"in the dataset already, as red/{src.name}" in report.skipped[0]
    src.unlink()  # the pulled folder lost it: undo must not delete the only copy
    undone = clean.undo(data)
    assert not (data / "red" / src.name).exists()
    (kept,) = (data / ".trash").rglob(src.name)
    assert "moved to .trash/" in undone.notes[0] and kept.is_file()


# --- the cleaner's view -----------------------------------------------------------------------------


@pytest.fixture
def cleaner_with_flags(tiny_training, tmp_path, monkeypatch):
    """A Cleaner over a copy of the tiny model's data (red, blue), with three pulled flags."""
    from fastai.learner import Learner
    from IPython.display import display

    from whatsthat.cleaning.cleaner import Cleaner
    from whatsthat.training.backbones import get_arch
    from whatsthat.training.data import make_dataloaders

    monkeypatch.setattr(builtins, "display", display, raising=False)
    data = tmp_path / "data"
    shutil.copytree(tiny_training.card["dataset"]["path"], data)
    flagged = pulled_folder(tmp_path, [("red", "blue"), (NONE_OF_THESE, "red"), ("blue", "red")])
    dls = make_dataloaders(data, size=64, bs=8, stats=get_arch("resnet18").stats)
    learn = Learner(dls, copy.deepcopy(tiny_training.learn.model), loss_func=tiny_training.learn.loss_func)
    with learn.no_bar():
        cleaner = Cleaner(learn, data, page_size=10, flagged=flagged)
    return cleaner, data, flagged


@pytest.mark.slow
def test_the_flagged_view_shows_what_visitors_said_and_accepting_adds_through_the_journal(cleaner_with_flags):
    cleaner, data, flagged = cleaner_with_flags
    icc = cleaner.icc
    assert icc.dd_cats.options[0] == "Flagged by visitors" and icc.dd_cats.value == "Flagged by visitors"
    red, none, blue = (str(flagged / f) for f in ("red/flag-1.jpg", "none-of-these/flag-2.jpg", "blue/flag-3.jpg"))
    assert cleaner.files == [red, none, blue] and "in the order they were flagged" in cleaner._page_label.value
    units = icc.iw.widget.children
    captions = [u.children[2].value for u in units]
    assert "visitor said <b>red</b>" in captions[0] and "model answered blue 90%" in captions[0]
    assert "proposed: add to red" in captions[0] and "“flag 0”" in captions[0]
    assert "not added: the model has no class for it" in captions[1]
    assert [dd.value for dd in cleaner.dropdowns] == ["red", "<Not added>", "blue"]
    assert list(cleaner.dropdowns[0].options) == ["<Not added>", "blue", "red"]
    assert [len(u.children) for u in units] == [4, 3, 4]  # Accept/Dismiss only where there is a class to add to
    assert cleaner.decisions() == [] and "2 visitor flag(s) to review" in cleaner._summary.value

    units[0].children[3].children[0].click()  # Accept: a pending add
    cleaner.dismiss_flags([blue])
    assert [(d.path, d.action, d.label) for d in cleaner.decisions()] == [(red, "add", "red")]
    with pytest.raises(WhatsthatError, match="not a class of this model: it is not added"):
        cleaner.accept_flags([none])
    report = cleaner.apply()
    assert report.added == [(red, "red/flag-1.jpg")]
    assert (data / "red/flag-1.jpg").read_bytes() == Path(red).read_bytes()
    assert read_manifest(data)[-1]["url"] == "flag:1"
    assert "✓ added as red/flag-1.jpg" in icc.iw.widget.children[0].children[2].value
    assert cleaner.dropdowns[0].disabled and not (data / "blue/flag-3.jpg").exists()

    cleaner.undo()
    assert not (data / "red/flag-1.jpg").exists() and Path(red).is_file()
    assert cleaner.flag_review[red] == "open" and "proposed: add to red" in icc.iw.widget.children[0].children[2].value

    # the maintainer knows better than the visitor: "none of these" is a blue one after all
    cleaner.dropdowns[1].value = "blue"
    assert cleaner.flag_review[none] == "changed"
    assert cleaner.apply().added == [(none, "blue/flag-2.jpg")]
    cleaner.select(category="red", split="Train")  # the categories are still there
    assert all(f.startswith("red/") for f in cleaner.files)


def test_undoing_an_earlier_relabel_after_an_add_restores_its_manifest_rows(data, tmp_path):
    # an add leaves its provenance columns in manifest.csv: rows an earlier batch recorded must still match
    flagged = pulled_folder(tmp_path, [("red", "blue")])
    (src,) = (flagged / "red").iterdir()
    before = [{k: v for k, v in r.items() if v} for r in read_manifest(data)]
    clean.apply_decisions(data, [Decision("red/red_000.jpg", "relabel", "blue")])
    clean.apply_decisions(data, [Decision(str(src), "add", "red")])
    clean.undo(data)
    report = clean.undo(data)
    assert report.manifest_rows == 1 and not report.notes
    assert [{k: v for k, v in r.items() if v} for r in read_manifest(data)] == before
