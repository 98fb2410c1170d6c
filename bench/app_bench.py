"""The app as a visitor gets it: Voila + headless Chromium + the shipped model, and what a kernel costs.

    .venv/bin/python bench/app_bench.py [--runs 3] [--model export.pkl]

Measured (times are medians of --runs; needs /usr/bin/chromium and the playwright package):

- cold: a fresh Voila process (fresh temp HOME/Jupyter dirs) until the first prediction shows in the
  page: server start, page load (waiting for the preheated kernel to run the notebook), upload, Classify;
- warm page load: Voila running and its preheated kernel (pool_size=1) done with the notebook, time
  from `page.goto` to the Classify button being enabled; before each run the pool is refilled and idle;
- click to prediction: photo uploaded, time from the click to "Prediction: ..." in the label (first
  prediction in the kernel, and the next one in the same page);
- memory: VmHWM (peak RSS) of the kernel behind the page after its predictions, VmRSS of the idle
  preheated kernel, and VmHWM of plain subprocesses (no Voila, no ipykernel): `import torch` (the floor),
  `import whatsthat.app`, that plus `load_classifier` and one predict, and the naive lesson-2 kernel
  (`from fastai.vision.all import *`, `load_learner`, `learn.predict`).

Every process started here is stopped at the end; Jupyter, IPython, matplotlib and torch dirs are temp dirs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from common import ROOT, machine, median, require_bears, table

from whatsthat.serve import voila_command

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
START_TIMEOUT = 300  # s: server up, and a kernel loading torch + fastai + the model, on a loaded machine
PAGE_TIMEOUT_MS = 180_000
MODEL_LOADED = "whatsthat.app: model "  # logged by app_or_message once per kernel that ran the notebook
TEMP_DIRS = [
    ("HOME", ""),
    ("XDG_CACHE_HOME", ".cache"),
    ("XDG_CONFIG_HOME", ".config"),
    ("XDG_DATA_HOME", ".local/share"),
    ("JUPYTER_CONFIG_DIR", ".jupyter"),
    ("JUPYTER_DATA_DIR", ".local/share/jupyter"),
    ("JUPYTER_RUNTIME_DIR", ".local/share/jupyter/runtime"),
    ("IPYTHONDIR", ".ipython"),
    ("MPLCONFIGDIR", ".config/matplotlib"),
    ("TORCH_HOME", ".cache/torch"),
]


def temp_env(home: Path) -> dict[str, str]:
    """os.environ with every per-user dir under `home` (created), so nothing touches the real home."""
    env = dict(os.environ, JUPYTER_PLATFORM_DIRS="1", MPLBACKEND="Agg")
    for var, sub in TEMP_DIRS:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env.pop("WHATSTHAT_EXAMPLES", None)
    return env


def wait_until(check, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


def vm_kb(pid: int | str, field: str) -> int:
    """A VmHWM/VmRSS line of /proc/<pid>/status, in kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _is_kernel(p: psutil.Process) -> bool:
    try:
        return "ipykernel_launcher" in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


class Voila:
    """`whatsthat serve`'s Voila command on a free local port, in a fresh temp dir; `with` stops it all."""

    def __init__(self, model: Path) -> None:
        self.model = model
        self.tmp = tempfile.TemporaryDirectory(prefix="whatsthat-app-bench-")
        self.log = Path(self.tmp.name) / "voila.log"
        self.kernel_pids: set[int] = set()

    def __enter__(self) -> Voila:
        tmp = Path(self.tmp.name)
        env = temp_env(tmp / "home")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = voila_command("app.ipynb", port, "127.0.0.1", self.model,
                            extra_args=[f"--Voila.connection_dir_root={tmp}"])  # fmt: skip
        with self.log.open("wb") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """SIGTERM Voila's process group (it shuts its kernels down), then kill any kernel left over."""
        if exc_type is not None:  # a timeout or a failed page: the server's side of the story
            print(f"voila log (tail):\n{self.log_text()[-3000:]}", file=sys.stderr)
        self.kernels()  # remember the kernels while Voila is still their parent
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self.kernel_pids:  # kernels run in their own sessions, outside Voila's process group
            try:
                p = psutil.Process(pid)
                if _is_kernel(p):
                    p.kill()
            except psutil.NoSuchProcess:
                continue
        self.tmp.cleanup()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> bool:
        if self.proc.poll() is not None:
            sys.exit(f"voila exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        return True

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/voila/static/voila.js", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def kernels(self) -> list[psutil.Process]:
        try:
            found = [p for p in psutil.Process(self.proc.pid).children(recursive=True) if _is_kernel(p)]
        except psutil.NoSuchProcess:
            return []
        self.kernel_pids |= {p.pid for p in found}
        return found

    def kernel_pid(self, kernel_id: str) -> int:
        """The pid of the kernel whose connection file names `kernel_id`."""
        for p in self.kernels():
            if kernel_id in " ".join(p.cmdline()):
                return p.pid
        raise RuntimeError(f"no process for kernel {kernel_id}")

    def page_kernel(self) -> str:
        """The id of the kernel handed to the latest page (Voila logs it when it takes one from the pool)."""
        ids = re.findall(r"Using pre-heated kernel: ([0-9a-f-]{36})", self.log_text())
        if not ids:
            raise RuntimeError("no page was given a preheated kernel: is preheating on?\n" + self.log_text()[-3000:])
        return ids[-1]

    def wait_pool_ready(self, pages_served: int) -> None:
        """Until the pool is full again and its kernel has run the notebook and gone idle.

        Every kernel that runs app.ipynb logs MODEL_LOADED once: the pages' kernels plus the pooled one.
        After that line the notebook still builds the widgets, so also wait for the kernels' CPU to settle.
        """
        wait_until(lambda: self.check_alive() and self.log_text().count(MODEL_LOADED) >= pages_served + 1,
                   START_TIMEOUT, "the preheated kernel loading the model")  # fmt: skip

        def cpu_s() -> float:
            total = 0.0
            for p in self.kernels():
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    continue
            return total

        def idle() -> bool:
            before = cpu_s()
            time.sleep(0.5)
            return cpu_s() - before < 0.05

        wait_until(lambda: idle() and idle(), 60, "the kernels going idle")


def open_app(browser, url: str):
    """A new visitor (fresh context, empty cache): returns (context, page, seconds from goto to Classify enabled)."""
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    t0 = time.monotonic()
    page.goto(url + "/", wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Classify")).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
    return context, page, time.monotonic() - t0


def upload(page, photo: Path) -> None:
    """Choose `photo` in the upload widget and wait until the browser has read it."""
    from playwright.sync_api import expect

    # the app empties the upload after each Classify: "(1)" below is this upload, not the last one
    expect(page.locator(".widget-upload")).to_have_text(re.compile(r"^\s*Upload( \(0\))?\s*$"), timeout=30_000)
    with page.expect_file_chooser() as chooser:
        page.click(".widget-upload")
    chooser.value.set_files(photo)
    page.locator(".widget-upload").filter(has_text="(1)").wait_for(timeout=60_000)


def classify(page, expect_prefix: str = "Prediction:") -> tuple[float, str]:
    """Click Classify; (seconds until the label starts with `expect_prefix`, the label's text)."""
    label = page.locator(".widget-label").filter(has_text=expect_prefix)
    t0 = time.monotonic()
    page.get_by_role("button", name="Classify").click()
    label.wait_for(timeout=PAGE_TIMEOUT_MS)
    return time.monotonic() - t0, label.inner_text()


def cold_run(browser, model: Path, photo: Path) -> dict:
    """Fresh Voila -> first prediction in the page, as the first visitor right after a deploy sees it."""
    with Voila(model) as voila:
        wait_until(lambda: voila.check_alive() and voila.answers(), START_TIMEOUT, "voila answering")
        server_s = time.monotonic() - voila.started
        context, page, _ = open_app(browser, voila.url)
        page_s = time.monotonic() - voila.started
        upload(page, photo)
        _, text = classify(page)
        total_s = time.monotonic() - voila.started
        context.close()
    return {"server": server_s, "page": page_s, "total": total_s, "label": text}


def warm_runs(browser, model: Path, photo: Path, runs: int) -> dict[str, list[float]]:
    """On one Voila: per run, a fresh page on a ready preheated kernel, two predictions, kernel memory."""
    out: dict[str, list[float]] = {k: [] for k in ("load", "click1", "click2", "hwm", "pool_rss")}
    with Voila(model) as voila:
        wait_until(lambda: voila.check_alive() and voila.answers(), START_TIMEOUT, "voila answering")
        for served in range(runs):
            voila.wait_pool_ready(served)
            if served == 0:  # no page yet: the one kernel is the pool's
                out["pool_rss"] = [vm_kb(p.pid, "VmRSS") / 1024 for p in voila.kernels()]
            context, page, load_s = open_app(browser, voila.url)
            out["load"].append(load_s)
            upload(page, photo)
            out["click1"].append(classify(page)[0])
            classify(page, "Nothing to classify")  # the label must change before the next "Prediction:"
            upload(page, photo)
            out["click2"].append(classify(page)[0])
            out["hwm"].append(vm_kb(voila.kernel_pid(voila.page_kernel()), "VmHWM") / 1024)
            context.close()
    return out


# -- memory without Voila: one fresh interpreter per case, VmHWM read by the process itself at its end --

HWM = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
CASES = [
    ("import torch (the floor under every case below)", "import torch"),
    ("import whatsthat.app", "import whatsthat.app"),
    ("whatsthat.app + load_classifier + 1 predict",
     "import sys, whatsthat.app\nfrom whatsthat.predict import load_classifier\n"
     "load_classifier(sys.argv[1]).predict(sys.argv[2])"),
    ("naive lesson-2: fastai.vision.all * + load_learner + 1 predict",
     "import sys\nfrom fastai.vision.all import *\n"
     "learn = load_learner(sys.argv[1])\nwith learn.no_bar(): learn.predict(PILImage.create(sys.argv[2]))"),
]  # fmt: skip


def subprocess_hwm(code: str, model: Path, photo: Path, env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds including interpreter start) of `python -c code model photo`."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code + "\n" + HWM, str(model), str(photo)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    if r.returncode != 0:
        sys.exit(f"memory case failed:\n{code}\n{r.stderr[-3000:]}")
    return int(r.stdout.split()[-1]) / 1024, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "export.pkl"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    model = Path(args.model).resolve()
    if not model.is_file():
        sys.exit(f"model not found: {model}")
    photos = sorted((require_bears() / "grizzly").glob("*.jpg"))
    if not photos:
        sys.exit(f"no grizzly photos in {require_bears() / 'grizzly'}")
    photo = photos[0]
    if not CHROMIUM.exists():
        sys.exit(f"the app bench needs {CHROMIUM} (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="whatsthat-app-bench-") as tmp:
        env = temp_env(Path(tmp))  # for the plain subprocesses and Chromium (its profile, crash reports)
        # memory first, while nothing else of ours runs; cases take turns, so a cold disk cache hits one run of each
        memory: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in CASES}
        for _ in range(args.runs):
            for name, code in CASES:
                memory[name].append(subprocess_hwm(code, model, photo, env))

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=env)
            try:
                cold = [cold_run(browser, model, photo) for _ in range(args.runs)]
                warm = warm_runs(browser, model, photo, args.runs)
            finally:
                browser.close()

    rows: list[list[object]] = []

    def row(what: str, xs: list[float], unit: str) -> None:
        fmt = "{:.0f}" if unit == "MB" else "{:.2f}"
        rows.append([what, fmt.format(median(xs)), f"{fmt.format(min(xs))}-{fmt.format(max(xs))}", unit, len(xs)])

    row("cold: voila start -> server answers", [c["server"] for c in cold], "s")
    row("cold: voila start -> Classify enabled in page", [c["page"] for c in cold], "s")
    row("cold: voila start -> first prediction shown", [c["total"] for c in cold], "s")
    row("warm: page.goto -> Classify enabled (preheated kernel)", warm["load"], "s")
    row("click -> prediction, first in the kernel", warm["click1"], "s")
    row("click -> prediction, next one", warm["click2"], "s")
    row("peak RSS (VmHWM), the page's kernel after 2 predictions", warm["hwm"], "MB")
    row("RSS, idle preheated kernel (model loaded)", warm["pool_rss"], "MB")
    for name, results in memory.items():
        row(f"peak RSS, plain python: {name}", [hwm for hwm, _ in results], "MB")
        row("  wall time of that process", [wall for _, wall in results], "s")

    print(
        f"# app (Voila + headless Chromium) on {machine()}; model {model.name}; photo {photo.parent.name}/"
        f"{photo.name}: {cold[0]['label']!r}; runs {args.runs}"
    )
    print(table(["measure", "median", "min-max", "unit", "n"], rows))


if __name__ == "__main__":
    main()
