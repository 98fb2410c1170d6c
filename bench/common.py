"""Helpers shared by the bench scripts: where the data is, an older commit's package, medians, and a plain
table printer."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
