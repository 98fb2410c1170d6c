"""The web page: upload photos, click Classify, see what the model thinks (fastai lesson 2's layout).

Everything here is plain Python over ipywidgets, so the rules and callbacks are tested without a
browser. `app.ipynb` is lesson 2's cell: it creates the four widgets (`btn_upload`, `btn_run`,
`out_pl`, `lbl_pred`), hands them to `App`, and its `on_click_classify` calls `App.classify_upload`
and shows what comes back; every rule (limits, bad files, "not sure", a restarting model process)
is here. Voila turns the notebook into a page.

This module runs in every visitor's kernel, so it imports neither torch nor fastai nor numpy. Under
`whatsthat serve` (and the Binder start script) the model lives in one model process per server
(`whatsthat.web.modelprocess`), reached over `whatsthat.web.protocol`: the kernel sends the upload bytes and
gets back ranked labels, an out-of-class score and a small thumbnail per file. Where no model process
runs (plain Jupyter, a Binder without the start script), `load_classifier` loads the model in the
kernel itself with the very same decoding code, and logs that it does.

Visitors' uploads are untrusted: each goes through `images.load_image` (byte cap, decompression-bomb
guard, full decode, EXIF orientation, first animation frame, RGB), every name or message put into
HTML is escaped, and no exception reaches the page as a traceback: the callback boundary shows a
friendly message and logs the details to the server's stderr.
"""

from __future__ import annotations

import base64
import contextlib
import html
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ipywidgets as widgets

from whatsthat.errors import WhatsthatError
from whatsthat.images import ImageError, encode_jpeg, load_image, resize_max
from whatsthat.model.files import ModelFiles
from whatsthat.model.quality import Quality, card_quality  # pure Python: the page states the card's honest numbers
from whatsthat.model.verdict import DEFAULT_THRESHOLD, NOT_SURE, decide
from whatsthat.web.flagform import FlagForms, flags_on
from whatsthat.web.liveregion import LiveRegion
from whatsthat.web.photoinput import PhotoInput
from whatsthat.web.preview import TITLE  # one title for the page and its link previews
from whatsthat.web.protocol import MAX_FILES, PHOTO_SIDE, THUMB_SIDE, ModelClient, ModelLost, ModelUnavailable

log = logging.getLogger("whatsthat.web.app")

DESCRIPTION = "Upload, take, drop or paste a photo: the model says which of its classes it shows."
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PAGE_CSS = (Path(__file__).with_name("assets") / "page.css").read_text(encoding="utf-8")
EXAMPLE_SIDE = 96
MAX_EXAMPLES = 6
EXAMPLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}
NOTHING_UPLOADED = "Nothing to classify yet: upload a photo first (or try an example)."
GENERIC_FAILURE = "Sorry, something went wrong while classifying. Please try again or use another photo."
MODEL_LOST = "the classifier stopped while working on this photo and is restarting: please try again in a moment"
MODEL_UNAVAILABLE = "the classifier is not reachable right now (it may be restarting): please try again in a moment"


class ClassifierLike(Protocol):
    """What the app needs: classes, card, threshold, and either `classify_files` (the model process,
    `RemoteClassifier`) or `predict_many` over decoded pictures (in-process: `modelserver.Predictor`,
    `predict.Classifier`, a stub in tests), which `modelserver.classify_files` wraps."""

    classes: list[str]
    card: dict
    threshold: float


class RemoteClassifier:
    """The model process as the page sees it: `classify_files` sends the bytes, never decodes them here.

    `card`: the model card read beside the model file. When it names the classes, the page is built from
    it at once, and the kernel says hello to the model process in a thread of its own (the connection is
    then open before the first click, as when the page waited for it). At a cold start the kernel, and so
    the page, is ready while the model process is still importing torch, instead of after it
    (docs/serving.md); a click before the model is ready waits for it. Without such a card the
    kernel asks the model process for its classes and card first, waiting while it starts. Either way the
    classes come from the same files: the model process reads this very card.
    """

    def __init__(self, client: ModelClient, card: dict | None = None) -> None:
        self.from_card = bool(card and card.get("classes"))
        if self.from_card:
            info = {"classes": card["classes"], "card": card, "threshold": card.get("threshold", DEFAULT_THRESHOLD),
                    "backend": "not asked yet", "pid": None}  # fmt: skip
        else:
            info = client.load_info()  # waits while the model process starts (cold start) or restarts
        self.client = client
        self.classes: list[str] = [str(c) for c in info.get("classes") or []]
        self.card: dict = info.get("card") or {}
        self.threshold: float = float(info.get("threshold", DEFAULT_THRESHOLD))
        self.backend: str = str(info.get("backend", "?"))
        self.pid = info.get("pid")
        if self.from_card:
            threading.Thread(target=self._hello, daemon=True, name="model-hello").start()

    def _hello(self) -> None:
        """Connect and ask "info" (the client's lock makes a click wait for this, never race it)."""
        try:
            info = self.client.load_info()
        except WhatsthatError as e:  # ModelUnavailable, ModelLost: the next click tries again
            log.warning("the model process did not answer this kernel's hello: %s", e)
            return
        self.backend, self.pid = str(info.get("backend", "?")), info.get("pid")
        log.info("model process %s (%s) answered this kernel", self.pid, self.backend)

    def classify_files(self, files: Sequence[tuple[str, bytes]], thumb_side: int) -> list[dict]:
        if flags_on():  # then a copy of at most PHOTO_SIDE px of each photo too: what a flag keeps with consent
            return self.client.classify_files(files, thumb_side, PHOTO_SIDE)
        return self.client.classify_files(files, thumb_side)


@dataclass
class FileResult:
    """One uploaded file: its prediction (ranked labels) or why it could not be classified."""

    name: str
    ranked: list[tuple[str, float]] = field(default_factory=list)
    verdict: str = ""  # the top label, NOT_SURE, or "" when there is an error
    kind: str = ""  # verdict.decide's kind: "sure", "ambiguous" or "out_of_class"
    message: str = ""  # verdict.decide's sentence for the visitor
    why: str = ""  # verdict.decide's reason for "not sure" ("between grizzly (55%) and black (45%)")
    ood_score: float | None = None  # the model process's out-of-class score, when the model has a detector
    error: str = ""  # friendly message for the visitor
    reason: str = ""  # short stable code (ImageError.reason, "error")
    thumbnail: bytes = b""  # small JPEG of the image as the model saw it (upright, RGB)
    photo: bytes = b""  # with flags on: a JPEG of at most PHOTO_SIDE px, sent only if the visitor consents

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Shown:
    """What the page shows after a click: `cards` for the Output (a card per photo), `text` for the Label."""

    cards: tuple[dict, ...]  # display_data outputs, set as `Output.outputs` (no kernel or IPython shell needed)
    text: str  # "Prediction: grizzly; Probability: 0.9731", or why there is none
    results: list[FileResult]


def uploaded_files(value: Iterable[Any]) -> list[tuple[str, bytes]]:
    """(name, bytes) pairs from an ipywidgets 8 `FileUpload.value` (a tuple of dicts with memoryview content)."""
    files = []
    for item in value:
        content = item.get("content", b"")
        data = content.tobytes() if isinstance(content, memoryview) else bytes(content)
        files.append((str(item.get("name") or "upload"), data))
    return files


def describe(result: FileResult) -> str:
    """One line of plain text for a result, e.g. 'bear.jpg: grizzly (97.3%)'."""
    if not result.ok:
        return f"{result.name}: {result.error}"
    label, prob = result.ranked[0]
    if result.verdict == NOT_SURE:
        return f"{result.name}: {NOT_SURE}{_why(result)}{_best_guess(result, f'{label}, {percent(prob)}')}"
    return f"{result.name}: {label} ({percent(prob)})"


def _why(result: FileResult) -> str:
    """': between grizzly (55%) and black (45%)', or '' without a reason."""
    return f": {result.why}" if result.why else ""


def _best_guess(result: FileResult, guess: str) -> str:
    # "between grizzly (55%) and black (45%)" names the guess already; "doesn't look like ..." does not
    return "" if result.kind == "ambiguous" and _why(result) else f" (best guess {guess})"


def summary(results: Sequence[FileResult]) -> str:
    """The Label's text: top prediction and probability for one image, one short part per image for several."""
    if not results:
        return NOTHING_UPLOADED
    if len(results) == 1:
        r = results[0]
        if not r.ok:
            return f"Could not classify {r.name}: {r.error}"
        label, prob = r.ranked[0]
        if r.verdict == NOT_SURE:
            return f"Prediction: {NOT_SURE}{_why(r)}{_best_guess(r, label)}; Probability: {prob:.4f}"
        return f"Prediction: {label}; Probability: {prob:.4f}"
    return f"{len(results)} images: " + " | ".join(describe(r) for r in results)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def percent(prob: float) -> str:
    """'97.3%': how the page writes a probability."""
    return f"{max(0.0, min(100.0, prob * 100)):.1f}%"


def bars_html(ranked: Sequence[tuple[str, float]], top: str) -> str:
    """Every class with its probability as a horizontal bar, highest first (labels escaped).

    Laid out by assets/page.css so that the percentage always shows: the bar shrinks, never the number.
    """
    rows = []
    for label, prob in ranked:
        pct = max(0.0, min(100.0, prob * 100))
        top_class = " whatsthat-bar-top" if label == top else ""
        rows.append(
            f'<div class="whatsthat-bar{top_class}">'
            f'<span class="whatsthat-bar-label">{html.escape(label)}</span>'
            f'<span class="whatsthat-bar-track" aria-hidden="true"><span class="whatsthat-bar-fill" style="width:{pct:.1f}%"></span></span>'
            f'<span class="whatsthat-bar-pct">{percent(prob)}</span></div>'
        )
    return "".join(rows)


def spoken(result: FileResult, number: int) -> str:
    """What a screen reader says for a result, and its thumbnail's alt text: 'Photo 1: grizzly, 97.3%'."""
    if not result.ok:
        return f"Photo {number} ({result.name}): {result.error}"
    label, prob = result.ranked[0]
    if result.verdict == NOT_SURE:
        return f"Photo {number}: {NOT_SURE}, best guess {label}, {percent(prob)}"
    return f"Photo {number}: {label}, {percent(prob)}"


def announcement(results: Sequence[FileResult], text: str) -> str:
    """The live region's text for a click: each photo's answer, or the Label's text when there is none."""
    return " ".join(spoken(r, i) + "." for i, r in enumerate(results, 1)) if results else text


def result_html(result: FileResult, number: int = 1) -> str:
    """A result card: thumbnail (alt text: the answer), escaped file name, verdict and ranked bars, or the
    friendly error. `number`: the photo's place in the click's answers (1, 2, ...)."""
    name = html.escape(result.name)
    if not result.ok:
        return f'<div class="whatsthat-result whatsthat-error"><div><b>{name}</b>: {html.escape(result.error)}</div></div>'
    label, prob = result.ranked[0]
    if result.verdict == NOT_SURE:
        head = f"<b>{NOT_SURE}</b>{html.escape(_why(result) + _best_guess(result, f'{label}, {percent(prob)}'))}"
    else:
        head = f"<b>{html.escape(label)}</b> ({percent(prob)})"
    alt = html.escape(spoken(result, number), quote=True)
    img = f'<img src="{_data_uri(result.thumbnail)}" alt="{alt}">' if result.thumbnail else ""
    return (
        f'<div class="whatsthat-result">{img}<div class="whatsthat-answer"><div class="whatsthat-name">{name}</div>'
        f'<div class="whatsthat-verdict">{head}</div>{bars_html(result.ranked, result.verdict)}</div></div>'
    )


def _bundle(result: FileResult, number: int = 1) -> dict:
    """A display_data output for the Output widget (set directly: no kernel or IPython shell needed)."""
    return {
        "output_type": "display_data",
        "data": {"text/html": result_html(result, number), "text/plain": describe(result)},
        "metadata": {},
    }


def _widget_bundle(widget: widgets.Widget, text: str) -> dict:
    """A display_data output showing `widget` (its view) in the Output widget."""
    view = {"model_id": widget.model_id, "version_major": 2, "version_minor": 0}
    return {"output_type": "display_data", "data": {WIDGET_VIEW: view, "text/plain": text}, "metadata": {}}


def _card_accuracy(card: dict) -> tuple[Quality | None, float | None]:
    """What the card says of its accuracy, read once for the plain line and the details: its quality facts
    (whatsthat.model.quality) when the metrics have per-class supports, else the bare accuracy of an old
    card (or None)."""
    metrics = card.get("metrics") or {}
    if metrics.get("per_class") and isinstance(metrics.get("accuracy"), (int, float)):
        try:
            return card_quality(card), None
        except (KeyError, TypeError, ValueError) as err:
            log.warning("the model card's metrics are incomplete (%s); showing the bare accuracy", err)
    accuracy = metrics.get("accuracy")
    if accuracy is None and metrics.get("error_rate") is not None:
        accuracy = 1 - float(metrics["error_rate"])
    return None, (float(accuracy) if isinstance(accuracy, (int, float)) else None)


def _accuracy_fact(quality: Quality | None, accuracy: float | None) -> str | None:
    """The accuracy as the details state it: with its 95% interval, the number of validation pictures
    and the majority-class baseline when the card has them, so 92 pictures never read as a bare
    "100.0%"; only the bare number for an old card without per-class supports."""
    if quality is not None:
        return f"{quality.accuracy_line()}; {quality.baseline_line()}"
    if accuracy is not None:
        return f"accuracy {accuracy:.1%} on held-out photos (the card gives no count or interval)"
    return None


def _plain_accuracy(quality: Quality | None, accuracy: float | None) -> tuple[str | None, str | None]:
    """The accuracy in plain words ("Right on 92 of 92 test photos (likely 96-100% on new photos).") and
    the warning to show beside it when the model is barely better than guessing (or None)."""
    if quality is not None:
        return quality.plain_line(), quality.warning()
    if accuracy is not None:
        return f"Right on {accuracy:.0%} of the photos it was tested on.", None
    return None, None


def model_card_html(card: dict, classes: Sequence[str], threshold: float) -> str:
    """The model card for visitors, escaped: its classes and accuracy in plain words, a prominent warning
    when it is barely better than guessing, and the details (interval, baseline, training set, date,
    architecture, the "not sure" rule) behind a toggle."""
    parts = [f"<p>Knows {len(classes)} classes: <b>{html.escape(', '.join(classes))}</b>.</p>"]
    quality, bare = _card_accuracy(card)
    plain, warning = _plain_accuracy(quality, bare)
    if plain:
        parts.append(f'<p class="whatsthat-accuracy">{html.escape(plain)}</p>')
    if warning:
        parts.append(f'<p class="whatsthat-warning">{html.escape(warning)}</p>')
    dataset = card.get("dataset") or {}
    facts = []
    accuracy = _accuracy_fact(quality, bare)
    if accuracy:
        facts.append(html.escape(accuracy))
    if isinstance(dataset.get("n_images"), int):
        facts.append(f"trained on {dataset['n_images']} images")
    if card.get("arch"):
        facts.append(f"model {html.escape(str(card['arch']))}")
    if card.get("trained_at"):
        facts.append(f"trained {html.escape(str(card['trained_at'])[:10])}")
    details = []
    if facts:
        sentence = " · ".join(facts)
        details.append(sentence[0].upper() + sentence[1:] + ".")
    if card.get("not_sure"):
        details.append(f"Says &ldquo;{NOT_SURE}&rdquo; when a photo looks like none of these classes, and "
                       f"names two classes when no class reaches {threshold:.0%}.")
    else:
        details.append(f"Says &ldquo;{NOT_SURE}&rdquo; when no class reaches {threshold:.0%}.")
    parts.append("<details><summary>Details</summary>" + "".join(f"<p>{d}</p>" for d in details) + "</details>")
    return '<div class="whatsthat-card">' + "".join(parts) + "</div>"


def find_examples(folder: str | Path | None, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Up to `limit` image files (by suffix, sorted by name) in `folder`; [] when it is None or absent."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
    return found[:limit]


def _server_log_handler() -> logging.Handler:
    """A handler writing to the server's stderr.

    In a Jupyter kernel sys.stderr is forwarded to the browser; its fileno() is a copy of the
    kernel process's real stderr, which is the Voila server's terminal (or the Heroku log).
    """
    stream = sys.stderr
    if type(stream).__module__.startswith("ipykernel"):
        try:
            stream = open(stream.fileno(), "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        except (OSError, ValueError):  # no fd copy (capture_fd_output off): fd 2 is still the real stderr
            stream = sys.__stderr__
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("whatsthat-server-stderr")
    return handler


def _ensure_server_logging() -> None:
    # Only inside a kernel: elsewhere (tests, scripts) the caller's logging setup applies, and
    # without one Python's last-resort handler still prints warnings and errors to stderr.
    if not type(sys.stderr).__module__.startswith("ipykernel"):
        return
    if any(h.get_name() == "whatsthat-server-stderr" for h in log.handlers):
        return
    log.addHandler(_server_log_handler())
    log.setLevel(logging.INFO)


@contextlib.contextmanager
def _warnings_to_log(during: str) -> Iterator[None]:
    # Voila shows a cell's stderr on the page: library warnings (torch, fastai) belong in the server log
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for text in dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught):  # once each, in order
        log.info("warning while %s: %s", during, text)


class App:
    """The widget page around one classifier. `widget` is the whole page, laid out as app.ipynb lays it out.

    `upload`, `classify_button`, `output`, `label`: the page's four lesson-2 widgets when the caller
    created them (app.ipynb does), else made here. The examples' buttons write into `output` and
    `label` too.
    """

    def __init__(
        self,
        classifier: ClassifierLike,
        examples: Sequence[str | Path] | str | Path | None = None,
        *,
        title: str = TITLE,
        description: str = DESCRIPTION,
        max_files: int = MAX_FILES,
        connect: bool | None = None,
        upload: PhotoInput | widgets.FileUpload | None = None,
        classify_button: widgets.Button | None = None,
        output: widgets.Output | None = None,
        label: widgets.Label | None = None,
    ) -> None:
        """`connect`: wire the Classify button and the photo input's arrivals to `on_classify`; by default
        only a button made here (a caller that passes its own button wires both itself, as app.ipynb does)."""
        self.classifier = classifier
        self.max_files = max_files
        self.results: list[FileResult] = []
        paths = find_examples(examples) if isinstance(examples, (str, Path)) else [Path(p) for p in examples or []]
        self.example_paths: list[Path] = paths

        # title/description are the operator's own text (trusted HTML); everything else is escaped.
        # The page's style sheet travels with the title, so Voila and JupyterLab both get it.
        self.title = widgets.HTML(f'<style>{PAGE_CSS}</style><h2 class="whatsthat-title">{title}</h2>')
        self.description = widgets.HTML(f'<p class="whatsthat-description">{description}</p>')
        self.card = widgets.HTML(
            model_card_html(getattr(classifier, "card", None) or {}, list(classifier.classes), classifier.threshold)
        )
        if connect is None:
            connect = classify_button is None  # a button passed in is wired by its owner (app.ipynb)
        if upload is None:
            upload = PhotoInput(accept="image/*", multiple=True, description="Upload")
        if classify_button is None:
            classify_button = widgets.Button(description="Classify", button_style="primary", icon="search")
        self.upload, self.classify_button = upload, classify_button
        self.output = output if output is not None else widgets.Output()
        self.label = label if label is not None else widgets.Label()
        self.classify_button.add_class("whatsthat-classify")  # the page's style sheet: 44 px, its colours
        self.label.add_class("whatsthat-summary")
        # Screen readers hear each click's answers from here (the Label shows them on screen). It rides
        # in the description's box, so the lesson's layout in app.ipynb stays as it is.
        self.live = LiveRegion()
        self.description = widgets.VBox([self.description, self.live])
        # Each answer's extra controls (e.g. "Wrong? Tell us what it is"): callables (result, number) ->
        # a widget or None, attached under that answer by `answer_output` (the one place answers are built).
        self.answer_controls: list[Callable[[FileResult, int], widgets.Widget | None]] = []
        self._answer_widgets: list[widgets.Widget] = []
        if connect:
            self.classify_button.on_click(self.on_classify)
            if isinstance(self.upload, PhotoInput):  # classified as soon as they arrive
                self.upload.on_upload(self.on_classify)
        # "Wrong? Tell us what it is" under each answer: None unless flags are on (whatsthat serve --flags)
        self.flag_forms = FlagForms.for_classifier(classifier)
        if self.flag_forms is not None:
            self.answer_controls.append(self.flag_forms.control)

        self.example_buttons: list[widgets.Button] = []
        example_items = []
        for path in self.example_paths:
            button = widgets.Button(description=path.stem[:20], tooltip=f"Classify the example {path.name}")
            button.add_class("whatsthat-example")
            button.on_click(lambda _b, p=path: self.on_example(p))
            self.example_buttons.append(button)
            example_items.append(widgets.VBox([self._example_thumbnail(path), button]))
        self.examples_box = widgets.VBox(
            [widgets.HTML("<b>No photo at hand? Try an example:</b>"), widgets.HBox(example_items)]
            if example_items
            else []
        )
        self.widget = widgets.VBox(
            [
                self.title,
                self.description,
                self.card,
                widgets.HBox([self.upload, self.classify_button]),
                self.output,
                self.label,
                self.examples_box,
            ]
        )

    @staticmethod
    def _example_thumbnail(path: Path) -> widgets.Widget:
        try:
            im = resize_max(load_image(path), EXAMPLE_SIDE)
        except ImageError as e:
            log.warning("example %s is not usable: %s", path, e)
            return widgets.HTML(f"<i>{html.escape(path.name)}</i>")
        return widgets.Image(value=encode_jpeg(im, quality=80), format="jpeg")

    # -- callbacks: the boundary where every exception becomes a friendly message plus a log entry --

    def classify_upload(self) -> Shown:
        """The Classify button's work: classify what is in the upload widget, say what to show.

        Never raises: a bad file, a model process that is restarting or an unexpected error (logged)
        each becomes a friendly message. Meanwhile the button is disabled and the label says
        "Classifying N images...".
        """
        try:
            return self._guarded(lambda: uploaded_files(self.upload.value))
        finally:
            # A FileUpload is emptied: its bytes (up to 64 MiB) leave the kernel, and its "(n)" counter
            # resets, so a new selection is visibly a new upload. The photo input keeps the last photos
            # (shrunk in the browser, at most PhotoInput.max_total bytes), so Classify classifies them again.
            if self.upload.value and not isinstance(self.upload, PhotoInput):
                self.upload.value = ()

    def on_classify(self, _button: widgets.Button | None = None) -> None:
        """The Classify button's callback (app.ipynb's `on_click_classify` does the same in sight)."""
        self.show(self.classify_upload())

    def on_example(self, path: str | Path) -> None:
        """Classify one of the example images (an example button's callback)."""
        path = Path(path)
        self.show(self._guarded(lambda: [(path.name, path.read_bytes())]))

    def _guarded(self, get_files: Callable[[], list[tuple[str, bytes]]]) -> Shown:
        self.classify_button.disabled = True
        try:
            files = get_files()
            if not files:
                return self._shown([], NOTHING_UPLOADED)
            self.label.value = f"Classifying {len(files)} image{'s' if len(files) != 1 else ''}..."
            results = self.classify(files)
            return self._shown(results, summary(results))
        except Exception:  # the callback boundary: never a traceback on the page, always a log entry
            log.exception("classification failed")
            return self._shown([], GENERIC_FAILURE)
        finally:
            self.classify_button.disabled = False

    def _shown(self, results: list[FileResult], text: str) -> Shown:
        self.results = results
        for old in self._answer_widgets:  # the last click's answers leave the page: their widgets go too
            old.close()
        self._answer_widgets = []
        if self.flag_forms is not None:  # a closed box leaves its children in the kernel: the forms go here
            self.flag_forms.close()
        cards = tuple(self.answer_output(r, n) for n, r in enumerate(results, 1))
        self.live.announce(announcement(results, text))
        return Shown(cards, text, results)

    def answer_output(self, result: FileResult, number: int) -> dict:
        """One answer as the Output shows it: the result card, and under it each of `answer_controls`'
        widgets for this result. Without controls the card is plain HTML (no widget to make)."""
        controls = [w for make in self.answer_controls if (w := make(result, number)) is not None]
        if not controls:
            return _bundle(result, number)
        box = widgets.VBox([widgets.HTML(result_html(result, number)), *controls])
        box.add_class("whatsthat-answer-box")
        self._answer_widgets.append(box)
        return _widget_bundle(box, describe(result))

    def classify(self, files: Sequence[tuple[str, bytes]]) -> list[FileResult]:
        """Classify (name, bytes) pairs; a bad file gets a friendly error, the others still run."""
        batch = list(files[: self.max_files])
        try:
            with _warnings_to_log("predicting"):
                raw = self._classify_files(batch)
        except (ModelLost, ModelUnavailable) as e:
            log.warning("model process: %s", e)
            message = MODEL_LOST if isinstance(e, ModelLost) else MODEL_UNAVAILABLE
            raw = [{"name": name, "error": message, "reason": "model-unavailable"} for name, _ in batch]
        except WhatsthatError as e:
            log.warning("prediction refused: %s", e)
            raw = [{"name": name, "error": str(e), "reason": "error"} for name, _ in batch]
        results = []
        for r in raw:
            result = FileResult(name=str(r["name"]), error=r.get("error") or "", reason=r.get("reason") or "",
                                thumbnail=r.get("thumbnail") or b"", photo=r.get("photo") or b"")  # fmt: skip
            if result.ok:
                result.ranked = [(str(label), float(prob)) for label, prob in r["ranked"]]
                answer = decide(result.ranked, self._verdict_card(), r.get("ood_score"))
                result.kind, result.message, result.ood_score = answer.kind, answer.message, answer.ood_score
                result.why = answer.reason
                result.verdict = answer.label if answer.kind == "sure" and answer.label else NOT_SURE
            results.append(result)
        if len(files) > self.max_files:
            results.append(
                FileResult(
                    name=f"{len(files) - self.max_files} more file(s)",
                    error=f"not classified: at most {self.max_files} images per click",
                    reason="too-many-files",
                )
            )
        return results

    def _verdict_card(self) -> dict:
        # what verdict.decide reads: the softmax threshold, the classes, the detector's threshold (card["not_sure"])
        card = getattr(self.classifier, "card", None) or {}
        return {**card, "threshold": self.classifier.threshold, "classes": card.get("classes") or list(self.classifier.classes)}

    def _classify_files(self, files: list[tuple[str, bytes]]) -> list[dict]:
        remote = getattr(self.classifier, "classify_files", None)
        if remote is not None:
            return remote(files, THUMB_SIDE)
        from whatsthat.web.modelprocess import classify_files  # in-process: decode and predict in this kernel

        return classify_files(self.classifier, files, THUMB_SIDE)

    def show(self, shown: Shown) -> None:
        """Put what a click gave on the page: a card per file in the Output, the answer in the Label."""
        self.output.outputs = shown.cards
        self.label.value = shown.text


def build_app(
    classifier: ClassifierLike, examples: Sequence[str | Path] | str | Path | None = None, **kwargs: Any
) -> App:
    """The app for `classifier`; `examples` is a folder of example images or a list of image paths."""
    _ensure_server_logging()
    return App(classifier, examples, **kwargs)


def unavailable_message(detail: str = "") -> widgets.HTML:
    """The page shown instead of the app when the model cannot be loaded (escaped, no traceback)."""
    extra = f"<p style='color:#555'>{html.escape(detail)}</p>" if detail else ""
    return widgets.HTML(
        "<h2>What's that?</h2><p><b>Sorry, the classifier is not available right now.</b> "
        "The model could not be loaded; the server log has the details.</p>" + extra
    )


def load_classifier(model: str | Path = "export.pkl") -> ClassifierLike:
    """The model process when this kernel was given its channel, else the model loaded in this kernel.

    The channel (socket and key) comes from the environment `whatsthat serve` or the Binder start
    script set; without it (plain Jupyter, Binder without the start script) the kernel loads the
    model itself: the artifact with torch, or export.pkl with fastai.
    """
    client = ModelClient.from_env()
    if client is not None:
        try:
            card = ModelFiles(model).read_card()
        except WhatsthatError as e:  # the model process reads it too, and will say more; ask it instead
            log.warning("%s; asking the model process for its classes", e)
            card = None
        classifier = RemoteClassifier(client, card)
        if classifier.from_card:
            log.info("model %s served by the model process (page built from its card, not waiting for the process)", model)
        else:
            log.info("model %s served by the model process %s (%s)", model, classifier.pid, classifier.backend)
        return classifier
    log.info("no model process for this kernel (%s is unset): loading %s in the kernel itself", "WHATSTHAT_MODEL_SOCKET", model)
    from whatsthat.web.modelprocess import load_predictor  # imported here: torch loads only on this path

    return load_predictor(model)


def app_or_message(
    model: str | Path = "export.pkl", examples: Sequence[str | Path] | str | Path | None = None
) -> widgets.Widget:
    """Load `model` and return the app's widget, or a friendly message widget if that fails (logged)."""
    app = app_or_none(model, examples)
    return app.widget if isinstance(app, App) else app


def app_or_none(
    model: str | Path = "export.pkl", examples: Sequence[str | Path] | str | Path | None = None, **kwargs: Any
) -> App | widgets.HTML:
    """The App (its widgets and callbacks, for the notebook to lay out), or the friendly message widget."""
    _ensure_server_logging()
    try:
        t0 = time.monotonic()
        with _warnings_to_log("loading the model"):
            classifier = load_classifier(model)
        log.info("model %s loaded in %.1fs: classes %s", model, time.monotonic() - t0, classifier.classes)
        return build_app(classifier, examples, **kwargs)
    except WhatsthatError as e:
        log.error("cannot start the app: %s", e)
        return unavailable_message(str(e))
    except Exception:  # the notebook's boundary: visitors get a message, the log gets the traceback
        log.exception("cannot start the app with model %s", model)
        return unavailable_message()
