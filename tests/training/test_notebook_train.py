"""train.ipynb end to end in QUICK mode: import → train → interpret → clean (headless) → retrain → export."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from whatsthat.cleaning.journal import batches, trash_list
from whatsthat.dataset.manifest import read_manifest

NOTEBOOK = ROOT / "train.ipynb"


def _with_parameters(nb, **params) -> None:
    """Append assignments to the cell tagged `parameters`, as papermill's injected cell would."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n\n# injected by the test\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())


def test_the_notebook_has_a_parameters_cell_with_quick_mode():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "QUICK = False" in cell.source and 'DATA = "data"' in cell.source and "ARCH = " in cell.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs


@pytest.mark.slow
def test_train_notebook_runs_end_to_end_in_quick_mode(tmp_path, make_dataset):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    source = make_dataset(n=12, classes=("red", "blue"), root=tmp_path / "source")
    work, data, out = tmp_path / "work", tmp_path / "work" / "data", tmp_path / "work" / "out"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _with_parameters(nb, QUICK=True, DATA=str(data), SOURCE=str(source), OUT=str(out), ARCH="resnet18",
                     PRETRAINED=False, SHARED_BEARS=str(tmp_path / "absent"))  # fmt: skip
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})  # fmt: skip
    client.execute()

    card = json.loads((out / "export.card.json").read_text())
    assert (out / "export.pkl").stat().st_size > 1000 and card["classes"] == ["blue", "red"]
    assert (out / "runs" / "round1" / "export.pkl").is_file() and (out / "docs" / "confusion_matrix.png").is_file()
    # the headless cleaner step applied one batch: one picture trashed, one relabelled
    (batch,) = batches(data)
    assert batch.state == "applied" and sorted(a["op"] for a in batch.actions) == ["relabel", "trash"]
    assert len(trash_list(data)) == 1
    assert sorted(r["status"] for r in read_manifest(data) if r["status"] != "ok") == ["trashed"]
    # the final model saw the cleaned data: one image fewer than round 1
    assert card["dataset"]["n_images"] == 2 * 12 - 1
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "cleaning + retraining" in outputs and "relabel" in outputs
