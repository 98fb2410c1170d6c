"""A helper process that `whatsthat serve` keeps running: started, restarted when it exits, stopped.

The model process (`whatsthat.web.modelprocess.Supervisor`) and the kernel factory
(`whatsthat.web.kernelfactory.KernelFactory`) are both children of the server that visitors depend on,
and both are brought back the same way: at once after a crash that followed a healthy run, then after
a delay that doubles while it keeps failing (so a process that cannot start does not spin a core).
Each listens on a socket in a fresh private directory (0700), removed when it stops, and takes a
random authkey through its environment; `env()` is how the server's other parts reach it.

Standard library only.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

log = logging.getLogger("whatsthat.web.restarter")

HEALTHY_RUN = 60.0  # s: a process that ran this long and then died is restarted at once


def child_key(var: str, *, min_bytes: int = 1, pop: bool = False) -> bytes | None:
    """In the child, the other side of `Restarter.child_env()`: the authkey in `$var` (hex), or None when it
    is missing, not hex or shorter than `min_bytes`.

    `pop`: remove it from this process's environment too, so that nothing this process starts inherits it.
    """
    key = os.environ.pop(var, "") if pop else os.environ.get(var, "")
    try:
        authkey = bytes.fromhex(key)
    except ValueError:
        return None
    return authkey if len(authkey) >= max(1, min_bytes) else None


class Restarter:
    """Runs `command()` as a child process and restarts it when it exits, until `stop()`.

    Subclasses give `name`, the environment variables that carry the socket's path and the key
    (`socket_var`, `key_var`), `command()` and, where they need to, `child_env()` and `why()`.
    """

    name = "process"  # for the log: "model process 123 exited with 1 ..."
    socket_var = key_var = ""

    def __init__(self, *, python: str | None = None, stderr: Any = None, min_delay: float = 0.5,
                 max_delay: float = 30.0, dir_prefix: str = "whatsthat-", socket_name: str = "sock") -> None:  # fmt: skip
        self.python = python or sys.executable
        self.stderr = stderr
        self.min_delay, self.max_delay = min_delay, max_delay
        self.authkey = secrets.token_bytes(32)
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix))  # mkdtemp: mode 0700
        self.socket = self.dir / socket_name
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spawned_at = 0.0

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """What a process needs to reach this one: the socket's path and the key."""
        return {self.socket_var: str(self.socket), self.key_var: self.authkey.hex()}

    def child_env(self) -> dict[str, str]:
        """This process's environment with the child's own key (its socket comes on its command line)."""
        env = {k: v for k, v in os.environ.items() if k not in (self.socket_var, self.key_var)}
        return {**env, self.key_var: self.authkey.hex()}

    def why(self, returncode: int) -> str:
        """How the log says the process ended."""
        return f"exited with {returncode}"

    def _spawn(self) -> None:
        self.starts += 1
        self._spawned_at = time.time() - 1  # file mtimes are in whole or coarse seconds on some filesystems
        self.proc = subprocess.Popen(self.command(), env=self.child_env(), stdin=subprocess.DEVNULL, stderr=self.stderr)

    def _watch(self) -> None:
        delay = self.min_delay
        while not self._stop.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            rc = proc.wait()
            if self._stop.is_set():
                return
            ran = time.monotonic() - started
            if ran > HEALTHY_RUN:
                delay = self.min_delay  # it had been healthy: a one-off crash restarts at once
            log.warning("%s %d %s after %.0fs; restarting in %.1fs", self.name, proc.pid, self.why(rc), ran, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.max_delay)
            self._spawn()
            log.info("%s restarted as %d (start %d)", self.name, self.proc.pid, self.starts)

    def start(self) -> Self:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"{self.name} watch")
        self._thread.start()
        return self

    def stop_restarting(self) -> None:
        """From now on an exit is final: at shutdown (Heroku signals every process at once) nothing restarts."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
