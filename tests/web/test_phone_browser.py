"""The page on a phone (issue 31): Playwright's "Pixel 7", "iPhone 14" and "Galaxy S8" (360 px) profiles on
Debian's Chromium, against `whatsthat serve` from $WHATSTHAT_SERVE_VENV (the serving environment), light and dark.

- the answer fits: no sideways scroll, every percentage inside the viewport, tap targets of 44 px;
- the camera input, a drop and a paste each give an answer without pressing Classify;
- the aria-live region holds the answers, and each thumbnail's alt text states its answer;
- five 14 MB photos at once are all classified, each sent as well under 1.5 MB (websocket frames
  counted); a 70 MB file the browser cannot shrink gets a clear message and nothing is sent; then a
  normal photo still gets its answer;
- axe-core (tools/axe, installed from npm by `make test`) finds no serious or critical violation,
  before and after an answer, in both schemes;
- keyboard: Tab reaches Upload, Take a photo and Classify; Enter on Classify classifies;
- the same photo input in JupyterLab, the model loaded in the kernel (no model process).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
from browser_support import (
    CAMERA_INPUT,
    LAB_TOKEN,
    PHONES,
    answers,
    fits_the_screen,
    jupyterlab,
    phone_page,
    pick_model_and_photo,
    running_server,
    serious_violations,
    upload,
    wait_for_answer,
    wait_for_cards,
)
from conftest import ROOT, draw_image, image_bytes, isolated_env
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.browser

MB = 2**20


@pytest.fixture(scope="module")
def model_and_photo(request):
    return pick_model_and_photo(request)


@pytest.fixture(scope="module")
def devices(playwright_api) -> dict:
    """Playwright's device profiles ("Pixel 7", "iPhone 14", ...)."""
    return playwright_api.devices


@pytest.fixture(scope="module")
def server(chromium, model_and_photo, tmp_path_factory):
    with running_server(model_and_photo, tmp_path_factory.mktemp("phone"), 600, 60,
                        ("--per-client=0", "--memory-mb=100000")) as srv:  # fmt: skip
        yield srv


@pytest.fixture(params=PHONES)
def device(request) -> str:
    return request.param


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_camera_gives_an_answer_that_fits_the_phone_and_axe_finds_nothing_serious(browser, devices, server, device, scheme):
    context, page = phone_page(browser, devices, server, device, scheme)
    try:
        assert serious_violations(page) == []
        before = answers(page)
        name, data = server.photo
        page.locator(CAMERA_INPUT).set_input_files([{"name": name, "mimeType": "image/jpeg", "buffer": data}])
        wait_for_answer(page, before)  # no Classify press
        assert page.locator(".widget-label").filter(has_text="Prediction:").inner_text().startswith(
            f"Prediction: {server.expected}")
        live = page.locator(".whatsthat-live")
        assert live.get_attribute("aria-live") == "polite"
        assert live.text_content().startswith(f"Photo 1: {server.expected}, ")
        alt = page.locator(".whatsthat-result img").get_attribute("alt")
        assert alt.startswith(f"Photo 1: {server.expected}, ") and alt.endswith("%")
        fits_the_screen(page)
        if scheme == "dark":  # the page follows the scheme: a dark background, light text
            bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert bg == "rgb(18, 20, 23)", bg
        assert serious_violations(page) == []
    finally:
        context.close()


def _dispatch_with_files(page, event: str, name: str, data: bytes) -> None:
    """A drop on the page (`drop`) or a paste (`paste`) of one file, as the browser would fire it."""
    page.evaluate(
        """([event, name, bytes]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
            const target = document.querySelector(".jp-Notebook") || document.body;
            if (event === "drop") {
                target.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
                target.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
            } else {
                document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true, cancelable: true}));
            }
        }""",
        [event, name, list(data)],
    )


@pytest.mark.parametrize("event", ["drop", "paste"])
def test_a_drop_or_a_paste_gives_an_answer_without_classify(browser, devices, server, event):
    context, page = phone_page(browser, devices, server, "Pixel 7", "light")
    try:
        name, data = server.photo
        before = answers(page)
        _dispatch_with_files(page, event, f"{event}-{name}", data)
        wait_for_answer(page, before)
        assert page.locator(".whatsthat-live").text_content().startswith(f"Photo 1: {server.expected}, ")
        assert f"{event}-{name}" in page.locator(".whatsthat-result").inner_text()
    finally:
        context.close()


def _phone_photo(source: bytes, path: Path, megabytes: float, seed: int) -> Path:
    """A 14 MB phone-camera JPEG: the test photo at 24 MP with sensor-like noise, at quality 95."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    big = np.asarray(Image.open(io.BytesIO(source)).convert("RGB").resize((5600, 4200)), dtype=np.int16)
    noise = rng.integers(-28, 29, size=big.shape, dtype=np.int16)
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(path, quality=95)
    size = path.stat().st_size / MB
    assert megabytes * 0.9 <= size <= megabytes * 1.6, f"{path.name}: {size:.1f} MB"
    return path


def test_five_14_mb_photos_then_a_70_mb_file_then_a_normal_photo(browser, devices, server, tmp_path):
    name, data = server.photo
    photos = [_phone_photo(data, tmp_path / f"IMG_{i:04d}.jpg", 14, i) for i in range(5)]
    context, page = phone_page(browser, devices, server, "Pixel 7", "light")
    sent: list[int] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(len(f))))
    try:
        # the page's websocket opened before the listener: a reload opens a new one it sees
        page.reload(wait_until="domcontentloaded")
        page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
        page.locator(".whatsthat-live").wait_for(state="attached", timeout=60_000)
        sent.clear()
        t0 = time.monotonic()
        upload(page, *photos)
        took = time.monotonic() - t0
        wait_for_cards(page, 5)  # the cards, not only the announcement that goes a message ahead of them
        assert page.locator(".whatsthat-result.whatsthat-error").count() == 0
        total = sum(p.stat().st_size for p in photos)
        per_photo = sum(sent) / len(photos)
        print(f"\nfive photos, {total / MB:.1f} MB chosen: {sum(sent) / MB:.2f} MB sent "
              f"({per_photo / MB:.2f} MB per photo), answered in {took:.1f} s")  # fmt: skip
        assert per_photo < 1.5 * MB

        # a 70 MB file the browser cannot shrink: a clear message, and nothing sent
        huge = tmp_path / "VID_0001.jpg"
        huge.write_bytes(b"\xff\xd8\xff" + os.urandom(1 << 16) * (70 * 16))
        sent.clear()
        upload(page, huge, wait=False)
        problem = page.locator(".whatsthat-photoinput-problem")
        problem.wait_for(timeout=60_000)
        assert "VID_0001.jpg is 70 MB, and this browser cannot shrink it: photos up to 40 MB only" in problem.inner_text()
        assert sum(sent) < 64 * 1024, sum(sent)  # the websocket's own traffic only, no file

        # the page still works
        upload(page, (name, data))
        assert page.locator(".whatsthat-live").text_content().startswith(f"Photo 1: {server.expected}, ")
        assert page.locator("#whatsthat-asleep").count() == 0
        assert "Nothing to classify" not in page.content()
    finally:
        context.close()


def test_the_keyboard_reaches_upload_camera_and_classify_and_enter_classifies(browser, devices, server):
    context, page = phone_page(browser, devices, server, "Pixel 7", "light")
    try:
        upload(page, server.photo)
        reached = []
        for _ in range(25):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement && document.activeElement.innerText.trim()"))
            if reached[-1] == "Classify":
                break
        assert "Upload" in reached and "Take a photo" in reached and reached[-1] == "Classify", reached
        before = answers(page)
        page.keyboard.press("Enter")  # classifies the last photos again
        wait_for_answer(page, before)
        assert page.locator(".whatsthat-live").text_content().startswith(f"Photo 1: {server.expected}, ")
    finally:
        context.close()


def test_the_photo_input_works_in_jupyterlab_with_the_model_in_the_kernel(browser, tiny_model, tmp_path):  # noqa: F811
    """app.ipynb opened in JupyterLab (no model process: the kernel loads the model): a photo taken is classified."""
    pytest.importorskip("jupyterlab")
    shutil.copy(ROOT / "app.ipynb", tmp_path / "app.ipynb")
    env = {**os.environ, **isolated_env(tmp_path / "home"), "OMP_NUM_THREADS": "1", "WHATSTHAT_MODEL": str(tiny_model),
           "WHATSTHAT_EXAMPLES": str(tmp_path / "no-examples")}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this tree
    for var in ("WHATSTHAT_MODEL_SOCKET", "WHATSTHAT_MODEL_AUTHKEY"):
        env.pop(var, None)
    with jupyterlab(tmp_path, env) as (url, _proc, log):
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        try:
            page.goto(f"{url}/lab/tree/app.ipynb?token={LAB_TOKEN}", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                                   timeout=120_000)  # fmt: skip
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            try:
                page.locator(".whatsthat-live").wait_for(state="attached", timeout=240_000)
            except Exception:  # a Playwright timeout: what the notebook showed instead
                outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
                pytest.fail(f"no photo input; outputs: {outputs!r}\nlog:\n{log.read_text()[-3000:]}")
            before = answers(page)
            page.locator(CAMERA_INPUT).set_input_files(
                [{"name": "red.jpg", "mimeType": "image/jpeg", "buffer": image_bytes(draw_image("red", 96))}])
            wait_for_answer(page, before, timeout_ms=240_000)
            assert page.locator(".whatsthat-live").text_content().startswith("Photo 1: ")
            wait_for_cards(page, 1)  # the card follows the announcement
        finally:
            context.close()


def test_photos_the_kernel_never_receives_show_the_banner_not_nothing_to_classify(browser, devices, server):
    """The kernel confirms each choice; without that confirmation (here: the kernels stopped, so it never
    comes) the page says the connection was lost, never "Nothing to classify yet"."""
    context, page = phone_page(browser, devices, server, "Pixel 7", "light")
    kernels = server.kernels()
    for k in kernels:
        k.suspend()
    try:
        page.locator(CAMERA_INPUT).set_input_files(
            [{"name": server.photo[0], "mimeType": "image/jpeg", "buffer": server.photo[1]}])
        banner = page.locator("#whatsthat-asleep")
        banner.wait_for(timeout=90_000)  # 30 s and the photo's bytes at 50 kB/s (photoinput.js)
        assert "The connection to the server was lost while sending your photos" in banner.inner_text()
        assert "Nothing to classify" not in page.content()
        box = banner.get_by_role("button", name="Reload").bounding_box()
        assert box and box["height"] >= 44
        assert serious_violations(page) == []  # the banner's colours too
    finally:
        for k in kernels:
            k.resume()
        context.close()
