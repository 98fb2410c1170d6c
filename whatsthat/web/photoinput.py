"""The page's photo input: upload, take a photo, drop or paste; photos shrunk in the browser (issue 31).

ipywidgets' FileUpload is a button over a file input: no drop, no paste, no camera, and it sends every
chosen file in **one** websocket message. Five 14 MB phone photos are 70 MB, above the server's
64 MiB message limit (`whatsthat.web.serve.MAX_UPLOAD_MB`): the server closes the connection and the
page dies without a word. `PhotoInput` is an anywidget (a small widget whose JavaScript lives in
`assets/photoinput.js`) that

- offers an "Upload" button (several photos), a "Take a photo" button (`capture=environment`: the rear
  camera on phones; no `multiple`, which makes some phones leave the camera out), a drop anywhere on
  the page and a paste (Ctrl/Cmd-V) of an image;
- shrinks each photo in the browser through a canvas, to at most `max_side` px as JPEG of at most about
  `target_bytes` (the model looks at 224 px; a 14 MB photo travels as well under 1.5 MB), EXIF
  orientation applied;
- sends each photo in a message of its own (anywidget's `model.send` with one binary buffer), so one
  large file cannot take the others with it; a file the browser cannot shrink goes as it is when it
  is at most `max_bytes` (the server decodes and checks it, `whatsthat.images.load_image`), and is
  refused in the browser, with a message, before anything is sent, when it is bigger;
- then says "done", and the kernel answers "received": without that answer the page says the
  connection was lost (the "went to sleep" banner of `templates/.../asleep.js`).

To the kernel it looks like a FileUpload: `value` is a tuple of dicts with `name`, `type`, `size`,
`content` (a memoryview) and `last_modified`, and assigning `()` empties it. The bytes stay in the
kernel (`value` is not synced back to the browser), until the next choice replaces them: at most
`max_files` photos and `max_total` bytes. `on_upload(callback)` calls `callback(self)` once
the photos of one choice, drop or paste have all arrived: the page classifies them at once.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets
from ipywidgets import CallbackDispatcher

from whatsthat.images import MAX_BYTES
from whatsthat.web.protocol import MAX_FILES

log = logging.getLogger("whatsthat.web.photoinput")

ASSETS = Path(__file__).with_name("assets")
MAX_SIDE = 2048  # px: the longest side a photo is shrunk to in the browser
TARGET_BYTES = 1_000_000  # the shrunk JPEG's size the browser aims at (lower quality, then fewer pixels)
# One choice's photos together, at most: the kernel keeps the last choice (Classify classifies it again).
# Shrunk photos are about 1 MB each; only photos the browser could not shrink come near it.
MAX_TOTAL = 64 * 2**20


class PhotoInput(anywidget.AnyWidget):
    """Upload / Take a photo / drop / paste, shrunk in the browser; FileUpload's `value` in the kernel."""

    # the text, not the path: a path would make anywidget watch the file for changes (a thread per kernel)
    _esm = (ASSETS / "photoinput.js").read_text(encoding="utf-8")
    _css = (ASSETS / "photoinput.css").read_text(encoding="utf-8")

    accept = traitlets.Unicode("image/*").tag(sync=True)
    multiple = traitlets.Bool(True).tag(sync=True)
    description = traitlets.Unicode("Upload").tag(sync=True)
    camera_description = traitlets.Unicode("Take a photo").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)
    max_side = traitlets.Int(MAX_SIDE).tag(sync=True)
    target_bytes = traitlets.Int(TARGET_BYTES).tag(sync=True)
    max_bytes = traitlets.Int(MAX_BYTES).tag(sync=True)  # what the server accepts per file (images.load_image)
    max_files = traitlets.Int(MAX_FILES).tag(sync=True)
    max_total = traitlets.Int(MAX_TOTAL).tag(sync=True)
    value = traitlets.Tuple()  # FileUpload's shape; never synced: the bytes stay in the kernel

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._batch: str | None = None
        self._arrived: list[dict] = []
        self._upload_handlers = CallbackDispatcher()
        self.on_msg(self._receive)

    def on_upload(self, callback: Callable[[PhotoInput], Any], remove: bool = False) -> None:
        """Call `callback(self)` once the photos of one choice, drop, paste or camera shot have arrived."""
        self._upload_handlers.register_callback(callback, remove=remove)

    def _receive(self, _widget: Any, content: dict, buffers: list[memoryview]) -> None:
        """One message from the browser: a photo (one buffer) or the end of a choice ("done")."""
        if not isinstance(content, dict):
            return
        event, batch = content.get("event"), str(content.get("batch", ""))
        if event == "photo" and len(buffers) == 1:
            if batch != self._batch:  # a new choice: whatever a lost earlier one left is dropped
                self._batch, self._arrived = batch, []
            total = sum(f["size"] for f in self._arrived) + buffers[0].nbytes
            if len(self._arrived) < self.max_files and total <= self.max_total:  # the browser keeps to both
                self._arrived.append(_file_entry(content, buffers[0]))
            else:
                log.warning("upload %s: photo %r dropped (over %d photos or %d bytes)", batch,
                            content.get("name"), self.max_files, self.max_total)
        elif event == "done":
            arrived = self._arrived if batch == self._batch else []
            self._batch, self._arrived = None, []
            self.send({"event": "received", "batch": batch, "count": len(arrived)})
            expected = content.get("count")
            if isinstance(expected, int) and expected != len(arrived):
                log.warning("upload %s: %d photo(s) announced, %d arrived", batch, expected, len(arrived))
            if arrived:
                self.value = tuple(arrived)
                self._upload_handlers(self)


def _file_entry(content: dict, buffer: memoryview) -> dict:
    """FileUpload's entry for one file: name, type, size, content, last_modified (a UTC datetime)."""
    try:
        last_modified = datetime.datetime.fromtimestamp(float(content.get("last_modified", 0)) / 1000, datetime.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        last_modified = datetime.datetime.fromtimestamp(0, datetime.UTC)
    return {
        "name": str(content.get("name") or "photo.jpg")[:200],
        "type": str(content.get("type") or ""),
        "size": buffer.nbytes,
        "content": buffer,
        "last_modified": last_modified,
    }
