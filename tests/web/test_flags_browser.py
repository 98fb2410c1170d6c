"""Visitors' flags through the real page (issue 33): `whatsthat serve --flags` from the serving venv, driven by Chromium.

- a visitor classifies, says the answer is wrong with the consent box ticked, and is thanked; the row
  holds the photo (a JPEG of at most 512 px), the label, the words, the model's answer and the keyed
  hash of the visitor's address, which the server told the model process (behind a trusted router:
  X-Forwarded-For's); a second flag without the box ticked keeps no photo;
- the control's parts are labelled and at least 44 px tall (tap targets);
- on the phones of issue 31 (Pixel 7, iPhone 14, 360 px), light and dark: the answer with its form
  still fits (no sideways scroll, every percentage shown), the form's controls are 44 px tap targets
  inside the screen, its colours follow the dark scheme, and axe-core finds nothing serious before and
  after a flag is sent;
- the whole loop on a tiny model: the flag pulled (`whatsthat flags pull`), shown in the cleaner's
  "Flagged by visitors" view and accepted into the data, and `whatsthat train` trains on it, the
  dataset's manifest naming the flag;
- PostgreSQL stopped mid-session (pg_ctl stop): classification goes on, and the control says it
  could not send; started again, the next flag goes through.
"""

from __future__ import annotations

import copy
import io
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
from browser_support import (
    PHONES,
    classify,
    draw_image,
    fits_the_screen,
    image_bytes,
    phone_page,
    pick_model_and_photo,
    running_server,
    serious_violations,
    upload,
)
from PIL import Image

from whatsthat.cli import main
from whatsthat.dataset.manifest import read_manifest
from whatsthat.flags.store import NONE_OF_THESE, client_hash, open_store
from whatsthat.web.flagform import CONSENT, COULD_NOT_SEND, QUESTION, THANKS
from whatsthat.web.protocol import ENV_FLAG_SECRET, PHOTO_SIDE

pytestmark = pytest.mark.browser

SECRET = secrets.token_bytes(32)
VISITOR = "203.0.113.9"  # the address a (pretend) trusted router says the visitor has
UNCAPPED = ("--per-client=0", "--memory-mb=100000", "--trust-forwarded-for")


@pytest.fixture(scope="module")
def model_and_photo(request) -> tuple[Path, tuple[str, bytes], str]:
    return pick_model_and_photo(request)


@pytest.fixture(scope="module")
def sqlite_server(chromium, model_and_photo, tmp_path_factory):
    """Flags on, in a SQLite file; the client hash's key given (so the test can compute the visitor's hash)."""
    tmp = tmp_path_factory.mktemp("flags")
    url = f"sqlite:///{tmp / 'flags.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_FLAG_SECRET, SECRET.hex())
        with running_server(model_and_photo, tmp, 600, 60, (*UNCAPPED, f"--flags={url}")) as srv:
            srv.flags_url = url
            yield srv


def answer(page, server) -> None:
    """The server's photo chosen: classified on arrival, its answer (and its form) on the page."""
    upload(page, server.photo)
    page.locator(".widget-label").filter(has_text="Prediction:").wait_for(timeout=120_000)


def open_page(browser, server):
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": VISITOR})
    page = context.new_page()
    page.goto(server.url + "/", wait_until="domcontentloaded", timeout=120_000)
    page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
    return context, page


def flag(page, label: str, words: str, consent: bool, expect: str, fresh: bool = True) -> None:
    """Fill in the form under the (one) answer and send it; waits for `expect` in its status line."""
    form = page.locator(".whatsthat-flag")
    form.get_by_label("It is").select_option(index=options(form).index(label))
    form.get_by_label("Words").fill(words)
    box = form.get_by_label(CONSENT)
    if fresh:
        assert not box.is_checked()  # unticked unless the visitor ticks it
    box.set_checked(consent)
    form.get_by_role("button", name="Send").click()
    form.get_by_text(expect).wait_for(timeout=60_000)


def options(form) -> list[str]:
    """The dropdown's choices as the visitor reads them (ipywidgets shows their spaces as no-break spaces)."""
    return [o.replace("\xa0", " ") for o in form.get_by_label("It is").locator("option").all_inner_texts()]


def rows(url: str):
    with open_store(url, create=False) as store:
        return store.rows()


def test_a_visitor_flags_a_wrong_answer_with_consent(browser, sqlite_server, tmp_path):
    server = sqlite_server
    context, page = open_page(browser, server)
    try:
        answer(page, server)
        form = page.locator(".whatsthat-flag")
        form.get_by_text(QUESTION).wait_for(timeout=30_000)
        assert form.count() == 1
        # labelled controls, each at least 44 px tall (tap targets)
        for control in (form.get_by_label("It is"), form.get_by_label("Words"), form.locator("label").filter(
                has_text=CONSENT), form.get_by_role("button", name="Send")):  # fmt: skip
            box = control.bounding_box()
            assert box is not None and box["height"] >= 44, (control, box)
        choices = options(form)
        assert NONE_OF_THESE in choices
        wrong = next(o for o in choices if o.strip() and o != server.expected and o != NONE_OF_THESE)
        flag(page, wrong, "my teddy bear", True, THANKS)
        [row] = [r for r in rows(server.flags_url) if r.text == "my teddy bear"]
        assert (row.label, row.text) == (wrong, "my teddy bear") and row.photo is not None
        with Image.open(io.BytesIO(row.photo)) as im:
            assert im.format == "JPEG" and max(im.size) <= PHOTO_SIDE
        assert row.ranked and row.ranked[0][0] in choices
        # the keyed hash of the visitor's address: the server told the model process which client the kernel serves
        assert row.client == client_hash(VISITOR, SECRET)

        # the maintainer's side: `whatsthat flags pull` brings it, with its provenance
        pulled = tmp_path / "flagged"
        assert main(["flags", "pull", str(pulled), "--db", server.flags_url]) == 0
        photo = pulled / wrong / f"flag-{row.id}.jpg"
        assert photo.read_bytes() == row.photo
        [entry] = read_manifest(pulled)
        assert (entry["url"], entry["flag_id"], entry["label"]) == (f"flag:{row.id}", str(row.id), wrong)
        assert entry["flag_answer"] == row.ranked[0][0] and entry["flag_model"] == row.model

        # another photo, flagged without consent: no photo kept
        answer(page, server)
        flag(page, NONE_OF_THESE, "", False, THANKS)
        second = rows(server.flags_url)[-1]
        assert second.label == NONE_OF_THESE and second.photo is None and second.photo_bytes == 0
        assert "Traceback" not in page.content()
    finally:
        context.close()


def relative_luminance(css: str) -> float:
    """WCAG 2's relative luminance of a computed `rgb(...)`/`rgba(...)` colour."""
    r, g, b = (int(float(c)) / 255 for c in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(fg: str, bg: str) -> float:
    lighter, darker = sorted((relative_luminance(fg), relative_luminance(bg)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def form_controls(form) -> dict:
    """The form's tap targets: the dropdown, the words, the consent box's label (the box and its text), Send."""
    return {"dropdown": form.get_by_label("It is"), "words": form.get_by_label("Words"),
            "consent": form.locator("label").filter(has_text=CONSENT), "send": form.get_by_role("button", name="Send")}  # fmt: skip


def form_fits(page, form, scheme: str) -> None:
    """Each control a 44 px tap target inside the screen; in the dark scheme, dark fields with light text (AA)."""
    width = page.viewport_size["width"]
    for name, control in form_controls(form).items():
        box = control.bounding_box()
        assert box and box["height"] >= 44 and box["width"] >= 44, (name, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (name, box, width)
    status = form.get_by_role("status")
    parts = {k: form_controls(form)[k] for k in ("dropdown", "words", "send")}
    parts |= {"question": form.get_by_text(QUESTION), "consent": form_controls(form)["consent"]}
    if status.count() and status.inner_text().strip():
        parts["status"] = status
    for name, part in parts.items():
        fg, bg = part.evaluate("""e => { const fg = getComputedStyle(e).color;
            for (; e; e = e.parentElement) { const bg = getComputedStyle(e).backgroundColor;
                if (bg !== "rgba(0, 0, 0, 0)" && bg !== "transparent") return [fg, bg]; }
            return [fg, "rgb(255, 255, 255)"]; }""")
        assert contrast(fg, bg) >= 4.5, (name, scheme, fg, bg)
        if scheme == "dark":
            assert relative_luminance(bg) < 0.05 and relative_luminance(fg) > 0.4, (name, fg, bg)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("device", PHONES)
def test_the_answer_with_its_flag_form_fits_a_phone(browser, playwright_api, sqlite_server, device, scheme):
    """Issue 31's floor with flags on: the form under the answer on Pixel 7, iPhone 14 and a 360 px phone."""
    server = sqlite_server
    # a visitor of its own each time (the store allows one client 5 flags a minute)
    visitor = f"198.51.100.{2 * PHONES.index(device) + (scheme == 'dark') + 1}"
    context, page = phone_page(browser, playwright_api.devices, server, device, scheme, {"X-Forwarded-For": visitor})
    try:
        upload(page, server.photo)  # classified on arrival, its form under it
        form = page.locator(".whatsthat-flag")
        form.get_by_text(QUESTION).wait_for(timeout=30_000)
        fits_the_screen(page)
        form_fits(page, form, scheme)
        assert serious_violations(page) == []
        words = f"on a {device} ({scheme})"
        flag(page, NONE_OF_THESE, words, False, THANKS)
        assert [r.text for r in rows(server.flags_url)].count(words) == 1
        fits_the_screen(page)
        form_fits(page, form, scheme)  # the thank-you line and the disabled controls too
        assert serious_violations(page) == []
    finally:
        context.close()


@pytest.fixture
def pg_server(chromium, model_and_photo, tmp_path):
    """Flags on, in a PostgreSQL server of this test's own (it is stopped mid-test)."""
    from pgserver import PostgresServer, find_bin

    bindir = find_bin()
    if bindir is None:
        if os.environ.get("CI") == "true" or os.environ.get("WHATSTHAT_POSTGRES_TESTS") == "required":
            pytest.fail("this test needs PostgreSQL (initdb, pg_ctl)")
        pytest.skip("needs PostgreSQL (initdb, pg_ctl)")
    pg = PostgresServer(bindir, port=54900 + secrets.randbelow(90))
    pg.start()
    try:
        url = pg.new_database()
        with running_server(model_and_photo, tmp_path, 600, 60, (*UNCAPPED, f"--flags={url}")) as srv:
            srv.pg, srv.flags_url = pg, url
            yield srv
    finally:
        pg.close()


def test_the_database_stopped_mid_session(browser, pg_server):
    server = pg_server
    context, page = open_page(browser, server)
    try:
        answer(page, server)
        flag(page, NONE_OF_THESE, "first", True, THANKS)
        server.pg.stop()  # pg_ctl stop, mid-session
        upload(page, server.photo)  # classification goes on
        assert classify(page, "Prediction:").startswith(f"Prediction: {server.expected}")
        t0 = time.monotonic()
        flag(page, NONE_OF_THESE, "second", True, COULD_NOT_SEND)
        assert time.monotonic() - t0 < 30
        assert "flag not stored: the store" in server.log_text()  # the log says why
        server.pg.start()
        flag(page, NONE_OF_THESE, "third", False, THANKS, fresh=False)  # sent again: the store reconnected by itself
        assert [r.text for r in rows(server.flags_url)] == ["first", "third"]  # nothing stored was lost
    finally:
        context.close()


@pytest.fixture
def tiny_chain(chromium, tiny_training, tmp_path):
    """The whole loop on the tiny red/blue model: its server with flags on, and a copy of its training data."""
    from whatsthat.model.verdict import decide
    from whatsthat.web.app import NOT_SURE
    from whatsthat.web.modelprocess import classify_files, load_predictor

    model = Path(tiny_training.model_path)
    photo = ("red.jpg", image_bytes(draw_image("red", 300, seed=7)))
    predictor = load_predictor(model)
    [r] = classify_files(predictor, [photo], 32)
    answer = decide(r["ranked"], {**predictor.card, "threshold": predictor.threshold}, r["ood_score"])
    expected = answer.label if answer.kind == "sure" and answer.label else NOT_SURE
    data = tmp_path / "data"
    shutil.copytree(tiny_training.card["dataset"]["path"], data)
    url = f"sqlite:///{tmp_path / 'flags.db'}"
    (tmp_path / "srv").mkdir()
    with running_server((model, photo, expected), tmp_path / "srv", 600, 60, (*UNCAPPED, f"--flags={url}")) as srv:
        srv.flags_url, srv.data = url, data
        yield srv, tiny_training


def test_a_flag_goes_from_the_page_through_pull_and_the_cleaner_into_training(browser, tiny_chain, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    """Issue 33's loop: page -> `whatsthat flags pull` -> the cleaner's Flagged view, accepted -> `whatsthat train`."""
    import builtins

    from fastai.learner import Learner
    from IPython.display import display

    from whatsthat.cleaning.cleaner import Cleaner
    from whatsthat.training.backbones import get_arch
    from whatsthat.training.data import make_dataloaders

    server, tiny = tiny_chain
    classes = list(tiny.card["classes"])
    context, page = open_page(browser, server)
    try:
        answer(page, server)
        wrong = next(c for c in classes if c != server.expected)  # the visitor says it is the other class
        flag(page, wrong, "not what it said", True, THANKS)
    finally:
        context.close()
    [row] = rows(server.flags_url)
    assert row.label == wrong and row.photo is not None

    # pulled: a folder per visitor label, a manifest row naming the flag
    flagged = tmp_path / "flagged"
    assert main(["flags", "pull", str(flagged), "--db", server.flags_url]) == 0
    pulled = flagged / wrong / f"flag-{row.id}.jpg"
    assert pulled.read_bytes() == row.photo

    # the cleaner shows it in "Flagged by visitors", and accepting it adds the photo to the data (journaled)
    monkeypatch.setattr(builtins, "display", display, raising=False)
    data = server.data
    n_before = len(list(data.rglob("*.jpg")))
    dls = make_dataloaders(data, size=64, bs=8, stats=get_arch("resnet18").stats)
    learn = Learner(dls, copy.deepcopy(tiny.learn.model), loss_func=tiny.learn.loss_func)
    with learn.no_bar():
        cleaner = Cleaner(learn, data, page_size=10, flagged=flagged)
    assert cleaner.in_flagged_view and cleaner.files == [str(pulled)]
    caption = cleaner.icc.iw.widget.children[0].children[2].value
    assert f"visitor said <b>{wrong}</b>" in caption and "not what it said" in caption
    cleaner.accept_flags([str(pulled)])
    report = cleaner.apply()
    added = data / wrong / pulled.name
    assert report.added == [(str(pulled), f"{wrong}/{pulled.name}")] and added.read_bytes() == row.photo
    [entry] = [e for e in read_manifest(data) if e["file"] == f"{wrong}/{pulled.name}"]
    assert (entry["url"], entry["flag_id"], entry["backend"]) == (f"flag:{row.id}", str(row.id), "flag")

    # `whatsthat train` on that data: the flagged photo is one of its pictures, and the manifest names its flag
    out = tmp_path / "retrained"
    assert main(["train", str(data), "--out", str(out), "--arch", "resnet18", "--no-pretrained", "--head-epochs", "0",
                 "--top-epochs", "0", "--epochs", "1", "--size", "64", "--bs", "8"]) == 0  # fmt: skip
    card = json.loads((out / "export.card.json").read_text())
    assert card["dataset"]["n_images"] == n_before + 1
    assert card["dataset"]["per_class"][wrong] == len(list((data / wrong).glob("*.jpg")))
    assert card["dataset"]["sha256"] != tiny.card["dataset"]["sha256"]
