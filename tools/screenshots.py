"""Retake the documentation's screenshots: the page (docs/app.png, and on a phone docs/phone-light.png and
docs/phone-dark.png) and the cleaner (docs/cleaner.png).

    make serve-env && .venv/bin/python tools/screenshots.py [--photo PATH] [--out docs/app.png] [--cleaner]

Serves the shipped model with `whatsthat serve` from the serving environment (as a dyno does), opens
the page in headless Chromium (Debian's /usr/bin/chromium), chooses one photo (the page classifies it at
once) and takes the picture: at `--width` on a desktop, then with Playwright's "Pixel 7" profile in the
light and the dark scheme. The photo's thumbnail is pixelated in the screenshots: the shared bear photos
are not ours to publish. Default photo: the first grizzly of ../shared/datasets/bears.

With --cleaner: a copy of ../shared/datasets/bears imported as `whatsthat import` would, `whatsthat
suggest` run on it, and the cleaner opened on its Suggested view in Voila (the development environment),
every thumbnail pixelated, into docs/cleaner.png.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise SystemExit(f"the page did not answer at {url} within {timeout:.0f} s")


def pixelate(path: Path, box: dict, block: int = 12, scale: float = 1.0) -> None:
    """Pixelate `box` (CSS pixels; `scale`: the screenshot's device pixels per CSS pixel) in the image at `path`."""
    im = Image.open(path)
    left, top = int(box["x"] * scale), int(box["y"] * scale)
    right, bottom = left + int(box["width"] * scale), top + int(box["height"] * scale)
    block = int(block * scale)
    region = im.crop((left, top, right, bottom))
    small = region.resize((max(1, region.width // block), max(1, region.height // block)), Image.Resampling.BILINEAR)
    im.paste(small.resize(region.size, Image.Resampling.NEAREST), (left, top))
    im.save(path)


CLEANER_NOTEBOOK = """\
from fastai.learner import Learner
from whatsthat.cleaning.cleaner import Cleaner
from whatsthat.cleaning.suggest import suggest
from whatsthat.training.classifier import load_classifier
from whatsthat.training.backbones import get_arch
from whatsthat.training.data import make_dataloaders

exported = load_classifier({model!r}).learn
dls = make_dataloaders({data!r}, size=224, bs=32, stats=get_arch("efficientnet_lite0").stats)
learn = Learner(dls, exported.model, loss_func=exported.loss_func)
suggestions = suggest({data!r}, progress=False)
with learn.no_bar():
    cleaner = Cleaner(learn, {data!r}, page_size=6, suggestions=suggestions)
cleaner"""


def cleaner_screenshot(out: Path, width: int) -> None:
    import nbformat

    from whatsthat.dataset.gather import import_folder

    bears = ROOT.parent / "shared" / "datasets" / "bears"
    if not bears.is_dir():
        raise SystemExit(f"--cleaner needs {bears}")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="whatsthat-shots-") as tmp:
        data = Path(tmp) / "bears"
        import_folder(bears, data, progress=False)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            CLEANER_NOTEBOOK.format(model=str(ROOT / "export.pkl"), data=str(data)))])  # fmt: skip
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, Path(tmp) / "cleaner.ipynb")
        env = {**os.environ, "HOME": tmp, "JUPYTER_PLATFORM_DIRS": "1"}
        server = subprocess.Popen([sys.executable, "-m", "voila", "--no-browser", f"--port={port}",
                                   "--Voila.ip=127.0.0.1", str(Path(tmp) / "cleaner.ipynb")], env=env, cwd=tmp,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(f"http://127.0.0.1:{port}/", timeout=600)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": width, "height": 700})
                page.goto(f"http://127.0.0.1:{port}/", timeout=600_000)
                page.locator(".whatsthat-thumb").first.wait_for(timeout=600_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out), full_page=True)
                for img in page.locator(".whatsthat-thumb img").all():
                    box = img.bounding_box()
                    if box:
                        pixelate(out, box)
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    print(f"wrote {out}")


def page_screenshot(browser, url: str, photo: Path, out: Path, options: dict) -> None:
    """The page in a new browser context (`options`: viewport or device profile, colour scheme) after `photo`."""
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(url, timeout=180_000)
    page.get_by_role("button", name="Classify").wait_for(timeout=180_000)
    page.locator(".whatsthat-photoinput input[type=file]:not([capture])").set_input_files(str(photo))
    page.get_by_text("Prediction:").wait_for(timeout=120_000)  # classified on arrival, no Classify press
    page.wait_for_timeout(500)
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    for img in page.locator(".whatsthat-result img").all():
        pixelate(out, img.bounding_box(), scale=options.get("device_scale_factor", 1))
    context.close()
    print(f"wrote {out}")


def main() -> int:
    bears = ROOT.parent / "shared" / "datasets" / "bears" / "grizzly"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=next(iter(sorted(bears.glob("*.jpg"))), None))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    ap.add_argument("--width", type=int, default=900)
    ap.add_argument("--cleaner", action="store_true", help="the cleaner on the bears instead (docs/cleaner.png)")
    args = ap.parse_args()
    if args.cleaner:
        cleaner_screenshot(ROOT / "docs" / "cleaner.png", 1100)
        return 0
    if args.photo is None or not args.photo.is_file():
        raise SystemExit(f"no photo: pass --photo (the default needs {bears})")
    venv = Path(os.environ.get("WHATSTHAT_SERVE_VENV", ROOT / ".venv-serve"))
    whatsthat = venv / "bin" / "whatsthat"
    if not whatsthat.is_file():
        raise SystemExit(f"{whatsthat} is missing: run `make serve-env` first")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="whatsthat-shots-") as home:
        env = {**os.environ, "HOME": home, "JUPYTER_PLATFORM_DIRS": "1"}
        server = subprocess.Popen([str(whatsthat), "serve", "--port", str(port), "--model", str(ROOT / "export.pkl"),
                                   "--notebook", str(ROOT / "app.ipynb")], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(f"http://127.0.0.1:{port}/")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                phone = {k: v for k, v in p.devices["Pixel 7"].items() if k != "default_browser_type"}
                shots = [(args.out, {"viewport": {"width": args.width, "height": 600}}),
                         (args.out.with_name("phone-light.png"), {**phone, "color_scheme": "light"}),
                         (args.out.with_name("phone-dark.png"), {**phone, "color_scheme": "dark"})]  # fmt: skip
                for out, options in shots:
                    page_screenshot(browser, f"http://127.0.0.1:{port}/", args.photo, out, options)
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
