"""A model's files as one set: copying export.pkl with everything beside it (ModelFiles.copy_to)."""

from __future__ import annotations

import shutil

import pytest

from whatsthat.errors import WhatsthatError
from whatsthat.model.files import STAGE_PREFIX, ModelFiles


def make_set(folder, tag: str, sidecars: bool = True) -> ModelFiles:
    """export.pkl and (with `sidecars`) every file beside it, each holding `tag` and its own name."""
    files = ModelFiles(folder / "export.pkl")
    folder.mkdir(parents=True, exist_ok=True)
    for path in files.all if sidecars else (files.model,):
        path.write_text(f"{tag} {path.name}")
    return files


def test_copy_to_copies_the_whole_set(tmp_path):
    source = make_set(tmp_path / "runs" / "round1", "round1")
    copy = source.copy_to(tmp_path / "out")
    assert copy == ModelFiles(tmp_path / "out" / "export.pkl")
    assert [p.read_text() for p in copy.all] == [p.read_text() for p in source.all]
    assert all(p.is_file() for p in source.all)  # a copy: round 1's set stays where it was
    assert not list((tmp_path / "out").glob(STAGE_PREFIX + "*"))  # no staging folder left behind


def test_copy_to_replaces_the_old_set_as_a_whole(tmp_path):
    """An old detector or serving artifact never stays beside the copied model."""
    make_set(tmp_path / "out", "old")
    source = make_set(tmp_path / "round1", "new", sidecars=False)
    source.card.write_text("new card")
    copy = source.copy_to(tmp_path / "out")
    assert copy.model.read_text() == "new export.pkl" and copy.card.read_text() == "new card"
    assert not copy.detector.exists() and not copy.weights.exists() and not copy.serving.exists()


def test_a_failed_copy_leaves_the_old_set_as_it_was(tmp_path, monkeypatch):
    old = make_set(tmp_path / "out", "old")
    source = make_set(tmp_path / "round1", "new")
    real_copy, calls = shutil.copyfile, []

    def copy_then_fill_the_disk(src, dst):
        calls.append(src)
        if len(calls) == 3:  # two files copied, then the disk is full
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", copy_then_fill_the_disk)
    with pytest.raises(WhatsthatError, match="No space left on device; the model there is unchanged"):
        source.copy_to(tmp_path / "out")
    assert [p.read_text() for p in old.all] == [f"old {p.name}" for p in old.all]
    assert not list((tmp_path / "out").glob(STAGE_PREFIX + "*"))


def test_copy_to_its_own_folder_changes_nothing(tmp_path):
    files = make_set(tmp_path / "m", "same")
    assert files.copy_to(tmp_path / "m") == files
    assert [p.read_text() for p in files.all] == [f"same {p.name}" for p in files.all]


def test_copy_to_says_what_is_wrong(tmp_path):
    with pytest.raises(WhatsthatError, match="model file not found"):
        ModelFiles(tmp_path / "missing" / "export.pkl").copy_to(tmp_path / "out")
    (tmp_path / "afile").write_text("notes")
    with pytest.raises(WhatsthatError, match="is a file"):
        make_set(tmp_path / "m", "x").copy_to(tmp_path / "afile")
