"""The photo input's kernel side: photos arrive one message each, then "done" hands them over as FileUpload's value."""

from __future__ import annotations

import datetime

from whatsthat.web.photoinput import PhotoInput


def _photo(widget: PhotoInput, batch: str, name: str, data: bytes, index: int = 0) -> None:
    content = {"event": "photo", "batch": batch, "index": index, "name": name, "type": "image/jpeg",
               "size": len(data), "original_size": 14_000_000, "last_modified": 1_700_000_000_000}  # fmt: skip
    widget._receive(widget, content, [memoryview(data)])


def test_photos_arrive_as_fileupload_value_then_the_handlers_run(monkeypatch):
    widget = PhotoInput()
    sent, calls = [], []
    monkeypatch.setattr(widget, "send", lambda content, buffers=None: sent.append(content))
    widget.on_upload(lambda w: calls.append([f["name"] for f in w.value]))
    _photo(widget, "b1", "a.jpg", b"aaa")
    _photo(widget, "b1", "b.jpg", b"bbbb", 1)
    assert calls == [] and widget.value == ()  # nothing is handed over before "done"
    widget._receive(widget, {"event": "done", "batch": "b1", "count": 2}, [])
    assert calls == [["a.jpg", "b.jpg"]]
    assert sent == [{"event": "received", "batch": "b1", "count": 2}]  # the browser's proof the photos arrived
    first = widget.value[0]
    assert bytes(first["content"]) == b"aaa" and first["size"] == 3 and first["type"] == "image/jpeg"
    assert first["last_modified"] == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
    widget.value = ()  # what App.classify_upload does after classifying


def test_a_lost_choice_is_dropped_and_extra_or_odd_messages_are_ignored(monkeypatch):
    widget = PhotoInput(max_files=2)
    sent, calls = [], []
    monkeypatch.setattr(widget, "send", lambda content, buffers=None: sent.append(content))
    widget.on_upload(lambda w: calls.append([f["name"] for f in w.value]))
    _photo(widget, "old", "lost.jpg", b"x")  # its "done" never came
    for i, name in enumerate(["1.jpg", "2.jpg", "3.jpg"]):
        _photo(widget, "new", name, b"y", i)
    widget._receive(widget, {"event": "photo", "batch": "new"}, [])  # no buffer: ignored
    widget._receive(widget, "not a dict", [])  # ignored
    widget._receive(widget, {"event": "done", "batch": "new", "count": 3}, [])
    assert calls == [["1.jpg", "2.jpg"]]  # max_files
    widget._receive(widget, {"event": "done", "batch": "new", "count": 0}, [])  # a repeated "done": nothing to hand over
    assert calls == [["1.jpg", "2.jpg"]]
    assert [m["count"] for m in sent] == [2, 0]
