"""The page's "Wrong? Tell us what it is" control, under each answer, while visitors' flags are on (issue 33).

One `FlagForm` per answer: the classes and "none of these" to pick from, a few optional words (at
most 50 characters), the consent box "Keep my photo to improve this classifier" (unchecked unless the
visitor ticks it), a Send button, and one status line: a thank-you, or "could not send, sorry" with
the store's reason when it is the visitor's to know (the rate limit, a cap). Plain ipywidgets, so its
rules are tested without a browser; every control has a visible label and is at least 44 px tall
(how it looks, tap targets and both colour schemes: assets/page.css, which the page loads).

What leaves the kernel, and only on Send: the model's answer (ranked classes, the out-of-class score),
the visitor's label and words, and the photo only when the box is ticked: the copy of at most
`PHOTO_SIDE` px that the model process made of the upload (`whatsthat.web.protocol`), never the upload
itself. The kernel sends it to the model process, which writes it (`whatsthat.web.flagdesk`); the page
never reads flags back.

`FlagForms` is what `whatsthat.web.app.App` holds: it makes the forms for a click's answers, puts each
after its answer's card in the Output, and closes the previous click's forms (a widget lives in the
kernel until it is closed). It exists only where the server turned flags on (`whatsthat serve --flags`,
which sets `ENV_FLAGS` for the kernels) and the model runs in the model process.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from whatsthat.errors import WhatsthatError
from whatsthat.flags.rules import MAX_TEXT, NONE_OF_THESE  # the store's words (not the store: no sqlite3 here)
from whatsthat.web.protocol import ENV_FLAGS, PHOTO_SIDE, ModelClient

log = logging.getLogger("whatsthat.web.flagform")

QUESTION = "Wrong? Tell us what it is"
CONSENT = "Keep my photo to improve this classifier"
THANKS = "Thank you! We will look at it."
COULD_NOT_SEND = "Could not send, sorry."
PICK_FIRST = "Pick what it is first (or “none of these”)."
TOO_LONG = f"At most {MAX_TEXT} characters, please: shorten the words."
TAP = "44px"  # the smallest tap target (WCAG 2.5.5, Apple's and Material's guidelines)
Send = Callable[[str, str, bool], dict]  # (label, text, with photo) -> the model process's reply


def flags_on(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this kernel's server offers the flag control (`whatsthat serve --flags on|URL`)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_FLAGS, "").strip().lower() == "on"


def this_kernel() -> str:
    """This kernel's id, as the server knows it: Voila sets VOILA_KERNEL_ID in every kernel it runs the page in."""
    return os.environ.get("VOILA_KERNEL_ID", "")


class FlagForm:
    """The control under one answer; `widget` is what the page shows, `send` does the sending."""

    def __init__(self, classes: Sequence[str], send: Send, *, name: str = "") -> None:
        self._send = send
        what = f" ({name})" if name else ""
        self.question = widgets.HTML(f"<b>{QUESTION}</b>")
        self.label = widgets.Dropdown(options=[*classes, NONE_OF_THESE], value=None, description="It is",
                                      layout=widgets.Layout(width="auto", min_height=TAP))  # fmt: skip
        self.text = widgets.Text(placeholder=f"a few words, at most {MAX_TEXT} characters (optional)",
                                 description="Words", layout=widgets.Layout(width="auto", min_height=TAP))  # fmt: skip
        self.consent = widgets.Checkbox(value=False, description=CONSENT, indent=False,
                                        layout=widgets.Layout(width="auto", min_height=TAP))  # fmt: skip
        self.button = widgets.Button(description="Send", tooltip=f"Send what this photo shows{what}",
                                     layout=widgets.Layout(min_height=TAP, min_width=TAP))  # fmt: skip
        self.status = widgets.HTML("", layout=widgets.Layout(min_height="1.5em"))
        self.button.on_click(self.on_send)
        self.widget = widgets.VBox([self.question, self.label, self.text, self.consent, self.button, self.status])
        self.widget.add_class("whatsthat-flag")  # styled by assets/page.css: tap targets, both colour schemes
        self.sent = False

    def _say(self, text: str, ok: bool) -> None:
        kind = "ok" if ok else "problem"  # its colour, in both schemes: assets/page.css
        self.status.value = f'<span role="status" class="whatsthat-flag-{kind}">{html.escape(text)}</span>'

    def on_send(self, _button: widgets.Button | None = None) -> None:
        """The Send button: check what the visitor gave, send it, say how it went. Never raises."""
        if self.label.value is None:
            self._say(PICK_FIRST, False)
            return
        text = (self.text.value or "").strip()
        if len(text) > MAX_TEXT:
            self._say(TOO_LONG, False)
            return
        self.button.disabled = True
        self._say("Sending…", True)
        try:
            reply = self._send(str(self.label.value), text, bool(self.consent.value))
        except WhatsthatError as e:  # ModelUnavailable, ModelLost, a refusal of the request itself
            log.warning("flag not sent: %s", e)
            reply = {"sent": False}
        except Exception:  # the callback boundary: never a traceback on the page
            log.exception("flag not sent")
            reply = {"sent": False}
        if reply.get("sent"):
            self.sent = True
            for control in (self.label, self.text, self.consent):
                control.disabled = True
            self._say(THANKS, True)
            return
        refused = reply.get("refused")
        self._say(f"{COULD_NOT_SEND} {refused}" if isinstance(refused, str) and refused else COULD_NOT_SEND, False)
        self.button.disabled = False  # the visitor may try again (the store may be back)

    def close(self) -> None:
        """Close its widgets: they leave the kernel (a closed VBox does not close its children itself)."""
        for w in (*self.widget.children, self.widget):
            w.close()


class FlagForms:
    """The forms of the answers on the page now; see the module docstring."""

    photo_side = PHOTO_SIDE  # what the classify request asks the model process for, beside each thumbnail

    def __init__(self, classes: Sequence[str], client: ModelClient) -> None:
        self.classes, self.client = list(classes), client
        self.forms: list[FlagForm] = []

    @classmethod
    def for_classifier(cls, classifier: Any, environ: Mapping[str, str] | None = None) -> FlagForms | None:
        """The forms when flags are on and `classifier` is the model process's (flags are written there), else None."""
        client = getattr(classifier, "client", None)
        if not flags_on(environ) or not isinstance(client, ModelClient):
            return None
        return cls(classifier.classes, client)

    def control(self, result: Any, number: int) -> widgets.Widget | None:
        """The form under answer `number` (the page's `App.answer_controls`), or None under an error."""
        if not (getattr(result, "ok", False) and result.ranked):
            return None
        form = FlagForm(self.classes, self._sender(result), name=result.name)
        self.forms.append(form)
        return form.widget

    def _sender(self, result: Any) -> Send:
        def send(label: str, text: str, with_photo: bool) -> dict:
            photo = getattr(result, "photo", b"") if with_photo else None  # never without the visitor's consent
            return self.client.flag(this_kernel(), result.ranked, result.ood_score, label, text, photo or None)

        return send

    def close(self) -> None:
        for form in self.forms:
            form.close()
        self.forms = []
