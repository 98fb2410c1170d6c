"""train.ipynb end to end, quickly: import → train → interpret → clean (the test clicks) → retrain → export."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, draw_image, image_bytes

from whatsthat.cleaning.journal import batches, trash_list
from whatsthat.dataset.manifest import read_manifest
from whatsthat.flags.store import Flag, open_store
from whatsthat.model.files import ModelFiles

NOTEBOOK = ROOT / "train.ipynb"


def _with_parameters(nb, code: str = "", **params) -> None:
    """Append `code` and assignments to the cell tagged `parameters`, as papermill's injected cell would."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n\n# injected by the test\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items()) + code


# Nobody is there to click in the test: this cell, run right after the one that shows the cleaner, plays the
# user through the same widgets. It switches the dropdowns and marks pictures exactly as a click would.
PLAY_THE_USER = """\
labels = [str(v) for v in first.learn.dls.vocab]
cleaner.dismiss(cleaner.suggested)  # step 6's suggestions: this user decides by the loss order instead
cleaner.accept_flags()  # the visitors' flags: yes, that one is a red one
cleaner.select(category=labels[0], split="Train")
cleaner.dropdowns[0].value = "<Delete>"  # the worst picture of the first label: junk
cleaner.select(category=labels[1], split="Train")
cleaner.dropdowns[0].value = labels[0]  # the worst of the second: really the first label
print("\\n".join(d.describe() for d in cleaner.decisions()))
"""

# seconds, not minutes: small pictures, the course's ResNet from random weights, one epoch
QUICK = 'settings = TrainSettings(arch="resnet18", pretrained=False, size=64, bs=8)\n'


def _after_the_cleaner(nb, source: str) -> None:
    """Insert a code cell right after the cell that makes and shows the cleaner."""
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "cleaner = Cleaner(" in c.source)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source))


def test_the_notebook_has_a_short_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for n in ast.parse(cell.source).body if isinstance(n, ast.Assign) for t in n.targets}
    assert assigned == {"DATA", "OUT", "SOURCE", "DECISIONS", "FLAGGED", "settings"}
    assert 'DATA = "data"' in cell.source and "settings = TrainSettings(" in cell.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "QUICK" not in code  # the test plays the user itself: the notebook has no test-only cell
    # both rounds train with the same settings object, as `whatsthat train` does
    assert 'train(DATA, RUNS / "round1", settings)' in code and "train(DATA, OUT, settings)" in code


def run_quickly(tmp_path, make_dataset, *, clicks: bool, flags: bool = False) -> tuple[str, Path, Path]:
    """Run the notebook on 2 x 12 generated pictures with QUICK settings, `clicks`: the test plays the user
    at the cleaner; `flags`: a visitor flagged a photo as red (in $DATABASE_URL, a SQLite file). Returns every
    code cell's text output, DATA and OUT."""
    nbclient = pytest.importorskip("nbclient")
    source = make_dataset(n=12, classes=("red", "blue"), root=tmp_path / "source")
    work, data, out = tmp_path / "work", tmp_path / "work" / "data", tmp_path / "work" / "out"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = {}
    if flags:
        url = f"sqlite:///{tmp_path / 'flags.db'}"
        with open_store(url, classes=["blue", "red"]) as store:
            photo = image_bytes(draw_image("red", 96, seed=999), "JPEG")
            store.add(Flag("fp", [("blue", 0.6), ("red", 0.4)], None, "red", "", photo, "visitor"))
        os.environ["DATABASE_URL"] = url  # the kernel inherits it (the test's monkeypatch puts it back)
        params["FLAGGED"] = str(work / "flagged")
    _with_parameters(nb, QUICK, DATA=str(data), SOURCE=str(source), OUT=str(out), **params)
    if clicks:
        _after_the_cleaner(nb, PLAY_THE_USER)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return outputs, data, out


@pytest.mark.slow
def test_train_notebook_runs_end_to_end_in_quick_mode(tmp_path, make_dataset, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "")  # run_quickly sets it; this puts it back afterwards
    outputs, data, out = run_quickly(tmp_path, make_dataset, clicks=True, flags=True)
    card = json.loads((out / "export.card.json").read_text())
    assert (out / "export.pkl").stat().st_size > 1000 and card["classes"] == ["blue", "red"]
    assert (out / "runs" / "round1" / "export.pkl").is_file() and (out / "docs" / "confusion_matrix.png").is_file()
    # the headless cleaner step applied one batch: one picture trashed, one relabelled, the visitor's flag added
    (batch,) = batches(data)
    assert batch.state == "applied" and sorted(a["op"] for a in batch.actions) == ["add", "relabel", "trash"]
    assert len(trash_list(data)) == 1
    assert sorted(r["status"] for r in read_manifest(data) if r["status"] != "ok") == ["trashed"]
    (flagged,) = [r for r in read_manifest(data) if r["backend"] == "flag"]  # traced to its flag
    assert (flagged["file"], flagged["url"], flagged["flag_answer"]) == ("red/flag-1.jpg", "flag:1", "blue")
    assert (data / "red" / "flag-1.jpg").is_file() and "pulled 1 new flagged photo(s)" in outputs
    # the final model saw the cleaned data: one image fewer than round 1, and the flagged one more
    assert card["dataset"]["n_images"] == 2 * 12 - 1 + 1
    assert "cleaning + retraining" in outputs and "relabel" in outputs


@pytest.mark.slow
def test_with_nothing_cleaned_the_notebook_ships_round_one_as_a_whole_set(tmp_path, make_dataset):
    """Nobody marks a picture: the data is unchanged, so round 1's model is shipped, with every file beside it."""
    outputs, data, out = run_quickly(tmp_path, make_dataset, clicks=False)
    round1, shipped = ModelFiles(out / "runs" / "round1" / "export.pkl"), ModelFiles(out / "export.pkl")
    assert round1.model.is_file() and round1.card.is_file()
    assert [p.read_bytes() if p.is_file() else None for p in shipped.all] == \
        [p.read_bytes() if p.is_file() else None for p in round1.all]  # fmt: skip
    assert batches(data) == []
    assert "the dataset is unchanged since round 1" in outputs and "cleaning + retraining did not change" in outputs
