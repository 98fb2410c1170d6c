"""`whatsthat serve` as a process: one server process running Voila, a model process and page kernels
beside it, and a SIGTERM (Heroku's stop) that leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from browser_support import (
    free_port,
    http_status,
    kernel_factories_of,
    kernels_of,
    model_processes_of,
    serve_command,
    stop_server,
)
from conftest import ROOT, isolated_env
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.slow
START_TIMEOUT = 240


def wait(check, what: str, log, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f}s:\n{log.read_text(errors='replace')[-4000:]}"
        time.sleep(0.2)


def test_sigterm_stops_voila_its_kernels_and_the_model_process(tiny_model, tmp_path):  # noqa: F811
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, **isolated_env(tmp_path / "home")}
    with log.open("wb") as out:
        proc = subprocess.Popen(serve_command(tiny_model, port, tmp_path), cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    started: set[int] = set()
    try:
        wait(lambda: http_status(f"http://127.0.0.1:{port}/voila/static/voila.js") == 200, "Voila answering", log)
        wait(lambda: "whatsthat.web.app: model " in log.read_text(errors="replace"), "the pooled kernel's model", log)
        kernels, models, factories = kernels_of(proc), model_processes_of(proc), kernel_factories_of(proc)
        started = {p.pid for p in kernels + models + factories}
        # one server process: Voila runs inside `whatsthat serve`, no supervisor process of its own
        children = psutil.Process(proc.pid).children(recursive=True)
        assert {p.pid for p in children} == started, [p.cmdline() for p in children]
        assert len(models) == 1 and len(kernels) == 1 and len(factories) == 1
        assert kernels[0].parent().pid == factories[0].pid  # the pooled kernel was forked by the factory

        proc.send_signal(signal.SIGTERM)  # the server process only: it must stop the rest itself
        assert proc.wait(timeout=30) == 0
        _, alive = psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=15)
        assert alive == [], [p.cmdline() for p in alive]
        assert "restarting" not in log.read_text(errors="replace")  # the model process was not brought back
    finally:
        stop_server(proc, started)
