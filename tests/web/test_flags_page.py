"""Visitors' flags from the page to the store (issue 33): the flag control, the model process's desk, `serve --flags`.

Real stores only: a SQLite file, and PostgreSQL (Debian's, tests/pgserver.py) through the `db_url`
fixture; a server of its own for the test that stops it.
"""

from __future__ import annotations

import html
import io
import logging
import secrets
import threading
import time

import pytest
from conftest import draw_image, image_bytes
from PIL import Image

from whatsthat.flags.store import NONE_OF_THESE, Caps, client_hash, open_store
from whatsthat.web.app import App, RemoteClassifier
from whatsthat.web.flagdesk import FlagDesk, model_fingerprint
from whatsthat.web.flagform import CONSENT, COULD_NOT_SEND, PICK_FIRST, THANKS, TOO_LONG, FlagForm, FlagForms
from whatsthat.web.modelprocess import Predictor, Supervisor
from whatsthat.web.protocol import ENV_FLAG_SECRET, ENV_FLAGS, ENV_FLAGS_URL, PHOTO_SIDE, ModelClient
from whatsthat.web.serve import flags_url, voila_settings

CLASSES = ["blue", "red"]
CARD = {"name": "stub", "classes": CLASSES, "not_sure": {"model_fingerprint": "abc123"}}


def red(size: int = 64) -> bytes:
    return image_bytes(draw_image("red", size))


def stub_predictor() -> Predictor:
    def score(images):
        out = []
        for im in images:
            r, _g, b = (sum(c) / len(c) for c in zip(*im.resize((8, 8)).getdata(), strict=True))
            out.append(([("red", 0.9), ("blue", 0.1)] if r > b else [("blue", 0.8), ("red", 0.2)], 0.25))
        return out

    return Predictor(list(CLASSES), dict(CARD), 0.6, "stub", score)


def start(model_server, desk: FlagDesk | None) -> ModelClient:
    """A model process's server loop in a thread (stub model, the given desk); a client to it."""
    path, key = model_server(stub_predictor(), flags=desk)
    return ModelClient(path, key, connect_wait=5)


SECRET = b"k" * 32


@pytest.fixture
def desk(db_url):
    d = FlagDesk(db_url, SECRET, CLASSES)
    yield d
    d.close()


def stored(url: str):
    with open_store(url, create=False) as store:
        return store.rows()


# -- the model process's side --


def test_a_flag_travels_to_the_store_with_the_photo_only_with_consent(model_server, desk, db_url):
    client = start(model_server, desk)
    big = red(1500)
    [result] = client.classify_files([("bear.jpg", big)], 32, PHOTO_SIDE)
    photo = result["photo"]
    with Image.open(io.BytesIO(photo)) as im:  # the copy a flag may keep: a JPEG of at most 512 px, no EXIF
        assert im.format == "JPEG" and max(im.size) == PHOTO_SIDE and not im.info.get("exif")
    client.tell_client("kernel-1", "203.0.113.7")
    with_photo = client.flag("kernel-1", result["ranked"], result["ood_score"], "blue", "my teddy", photo)
    without = client.flag("kernel-1", result["ranked"], result["ood_score"], NONE_OF_THESE, "")
    assert with_photo["sent"] and without["sent"] and with_photo["id"] != without["id"]
    rows = stored(db_url)
    assert [(r.label, r.text, r.photo is not None) for r in rows] == [("blue", "my teddy", True),
                                                                       (NONE_OF_THESE, "", False)]  # fmt: skip
    assert rows[0].photo == photo and rows[1].photo is None and rows[1].photo_bytes == 0
    assert rows[0].model == "abc123" == model_fingerprint(CARD)
    assert rows[0].ranked == [("red", 0.9), ("blue", 0.1)] and rows[0].ood_score == pytest.approx(0.25)
    # the client is the keyed hash of the address the server gave, never the address
    assert rows[0].client == client_hash("203.0.113.7", SECRET) == rows[1].client
    assert all("203.0.113.7" not in repr(r) for r in rows)


def test_no_photo_copy_without_flags_and_flag_requests_are_refused_politely(model_server):
    client = start(model_server, None)
    [result] = client.classify_files([("bear.jpg", red())], 32, PHOTO_SIDE)
    assert result["photo"] == b"" and result["ranked"]  # classification as ever, nothing more kept
    with pytest.raises(Exception, match="flags are off"):
        client.flag("k", result["ranked"], None, "blue")


def test_a_kernel_nobody_vouched_for_counts_by_its_own_id(model_server, desk, db_url):
    client = start(model_server, desk)
    client.flag("kernel-9", [("red", 0.9)], None, "blue")
    assert stored(db_url)[0].client == client_hash("kernel:kernel-9", SECRET)


def test_refusals_reach_the_visitor_as_sentences_and_malformed_flags_as_errors(model_server, db_url):
    desk = FlagDesk(db_url, SECRET, CLASSES)
    try:
        client = start(model_server, desk)
        unknown = client.flag("k", [("red", 0.9)], None, "a grizzly?")  # not one of the classes
        assert unknown["sent"] is False and unknown["refused"]
        refused = client.flag("k", [("red", 0.9)], None, "blue", "x" * 51)
        assert refused["sent"] is False and refused["refused"]  # the store's sentence, for the page to show
        bad = client.flag("k", [("red", 0.9)], None, "<script>")
        assert bad["sent"] is False and bad["refused"]
        with pytest.raises(Exception, match="malformed flag"):
            client.request({"op": "flag", "kernel": "k", "ranked": "red", "label": "blue", "text": ""})
        with pytest.raises(Exception, match="no kernel id"):
            client.request({"op": "flag", "ranked": [], "label": "blue"})
        assert stored(db_url) == []  # nothing malformed was written
    finally:
        desk.close()


def test_the_rate_limit_answers_with_its_sentence(model_server, db_url):
    desk = FlagDesk(db_url, SECRET, CLASSES)
    try:
        client = start(model_server, desk)
        client.tell_client("k", "198.51.100.1")
        replies = [client.flag("k", [("red", 0.9)], None, "blue") for _ in range(Caps().per_client_per_minute + 1)]
        assert all(r["sent"] for r in replies[:-1])
        assert replies[-1]["sent"] is False and "minute" in replies[-1]["refused"]
        assert len(stored(db_url)) == Caps().per_client_per_minute
    finally:
        desk.close()


def test_a_database_stopped_mid_session_never_stops_classification(model_server, caplog):
    """pg_ctl stop while the page runs: classify goes on, a flag is answered "down" (and logged), then works again."""
    from pgserver import PostgresServer, find_bin

    bindir = find_bin()
    if bindir is None:
        pytest.skip("needs PostgreSQL (initdb, pg_ctl)")
    server = PostgresServer(bindir, port=54400 + secrets.randbelow(500))
    server.start()
    desk = None
    try:
        url = server.new_database()
        desk = FlagDesk(url, SECRET, CLASSES)
        client = start(model_server, desk)
        [result] = client.classify_files([("a.jpg", red())], 32, PHOTO_SIDE)
        assert client.flag("k", result["ranked"], None, "blue", "", result["photo"])["sent"]
        server.stop()
        with caplog.at_level(logging.WARNING, logger="whatsthat.web.flagdesk"):
            t0 = time.monotonic()
            down = client.flag("k", result["ranked"], None, "blue")
            took = time.monotonic() - t0
            [again] = client.classify_files([("b.jpg", red())], 32, PHOTO_SIDE)
        assert down == {"ok": True, "sent": False, "down": True, "blobs": 0} and took < 9
        assert again["ranked"] and again["photo"]  # classification did not notice
        assert "down" in caplog.text and "***" not in url  # the log says why
        server.start()
        assert client.flag("k", result["ranked"], None, "red")["sent"]  # the store reconnects by itself
        assert [r.label for r in stored(url)] == ["blue", "red"]  # nothing stored before was lost
    finally:
        if desk is not None:
            desk.close()
        server.close()


def test_a_store_that_is_down_at_the_start_is_logged_and_classification_starts(model_server, tmp_path, caplog):
    url = f"postgresql://nobody@/none?host={tmp_path}&port=1"  # no server listens there
    with caplog.at_level(logging.ERROR, logger="whatsthat.web.flagdesk"):
        desk = FlagDesk(url, SECRET, CLASSES)
        try:
            client = start(model_server, desk)
            assert client.classify_files([("a.jpg", red())], 32)[0]["ranked"]
            assert client.flag("k", [("red", 0.9)], None, "blue")["down"]
        finally:
            desk.close()
    assert "cannot reach the store" in caplog.text


def test_the_supervisor_gives_the_store_to_the_model_process_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_FLAGS_URL, "sqlite:////inherited.db")  # never taken from the environment
    off = Supervisor(tmp_path / "export.pkl")
    on = Supervisor(tmp_path / "export.pkl", flags_url="sqlite:////srv/flags.db")
    try:
        assert ENV_FLAGS_URL not in off.child_env()
        env = on.child_env()
        assert env[ENV_FLAGS_URL] == "sqlite:////srv/flags.db" and len(bytes.fromhex(env[ENV_FLAG_SECRET])) == 32
        assert env[ENV_FLAG_SECRET] == on.child_env()[ENV_FLAG_SECRET]  # one secret per server: restarts keep it
    finally:
        for s in (off, on):
            s.stop()


# -- the page's side --


class FakeSend:
    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def __call__(self, label, text, with_photo):
        self.calls.append((label, text, with_photo))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_the_form_asks_first_and_consent_is_off_by_default():
    send = FakeSend({"sent": True, "id": 1})
    form = FlagForm(CLASSES, send)
    assert form.consent.value is False and form.consent.description == CONSENT
    assert list(form.label.options) == [*CLASSES, NONE_OF_THESE] and form.label.value is None
    form.on_send()
    assert html.escape(PICK_FIRST) in form.status.value and send.calls == []
    form.label.value, form.text.value = "blue", "y" * 51
    form.on_send()
    assert html.escape(TOO_LONG) in form.status.value and send.calls == []
    form.text.value = "  a toy  "
    form.on_send()
    assert send.calls == [("blue", "a toy", False)] and THANKS in form.status.value
    assert form.label.disabled and form.button.disabled


@pytest.mark.parametrize("reply,expected", [
    ({"sent": False, "down": True}, COULD_NOT_SEND),
    ({"sent": False, "refused": "You have sent several flags in the last minute; please wait a minute and try again."},
     "please wait a minute"),
    (RuntimeError("a bug"), COULD_NOT_SEND),
])  # fmt: skip
def test_the_form_says_it_could_not_send_and_lets_the_visitor_retry(reply, expected):
    form = FlagForm(CLASSES, FakeSend(reply))
    form.label.value = NONE_OF_THESE
    form.on_send()
    assert COULD_NOT_SEND in form.status.value and expected in form.status.value
    assert not form.button.disabled and "Traceback" not in form.status.value


def test_the_page_shows_a_form_under_each_answer_and_sends_the_photo_only_with_consent(model_server, desk, db_url,
                                                                                        monkeypatch):  # fmt: skip
    monkeypatch.setenv(ENV_FLAGS, "on")
    monkeypatch.setenv("VOILA_KERNEL_ID", "kernel-7")
    client = start(model_server, desk)
    client.tell_client("kernel-7", "192.0.2.5")
    app = App(RemoteClassifier(client, dict(CARD)))
    assert app.flag_forms is not None
    shown = app._guarded(lambda: [("a.jpg", red(900)), ("notes.txt", b"not a photo"), ("b.jpg", red())])
    views = [c for c in shown.cards if "application/vnd.jupyter.widget-view+json" in c["data"]]
    assert len(shown.cards) == 3 and len(views) == 2  # a form under each answer, none under the error
    first, second = app.flag_forms.forms
    assert shown.results[0].photo and max(Image.open(io.BytesIO(shown.results[0].photo)).size) == PHOTO_SIDE
    first.label.value, first.consent.value = "blue", True
    first.on_send()
    second.label.value = NONE_OF_THESE
    second.on_send()  # consent left unticked
    assert THANKS in first.status.value and THANKS in second.status.value
    rows = stored(db_url)
    assert [(r.label, r.photo is not None) for r in rows] == [("blue", True), (NONE_OF_THESE, False)]
    assert rows[0].photo == shown.results[0].photo and rows[0].client == client_hash("192.0.2.5", SECRET)
    # the next click's answers replace the forms: the old widgets leave the kernel
    old = first.widget
    app._guarded(lambda: [("c.jpg", red())])
    assert old.comm is None and len(app.flag_forms.forms) == 1


def test_no_form_and_no_photo_copy_when_flags_are_off(model_server, monkeypatch):
    monkeypatch.setenv(ENV_FLAGS, "off")
    client = start(model_server, None)
    app = App(RemoteClassifier(client, dict(CARD)))
    shown = app._guarded(lambda: [("a.jpg", red())])
    assert app.flag_forms is None and len(shown.cards) == 1 and shown.results[0].photo == b""
    assert FlagForms.for_classifier(stub_predictor(), {ENV_FLAGS: "on"}) is None  # in-process: no server to write


# -- `whatsthat serve --flags` --


def test_flags_option_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert flags_url(None, {}) is None and flags_url("off", {}) is None and flags_url("OFF", {}) is None
    assert flags_url("on", {"DATABASE_URL": "postgres://u:p@h/db"}) == "postgres://u:p@h/db"
    assert flags_url("on", {}) == f"sqlite:///{tmp_path / 'data' / 'whatsthat' / 'flags.db'}"
    assert flags_url("sqlite:///f.db", {}) == f"sqlite:///{tmp_path / 'f.db'}"
    assert flags_url("sqlite:////srv/f.db", {}) == "sqlite:////srv/f.db"
    assert flags_url("postgresql://u@/db?host=/run", {}) == "postgresql://u@/db?host=/run"
    for bad in ("yes", "mysql://u:secret@h/db", "sqlite://", "sqlite:///", "sqlite://host/f.db", "f.db"):
        with pytest.raises(Exception, match="--flags") as e:
            flags_url(bad, {})
        assert "secret" not in str(e.value)


def test_voila_settings_turn_the_control_on_for_the_kernels_only(tmp_path):
    env, args = voila_settings("app.ipynb", flags=True)
    assert env[ENV_FLAGS] == "on" and "--PageKernelManager.flags=True" in args
    assert not any("sqlite" in v or "postgres" in v for v in env.values())  # kernels never get the store's URL
    env, args = voila_settings("app.ipynb")
    assert ENV_FLAGS not in env and "--PageKernelManager.flags=False" in args


def test_cli_says_what_is_wrong_with_a_bad_flags_value(tmp_path, capsys):
    from whatsthat.cli import main

    assert main(["serve", "--model", str(tmp_path / "none.pkl"), "--flags", "maybe"]) == 1
    err = capsys.readouterr().err
    assert "--flags takes off, on or a database URL" in err and "'maybe'" in err and "Traceback" not in err


def test_a_thousand_flags_in_a_minute_from_one_client_and_classification_does_not_slow(model_server, desk, db_url):
    flooder = start(model_server, desk)
    visitor = ModelClient(flooder.path, flooder.authkey, connect_wait=5)  # another kernel on the same model process
    flooder.tell_client("flood", "198.51.100.66")

    def classify_times(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            assert visitor.classify_files([("a.jpg", red())], 32)[0]["ranked"]
            times.append(time.monotonic() - t0)
        return times

    quiet = sorted(classify_times(10))[5]
    replies: list[dict] = []
    flood = threading.Thread(target=lambda: replies.extend(
        flooder.flag("flood", [("red", 0.9)], None, "blue") for _ in range(1000)))  # fmt: skip
    t0 = time.monotonic()
    flood.start()
    during = []
    while flood.is_alive():
        during += classify_times(1)
    flood.join()
    took = time.monotonic() - t0
    assert took < 60 and len(replies) == 1000  # a thousand in well under a minute
    sent = [r for r in replies if r["sent"]]
    assert len(sent) == Caps().per_client_per_minute and len(stored(db_url)) == len(sent)  # the limit holds
    assert all("minute" in r["refused"] for r in replies if not r["sent"])
    # the other visitor's classifications: no slower than a tenth of a second beyond the quiet median
    assert during and sorted(during)[len(during) // 2] < quiet + 0.1, (quiet, sorted(during)[-5:])


def test_the_server_tells_the_model_process_which_client_a_page_kernel_serves(model_server, desk, db_url, monkeypatch):
    """The hook behind the client hash: the kernel manager hands a kernel to a page, the model process learns its client."""
    import asyncio

    from whatsthat.web.kernelpool import PageKernelManager
    from whatsthat.web.protocol import ENV_AUTHKEY, ENV_SOCKET

    model = start(model_server, desk)
    monkeypatch.setenv(ENV_SOCKET, model.path)
    monkeypatch.setenv(ENV_AUTHKEY, model.authkey.hex())

    async def hand(flags: bool) -> None:
        mgr = PageKernelManager(flags=flags)
        assert mgr.admit("198.51.100.7") is None
        mgr.handed("198.51.100.7", f"kernel-{flags}")
        await asyncio.sleep(0)

    asyncio.run(hand(False))
    asyncio.run(hand(True))
    deadline = time.monotonic() + 10
    while desk.client_of("kernel-True") != client_hash("198.51.100.7", SECRET):
        assert time.monotonic() < deadline, "the model process was not told"
        time.sleep(0.05)
    assert desk.client_of("kernel-False") == client_hash("kernel:kernel-False", SECRET)  # flags off: nothing told
