"""What the browser tests share: free ports, waiting for servers, stopping them with their kernels.

Chromium itself (its path, flags and the `chromium`/`browser` fixtures) is in conftest.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest


def is_kernel(p: psutil.Process) -> bool:
    try:
        return "ipykernel_launcher" in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


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
    """SIGTERM the server's process group (it shuts its kernels down), then kill whatever we started that is left."""
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
            if is_kernel(p):
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
