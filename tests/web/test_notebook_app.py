"""app.ipynb executed in a real Jupyter kernel (as Voila does), on the tiny model via WHATSTHAT_MODEL."""

from __future__ import annotations

import ast
import datetime as dt
import json

import nbformat
import pytest
from conftest import ROOT, draw_image, image_bytes
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
    # lesson 2's cell: the notebook makes the four widgets, defines the callback and lays out the VBox
    for part in ("btn_upload = PhotoInput(accept=\"image/*\", multiple=True)", "btn_upload.on_upload(on_click_classify)", 'btn_run = widgets.Button(description="Classify"',
                 "out_pl = widgets.Output()", "lbl_pred = widgets.Label()", "def on_click_classify(change):",
                 "btn_run.on_click(on_click_classify)", "widgets.VBox("):  # fmt: skip
        assert part in source, part
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_the_callback_is_a_few_lines_that_call_the_package():
    """The rules live in whatsthat/web/app.py: the notebook's callback only asks it and shows the answer."""
    source = nbformat.read(NOTEBOOK, as_version=4).cells[0].source
    (callback,) = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)]
    assert callback.name == "on_click_classify" and len(callback.body) <= 4
    assert not [n for n in ast.walk(callback) if isinstance(n, (ast.If, ast.Try, ast.For, ast.While))]


class StubClassifier:
    """Red pictures are grizzlies."""

    classes = ["black", "grizzly"]
    card: dict = {}
    threshold = 0.6

    def predict_many(self, images):
        return [[("grizzly", 0.9), ("black", 0.1)] if im.getpixel((0, 0))[0] > 128 else [("black", 0.55), ("grizzly", 0.45)]
                for im in images]  # fmt: skip


def run_cell_in_process(monkeypatch, tmp_path, classifier) -> dict:
    """The notebook's cell run here, with `classifier` as the model it loads; returns its variables."""
    from whatsthat.web import app as appmod

    monkeypatch.setenv("WHATSTHAT_EXAMPLES", str(tmp_path / "no-examples"))
    monkeypatch.setattr(appmod, "load_classifier", lambda model: classifier)
    namespace: dict = {}
    exec(compile(nbformat.read(NOTEBOOK, as_version=4).cells[0].source, "app.ipynb", "exec"), namespace)
    return namespace


def _upload(*files: tuple[str, bytes]) -> tuple[dict, ...]:
    """What ipywidgets 8 puts in FileUpload.value after the browser sends files."""
    when = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    return tuple({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
                  "last_modified": when} for name, data in files)  # fmt: skip


def test_the_notebooks_own_button_classifies_into_its_own_widgets(monkeypatch, tmp_path):
    nb = run_cell_in_process(monkeypatch, tmp_path, StubClassifier())
    btn_upload, btn_run, out_pl, lbl_pred = (nb[k] for k in ("btn_upload", "btn_run", "out_pl", "lbl_pred"))
    btn_run.click()
    assert lbl_pred.value == "Nothing to classify yet: upload a photo first (or try an example)."
    btn_upload.value = _upload(("bear.jpg", image_bytes(draw_image("red", 64))), ("notes.jpg", b"not a photo"))
    btn_run.click()
    assert lbl_pred.value.startswith("2 images: bear.jpg: grizzly (90.0%) | notes.jpg: this is not an image")
    cards = "".join(o["data"]["text/html"] for o in out_pl.outputs)
    assert cards.count('class="whatsthat-result') == 2 and "whatsthat-error" in cards
    assert not btn_run.disabled  # ready for the next photo
    # one callback: the notebook's, not the package's as well
    assert nb["app"].classify_button is btn_run and len(btn_run._click_handlers.callbacks) == 1


def test_the_notebooks_callback_turns_an_unexpected_error_into_a_friendly_message(monkeypatch, tmp_path):
    stub = StubClassifier()
    nb = run_cell_in_process(monkeypatch, tmp_path, stub)
    stub.predict_many = lambda images: 1 / 0
    nb["btn_upload"].value = _upload(("bear.jpg", image_bytes(draw_image("red", 64))))
    nb["btn_run"].click()
    assert nb["lbl_pred"].value.startswith("Sorry, something went wrong") and nb["out_pl"].outputs == ()


def assert_shows_the_app(nb) -> None:
    outputs = visible_outputs(nb)
    assert [o.output_type for o in outputs] == ["display_data"], outputs  # nothing else: no error, no stderr
    assert WIDGET_VIEW in outputs[0].data
    models = widget_models(nb)
    root = models[outputs[0].data[WIDGET_VIEW]["model_id"]]
    assert root["model_name"] == "VBoxModel"
    names = {m["model_name"] for m in models.values()}
    assert {"AnyModel", "ButtonModel", "OutputModel", "LabelModel"} <= names
    uploads = [m["state"] for m in models.values() if m["state"].get("_anywidget_id") == "whatsthat.web.photoinput.PhotoInput"]
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
