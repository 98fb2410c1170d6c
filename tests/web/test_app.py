"""The widget app without a browser: upload values are set as ipywidgets 8 sends them, buttons are clicked."""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
import re

import ipywidgets as widgets
import pytest
from conftest import draw_image, image_bytes
from model_fixture import TINY_CLASSES, shipped_model, tiny_model  # noqa: F401  (pytest fixtures)
from PIL import Image

from whatsthat.errors import WhatsthatError
from whatsthat.images import MAX_BYTES
from whatsthat.model.verdict import softmax_answer
from whatsthat.web import app as appmod
from whatsthat.web.app import (
    GENERIC_FAILURE,
    NOT_SURE,
    NOTHING_UPLOADED,
    App,
    app_or_message,
    bars_html,
    build_app,
    model_card_html,
    uploaded_files,
)
from whatsthat.web.photoinput import PhotoInput

CLASSES = ["black", "grizzly", "teddy"]


class StubClassifier:
    """Red pictures are grizzlies (sure), blue ones black bears (not sure); records what it was given."""

    def __init__(self, card: dict | None = None, fail: Exception | None = None):
        self.classes = list(CLASSES)
        self.card = card if card is not None else {}
        self.threshold = 0.6
        self.fail = fail
        self.seen: list[Image.Image] = []

    def predict_many(self, images):
        if self.fail is not None:
            raise self.fail
        out = []
        for im in images:
            assert isinstance(im, Image.Image)
            self.seen.append(im)
            r, _g, b = (sum(c) / len(c) for c in zip(*im.resize((16, 16)).getdata(), strict=True))
            if r > b:
                out.append([("grizzly", 0.9), ("black", 0.07), ("teddy", 0.03)])
            else:
                out.append([("black", 0.5), ("teddy", 0.3), ("grizzly", 0.2)])
        return out


def upload_value(*files: tuple[str, bytes]) -> tuple[dict, ...]:
    """What ipywidgets 8 puts in FileUpload.value after the browser sends files."""
    return tuple(
        {
            "name": name,
            "type": "image/jpeg",
            "size": len(data),
            "content": memoryview(data),
            "last_modified": dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        }
        for name, data in files
    )


def red_jpeg(seed: int = 0) -> bytes:
    return image_bytes(draw_image("red", 64, seed=seed))


def solid(colour, size=(48, 32), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def thumbnail(result) -> Image.Image:
    return Image.open(io.BytesIO(result.thumbnail))


@pytest.fixture
def stub():
    return StubClassifier(card={"metrics": {"accuracy": 0.95}, "dataset": {"n_images": 480}, "arch": "resnet18"})


@pytest.fixture
def app(stub) -> App:
    return build_app(stub)


def upload_and_click(app: App, *files: tuple[str, bytes]) -> None:
    app.upload.value = upload_value(*files)
    app.classify_button.click()


def output_html(app: App) -> str:
    return "".join(o["data"]["text/html"] for o in app.output.outputs)


# -- layout --


def test_layout_is_lesson2_vbox(app):
    assert isinstance(app.widget, widgets.VBox)
    assert isinstance(app.upload, PhotoInput)  # FileUpload's value, shrunk in the browser (photoinput.py)
    assert app.upload.accept == "image/*" and app.upload.multiple
    assert app.classify_button.description == "Classify"
    assert isinstance(app.output, widgets.Output) and isinstance(app.label, widgets.Label)

    def walk(w):
        yield w
        for child in getattr(w, "children", ()):
            yield from walk(child)

    parts = list(walk(app.widget))
    for w in (app.upload, app.classify_button, app.output, app.label, app.card):
        assert w in parts
    assert "What" in app.title.value


def test_model_card_summary(app):
    text = app.card.value
    assert "black, grizzly, teddy" in text
    assert "95.0%" in text and "480 images" in text and "resnet18" in text
    assert "60%" in text  # the not-sure threshold is stated


def test_model_card_escapes_and_tolerates_missing_fields():
    text = model_card_html({"metrics": {"error_rate": 0.25}, "arch": "<b>x</b>"}, ["<script>", "b"], 0.5)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>x</b>" not in text
    assert "75.0%" in text
    assert "Knows 2 classes" in model_card_html({}, ["a", "b"], 0.6)


def _card(correct: dict[str, int], support: dict[str, int], baseline: str) -> dict:
    n = sum(support.values())
    per_class = {k: {"support": v} for k, v in support.items()}
    accuracy = sum(correct.values()) / n
    base = {"label": baseline, "accuracy": support[baseline] / n}
    return {"metrics": {"accuracy": accuracy, "n_valid": n, "per_class": per_class, "baseline": base}}


def test_model_card_states_interval_count_and_baseline():
    # 92 of 92 right is not "100%": the page gives the 95% Wilson interval and the count
    text = model_card_html(_card({"a": 46, "b": 46}, {"a": 46, "b": 46}, "a"), ["a", "b"], 0.6)
    assert "100.0% (95% interval 96.0%-100.0%) on 92 validation pictures" in text
    assert "always answering &#x27;a&#x27; (50.0%)" in text


def test_model_card_says_when_barely_better_than_guessing():
    # 70% right where always answering "happy" is right 66% of the time: the page says so
    card = _card({"happy": 60, "sad": 10}, {"happy": 66, "sad": 34}, "happy")
    text = model_card_html(card, ["happy", "sad"], 0.6)
    assert "barely better than always answering &#x27;happy&#x27;" in text


# -- the happy path --


def test_classify_one_upload(app, stub):
    upload_and_click(app, ("bear.jpg", red_jpeg()))
    assert app.label.value == "Prediction: grizzly; Probability: 0.9000"
    assert len(app.output.outputs) == 1
    html = output_html(app)
    assert "bear.jpg" in html and "data:image/jpeg;base64," in html
    # every class ranked with a bar, highest first
    bars = re.findall(r'class="whatsthat-bar-label">([^<]+)</span>', html)
    assert bars == ["grizzly", "black", "teddy"]
    assert "90.0%" in html and "7.0%" in html and "3.0%" in html
    assert not app.classify_button.disabled


def test_not_sure_below_threshold(app):
    upload_and_click(app, ("blue.png", image_bytes(draw_image("blue", 64), "PNG")))
    assert app.label.value == f"Prediction: {NOT_SURE}: between black (50%) and teddy (30%); Probability: 0.5000"
    assert app.results[0].kind == "ambiguous"
    assert app.results[0].verdict == NOT_SURE
    assert NOT_SURE in output_html(app)


def test_several_images_at_once(app):
    upload_and_click(
        app,
        ("a.jpg", red_jpeg(1)),
        ("b.png", image_bytes(draw_image("blue", 64), "PNG")),
        ("c.jpg", red_jpeg(2)),
    )
    assert [r.verdict for r in app.results] == ["grizzly", NOT_SURE, "grizzly"]
    assert len(app.output.outputs) == 3
    assert app.label.value.startswith("3 images: a.jpg: grizzly (90.0%)")


def test_classify_again_classifies_the_last_photos_and_a_fileupload_is_emptied(app, stub):
    upload_and_click(app, ("a.jpg", red_jpeg()))
    assert len(app.output.outputs) == 1 and app.label.value.startswith("Prediction: grizzly")
    upload_and_click(app, ("b.png", image_bytes(draw_image("blue", 64), "PNG")))
    assert [r.name for r in app.results] == ["b.png"]
    app.classify_button.click()  # nothing new: the photo input kept the last photos (bounded: max_total)
    assert [r.name for r in app.results] == ["b.png"]
    # lesson 2's FileUpload is emptied after each click: its bytes (up to 64 MiB) leave the kernel
    upload = widgets.FileUpload(accept="image/*", multiple=True)
    plain = App(stub, upload=upload)
    upload_and_click(plain, ("a.jpg", red_jpeg()))
    assert upload.value == () and plain.label.value.startswith("Prediction: grizzly")
    plain.classify_button.click()
    assert plain.label.value == NOTHING_UPLOADED


def test_nothing_uploaded_says_so(app):
    app.classify_button.click()
    assert app.label.value == NOTHING_UPLOADED
    assert app.output.outputs == ()


def test_too_many_files_are_capped(stub):
    app = build_app(stub, max_files=2)
    upload_and_click(app, *[(f"{i}.jpg", red_jpeg(i)) for i in range(4)])
    assert [r.ok for r in app.results] == [True, True, False]
    assert "at most 2 images" in app.results[-1].error
    assert len(stub.seen) == 2


def test_uploaded_files_reads_memoryview():
    assert uploaded_files(upload_value(("x.jpg", b"abc"))) == [("x.jpg", b"abc")]
    assert uploaded_files(()) == []


def test_verdict_rules():
    assert softmax_answer([("a", 0.7), ("b", 0.3)], 0.6) == "a"
    assert softmax_answer([("a", 0.6), ("b", 0.4)], 0.6) == "a"
    assert softmax_answer([("a", 0.59), ("b", 0.41)], 0.6) == NOT_SURE
    assert softmax_answer([], 0.6) == NOT_SURE


# -- bad uploads: a friendly message in the page, a log line, and the app keeps working --


def _cmyk_jpeg() -> bytes:
    return image_bytes(solid((0, 255, 255, 0), mode="CMYK"), "JPEG")  # red in CMYK


def _bomb_png() -> bytes:
    return image_bytes(Image.new("1", (10_000, 5_000)), "PNG")  # 50 megapixels in a few kB


BAD_UPLOADS = {
    "not-image": (b"hello, I am a text file\n" * 10, "not an image"),
    "html": (b"<!doctype html><html><body>hi</body></html>", "web page"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    "empty": (b"", "empty"),
    "corrupt": (b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50, "corrupt"),
    "huge": (b"\xff\xd8\xff" + bytes(MAX_BYTES + 1), "limit is"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_gets_friendly_message_and_app_keeps_working(app, caplog, kind):
    data, words = BAD_UPLOADS[kind]
    caplog.set_level(logging.INFO, logger="whatsthat.web.app")
    upload_and_click(app, (f"file-{kind}.jpg", data))
    assert app.label.value.startswith(f"Could not classify file-{kind}.jpg: ")
    assert words.lower() in app.label.value.lower()
    assert "Traceback" not in app.label.value and "Traceback" not in output_html(app)
    assert "whatsthat-error" in output_html(app)
    assert any("rejected" in r.getMessage() for r in caplog.records)  # logged, not swallowed
    upload_and_click(app, ("ok.jpg", red_jpeg()))
    assert app.label.value == "Prediction: grizzly; Probability: 0.9000"


def test_truncated_jpeg(app):
    data = red_jpeg()
    upload_and_click(app, ("cut.jpg", data[: len(data) // 2]))
    assert app.results[0].reason == "truncated"
    assert "truncated" in app.label.value


def test_decompression_bomb(app):
    upload_and_click(app, ("bomb.png", _bomb_png()))
    assert app.results[0].reason == "too-many-pixels"
    assert "megapixels" in app.label.value


def test_bad_file_among_good_ones_only_fails_itself(app):
    upload_and_click(app, ("a.jpg", red_jpeg()), ("b.svg", BAD_UPLOADS["svg"][0]), ("c.jpg", red_jpeg(3)))
    assert [r.ok for r in app.results] == [True, False, True]
    assert "b.svg: SVG drawings are not supported" in app.label.value


def test_animated_gif_uses_first_frame(app, stub):
    frames = [solid((220, 20, 20)), solid((20, 20, 220))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    upload_and_click(app, ("anim.gif", buf.getvalue()))
    assert app.results[0].verdict == "grizzly"  # the red first frame, not the blue second one
    r, _g, b = stub.seen[-1].getpixel((5, 5))
    assert r > 150 and b < 100


def test_exif_rotated_phone_photo_is_upright(app, stub):
    im = solid((220, 20, 20), size=(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    upload_and_click(app, ("phone.jpg", image_bytes(im, "JPEG", exif=exif)))
    assert stub.seen[-1].size == (40, 80)
    assert thumbnail(app.results[0]).size == (40, 80)


@pytest.mark.parametrize(
    "name,data",
    [
        ("rgba.png", lambda: image_bytes(solid((220, 20, 20, 128), mode="RGBA"), "PNG")),
        ("cmyk.jpg", _cmyk_jpeg),
        ("grey.png", lambda: image_bytes(solid(128, mode="L"), "PNG")),
        ("palette.gif", lambda: image_bytes(solid((220, 20, 20)).convert("P"), "GIF")),
        ("bytes.webp", lambda: image_bytes(solid((220, 20, 20)), "WEBP")),
    ],
)
def test_colour_modes_reach_the_model_as_rgb(app, stub, name, data):
    upload_and_click(app, (name, data()))
    assert app.results[0].ok, app.results[0].error
    assert stub.seen[-1].mode == "RGB"


def test_html_in_filename_is_escaped(app):
    evil = '<img src=x onerror="alert(1)">.jpg'
    upload_and_click(app, (evil, red_jpeg()))
    html = output_html(app)
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.jpg" in html
    upload_and_click(app, (evil.replace(".jpg", ".svg"), BAD_UPLOADS["svg"][0]))
    assert "<img src=x" not in output_html(app)
    # the Label is plain text (the browser never parses it as HTML), so the raw name is right there
    assert evil.replace(".jpg", ".svg") in app.label.value


def test_unexpected_error_is_logged_and_friendly_then_recovers(caplog):
    stub = StubClassifier(fail=RuntimeError("CUDA exploded"))
    app = build_app(stub)
    with caplog.at_level(logging.ERROR, logger="whatsthat.web.app"):
        upload_and_click(app, ("a.jpg", red_jpeg()))
    assert app.label.value == GENERIC_FAILURE
    assert "CUDA" not in app.label.value and app.output.outputs == ()
    assert not app.classify_button.disabled
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info and "CUDA exploded" in str(record.exc_info[1])  # traceback goes to the log
    stub.fail = None
    upload_and_click(app, ("a.jpg", red_jpeg()))
    assert app.label.value == "Prediction: grizzly; Probability: 0.9000"


def test_prediction_refused_with_whatsthat_error(caplog):
    app = build_app(StubClassifier(fail=WhatsthatError("model is busy")))
    upload_and_click(app, ("a.jpg", red_jpeg()))
    assert app.label.value == "Could not classify a.jpg: model is busy"


def test_upload_value_that_is_not_a_tuple_of_dicts_is_caught(app, caplog, monkeypatch):
    monkeypatch.setattr(appmod, "uploaded_files", lambda value: [("x", object())])
    with caplog.at_level(logging.ERROR, logger="whatsthat.web.app"):
        app.on_classify()
    assert app.label.value == GENERIC_FAILURE
    assert caplog.records


# -- examples --


def test_example_buttons(tmp_path, stub):
    folder = tmp_path / "examples"
    folder.mkdir()
    draw_image("red", 64).save(folder / "red_one.jpg")
    draw_image("blue", 64).save(folder / "blue_one.png")
    (folder / "notes.txt").write_text("not an example")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xffnope")
    app = build_app(stub, examples=folder)
    assert [b.description for b in app.example_buttons] == ["blue_one", "broken", "red_one"]
    app.example_buttons[2].click()
    assert app.label.value == "Prediction: grizzly; Probability: 0.9000"
    app.example_buttons[1].click()  # a broken example is a friendly error too
    assert app.label.value.startswith("Could not classify broken.jpg")
    app.example_buttons[0].click()
    assert app.results[0].verdict == NOT_SURE


def test_no_examples_folder_means_no_example_section(stub, tmp_path):
    assert build_app(stub, examples=tmp_path / "absent").examples_box.children == ()


# -- loading the model for the notebook --


def test_app_or_message_missing_model(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="whatsthat.web.app"):
        w = app_or_message(tmp_path / "export.pkl")
    assert isinstance(w, widgets.HTML)
    assert "not available" in w.value and "Traceback" not in w.value
    assert any("cannot start the app" in r.getMessage() for r in caplog.records)


def test_app_or_message_corrupt_model(tmp_path):
    bad = tmp_path / "export.pkl"
    bad.write_bytes(b"this is not a pickle")
    w = app_or_message(bad)
    assert isinstance(w, widgets.HTML) and "not available" in w.value


# -- the real models --


@pytest.mark.slow
def test_tiny_real_model_end_to_end(tiny_model):  # noqa: F811
    from whatsthat.training.classifier import load_classifier

    app = build_app(load_classifier(tiny_model))
    assert app.classifier.classes == list(TINY_CLASSES)
    upload_and_click(
        app, ("red.jpg", red_jpeg()), ("bad.jpg", b"nope"), ("blue.png", image_bytes(draw_image("blue", 64), "PNG"))
    )
    good = [r for r in app.results if r.ok]
    assert len(good) == 2 and not app.results[1].ok
    for r in good:
        assert sorted(label for label, _ in r.ranked) == sorted(TINY_CLASSES)
        assert abs(sum(p for _, p in r.ranked) - 1) < 1e-4
        assert r.verdict in (*TINY_CLASSES, NOT_SURE)
    assert app.label.value.startswith("3 images: red.jpg: ")
    assert isinstance(app_or_message(tiny_model), widgets.VBox)


@pytest.mark.slow
@pytest.mark.shared
def test_shipped_model_on_real_bears(shipped_model, shared_bears):  # noqa: F811
    from whatsthat.training.classifier import load_classifier

    app = build_app(load_classifier(shipped_model))
    photos = [(c, p) for c in app.classifier.classes for p in sorted((shared_bears / c).glob("*.jpg"))[:4]]
    assert photos, f"no photos of {app.classifier.classes} in {shared_bears}"
    upload_and_click(app, *[(f"{c}-{p.name}", p.read_bytes()) for c, p in photos])
    assert all(r.ok for r in app.results)
    right = sum(r.ranked[0][0] == c for r, (c, _) in zip(app.results, photos, strict=True))
    assert right >= len(photos) - 2, [(c, r.ranked[0]) for r, (c, _) in zip(app.results, photos, strict=True)]
    html = output_html(app)
    assert html.count("data:image/jpeg;base64,") == len(photos)
    thumb = base64.b64decode(html.split("base64,")[1].split('"')[0])
    assert thumb[:3] == b"\xff\xd8\xff"


# -- the thin kernel: the model process does the work --


def test_the_kernel_module_imports_no_torch_numpy_or_fastai():
    import subprocess
    import sys

    code = "import sys, whatsthat.web.app; print(sorted(m for m in ('torch', 'numpy', 'fastai', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


class FakeClient:
    """What RemoteClassifier needs from protocol.ModelClient; `fail` raises on the next classify."""

    def __init__(self):
        self.fail: Exception | None = None
        self.sent: list[list[tuple[str, bytes]]] = []

    def load_info(self):
        return {"classes": list(CLASSES), "card": {"arch": "x"}, "threshold": 0.6, "backend": "artifact", "pid": 1}

    def classify_files(self, files, thumb_side):
        self.sent.append(list(files))
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        thumb = image_bytes(solid((200, 0, 0), (8, 8)))
        return [{"name": n, "ranked": [("grizzly", 0.9), ("black", 0.07), ("teddy", 0.03)], "ood_score": 1.0,
                 "error": "", "reason": "", "thumbnail": thumb} for n, _ in files]  # fmt: skip


def test_remote_classifier_sends_bytes_and_shows_the_answer():
    client = FakeClient()
    app = build_app(appmod.RemoteClassifier(client))
    assert "black, grizzly, teddy" in app.card.value
    upload_and_click(app, ("bear.jpg", b"\xff\xd8\xff raw bytes, decoded by the model process"))
    assert client.sent == [[("bear.jpg", b"\xff\xd8\xff raw bytes, decoded by the model process")]]
    assert app.label.value == "Prediction: grizzly; Probability: 0.9000"
    assert "data:image/jpeg;base64," in output_html(app)


@pytest.mark.parametrize(
    "error,words",
    [
        (appmod.ModelLost("the model process stopped during the request (EOFError)"), "restarting"),
        (appmod.ModelUnavailable("not answering"), "not reachable"),
        (WhatsthatError("at most 12 images per request"), "at most 12 images"),
    ],
)
def test_model_process_trouble_is_a_friendly_message_and_the_next_click_works(caplog, error, words):
    client = FakeClient()
    app = build_app(appmod.RemoteClassifier(client))
    client.fail = error
    with caplog.at_level(logging.WARNING, logger="whatsthat.web.app"):
        upload_and_click(app, ("a.jpg", red_jpeg()), ("b.jpg", red_jpeg(1)))
    assert [r.ok for r in app.results] == [False, False]
    assert words in app.results[0].error and "Traceback" not in app.label.value
    assert caplog.records  # the operator sees what happened
    upload_and_click(app, ("a.jpg", red_jpeg()))
    assert app.label.value == "Prediction: grizzly; Probability: 0.9000"


def test_app_or_none_uses_the_model_process_named_in_the_environment(model_server, monkeypatch, caplog):
    from whatsthat.web.modelprocess import Predictor
    from whatsthat.web.protocol import ENV_AUTHKEY, ENV_SOCKET

    predictor = Predictor(["a", "b"], {"name": "a / b"}, 0.6, "stub", lambda ims: [([("b", 0.7), ("a", 0.3)], None) for _ in ims])
    path, key = model_server(predictor)
    monkeypatch.setenv(ENV_SOCKET, path)
    monkeypatch.setenv(ENV_AUTHKEY, key.hex())
    with caplog.at_level(logging.INFO, logger="whatsthat.web.app"):
        app = appmod.app_or_none("export.pkl", connect=False)
    assert isinstance(app, App) and isinstance(app.classifier, appmod.RemoteClassifier)
    assert any("served by the model process" in r.getMessage() for r in caplog.records)
    app.upload.value = upload_value(("x.jpg", red_jpeg()))
    app.classify_button.click()  # connect=False: the notebook wires the button, so a click does nothing here
    assert app.label.value == ""
    app.on_classify()
    assert app.label.value == "Prediction: b; Probability: 0.7000"


def test_with_a_card_the_page_is_built_before_the_model_process_answers(model_server, tmp_path, monkeypatch, caplog):
    """Cold start: the kernel builds the page from the card beside the model, while the model process is
    still loading; the first click waits for it and gets its answer."""
    import json
    import secrets

    from whatsthat.web.modelprocess import Predictor
    from whatsthat.web.protocol import ENV_AUTHKEY, ENV_SOCKET

    model = tmp_path / "export.pkl"
    card = {"name": "a / b", "classes": ["a", "b"], "threshold": 0.7, "not_sure": {"threshold": 5.0}}
    (tmp_path / "export.card.json").write_text(json.dumps(card))
    path, key = str(tmp_path / "m.sock"), secrets.token_bytes(32)
    monkeypatch.setenv(ENV_SOCKET, path)  # nothing listens there yet: the model process is "loading"
    monkeypatch.setenv(ENV_AUTHKEY, key.hex())
    with caplog.at_level(logging.INFO, logger="whatsthat.web.app"):
        app = appmod.app_or_none(model)
    assert isinstance(app, App) and app.classifier.classes == ["a", "b"] and app.classifier.threshold == 0.7
    assert "a, b" in app.card.value and "not waiting for the process" in caplog.text

    predictor = Predictor(["a", "b"], card, 0.7, "stub", lambda ims: [([("b", 0.8), ("a", 0.2)], 1.0) for _ in ims])
    model_server(predictor, path, key)
    upload_and_click(app, ("x.jpg", red_jpeg()))
    assert app.label.value == "Prediction: b; Probability: 0.8000"


def test_a_card_without_classes_or_an_unreadable_one_asks_the_model_process(tmp_path, monkeypatch):
    client = FakeClient()
    assert appmod.RemoteClassifier(client, {"arch": "x"}).classes == CLASSES  # from load_info
    (tmp_path / "export.card.json").write_text("{not json")
    asked = []
    monkeypatch.setattr(appmod.ModelClient, "from_env", classmethod(lambda cls: client))
    monkeypatch.setattr(client, "load_info", lambda: asked.append(1) or FakeClient().load_info())
    assert appmod.load_classifier(tmp_path / "export.pkl").classes == CLASSES and asked == [1]


@pytest.mark.slow
def test_without_a_model_process_the_kernel_loads_the_model_itself(tiny_model, tmp_path, monkeypatch, caplog):  # noqa: F811
    import shutil

    from whatsthat.web.protocol import ENV_SOCKET

    monkeypatch.delenv(ENV_SOCKET, raising=False)
    with caplog.at_level(logging.INFO):
        clf = appmod.load_classifier(tiny_model)
    assert clf.backend == "artifact"  # torch-only, even in the kernel
    assert any("in the kernel itself" in r.getMessage() for r in caplog.records)
    app = build_app(clf)
    upload_and_click(app, ("red.jpg", red_jpeg()))
    assert app.results[0].ok and app.results[0].thumbnail[:3] == b"\xff\xd8\xff"

    bare = tmp_path / "export.pkl"  # a course-style export: no artifact beside it
    shutil.copy(tiny_model, bare)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        clf = appmod.load_classifier(bare)
    assert clf.backend == "fastai"
    assert any("loading export.pkl with fastai" in r.getMessage() for r in caplog.records)
    app = build_app(clf)
    upload_and_click(app, ("red.jpg", red_jpeg()))
    assert app.results[0].ok


def test_out_of_class_score_from_the_model_process_makes_it_not_sure():
    """The model process sends an ood_score; above the card's detector threshold the answer is 'not sure'."""
    client = FakeClient()
    client.load_info = lambda: {"classes": list(CLASSES), "card": {"not_sure": {"threshold": 0.5}}, "threshold": 0.6}
    app = build_app(appmod.RemoteClassifier(client))
    upload_and_click(app, ("cat.jpg", red_jpeg()))  # FakeClient answers grizzly 0.9 with ood_score 1.0
    [r] = app.results
    assert r.kind == "out_of_class" and r.verdict == NOT_SURE and r.ood_score == 1.0
    assert app.label.value == (
        f"Prediction: {NOT_SURE}: this doesn't look like black, grizzly or teddy (best guess grizzly); Probability: 0.9000"
    )
    assert "doesn&#x27;t look like black, grizzly or teddy" in output_html(app)


# -- issue 31: answers for phones and screen readers, the card in plain words --


def test_alt_text_and_the_live_region_state_the_answers(app):
    upload_and_click(app, ("a.jpg", red_jpeg(1)), ("notes.jpg", b"not a photo"))
    html = output_html(app)
    assert 'alt="Photo 1: grizzly, 90.0%"' in html  # the answer, not the file name
    assert app.live.text.startswith("Photo 1: grizzly, 90.0%. Photo 2 (notes.jpg): this is not an image")
    count = app.live.count
    app.classify_button.click()  # every click is announced, even when its words are the same
    assert app.live.count == count + 1
    assert app.live in list(_walk(app.widget))


def test_answer_controls_attach_under_each_answer_and_leave_with_it(app):
    made = []

    def flag(result, number):
        button = widgets.Button(description=f"Wrong? ({number})")
        made.append(button)
        return button if result.ok else None

    app.answer_controls.append(flag)
    upload_and_click(app, ("a.jpg", red_jpeg(1)), ("notes.jpg", b"not a photo"))
    first, second = app.output.outputs
    box = widgets.Widget.widgets[first["data"][appmod.WIDGET_VIEW]["model_id"]]
    assert box.children[1] is made[0] and "Photo 1: grizzly" in box.children[0].value
    assert "text/html" in second["data"]  # no control for it: the plain card
    app.classify_button.click()  # the next answers replace them: the old boxes are closed
    assert box.comm is None


def test_model_card_in_plain_words_with_details_behind_a_toggle():
    card = _card({"a": 46, "b": 46}, {"a": 46, "b": 46}, "a")
    text = model_card_html({**card, "arch": "efficientnet_lite0", "trained_at": "2026-12-02T10:00"}, ["a", "b"], 0.6)
    visible, details = text.split("<details>")
    assert "Right on 92 of 92 test photos (likely 96\u2013100% on new photos)." in visible
    assert "interval" not in visible and "efficientnet_lite0" in details and "2026-12-02" in details
    assert "whatsthat-warning" not in text  # a good model: nothing to warn about
    barely = model_card_html(_card({"happy": 60, "sad": 10}, {"happy": 66, "sad": 34}, "happy"), ["happy", "sad"], 0.6)
    visible = barely.split("<details>")[0]
    assert "Right on 70 of 100 test photos" in visible
    assert 'class="whatsthat-warning">This model is barely better than always answering' in visible  # prominent


def test_bars_keep_their_percentages_and_mark_the_top_class():
    html = bars_html([("grizzly", 0.973), ("a very long class name indeed", 0.027)], "grizzly")
    assert html.count('class="whatsthat-bar-pct">') == 2 and ">97.3%<" in html and ">2.7%<" in html
    assert html.startswith('<div class="whatsthat-bar whatsthat-bar-top">')


def _walk(w):
    yield w
    for child in getattr(w, "children", ()):
        yield from _walk(child)
