"""The page on a phone (issue 31): what the photo input costs each visitor's kernel, and what it saves
on the phone's network. Before (a baseline commit, main by default: ipywidgets' FileUpload) and after
(this tree: whatsthat's photo input), measured in the same run, each on a fresh server.

    WHATSTHAT_SERVE_VENV=.venv-serve .venv/bin/python bench/phone_bench.py [--baseline main] [--visitors 3]

Both servers run `whatsthat serve` from the serving venv (the baseline's package first on PYTHONPATH, so
only whatsthat's code differs) with the shipped model, driven by headless Chromium (Debian's):

- kernel PSS: the visitors' kernels after each classified a shipped grizzly (forked by the kernel
  factory; PSS splits the pages they share), and the factory's own PSS;
- one 14 MB phone photo (a grizzly at 24 MP with sensor-like noise): bytes the page sent over its
  websocket, and the answer;
- five such photos chosen at once (73 MB): the answers, or what the page said;
- `import anywidget` in the serving venv after ipywidgets (what the factory pays once): time, modules, USS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app_bench import CHROMIUM, bin_dir, upload
from common import checkout, median, require_bears, table
from traffic_bench import TrafficServer

from whatsthat.web.admission import measure

ARGS = ("--per-client=0", "--memory-mb=100000")  # no admission cap: the visitors come from one address
PHOTO_INPUT = ".whatsthat-photoinput input[type=file]:not([capture])"
IMPORT_COST = """
import sys, time, psutil
import ipykernel.ipkernel, ipywidgets
p = psutil.Process(); before, n = p.memory_full_info().uss, len(sys.modules); t0 = time.perf_counter()
import anywidget
print(f"{(time.perf_counter() - t0) * 1000:.1f} {len(sys.modules) - n} {(p.memory_full_info().uss - before) / 2**20:.2f}")
"""


def phone_photo(source: Path, out: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    big = np.asarray(Image.open(source).convert("RGB").resize((5600, 4200)), dtype=np.int16)
    noisy = np.clip(big + rng.integers(-28, 29, size=big.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(out, quality=95)
    return out


def choose(page, files: list[Path], timeout_ms: int = 180_000) -> str:
    """Choose `files` as a visitor would; the label's text once an answer (or a refusal) shows."""
    label = page.locator(".widget-label").filter(has_text=":")
    if page.locator(PHOTO_INPUT).count():
        before = int(page.locator(".whatsthat-live").get_attribute("data-answers") or 0)
        page.locator(PHOTO_INPUT).set_input_files(files)
        page.wait_for_function("n => Number(document.querySelector('.whatsthat-live')?.dataset.answers) > n",
                               arg=before, timeout=timeout_ms)  # fmt: skip
    else:
        with page.expect_file_chooser() as chooser:
            page.click(".widget-upload")
        chooser.value.set_files(files)
        page.locator(".widget-upload").filter(has_text=f"({len(files)})").wait_for(timeout=timeout_ms)
        page.get_by_role("button", name="Classify").click()
        page.wait_for_function("() => !document.querySelector('.widget-button')?.disabled", timeout=timeout_ms)
        page.wait_for_timeout(3000)  # a closed websocket: the click goes nowhere, nothing changes
    return label.first.inner_text() if label.count() else "(no answer)"


def measure_server(name: str, model: Path, code: Path | None, photo: Path, big: list[Path], visitors: int) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with TrafficServer(name, model, code, ARGS) as server, sync_playwright() as p:
        server.wait_ready()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        pages = []
        for _ in range(visitors):
            page = browser.new_context().new_page()
            page.goto(server.url + "/", wait_until="domcontentloaded", timeout=180_000)
            page.get_by_role("button", name="Classify").wait_for(timeout=180_000)
            upload(page, photo)
            page.get_by_role("button", name="Classify").click()
            page.locator(".widget-label").filter(has_text="Prediction:").wait_for(timeout=180_000)
            pages.append(page)
        time.sleep(3)
        costs = measure(server.proc.pid)
        visitor_kernels = sorted(costs.kernels)[-visitors:]  # the preheated kernel has run less
        out["kernel_pss_median_mb"] = median(visitor_kernels)
        out["kernel_pss_max_mb"] = max(visitor_kernels)
        out["factory_pss_mb"] = costs.factory
        out["kernels"] = len(costs.kernels)
        for cases, key in (([big[0]], "one_14mb"), (big, "five_14mb")):
            page = browser.new_context().new_page()
            sent: list[int] = []
            page.on("websocket", lambda ws, sent=sent: ws.on("framesent", lambda f: sent.append(len(f))))
            page.goto(server.url + "/", wait_until="domcontentloaded", timeout=180_000)
            page.get_by_role("button", name="Classify").wait_for(timeout=180_000)
            page.wait_for_timeout(1000)
            sent.clear()
            text = choose(page, cases)
            out[f"{key}_sent_mb"] = sum(sent) / 2**20
            out[f"{key}_answer"] = text[:70]
            out[f"{key}_results"] = page.locator(".whatsthat-result img").count()
        browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="the commit before the photo input (default: main)")
    ap.add_argument("--visitors", type=int, default=3)
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parent.parent / "export.pkl")
    args = ap.parse_args()
    photo = sorted((require_bears() / "grizzly").glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory(prefix="whatsthat-phone-") as tmp:
        big = [phone_photo(photo, Path(tmp) / f"IMG_{i:04d}.jpg", i) for i in range(5)]
        print(f"photos: {', '.join(f'{b.stat().st_size / 2**20:.1f} MB' for b in big)}", flush=True)
        results = {}
        with checkout(args.baseline) as code:
            results["before"] = measure_server("before", args.model, code, photo, big, args.visitors)
        results["after"] = measure_server("after", args.model, None, photo, big, args.visitors)
    cost = subprocess.run([str(bin_dir() / "python"), "-c", IMPORT_COST], capture_output=True, text=True, check=True)
    ms, modules, uss = cost.stdout.split()
    rows = [[k, *(results[s].get(k, "") for s in ("before", "after"))] for k in results["after"]]
    print(table(["", f"before ({args.baseline}, FileUpload)", "after (photo input)"], rows))
    print(f"\nimport anywidget after ipywidgets, serving venv: {ms} ms, {modules} modules, USS +{uss} MB "
          "(paid once, in the kernel factory: its kernels are forked after it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
