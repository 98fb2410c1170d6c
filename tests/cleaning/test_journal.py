"""Cleaning: apply/undo round trips, the stale guard, the trash, the CLI, and fastai's cleaner widget."""

from __future__ import annotations

import builtins
import copy
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import draw_image

from whatsthat.cleaning import journal as clean
from whatsthat.cleaning.cleaner import Cleaner
from whatsthat.cleaning.journal import (
    Decision,
    StaleDecisionError,
    apply_decisions,
    batches,
    empty_trash,
    file_sha256,
    journal,
    load_decisions,
    save_decisions,
    trash_list,
    undo,
)
from whatsthat.cli import main
from whatsthat.dataset.manifest import FIELDS, read_manifest, write_manifest
from whatsthat.errors import WhatsthatError

# --- helpers --------------------------------------------------------------------------------------


def with_manifest(root: Path) -> list[dict[str, str]]:
    """Write a manifest as gather would: an ok row per file, plus a duplicate and a failed row."""
    rows = []
    for f in sorted(root.glob("*/*.jpg")):
        rel = f.relative_to(root).as_posix()
        rows.append({**dict.fromkeys(FIELDS, ""), "url": f"https://example.com/{rel}", "query": f"{f.parent.name} q",
                     "label": f.parent.name, "file": rel, "sha256": file_sha256(f), "status": "ok",
                     "backend": "ddg", "fetched_at": "2025-01-01T00:00:00+00:00"})  # fmt: skip
    first = rows[0]
    rows.append({**first, "url": "https://example.com/copy.jpg", "status": "duplicate", "reason": "exact-duplicate"})
    rows.append({**dict.fromkeys(FIELDS, ""), "url": "https://example.com/404", "label": first["label"],
                 "status": "failed", "reason": "http-404"})  # fmt: skip
    write_manifest(root, rows)
    return read_manifest(root)


def tree(root: Path) -> dict[str, str]:
    """Every file under root (trash included, journal excluded) -> sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != clean.JOURNAL_NAME}  # fmt: skip


def all_bytes(root: Path) -> Counter:
    """The multiset of image contents anywhere under root: dataset or trash."""
    return Counter(h for rel, h in tree(root).items() if rel != "manifest.csv")


@pytest.fixture
def ds(make_dataset):
    root = make_dataset(n=4, classes=("red", "blue"))
    with_manifest(root)
    return root


def row_of(root: Path, url_tail: str) -> dict[str, str]:
    return next(r for r in read_manifest(root) if r["url"].endswith(url_tail))


# --- apply / undo ---------------------------------------------------------------------------------


def test_delete_goes_to_trash_and_undo_restores_exactly(ds):
    before, rows, manifest_bytes = tree(ds), read_manifest(ds), (ds / "manifest.csv").read_bytes()
    report = apply_decisions(ds, [Decision("red/red_001.jpg", "delete")])
    assert report.changed and report.batch and report.relabelled == []
    (src, dst), = report.trashed
    assert src == "red/red_001.jpg" and dst == f".trash/{report.batch}/red/red_001.jpg"
    assert not (ds / src).exists() and file_sha256(ds / dst) == before[src]
    assert all_bytes(ds) == Counter(h for r, h in before.items() if r != "manifest.csv")  # nothing lost
    row = row_of(ds, "red/red_001.jpg")
    assert row["status"] == "trashed" and row["file"] == "red/red_001.jpg" and row["reason"] == "cleaned"
    assert [r["type"] for r in journal(ds)] == ["action", "commit"]
    assert [(i.original, i.batch) for i in trash_list(ds)] == [("red/red_001.jpg", report.batch)]

    u = undo(ds)
    assert u.batch == report.batch and u.restored == [(dst, src)] and u.manifest_rows == 1
    assert tree(ds) == before and read_manifest(ds) == rows
    assert (ds / "manifest.csv").read_bytes() == manifest_bytes
    assert not (ds / ".trash").exists()  # the folders the batch created are gone again
    assert batches(ds)[0].state == "undone"


def test_relabel_never_overwrites_a_file_of_the_same_name(ds):
    # blue/ already holds a *different* picture called red_000.jpg
    draw_image("blue", 64, seed=99).save(ds / "blue" / "red_000.jpg")
    rows = with_manifest(ds)
    before = tree(ds)
    report = apply_decisions(ds, [Decision("red/red_000.jpg", "relabel", "blue")])
    assert report.relabelled == [("red/red_000.jpg", "blue/red_000-1.jpg")]
    assert any("nothing overwritten" in n for n in report.notes)
    assert tree(ds)["blue/red_000.jpg"] == before["blue/red_000.jpg"]  # the resident is untouched
    assert tree(ds)["blue/red_000-1.jpg"] == before["red/red_000.jpg"]
    moved = row_of(ds, "/red/red_000.jpg")
    assert (moved["label"], moved["file"], moved["status"]) == ("blue", "blue/red_000-1.jpg", "ok")
    assert moved["reason"] == "relabelled from red"
    assert all_bytes(ds) == Counter(h for r, h in before.items() if r != "manifest.csv")

    undo(ds)
    assert tree(ds) == before and read_manifest(ds) == rows


def test_duplicate_rows_follow_a_relabelled_file(ds):
    first = read_manifest(ds)[0]["file"]  # the with_manifest duplicate row points at this file
    report = apply_decisions(ds, [Decision(first, "relabel", "green")])
    new = report.relabelled[0][1]
    assert new == "green/" + first.split("/")[1] and any("new label folder green/" in n for n in report.notes)
    dup = next(r for r in read_manifest(ds) if r["status"] == "duplicate")
    assert dup["file"] == new and dup["label"] == first.split("/")[0]  # the reference follows, its label stays
    undo(ds)
    assert not (ds / "green").exists()  # the label folder the batch created is removed again


def test_relabel_and_delete_of_one_file_delete_wins(ds):
    before = tree(ds)
    report = apply_decisions(ds, [Decision("blue/blue_002.jpg", "relabel", "red"),
                                  Decision("blue/blue_002.jpg", "delete"),
                                  Decision("blue/blue_002.jpg", "keep")])  # fmt: skip
    assert [s for s, _ in report.trashed] == ["blue/blue_002.jpg"] and report.relabelled == []
    assert any("delete wins" in n for n in report.notes)
    undo(ds)
    assert tree(ds) == before


def test_two_relabel_targets_refuse_the_whole_batch(ds):
    before = tree(ds)
    with pytest.raises(StaleDecisionError, match="relabelled to both blue and green") as e:
        apply_decisions(ds, [Decision("red/red_000.jpg", "delete"),
                             Decision("red/red_002.jpg", "relabel", "blue"),
                             Decision("red/red_002.jpg", "relabel", "green")])  # fmt: skip
    assert e.value.paths == ["red/red_002.jpg"]
    assert tree(ds) == before and journal(ds) == []  # the valid delete was not applied either


def test_applying_the_same_decisions_twice_is_a_no_op(ds):
    decisions = [Decision("red/red_000.jpg", "delete"), Decision("blue/blue_001.jpg", "relabel", "red")]
    first = apply_decisions(ds, decisions)
    after_first, records = tree(ds), journal(ds)
    second = apply_decisions(ds, decisions)
    assert not second.changed and second.batch is None and len(second.skipped) == 2
    assert "nothing to apply (2 decision(s) already applied)" in second.summary()
    assert first.batch in second.skipped[0]
    assert tree(ds) == after_first and journal(ds) == records


def test_stale_decisions_refuse_the_batch_and_change_nothing(ds):
    seen = {rel: file_sha256(ds / rel) for rel in ("red/red_000.jpg", "red/red_001.jpg", "blue/blue_000.jpg")}
    decisions = [Decision(rel, "delete", sha256=sha) for rel, sha in seen.items()]
    draw_image("red", 64, seed=50).save(ds / "red" / "red_001.jpg")  # replaced since the view was made
    (ds / "blue" / "blue_000.jpg").rename(ds / "blue_000_elsewhere.jpg")  # moved away by someone else
    before = tree(ds)
    with pytest.raises(StaleDecisionError) as e:
        apply_decisions(ds, decisions)
    msg = str(e.value)
    assert "2 decision(s) refused, nothing was changed" in msg
    assert "red/red_001.jpg: its bytes changed" in msg and "blue/blue_000.jpg: no longer exists" in msg
    assert sorted(e.value.paths) == ["blue/blue_000.jpg", "red/red_001.jpg"]
    assert tree(ds) == before and journal(ds) == []  # red_000 (still valid) was not half-applied


@pytest.mark.parametrize("path", [".trash/x/red/a.jpg", "red", "../red/red_000.jpg", "red/sub/a.jpg", "/etc/passwd"])
def test_paths_outside_label_folders_are_refused(ds, path):
    with pytest.raises(StaleDecisionError, match="refused"):
        apply_decisions(ds, [Decision(path, "delete")])


@pytest.mark.parametrize(("label", "why"), [(".trash", "cannot be a label"), ("../up", "cannot be a label"),
                                            ("Big Bear", "bad label")])  # fmt: skip
def test_unsafe_relabel_targets_are_refused(ds, label, why):
    before = tree(ds)
    with pytest.raises(StaleDecisionError, match=why):
        apply_decisions(ds, [Decision("red/red_000.jpg", "relabel", label)])
    assert tree(ds) == before


def test_absolute_paths_inside_the_dataset_are_accepted(ds):
    report = apply_decisions(ds, [Decision(str(ds / "red" / "red_000.jpg"), "delete")])
    assert report.trashed[0][0] == "red/red_000.jpg"


def test_decision_for_a_file_moved_by_an_earlier_batch_names_where_it_went(ds):
    apply_decisions(ds, [Decision("red/red_000.jpg", "relabel", "blue")])
    with pytest.raises(StaleDecisionError, match=r"was relabelled to blue .* \(now blue/red_000.jpg\)"):
        apply_decisions(ds, [Decision("red/red_000.jpg", "delete")])


def test_undo_steps_back_one_batch_at_a_time(ds):
    t0, m0 = tree(ds), read_manifest(ds)
    b1 = apply_decisions(ds, [Decision("red/red_000.jpg", "delete")]).batch
    t1, m1 = tree(ds), read_manifest(ds)
    b2 = apply_decisions(ds, [Decision("blue/blue_000.jpg", "relabel", "red"),
                              Decision("red/red_001.jpg", "delete")]).batch  # fmt: skip
    assert [b.state for b in batches(ds)] == ["applied", "applied"]
    assert undo(ds).batch == b2 and tree(ds) == t1 and read_manifest(ds) == m1
    assert undo(ds).batch == b1 and tree(ds) == t0 and read_manifest(ds) == m0
    with pytest.raises(WhatsthatError, match="nothing to undo"):
        undo(ds)
    with pytest.raises(WhatsthatError, match="already undone"):
        undo(ds, batch=b1)


def test_undo_of_an_older_batch_is_refused_while_a_later_one_moved_its_files(ds):
    b1 = apply_decisions(ds, [Decision("red/red_000.jpg", "relabel", "blue")]).batch
    apply_decisions(ds, [Decision("blue/red_000.jpg", "delete")])
    with pytest.raises(WhatsthatError, match="moved some of the same files; undo it first"):
        undo(ds, batch=b1)
    b3 = apply_decisions(ds, [Decision("blue/blue_003.jpg", "delete")]).batch
    undo(ds, batch=b3)  # an unrelated batch can be undone out of order
    with pytest.raises(WhatsthatError, match="no batch 'nope'"):
        undo(ds, batch="nope")


def test_undo_refuses_when_the_original_place_is_taken(ds):
    apply_decisions(ds, [Decision("red/red_000.jpg", "delete")])
    draw_image("red", 64, seed=77).save(ds / "red" / "red_000.jpg")
    before = tree(ds)
    with pytest.raises(WhatsthatError, match="red/red_000.jpg is taken by another file"):
        undo(ds)
    assert tree(ds) == before


def test_a_crash_mid_batch_is_rolled_back_by_undo(ds, monkeypatch):
    before, rows = tree(ds), read_manifest(ds)
    real_move, calls = clean._move_no_replace, []

    def crash_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as good as a power cut: no cleanup code runs for it
        real_move(src, dst)

    monkeypatch.setattr(clean, "_move_no_replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        apply_decisions(ds, [Decision("red/red_000.jpg", "delete"), Decision("red/red_001.jpg", "relabel", "blue"),
                             Decision("blue/blue_000.jpg", "delete")])  # fmt: skip
    monkeypatch.setattr(clean, "_move_no_replace", real_move)
    assert [b.state for b in batches(ds)] == ["interrupted"]
    assert all_bytes(ds) == Counter(h for r, h in before.items() if r != "manifest.csv")
    with pytest.raises(WhatsthatError, match="was interrupted before it finished; roll it back"):
        apply_decisions(ds, [Decision("blue/blue_001.jpg", "delete")])
    undo(ds)
    assert tree(ds) == before and read_manifest(ds) == rows


def test_a_crash_between_link_and_unlink_is_undone(ds, monkeypatch):
    import os

    before = tree(ds)

    def link_only(src, dst):
        os.link(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(clean, "_move_no_replace", link_only)
    with pytest.raises(KeyboardInterrupt):
        apply_decisions(ds, [Decision("red/red_000.jpg", "delete")])
    monkeypatch.undo()
    undo(ds)
    assert tree(ds) == before


def test_a_failing_move_rolls_the_batch_back_at_once(ds, monkeypatch):
    before, real_move, calls = tree(ds), clean._move_no_replace, []

    def fail_on_third(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied", str(src))
        real_move(src, dst)

    monkeypatch.setattr(clean, "_move_no_replace", fail_on_third)
    with pytest.raises(WhatsthatError, match="it was rolled back, nothing changed"):
        apply_decisions(ds, [Decision(f"red/red_00{i}.jpg", "delete") for i in range(4)])
    assert tree(ds) == before and [b.state for b in batches(ds)] == ["undone"]


def test_a_hand_made_folder_without_manifest_is_cleaned_too(make_dataset):
    root = make_dataset(n=3)
    before = tree(root)
    report = apply_decisions(root, [Decision("red/red_000.jpg", "delete"), Decision("blue/blue_000.jpg", "relabel", "red")])
    assert report.changed and not (root / "manifest.csv").exists()  # no manifest appears out of nowhere
    undo(root)
    assert tree(root) == before


def test_files_missing_from_an_existing_manifest_are_moved_with_a_note(ds):
    draw_image("red", 64, seed=42).save(ds / "red" / "by_hand.jpg")
    rows = read_manifest(ds)
    report = apply_decisions(ds, [Decision("red/by_hand.jpg", "relabel", "blue")])
    assert any("no row in manifest.csv" in n for n in report.notes)
    assert read_manifest(ds) == rows


def test_keep_only_and_same_label_decisions_change_nothing(ds):
    report = apply_decisions(ds, [Decision("red/red_000.jpg"), Decision("red/red_001.jpg", "relabel", "red")])
    assert not report.changed and report.kept == 2 and journal(ds) == []


def test_dry_run_changes_nothing(ds):
    before = tree(ds)
    report = apply_decisions(ds, [Decision("red/red_000.jpg", "delete")], dry_run=True)
    assert report.trashed and not report.changed and "would move 1 image(s)" in report.summary()
    assert tree(ds) == before and journal(ds) == []


def test_a_torn_journal_tail_is_ignored_and_cut_off(ds):
    apply_decisions(ds, [Decision("red/red_000.jpg", "delete")])
    with (ds / clean.JOURNAL_NAME).open("a") as f:
        f.write('{"type": "action", "batch": "x", "sr')  # a crash in the middle of an append
    assert len(journal(ds)) == 2
    apply_decisions(ds, [Decision("red/red_001.jpg", "delete")])
    assert [r["type"] for r in journal(ds)] == ["action", "commit", "action", "commit"]


# --- trash ----------------------------------------------------------------------------------------


def test_empty_trash_deletes_only_what_it_says(ds, monkeypatch):
    monkeypatch.setattr(clean, "_now", lambda: "2020-01-01T00:00:00+00:00")
    old = apply_decisions(ds, [Decision("red/red_000.jpg", "delete"), Decision("red/red_001.jpg", "relabel", "blue")])
    monkeypatch.undo()
    new = apply_decisions(ds, [Decision("blue/blue_000.jpg", "delete")])
    stray = ds / ".trash" / "mine.jpg"
    draw_image("red", 64, seed=5).save(stray)  # put there by hand: never deleted by empty_trash
    before = tree(ds)

    preview = empty_trash(ds, older_than=30, dry_run=True)
    assert [i.original for i in preview.deleted] == ["red/red_000.jpg"] and tree(ds) == before

    report = empty_trash(ds, older_than=30)
    gone = set(before) - set(tree(ds))
    assert gone == {i.path for i in report.deleted} == {old.trashed[0][1]}
    assert report.bytes == sum(i.size for i in report.deleted) > 0
    assert {i.original for i in report.left} == {"blue/blue_000.jpg", None}
    assert all(tree(ds)[k] == v for k, v in before.items() if k not in gone)
    assert [b.state for b in batches(ds)] == ["trash emptied", "applied"]

    with pytest.raises(WhatsthatError, match="its trash was emptied"):
        undo(ds, batch=old.batch)
    undo(ds)  # the newer batch still can be
    assert (ds / "blue" / "blue_000.jpg").is_file() and stray.is_file()
    assert new.batch not in {i.batch for i in trash_list(ds)}
    assert empty_trash(ds).deleted == [] and stray.is_file()


# --- decisions files and the CLI ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_decisions_files_round_trip(tmp_path, suffix):
    decisions = [Decision("red/a.jpg", "delete", sha256="ab" * 32), Decision("red/b.jpg", "relabel", "blue"),
                 Decision("blue/c.jpg")]  # fmt: skip
    path = save_decisions(tmp_path / f"d{suffix}", decisions, root=tmp_path)
    assert load_decisions(path) == decisions


def test_bad_decisions_files_say_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(WhatsthatError, match="not valid JSON"):
        load_decisions(bad)
    bad.write_text(json.dumps([{"path": "red/a.jpg", "action": "burn"}]))
    with pytest.raises(WhatsthatError, match="decision 1: .*unknown action 'burn'"):
        load_decisions(bad)
    bad.write_text(json.dumps([{"path": "red/a.jpg", "action": "relabel"}]))
    with pytest.raises(WhatsthatError, match="relabel needs the new label"):
        load_decisions(bad)
    with pytest.raises(WhatsthatError, match="cannot read decisions file"):
        load_decisions(tmp_path / "missing.json")


def test_cli_clean_journal_trash_undo(ds, tmp_path, capsys):
    before = tree(ds)
    decisions = tmp_path / "decisions.csv"
    decisions.write_text("path,action,label\nred/red_000.jpg,delete,\nblue/blue_001.jpg,relabel,red\n")
    assert main(["clean", str(ds), "--apply", str(decisions), "--dry-run"]) == 0
    assert "would move 1 image(s)" in capsys.readouterr().out and tree(ds) == before
    assert main(["clean", str(ds), "--apply", str(decisions)]) == 0
    out = capsys.readouterr().out
    assert "moved 1 image(s) to the trash, relabelled 1" in out and "whatsthat undo" in out
    assert main(["clean", str(ds), "--apply", str(decisions)]) == 0
    assert "nothing to apply (2 decision(s) already applied)" in capsys.readouterr().out

    assert main(["journal", str(ds), "-v"]) == 0
    out = capsys.readouterr().out
    assert "applied" in out and "1 trashed, 1 relabelled" in out and "relabel  blue/blue_001.jpg -> red/blue_001.jpg" in out
    assert main(["journal", str(ds), "--json"]) == 0
    assert [r["type"] for r in json.loads(capsys.readouterr().out)] == ["action", "action", "commit"]

    assert main(["trash", str(ds), "list"]) == 0
    assert "(was red/red_000.jpg, batch" in capsys.readouterr().out
    assert main(["trash", str(ds), "empty", "--older-than", "1"]) == 0  # the batch is seconds old
    assert "would delete 0 file(s)" in capsys.readouterr().out
    assert main(["trash", str(ds), "empty"]) == 0
    assert "add --yes" in capsys.readouterr().out and len(trash_list(ds)) == 1

    assert main(["undo", str(ds)]) == 0
    assert "restored 2 image(s)" in capsys.readouterr().out and tree(ds) == before
    assert main(["undo", str(ds)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("whatsthat undo: error: nothing to undo") and "Traceback" not in err


def test_cli_errors_are_messages(ds, tmp_path, capsys):
    stale = tmp_path / "stale.json"
    save_decisions(stale, [Decision("red/gone.jpg", "delete")])
    assert main(["clean", str(ds), "--apply", str(stale)]) == 1
    assert "red/gone.jpg: no longer exists" in capsys.readouterr().err
    assert main(["clean", str(tmp_path / "nope"), "--apply", str(stale)]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["trash", str(ds), "list", "--yes"]) == 1
    assert main(["trash", str(ds), "empty", "--yes"]) == 0  # an empty trash: nothing to do
    assert "deleted 0 file(s)" in capsys.readouterr().out


# --- fastai's ImageClassifierCleaner --------------------------------------------------------------


def test_the_cleaner_outside_jupyter_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(builtins, "display", raising=False)  # as in plain python: no IPython builtins
    with pytest.raises(WhatsthatError, match="Jupyter widget and IPython's display"):
        Cleaner(object())


@pytest.fixture
def ipython_display(monkeypatch):
    """What IPython puts in builtins and fastai's cleaner calls to draw each thumbnail."""
    from IPython.display import display

    monkeypatch.setattr(builtins, "display", display, raising=False)


@pytest.fixture
def learner_on_copy(tiny_training, tmp_path):
    """The session's tiny learner (a copy of its model) over a copy of its data, which we may clean."""
    from fastai.learner import Learner

    from whatsthat.training.backbones import get_arch
    from whatsthat.training.data import make_dataloaders

    data = tmp_path / "data"
    shutil.copytree(tiny_training.card["dataset"]["path"], data)
    with_manifest(data)
    dls = make_dataloaders(data, size=64, bs=8, stats=get_arch("resnet18").stats)
    learn = Learner(dls, copy.deepcopy(tiny_training.learn.model), loss_func=tiny_training.learn.loss_func)
    return learn, data


@pytest.mark.slow
def test_the_cleaner_keeps_decisions_across_views_and_applies_them(learner_on_copy, ipython_display, capsys):
    from fastai.vision.widgets import ImageClassifierCleaner

    learn, data = learner_on_copy
    before, rows = tree(data), read_manifest(data)
    with learn.no_bar():
        cleaner = Cleaner(learn, page_size=5)
    icc = cleaner.icc
    assert isinstance(icc, ImageClassifierCleaner) and cleaner.root == data.resolve()
    assert (icc.dd_cats.value, icc.dd_ds.value) == ("blue", "Train")
    blue_train = [clean.relative_path(data, f) for f in cleaner.view_files()]
    assert len(blue_train) > 5 and cleaner.pages == -(-len(blue_train) // 5)
    assert cleaner.files == blue_train[:5]
    # every thumbnail: picture, fastai's dropdown (still where fastai reads it), our prediction
    box = icc.iw.widget.children[0]
    assert box.children[1] is cleaner.dropdowns[0] and box.children[2].value.startswith("predicted ")

    # a user marks two pictures of blue/Train ...
    a, b = cleaner.files[:2]
    cleaner.dropdowns[0].value = "<Delete>"
    cleaner.dropdowns[1].value = "red"
    assert list(icc.delete()) == [0] and list(icc.change()) == [(1, "red")]  # fastai agrees on this view
    # ... switches category: fastai draws fresh dropdowns; index 0 is another file and is not marked
    icc.dd_cats.value = "red"
    c = cleaner.files[0]
    assert c.startswith("red/") and cleaner.dropdowns[0].value == "<Keep>" and list(icc.delete()) == []
    cleaner.dropdowns[0].value = "<Delete>"
    # ... switches to Valid
    icc.dd_ds.value = "Valid"
    d = cleaner.files[0]
    cleaner.dropdowns[0].value = "blue"
    # ... goes back to blue/Train: the decisions are still there, on the same files
    cleaner.select(category="blue", split="Train")
    assert cleaner.files[:2] == [a, b] and [dd.value for dd in cleaner.dropdowns[:2]] == ["<Delete>", "red"]
    # ... pages on beyond the first page and marks one more
    cleaner.show_page(1)
    e = cleaner.files[0]
    assert e == blue_train[5] and cleaner.dropdowns[0].value == "<Keep>"
    cleaner.dropdowns[0].value = "<Delete>"
    cleaner.show_page(0)
    assert cleaner.dropdowns[0].value == "<Delete>" and cleaner.page == 0
    # choosing <Keep> again, or the file's own label, withdraws a decision
    cleaner.dropdowns[2].value = "blue"
    cleaner.dropdowns[3].value = "<Delete>"
    cleaner.dropdowns[3].value = "<Keep>"
    assert {dd.path: (dd.action, dd.label) for dd in cleaner.decisions()} == {
        a: ("delete", None), b: ("relabel", "red"), c: ("delete", None), d: ("relabel", "blue"), e: ("delete", None)}
    assert all(dd.sha256 == before[dd.path] for dd in cleaner.decisions())  # the bytes the user looked at
    assert "5 pending decision(s)" in cleaner._summary.value

    report = cleaner.apply()
    assert sorted(s for s, _ in report.trashed) == sorted([a, c, e])
    assert dict(report.relabelled) == {b: "red/" + b.split("/")[1], d: "blue/" + d.split("/")[1]}
    assert cleaner.decisions() == [] and a not in [clean.relative_path(data, f) for f in cleaner.view_files()]
    assert all_bytes(data) == Counter(h for r, h in before.items() if r != "manifest.csv")

    # a picture that changes on disk after it was shown: the next apply refuses, keeps it pending
    f = cleaner.files[0]
    cleaner.dropdowns[0].value = "<Delete>"
    original = (data / f).read_bytes()
    draw_image("green", 64, seed=1).save(data / f)
    capsys.readouterr()
    cleaner._apply_button.click()  # the button shows the refusal (outside a kernel: on stdout)
    assert "bytes changed since the decision was made" in capsys.readouterr().out
    with pytest.raises(StaleDecisionError, match="bytes changed"):
        cleaner.apply()
    assert cleaner.refused == [f] and "⚠" in cleaner._summary.value and len(cleaner.decisions()) == 1
    cleaner.forget()
    assert cleaner.decisions() == [] and cleaner.refused == [] and cleaner.dropdowns[0].value == "<Keep>"
    (data / f).write_bytes(original)

    cleaner._undo_button.click()
    assert f"undid batch {report.batch}" in capsys.readouterr().out
    assert tree(data) == before and read_manifest(data) == rows
    assert a in [clean.relative_path(data, p) for p in cleaner.view_files()]  # shown again after undo
