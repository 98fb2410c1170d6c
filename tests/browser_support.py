"""What the browser tests share: free ports, waiting for servers, stopping them with their kernels.

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
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


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


def serve_command(model: Path, port: int, tmp: Path, cull_idle: int = 600, cull_interval: int = 60) -> list[str]:
    """`whatsthat serve` as the Procfile runs it, from $WHATSTHAT_SERVE_VENV (the CPU-only serving venv) when set.

    Without that variable the dev venv's `whatsthat` runs, i.e. this interpreter's.
    """
    venv = os.environ.get("WHATSTHAT_SERVE_VENV")
    whatsthat = Path(venv) / "bin" / "whatsthat" if venv else Path(sys.executable).parent / "whatsthat"
    if not whatsthat.is_file():
        pytest.fail(f"{whatsthat} does not exist (WHATSTHAT_SERVE_VENV={venv!r})")
    return [str(whatsthat), "serve", f"--model={model}", f"--port={port}", "--host=127.0.0.1",
            f"--examples={tmp / 'no-examples'}", f"--cull-idle-timeout={cull_idle}", f"--cull-interval={cull_interval}",
            "--", f"--Voila.connection_dir_root={tmp}"]  # fmt: skip


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
