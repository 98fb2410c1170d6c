"""app.ipynb executed in a real Jupyter kernel (as Voila does), on the tiny model via WHATSTHAT_MODEL."""

from __future__ import annotations

import json

import nbformat
import pytest
from conftest import ROOT
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

NOTEBOOK = ROOT / "app.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def run_notebook(tmp_path, monkeypatch, model) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    monkeypatch.setenv("WHATSTHAT_MODEL", str(model))
    monkeypatch.setenv("WHATSTHAT_EXAMPLES", str(tmp_path / "no-examples"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return nb


def widget_models(nb) -> dict[str, dict]:
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return {k: v for k, v in state.items()}


def visible_outputs(nb) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def test_notebook_is_thin_and_has_no_stored_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 1
    assert all(not c.outputs for c in code)
    source = code[0].source
    assert "WHATSTHAT_MODEL" in source and "export.pkl" in source and "app_or_none" in source
    # the lesson-2 page is laid out in the notebook, from the package's widgets and callbacks
    for part in ("widgets.VBox(", "btn_upload", "btn_run.on_click(app.on_classify)", "out_pl", "lbl_pred", "connect=False"):
        assert part in source, part
    assert nb.metadata["kernelspec"]["name"] == "python3"


def assert_shows_the_app(nb) -> None:
    outputs = visible_outputs(nb)
    assert [o.output_type for o in outputs] == ["display_data"], outputs  # nothing else: no error, no stderr
    assert WIDGET_VIEW in outputs[0].data
    models = widget_models(nb)
    root = models[outputs[0].data[WIDGET_VIEW]["model_id"]]
    assert root["model_name"] == "VBoxModel"
    names = {m["model_name"] for m in models.values()}
    assert {"FileUploadModel", "ButtonModel", "OutputModel", "LabelModel"} <= names
    uploads = [m["state"] for m in models.values() if m["model_name"] == "FileUploadModel"]
    assert uploads[0]["accept"] == "image/*" and uploads[0]["multiple"] is True
    buttons = [m["state"]["description"] for m in models.values() if m["model_name"] == "ButtonModel"]
    assert "Classify" in buttons
    card = json.dumps([m["state"].get("value", "") for m in models.values() if m["model_name"] == "HTMLModel"])
    assert "blue, red" in card
    # the displayed VBox holds the upload, the button, the output and the label directly, as in lesson 2
    children = {models[c.removeprefix("IPY_MODEL_")]["model_name"] for c in root["state"]["children"]}
    assert {"OutputModel", "LabelModel"} <= children


@pytest.mark.slow
def test_notebook_shows_the_app_with_the_model_in_the_kernel(tiny_model, tmp_path, monkeypatch, capfd):  # noqa: F811
    """No model process (plain Jupyter, Binder without the start script): the kernel loads the model."""
    from whatsthat.web.protocol import ENV_SOCKET

    monkeypatch.delenv(ENV_SOCKET, raising=False)
    assert_shows_the_app(run_notebook(tmp_path, monkeypatch, tiny_model))
    assert "in the kernel itself" in capfd.readouterr().err


@pytest.mark.slow
def test_notebook_shows_the_app_served_by_a_model_process(tiny_model, tmp_path, monkeypatch, capfd):  # noqa: F811
    from whatsthat.web.modelprocess import Supervisor

    with Supervisor(tiny_model) as sup:
        for var, value in sup.env().items():
            monkeypatch.setenv(var, value)  # the kernel inherits them, as Voila's kernels do
        assert_shows_the_app(run_notebook(tmp_path, monkeypatch, tiny_model))
    assert "served by the model process" in capfd.readouterr().err


@pytest.mark.slow
def test_notebook_without_a_model_shows_a_friendly_message(tmp_path, monkeypatch, capfd):
    nb = run_notebook(tmp_path, monkeypatch, tmp_path / "missing.pkl")
    outputs = visible_outputs(nb)
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    text = json.dumps(widget_models(nb))
    assert "not available" in text
    assert "Traceback" not in text and "Traceback" not in json.dumps(outputs)
    # the details went to the server's stderr (the kernel's real fd 2), not to the page
    assert "model file not found" in capfd.readouterr().err
