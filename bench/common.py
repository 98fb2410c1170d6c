"""Helpers shared by the bench scripts: where the data is, an older commit's package, medians, a plain
table printer, and a server under measurement (started in a temp dir, its processes told apart, stopped
with every kernel it started)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BEARS = Path(os.environ.get("WHATSTHAT_BEARS", ROOT.parent / "shared" / "datasets" / "bears"))


def require_bears() -> Path:
    if not BEARS.is_dir():
        sys.exit(f"bench needs the bear photos at {BEARS} (set WHATSTHAT_BEARS to another folder-per-class dataset)")
    return BEARS


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far: a run's cost on a shared machine."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def read_runs(path: Path | None) -> list[dict]:
    """The runs a `--results` JSON-lines file already holds (none without a file): a bench skips them."""
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_run(path: Path | None, run: dict) -> None:
    """Add one finished run to the `--results` file at once, so an interrupted bench resumes after it."""
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(run) + "\n")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The package as commit `ref` has it, in a temporary git worktree (removed afterwards).

    Put first on PYTHONPATH, it wins over the editable install of the working tree: a console script's
    sys.path starts with its own folder, then PYTHONPATH. Same venv, so only whatsthat's code differs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


TEMP_DIRS = [("HOME", ""), ("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
             ("XDG_DATA_HOME", ".local/share"), ("JUPYTER_CONFIG_DIR", ".jupyter"),
             ("JUPYTER_DATA_DIR", ".local/share/jupyter"), ("JUPYTER_RUNTIME_DIR", ".local/share/jupyter/runtime"),
             ("IPYTHONDIR", ".ipython"), ("MPLCONFIGDIR", ".config/matplotlib"), ("TORCH_HOME", ".cache/torch")]  # fmt: skip


def temp_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, JUPYTER_PLATFORM_DIRS="1", MPLBACKEND="Agg")
    for var, sub in TEMP_DIRS:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    for var in ("WHATSTHAT_EXAMPLES", "WHATSTHAT_MODEL_SOCKET", "WHATSTHAT_MODEL_AUTHKEY"):
        env.pop(var, None)
    return env


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def kind_of(p: psutil.Process) -> str:
    line = cmdline(p)
    if "ipykernel_launcher" in line or "whatsthat.web.pagekernel" in line:
        return "kernel"
    if "whatsthat.web.kernelfactory" in line:  # the factory, or a kernel it forked (which shares its command line)
        try:
            parent = p.parent()
        except psutil.NoSuchProcess:
            parent = None
        return "kernel" if parent is not None and "whatsthat.web.kernelfactory" in cmdline(parent) else "factory"
    if "whatsthat.web.modelprocess" in line:
        return "model"
    return "server"


class BenchServer:
    """A server the benches measure: a free local port, every user dir and its log in a temp dir, and on
    leaving, stopped with every kernel, model process and kernel factory it started.

    `label` names it in messages; `code`: another commit's package, first on PYTHONPATH (`checkout`),
    inherited by the model process and the kernels. Subclasses build the command in `__enter__` and
    call `launch`. `stop_group`: SIGTERM the server's whole process group rather than the server alone.
    """

    stop_group = True
    stop_timeout = 30.0

    def __init__(self, label: str, prefix: str, code: Path | None = None) -> None:
        self.label, self.code = label, code
        self.tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.log = Path(self.tmp.name) / "server.log"
        self.pids: set[int] = set()

    def prepare(self) -> tuple[Path, dict[str, str], int]:
        """(the temp dir, the server's environment, a free port); sets `url`."""
        tmp = Path(self.tmp.name)
        env = temp_env(tmp / "home")
        if self.code is not None:
            env["PYTHONPATH"] = str(self.code)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return tmp, env, port

    def launch(self, cmd: Sequence[str], env: dict[str, str]) -> None:
        # in the baseline's tree when there is one: its app.ipynb, and its package for the `python -m`
        # processes (the kernel factory, the model process), whose sys.path starts with the working
        # directory, before PYTHONPATH
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(list(cmd), cwd=self.code or ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            print(f"{self.label} server log (tail):\n{self.log_text()[-4000:]}", file=sys.stderr)
        self.processes()
        if self.proc.poll() is None:
            if self.stop_group:
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self.pids:  # kernels run in sessions of their own, outside the server's process group
            try:
                p = psutil.Process(pid)
                if kind_of(p) in ("kernel", "model", "factory"):
                    p.kill()
            except psutil.NoSuchProcess:
                continue
        self.tmp.cleanup()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """The server and everything below it, now (remembered, to be stopped on leaving)."""
        try:
            root = psutil.Process(self.proc.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.pids |= {p.pid for p in found}
        return found
