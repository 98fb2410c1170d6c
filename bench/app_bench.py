"""The page as visitors get it, before and after the model moved out of the kernels: memory and times.

    .venv/bin/python bench/app_bench.py [--runs 3] [--model export.pkl] [--no-before] [--no-factory] [--flags]
    WHATSTHAT_SERVE_VENV=.venv-serve .venv/bin/python bench/app_bench.py   # the servers run in the serving venv

Two set-ups, measured in the same run with the same photo (a shipped grizzly) and headless Chromium:

- after: `whatsthat serve` as the Procfile runs it: the supervisor, one model process, Voila with thin
  kernels (preheated pool of 1) forked by the kernel factory;
- no-factory (with --no-factory): the same with `--no-kernel-factory`, each kernel a process of its own;
- flags (with --flags): the same with `--flags` on (a SQLite file); only its memory is measured, each
  visitor also sending a flag with the photo (the kernels hold the form and the photo's 512 px copy);
- before: Voila alone (the old Procfile), so every kernel loads the model itself. In the dev venv its
  kernels load a bare copy of export.pkl with fastai, as the page did before the artifact existed; in the
  serving venv (no fastai) they load the torch-only artifact in-process.

Measured, each on a fresh server unless said otherwise (times are medians of --runs where repeated):

- cold start -> first prediction: server start, first page, upload, Classify, until "Prediction:" shows;
- warm page load: pool refilled and idle, page.goto -> Classify enabled;
- click -> prediction: first and next click in a page;
- 5 visitors at once: five pages navigated in the same moment, until the last one's Classify is enabled;
- over a phone's network: warm pages with Chromium's network emulation (4G, slow 4G) and the bytes a
  new visitor's page fetches (this machine's browser is on localhost; visitors' are not);
- memory: PSS (proportional set size: shared pages split among their users, so sums are honest) of the
  server processes, the model process, the kernel factory and the kernels with 3, then 10 visitors who
  each classified once (plus the preheated kernel); per kernel: PSS and whether libtorch is mapped.
  A forked kernel shares pages with the factory and its siblings: PSS splits them among them.

Every process started here is stopped at the end; Jupyter, IPython, matplotlib and torch dirs are temp dirs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from common import ROOT, BenchServer, kind_of, machine, median, require_bears, table, temp_env

from whatsthat.web.serve import voila_command

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
START_TIMEOUT = 300
PAGE_TIMEOUT_MS = 300_000
MODEL_LOADED = "whatsthat.web.app: model "  # logged by each kernel once it can classify
MODEL_READY = "ready ("  # the model process's "model process N ready (artifact, ...)" line
# lesson 2's VBox with no callbacks and no whatsthat: what a Voila page costs here before any of our code
BARE_NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": [
        "import ipywidgets as widgets\n",
        "widgets.VBox([widgets.FileUpload(), widgets.Button(description='Classify'), widgets.Output(), widgets.Label()])",
    ]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}  # fmt: skip


def serve_venv() -> Path | None:
    venv = os.environ.get("WHATSTHAT_SERVE_VENV")
    return Path(venv).resolve() if venv else None


def bin_dir() -> Path:
    venv = serve_venv()
    return venv / "bin" if venv else Path(sys.executable).parent


def require_current_package() -> None:
    """Exit with a message when the serving venv's copy of whatsthat is not the working tree's code.

    The serving venv holds a non-editable install, as a dyno does: after an edit, the servers it starts
    run the old code until `make serve-env` reinstalls it, and a bench would time the wrong code.
    """
    if serve_venv() is None:
        return  # this venv: the editable install is the working tree
    where = subprocess.run([str(bin_dir() / "python"), "-c", "import whatsthat; print(whatsthat.__file__)"],
                           capture_output=True, text=True, cwd=tempfile.gettempdir())  # fmt: skip
    if where.returncode != 0:
        sys.exit(f"whatsthat does not import in {serve_venv()}: run `make serve-env`\n{where.stderr[-1000:]}")
    installed = Path(where.stdout.strip()).parent
    package = ROOT / "whatsthat"
    files = [f.relative_to(package) for f in sorted(package.rglob("*"))
             if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc",)]
    stale = [str(f) for f in files
             if not (installed / f).is_file() or (installed / f).read_bytes() != (package / f).read_bytes()]
    if stale:
        sys.exit(f"the serving venv's whatsthat ({installed}) is not the working tree's ({', '.join(stale[:5])}"
                 f"{' ...' if len(stale) > 5 else ''} differ): run `make serve-env` first")


def wait_until(check, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def pss_mb(p: psutil.Process) -> float:
    try:
        return p.memory_full_info().pss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def loads_torch(p: psutil.Process) -> bool:
    try:
        return any("libtorch" in (m.path or "") for m in p.memory_maps(grouped=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class Server(BenchServer):
    """One server on a free port in a temp dir: `after` is `whatsthat serve`, `before` is Voila alone."""

    def __init__(self, mode: str, model: Path, code: Path | None = None) -> None:
        super().__init__(mode, f"whatsthat-app-bench-{mode}-", code)
        self.mode, self.model = mode, model

    def __enter__(self) -> Server:
        tmp, env, port = self.prepare()
        extra = [f"--Voila.connection_dir_root={tmp}"]
        if self.mode in ("after", "no-factory", "flags"):
            factory = ["--no-kernel-factory"] if self.mode == "no-factory" else []
            if self.mode == "flags":  # each visitor a client of its own (X-Forwarded-For), or the rate limit refuses
                factory = [f"--flags=sqlite:///{tmp / 'flags.db'}", "--trust-forwarded-for"]
            # this bench measures 10 visitors from one address, past a 512 MB budget on purpose: no caps
            # (bench/traffic_bench.py measures them); a baseline commit from before the caps has no such flags
            uncapped = ["--per-client=0", "--memory-mb=100000"] if self.code is None else []
            cmd = [str(bin_dir() / "whatsthat"), "serve", f"--model={self.model}", f"--port={port}",
                   "--host=127.0.0.1", f"--examples={tmp / 'none'}", *factory, *uncapped, "--", *extra]  # fmt: skip
        elif self.mode == "bare":  # Voila's own floor: the same four widgets, nothing of whatsthat
            notebook = tmp / "bare.ipynb"
            notebook.write_text(json.dumps(BARE_NOTEBOOK))
            cmd = voila_command(notebook, port, "127.0.0.1", voila=[str(bin_dir() / "python"), "-m", "voila"],
                                extra_args=extra)
        else:
            cmd = voila_command("app.ipynb", port, "127.0.0.1", self.model, examples=tmp / "none",
                                voila=[str(bin_dir() / "python"), "-m", "voila"], extra_args=extra)  # fmt: skip
        self.started = time.monotonic()
        self.started_wall = time.time()  # the server log's timestamps are wall-clock
        self.launch(cmd, env)
        return self

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            sys.exit(f"the {self.mode} server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        return True

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/voila/static/voila.js", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def logged_at(self, marker: str) -> float | None:
        """Seconds from the server's start to the first log line containing `marker` (asctime, ms), or None."""
        for line in self.log_text().splitlines():
            if marker in line:
                found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
                if found:
                    stamp = dt.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(found[2]) / 1000
                    return stamp - self.started_wall
        return None

    def kernels(self) -> list[psutil.Process]:
        return [p for p in self.processes() if kind_of(p) == "kernel"]

    def wait_ready(self, pages_served: int) -> None:
        """Pool full, its kernel through the notebook, every kernel idle (so timings are a visitor's)."""
        wait_until(lambda: self.alive() and self.log_text().count(MODEL_LOADED) >= pages_served + 1,
                   START_TIMEOUT, f"{self.mode}: the preheated kernel running the notebook")  # fmt: skip
        self.wait_idle()

    def wait_idle(self) -> None:
        """Until the server and its kernels use no CPU for a second."""

        def cpu_s() -> float:
            total = 0.0
            for p in self.processes():
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    continue
            return total

        def idle() -> bool:
            before = cpu_s()
            time.sleep(0.5)
            return cpu_s() - before < 0.1

        wait_until(lambda: idle() and idle(), 120, "the server going idle")

    def memory(self) -> dict:
        by_kind: dict[str, list[float]] = {"server": [], "model": [], "factory": [], "kernel": []}
        torch_kernels = 0
        for p in self.processes():
            kind = kind_of(p)
            by_kind[kind].append(pss_mb(p))
            torch_kernels += kind == "kernel" and loads_torch(p)
        return {**by_kind, "total": sum(sum(v) for v in by_kind.values()), "torch_kernels": torch_kernels}


def open_app(browser, url: str, headers: dict[str, str] | None = None):
    from playwright.sync_api import expect

    context = browser.new_context(extra_http_headers=headers)
    page = context.new_page()
    t0 = time.monotonic()
    page.goto(url + "/", wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Classify")).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    return context, page, time.monotonic() - t0


PHOTO_INPUT = ".whatsthat-photoinput input[type=file]:not([capture])"  # whatsthat's photo input (issue 31)


def upload(page, photo: Path) -> None:
    """Choose `photo`: in whatsthat's photo input (which classifies it at once; Classify then classifies it
    again) or, on a baseline from before it, in ipywidgets' FileUpload."""
    from playwright.sync_api import expect

    if page.locator(PHOTO_INPUT).count():
        before = int(page.locator(".whatsthat-live").get_attribute("data-answers") or 0)
        page.locator(PHOTO_INPUT).set_input_files(photo)
        page.wait_for_function("n => Number(document.querySelector('.whatsthat-live')?.dataset.answers) > n",
                               arg=before, timeout=PAGE_TIMEOUT_MS)  # fmt: skip
        return
    expect(page.locator(".widget-upload")).to_have_text(re.compile(r"^\s*Upload( \(0\))?\s*$"), timeout=60_000)
    with page.expect_file_chooser() as chooser:
        page.click(".widget-upload")
    chooser.value.set_files(photo)
    page.locator(".widget-upload").filter(has_text="(1)").wait_for(timeout=60_000)


def classify(page, expect_prefix: str = "Prediction:") -> tuple[float, str]:
    label = page.locator(".widget-label").filter(has_text=expect_prefix)
    t0 = time.monotonic()
    page.get_by_role("button", name="Classify").click()
    label.wait_for(timeout=PAGE_TIMEOUT_MS)
    return time.monotonic() - t0, label.inner_text()


def cold_start(browser, srv: Server, photo: Path) -> tuple[dict[str, float | None], str]:
    """A server just started: (seconds from its start to each step of the first prediction, the answer).

    Steps: the server answering, the model process ready (its log line; None before the model process
    existed), the first page interactive (Classify enabled), the first prediction shown.
    """
    wait_until(lambda: srv.alive() and srv.answers(), START_TIMEOUT, "server answering", interval=0.02)
    steps: dict[str, float | None] = {"answering": time.monotonic() - srv.started}
    context, page, _ = open_app(browser, srv.url)
    steps["interactive"] = time.monotonic() - srv.started
    upload(page, photo)
    _, label = classify(page)
    steps["shown"] = time.monotonic() - srv.started
    steps["model_ready"] = srv.logged_at(MODEL_READY)
    context.close()
    return steps, label


def cold_and_warm(browser, mode: str, model: Path, photo: Path, runs: int) -> dict:
    """One server: cold start -> first prediction, then `runs` warm pages (load, first and next click)."""
    out: dict = {"load": [], "click1": [], "click2": []}
    with Server(mode, model) as srv:
        out["cold_steps"], out["label"] = cold_start(browser, srv, photo)
        out["cold"] = out["cold_steps"]["shown"]
        for served in range(1, runs + 1):
            srv.wait_ready(served)
            context, page, load_s = open_app(browser, srv.url)
            out["load"].append(load_s)
            upload(page, photo)
            out["click1"].append(classify(page)[0])
            classify(page, "Nothing to classify")
            upload(page, photo)
            out["click2"].append(classify(page)[0])
            context.close()
    return out


def page_timeline(browser, model: Path, runs: int) -> dict[str, list[float]]:
    """Where a warm page's time goes: seconds from page.goto to each step (a fresh browser context each run).

    Server side: the HTML arriving, the kernel's first websocket answer. Browser side: DOMContentLoaded,
    load (Voila's JavaScript chunks fetched), the websocket opening, the widgets rendered.
    """
    steps: dict[str, list[float]] = {k: [] for k in ("html", "dom", "load", "ws_open", "kernel_answer", "widgets")}
    with Server("after", model) as srv:
        wait_until(lambda: srv.alive() and srv.answers(), START_TIMEOUT, "server answering")
        for served in range(runs):
            srv.wait_ready(served)
            context = browser.new_context()
            page = context.new_page()
            seen: dict[str, float] = {}
            t0 = time.monotonic()

            def on_ws(ws, seen=seen, t0=t0) -> None:
                seen.setdefault("ws_open", time.monotonic() - t0)
                ws.on("framereceived", lambda _f: seen.setdefault("kernel_answer", time.monotonic() - t0))

            page.on("websocket", on_ws)
            page.goto(srv.url + "/", wait_until="commit", timeout=PAGE_TIMEOUT_MS)
            seen["html"] = time.monotonic() - t0
            page.wait_for_load_state("domcontentloaded")
            seen["dom"] = time.monotonic() - t0
            page.wait_for_load_state("load")
            seen["load"] = time.monotonic() - t0
            page.get_by_role("button", name="Classify").wait_for(timeout=PAGE_TIMEOUT_MS)
            seen["widgets"] = time.monotonic() - t0
            for k in steps:
                steps[k].append(seen.get(k, float("nan")))
            context.close()
    return steps


# Chromium's network emulation (DevTools protocol), as Lighthouse's profiles: a visitor's phone, not localhost.
NETWORKS = {
    "4G (9 Mbit/s, 40 ms)": {"latency": 40, "downloadThroughput": 9e6 / 8, "uploadThroughput": 9e6 / 8},
    "slow 4G (1.6 Mbit/s, 150 ms)": {"latency": 150, "downloadThroughput": 1.6e6 / 8, "uploadThroughput": 0.75e6 / 8},
}


def over_networks(browser, mode: str, model: Path, runs: int) -> dict:
    """Warm pages (a new visitor's empty cache each time) over emulated phone networks, and the bytes one fetches."""
    from playwright.sync_api import expect

    out: dict = {"bytes": [], **{name: [] for name in NETWORKS}}
    with Server(mode, model) as srv:
        wait_until(lambda: srv.alive() and srv.answers(), START_TIMEOUT, "server answering")
        served = 0
        for name, conditions in NETWORKS.items():
            for _ in range(runs if name.startswith("4G") else 1):  # slow 4G: one run, it is long
                srv.wait_ready(served)
                context = browser.new_context()
                page = context.new_page()
                cdp = context.new_cdp_session(page)
                cdp.send("Network.enable")
                cdp.send("Network.emulateNetworkConditions", {"offline": False, **conditions})
                sizes: dict[str, int] = {}  # bytes on the wire, headers and compression included
                cdp.on("Network.loadingFinished", lambda e, sizes=sizes: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
                t0 = time.monotonic()
                page.goto(srv.url + "/", wait_until="commit", timeout=PAGE_TIMEOUT_MS)
                expect(page.get_by_role("button", name="Classify")).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
                out[name].append(time.monotonic() - t0)
                out["bytes"].append(sum(sizes.values()))
                context.close()
                served += 1
    return out


def five_at_once(browser, mode: str, model: Path) -> float:
    """A fresh, ready server; five pages navigate in the same moment: seconds until the last is interactive."""
    from playwright.sync_api import expect

    with Server(mode, model) as srv:
        wait_until(lambda: srv.alive() and srv.answers(), START_TIMEOUT, "server answering")
        srv.wait_ready(0)
        contexts = [browser.new_context() for _ in range(5)]
        pages = [c.new_page() for c in contexts]
        t0 = time.monotonic()
        for page in pages:
            page.goto(srv.url + "/", wait_until="commit", timeout=PAGE_TIMEOUT_MS)
        for page in pages:
            expect(page.get_by_role("button", name="Classify")).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
        elapsed = time.monotonic() - t0
        for c in contexts:
            c.close()
    return elapsed


def send_flag(page) -> None:
    """Say the answer is wrong ("none of these"), with the photo, and wait for the thank-you."""
    form = page.locator(".whatsthat-flag")
    select = form.get_by_label("It is")
    select.select_option(index=select.locator("option").count() - 1)
    form.get_by_label("Keep my photo to improve this classifier").check()
    form.get_by_role("button", name="Send").click()
    form.get_by_text("Thank you").wait_for(timeout=60_000)


def visitors_memory(browser, mode: str, model: Path, photo: Path, counts: list[int]) -> dict[int, dict]:
    """Visitors arrive one by one and classify once (with flags on, and send a flag); memory after each count in `counts`."""
    out: dict[int, dict] = {}
    contexts = []
    with Server(mode, model) as srv:
        wait_until(lambda: srv.alive() and srv.answers(), START_TIMEOUT, "server answering")
        try:
            for n in range(1, max(counts) + 1):
                srv.wait_ready(n - 1)
                context, page, _ = open_app(browser, srv.url, {"X-Forwarded-For": f"192.0.2.{n}"})
                contexts.append(context)
                upload(page, photo)
                classify(page)
                if mode == "flags":
                    send_flag(page)
                if n in counts:
                    srv.wait_ready(n)
                    out[n] = srv.memory()
        finally:
            for c in contexts:
                c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "export.pkl"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-before", action="store_true", help="measure only the model-process set-up")
    ap.add_argument("--no-factory", action="store_true",
                    help="also measure `whatsthat serve --no-kernel-factory` (each kernel a process of its own)")
    ap.add_argument("--before-visitors", type=int, default=3, help="visitors for the before memory (default 3)")
    ap.add_argument("--flags", action="store_true",
                    help="also measure the memory of `whatsthat serve --flags` (each visitor also flags the photo)")
    args = ap.parse_args()
    model = Path(args.model).resolve()
    photos = sorted((require_bears() / "grizzly").glob("*.jpg"))
    if not photos:
        sys.exit(f"no grizzly photos in {require_bears() / 'grizzly'}")
    photo = photos[0]
    require_current_package()
    if not CHROMIUM.exists():
        sys.exit(f"the app bench needs {CHROMIUM} (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    results: dict[str, dict] = {}
    load_before = os.getloadavg()[0]  # the machine may be shared: its load says how far to trust the times
    with tempfile.TemporaryDirectory(prefix="whatsthat-app-bench-") as tmp:
        env = temp_env(Path(tmp))
        models = {"after": model}
        if args.no_factory:
            models["no-factory"] = model
        if not args.no_before:
            if serve_venv() is None:  # the old page: each kernel unpickles export.pkl with fastai
                bare = Path(tmp) / "bare" / "export.pkl"
                bare.parent.mkdir()
                shutil.copy(model, bare)
                shutil.copy(model.with_name(model.stem + ".card.json"), bare.with_name("export.card.json"))
                models["before"] = bare
            else:
                models["before"] = model
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env)
            try:
                for mode, m in models.items():
                    counts = [args.before_visitors] if mode == "before" else [3, 10]
                    r = cold_and_warm(browser, mode, m, photo, args.runs)
                    r["five"] = five_at_once(browser, mode, m)
                    r["network"] = over_networks(browser, mode, m, args.runs)
                    r["memory"] = visitors_memory(browser, mode, m, photo, counts)
                    if mode == "after":
                        r["timeline"] = page_timeline(browser, m, args.runs)
                    results[mode] = r
                    print(f"{mode}: done", file=sys.stderr)
                if args.flags:  # memory only: the rest of the page is after's
                    results["flags"] = {"memory": visitors_memory(browser, "flags", model, photo, [3, 10])}
            finally:
                browser.close()

    modes = list(results)

    def cell(mode: str, get, fmt: str = "{:.2f}") -> str:
        try:
            value = get(results[mode])
        except (KeyError, IndexError):
            return "not run"
        return fmt.format(value)

    rows = []

    def row(what: str, get, unit: str, target: str, fmt: str = "{:.2f}") -> None:
        rows.append([what, *[cell(m, get, fmt) for m in modes], unit, target])

    row("cold start -> first prediction shown", lambda r: r["cold"], "s", "<= 6")
    row("warm page: goto -> Classify enabled (median)", lambda r: median(r["load"]), "s", "<= 1.5")
    row("click -> prediction, first in the page (median)", lambda r: median(r["click1"]), "s", "<= 0.29")
    row("click -> prediction, next (median)", lambda r: median(r["click2"]), "s", "<= 0.29")
    row("5 visitors at once -> all interactive", lambda r: r["five"], "s", "<= 8")
    row("bytes a new visitor's page fetches", lambda r: median(r["network"]["bytes"]) / 1e6, "MB", "")
    for name in NETWORKS:
        row(f"warm page over {name} (median)", lambda r, name=name: median(r["network"][name]), "s", "")
    for n in sorted({n for r in results.values() for n in r["memory"]}):
        mb = "{:.0f}"
        target = {3: "<= 512", 10: "<= 1024"}.get(n, "")
        row(f"PSS sum, {n} visitors (server + model + factory + kernels)", lambda r, n=n: r["memory"][n]["total"], "MB", target, mb)
        row(f"  server processes ({n} visitors)", lambda r, n=n: sum(r["memory"][n]["server"]), "MB", "", mb)
        row(f"  model process ({n} visitors)", lambda r, n=n: sum(r["memory"][n]["model"]), "MB", "", mb)
        row(f"  kernel factory ({n} visitors)", lambda r, n=n: sum(r["memory"][n].get("factory", [])), "MB", "", mb)
        row(f"  kernels: count ({n} visitors + preheated)", lambda r, n=n: len(r["memory"][n]["kernel"]), "", "", "{:d}")
        row(f"  kernels: largest PSS ({n} visitors)", lambda r, n=n: max(r["memory"][n]["kernel"]), "MB", "<= 80", mb)
        row(f"  kernels: sum PSS ({n} visitors)", lambda r, n=n: sum(r["memory"][n]["kernel"]), "MB", "", mb)
        row(f"  kernels: median PSS ({n} visitors)", lambda r, n=n: median(r["memory"][n]["kernel"]), "MB", "", "{:.1f}")
        row(f"  kernels with torch loaded ({n} visitors)", lambda r, n=n: r["memory"][n]["torch_kernels"], "", "0", "{:d}")

    venv = serve_venv()
    torch_there = subprocess.run([str(bin_dir() / "python"), "-c", "import torch; print(torch.__version__)"],
                                 capture_output=True, text=True, timeout=120).stdout.strip()  # fmt: skip
    where = f"serving venv {venv}" if venv else f"dev venv {Path(sys.executable).parent.parent}"
    where += f" (torch {torch_there})"
    print(f"# app (Voila + headless Chromium) on {machine()}; servers from {where}; model {model.name}; "
          f"photo {photo.parent.name}/{photo.name}: {results['after']['label']!r}; runs {args.runs}; "
          f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")  # fmt: skip
    print("# before: Voila alone, each kernel loads the model" + (" (export.pkl with fastai)" if venv is None else
          " (the artifact, in-process)") + "; after: `whatsthat serve` (one model process, thin kernels forked by "
          "the kernel factory); no-factory: the same, each kernel a process of its own")  # fmt: skip
    print(table(["measure", *modes, "unit", "target"], rows))
    cold = results.get("after", {}).get("cold_steps")
    if cold:
        names = {"answering": "server answering (Voila's static files)", "model_ready": "model process ready",
                 "interactive": "first page interactive (Classify enabled)", "shown": "first prediction shown"}  # fmt: skip
        print("\n# where the cold start's time goes (after; seconds from starting `whatsthat serve`)")
        print(table(["step", "s"], [[names[k], "not logged" if cold.get(k) is None else f"{cold[k]:.2f}"]
                                    for k in sorted(names, key=lambda k: cold.get(k) or 0)]))  # fmt: skip
    timeline = results.get("after", {}).get("timeline")
    if timeline:
        names = {"html": "HTML received (server rendered the page)", "dom": "DOMContentLoaded",
                 "load": "load (Voila's JavaScript fetched)", "ws_open": "kernel websocket opened",
                 "kernel_answer": "first answer from the kernel", "widgets": "widgets shown (Classify visible)"}  # fmt: skip
        print("\n# where a warm page's time goes (after; seconds from page.goto, median of the runs)")
        print(table(["step", "s"], [[names[k], f"{median(v):.2f}"] for k, v in timeline.items()]))


if __name__ == "__main__":
    main()
