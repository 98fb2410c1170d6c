"""What the browser tests share: free ports, the running server, waiting for it, stopping it with its
kernels, and a visitor's upload and Classify click.

Chromium itself (its path, flags and the `chromium`/`browser` fixtures) is in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, SHARED_BEARS, draw_image, image_bytes, isolated_env
from model_fixture import SHIPPED_MODEL

START_TIMEOUT = 180


def is_kernel_factory(p: psutil.Process) -> bool:
    try:
        return "whatsthat.web.kernelfactory" in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def is_kernel(p: psutil.Process) -> bool:
    """A kernel started as a process of its own, or forked by the kernel factory (which shares its command line)."""
    try:
        if any(k in " ".join(p.cmdline()) for k in ("ipykernel_launcher", "whatsthat.web.pagekernel")):
            return True
        parent = p.parent()
        return is_kernel_factory(p) and parent is not None and is_kernel_factory(parent)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def kernel_factories_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The kernel factory `whatsthat serve` started (the process its forked kernels come from)."""
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if is_kernel_factory(p)]


def kernels_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The Jupyter kernels a server process started (and that are still running)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if is_kernel(p)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def stop_server(proc: subprocess.Popen, kernel_pids: set[int]) -> None:
    """SIGTERM the server's process group (it shuts its kernels down), then kill whatever we started that is left.

    `kernel_pids` may hold model process pids too: they are killed the same way if still there.
    """
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pid in kernel_pids:  # kernels run in their own sessions: not in the server's process group
        try:
            p = psutil.Process(pid)
            if is_kernel(p) or is_model_process(p) or is_kernel_factory(p):
                p.kill()
        except psutil.NoSuchProcess:
            continue


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds until `url` answers 200; fails the test (with the server's log) if it exits or takes too long."""
    t0 = time.monotonic()
    while http_status(url) != 200:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-5000:]}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"the server did not answer in {timeout}s:\n{log.read_text(errors='replace')[-5000:]}")
        time.sleep(0.25)
    return time.monotonic() - t0


def is_model_process(p: psutil.Process) -> bool:
    try:
        return "whatsthat.web.modelprocess" in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def model_processes_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The model process(es) `whatsthat serve` supervises (one, except for a moment while it restarts)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if is_model_process(p)]


def serve_command(model: Path, port: int, tmp: Path, cull_idle: int = 600, cull_interval: int = 60,
                  extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """`whatsthat serve` as the Procfile runs it, from $WHATSTHAT_SERVE_VENV (the CPU-only serving venv) when set.

    Without that variable the dev venv's `whatsthat` runs, i.e. this interpreter's. `extra`: more options.
    """
    venv = os.environ.get("WHATSTHAT_SERVE_VENV")
    whatsthat = Path(venv) / "bin" / "whatsthat" if venv else Path(sys.executable).parent / "whatsthat"
    if not whatsthat.is_file():
        pytest.fail(f"{whatsthat} does not exist (WHATSTHAT_SERVE_VENV={venv!r})")
    return [str(whatsthat), "serve", f"--model={model}", f"--port={port}", "--host=127.0.0.1",
            f"--examples={tmp / 'no-examples'}", f"--cull-idle-timeout={cull_idle}", f"--cull-interval={cull_interval}",
            *extra, "--", f"--Voila.connection_dir_root={tmp}"]  # fmt: skip


def pss_mb(p: psutil.Process) -> float:
    """Proportional set size: shared pages split among the processes that map them (what sums honestly)."""
    return p.memory_full_info().pss / 2**20


def loads_torch(p: psutil.Process) -> bool:
    """Whether libtorch is mapped into the process (i.e. it imported torch)."""
    try:
        return any("libtorch" in (m.path or "") for m in p.memory_maps(grouped=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


LAB_TOKEN = "whatsthat-test"


@contextlib.contextmanager
def jupyterlab(root: Path, env: dict[str, str], timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """JupyterLab serving `root` on a free local port: (url, process, log); stopped with its kernels after.

    `env`: the environment (isolated Jupyter and home dirs). Lab's "get Jupyter news?" popup is turned
    off, and `window.jupyterapp` exposed, so a test can run the notebook's cells.
    """
    settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={LAB_TOKEN}", f"--ServerApp.root_dir={root}",
           f"--LabServerApp.workspaces_dir={root / 'workspaces'}", "--LabApp.expose_app_in_browser=True"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    log = root / "lab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started: set[int] = set()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/status?token={LAB_TOKEN}", proc, log, timeout)
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        started |= {p.pid for p in kernels_of(proc)}
        stop_server(proc, started)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    model: Path
    photo: tuple[str, bytes]  # (name, bytes) of a picture to classify
    expected: str  # what the model says about it in-process: the label or "not sure"
    timings: dict = field(default_factory=dict)

    def kernels(self) -> list[psutil.Process]:
        return kernels_of(self.proc)

    def model_process(self, timeout: float = 120) -> psutil.Process:
        """The running model process (waits while the supervisor restarts it)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [p for p in model_processes_of(self.proc) if p.status() != psutil.STATUS_ZOMBIE]
            if len(found) == 1:
                return found[0]
            assert time.monotonic() < deadline, f"model processes: {found}\n{self.log_text()[-3000:]}"
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def pick_model_and_photo(request) -> tuple[Path, tuple[str, bytes], str]:
    """The shipped model and a real grizzly when available, else the tiny model and a generated picture.

    The expected answer is what the serving code says in-process (the same predictor, out-of-class
    score and verdict.decide as the model process and the page), so the page must agree with it exactly.
    """
    from whatsthat.model.verdict import decide
    from whatsthat.web.app import NOT_SURE
    from whatsthat.web.modelprocess import classify_files, load_predictor

    if SHIPPED_MODEL.is_file() and (SHARED_BEARS / "grizzly").is_dir():
        path = sorted((SHARED_BEARS / "grizzly").glob("*.jpg"))[0]
        model, photo = SHIPPED_MODEL, (path.name, path.read_bytes())
    else:
        # conftest's tiny model (model_fixture.tiny_model is the same path; a fixture only the modules that
        # import it can ask for, so without ../shared every browser test errored "fixture 'tiny_model' not found")
        model = Path(request.getfixturevalue("tiny_training").model_path)
        photo = ("red.jpg", image_bytes(draw_image("red", 96)))
    predictor = load_predictor(model)
    [r] = classify_files(predictor, [photo], 32)
    card = {**predictor.card, "threshold": predictor.threshold}
    answer = decide(r["ranked"], card, r["ood_score"])
    return model, photo, answer.label if answer.kind == "sure" and answer.label else NOT_SURE


@contextlib.contextmanager
def running_server(model_and_photo, tmp: Path, cull_idle: int, cull_interval: int, extra: Sequence[str] = (),
                   port: int | None = None) -> Iterator[Server]:
    """`whatsthat serve` on a free local port (or `port`), every Jupyter/home dir in tmp; all its processes stopped after.

    `extra`: more `whatsthat serve` options (--join-timeout=5, ...).
    """
    model, photo, expected = model_and_photo
    home = tmp / "home"
    env = {**os.environ, **isolated_env(home)}
    env.pop("WHATSTHAT_EXAMPLES", None)
    port = port or free_port()
    cmd = serve_command(model, port, tmp, cull_idle=cull_idle, cull_interval=cull_interval, extra=extra)
    log = tmp / "voila.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", proc, log, model, photo, expected)
    started: set[int] = set()
    try:
        started |= {p.pid for p in model_processes_of(proc)}
        t0 = time.monotonic()
        while http_status(srv.url + "/voila/static/voila.js") != 200:
            if proc.poll() is not None:
                pytest.fail(f"voila exited with {proc.returncode}:\n{srv.log_text()}")
            if time.monotonic() - t0 > START_TIMEOUT:
                pytest.fail(f"voila did not answer in {START_TIMEOUT}s:\n{srv.log_text()}")
            time.sleep(0.25)
        srv.timings["server_ready_s"] = time.monotonic() - t0
        # preheating: a pooled kernel starts with the server...
        while "Kernel pool of app.ipynb is filled" not in srv.log_text():
            if time.monotonic() - t0 > START_TIMEOUT:
                pytest.fail(f"the kernel pool was not filled in {START_TIMEOUT}s:\n{srv.log_text()}")
            time.sleep(0.25)
        # ...and wait until that kernel has run the notebook, so page_load_s is what a visitor gets
        while "whatsthat.web.app: model " not in srv.log_text():
            if time.monotonic() - t0 > START_TIMEOUT:
                pytest.fail(f"the preheated kernel did not load the model in {START_TIMEOUT}s:\n{srv.log_text()}")
            time.sleep(0.25)
        srv.timings["model_loaded_in_pool_s"] = time.monotonic() - t0
        yield srv
    finally:
        started |= {p.pid for p in srv.kernels()} | {p.pid for p in model_processes_of(proc)}
        stop_server(proc, started)
        print(f"\nserver timings: {json.dumps({k: round(v, 2) for k, v in srv.timings.items()})}")


UPLOAD_INPUT = ".whatsthat-photoinput input[type=file]:not([capture])"  # the photo input's Upload
CAMERA_INPUT = ".whatsthat-photoinput input[type=file][capture]"  # its Take a photo


def answers(page) -> int:
    """How many answers the page has shown (the live region's count: whatsthat/web/liveregion.py)."""
    return int(page.locator(".whatsthat-live").get_attribute("data-answers") or 0)


def wait_for_answer(page, before: int, timeout_ms: int = 120_000) -> None:
    """Until the page has shown an answer after the `before`-th (the live region's count)."""
    page.wait_for_function("n => Number(document.querySelector('.whatsthat-live')?.dataset.answers) > n",
                           arg=before, timeout=timeout_ms)  # fmt: skip


def wait_for_cards(page, n: int, timeout_ms: int = 30_000) -> None:
    """Until the Output shows `n` answer cards, each with its thumbnail. The live region announces a click's
    answers as the cards go to the Output, a message ahead of them (whatsthat.web.app.App._shown): after
    wait_for_answer the cards may still be on their way."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "n => document.querySelectorAll('.whatsthat-result').length === n"
            " && document.querySelectorAll('.whatsthat-result img').length === n", arg=n, timeout=timeout_ms)
    except PlaywrightTimeout:  # say what the page shows instead
        shown = page.locator(".whatsthat-result").all_inner_texts()
        pytest.fail(f"expected {n} answer card(s) with thumbnails, the page shows {len(shown)}: {shown!r}")


def as_files(files) -> list:
    return [f if isinstance(f, Path) else {"name": f[0], "mimeType": "image/jpeg", "buffer": f[1]} for f in files]


def upload(page, *files: tuple[str, bytes] | Path, input_selector: str = UPLOAD_INPUT, wait: bool = True) -> None:
    """Choose files with the photo input's Upload: (name, bytes) pairs, or paths (much faster for big files).

    The page classifies them as soon as they arrive; with `wait`, this waits for that answer.
    """
    page.locator(".whatsthat-live").wait_for(state="attached", timeout=120_000)
    before = answers(page)
    page.locator(input_selector).set_input_files(as_files(files))
    if wait:
        wait_for_answer(page, before)


def classify(page, expect_prefix: str, timeout_ms: int = 120_000) -> str:
    """Click Classify and wait for this click's answer (not the last one's: the label may already match)."""
    live = page.locator(".whatsthat-live")
    before = answers(page) if live.count() else None  # pages from before the live region have none
    page.get_by_role("button", name="Classify").click()
    if before is not None:
        wait_for_answer(page, before, timeout_ms)
    label = page.locator(".widget-label").filter(has_text=expect_prefix)
    label.wait_for(timeout=timeout_ms)
    return label.inner_text()




PHONES = ("Pixel 7", "iPhone 14", "Galaxy S8")  # Playwright's device profiles: 412, 390 and 360 px wide
AXE = ROOT / "tools" / "axe" / "node_modules" / "axe-core" / "axe.min.js"


def phone_page(browser, devices: dict, server, device: str, scheme: str, headers: dict[str, str] | None = None):
    """A new visitor on `device` (Playwright's profile, on Chromium: its browser type dropped) with `scheme`.

    `headers`: sent with every request (X-Forwarded-For: a visitor of its own behind a trusted router).
    """
    profile = {k: v for k, v in devices[device].items() if k != "default_browser_type"}
    context = browser.new_context(**profile, color_scheme=scheme, extra_http_headers=headers or {})
    page = context.new_page()
    page.goto(server.url + "/", wait_until="domcontentloaded", timeout=120_000)
    page.get_by_role("button", name="Classify").wait_for(timeout=120_000)
    page.locator(".whatsthat-live").wait_for(state="attached", timeout=60_000)
    return context, page


def fits_the_screen(page) -> None:
    """No sideways scroll; every percentage inside the viewport's width and shown; tap targets of 44 px."""
    width = page.viewport_size["width"]
    scroll = page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
    assert scroll <= width, f"the page is {scroll} px wide on a {width} px screen"
    pcts = page.locator(".whatsthat-bar-pct")
    assert pcts.count() >= 2
    for i in range(pcts.count()):
        box = pcts.nth(i).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (pcts.nth(i).inner_text(), box, width)
        assert pcts.nth(i).inner_text().endswith("%")
    for name in ("Upload", "Take a photo", "Classify"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box and box["height"] >= 44 and box["width"] >= 44, (name, box)
    box = page.locator(".whatsthat-card summary").bounding_box()
    assert box and box["height"] >= 44


def serious_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    assert AXE.is_file(), f"{AXE} is missing: `bash .ci/ensure-axe` installs it (make test does)"
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map(n => n.html)}))""")
    return [v for v in found if v["impact"] in ("serious", "critical")]
