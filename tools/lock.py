"""The project's locked environments: `make lock` re-resolves them, `make install` installs them exactly.

Why pip constraints in plain `pip freeze` form, and not pip-tools or uv:
- torch must come from where this project's machines keep it (pip's configured find-links and
  indexes, e.g. the CPU-only wheel); uv does not read pip's configuration and would fetch a
  multi-GB CUDA build, and pip-tools breaks with each new pip release (it imports pip's internals).
- A lock made by installing into a fresh venv and freezing it is, by construction, an environment
  that installed and imported together: nothing is resolved by hand, pip's own resolver does it.
- `pip install -r LOCK` reproduces it with nothing but pip, which every machine, CI and Heroku have.

Two environments, each from a short hand-written `.in` file of what we ask for:
- requirements/dev.in -> requirements/dev.lock: development, training and the tests (make install).
- requirements/serve.in -> requirements.txt: what a web dyno installs (Heroku reads requirements.txt).

Usage (stdlib only: it runs before any venv exists):
    python tools/lock.py lock            re-resolve both, rewrite the locks, print what changed
    python tools/lock.py sync VENV       make VENV exactly dev.lock (+ whatsthat editable)
    python tools/lock.py check           fail when pyproject/dev.in changed since dev.lock was made
    python tools/lock.py serve VENV      build VENV from requirements.txt as a dyno does (no fastai)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
DEV_IN, DEV_LOCK = REQ / "dev.in", REQ / "dev.lock"
SERVE_IN, SERVE_LOCK = REQ / "serve.in", ROOT / "requirements.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Libraries whose version is baked into export.pkl: a change means the shipped model must be retrained.
MODEL_LIBS = ("torch", "torchvision", "fastai", "fastcore", "fasttransform", "efficientnet-lite-pytorch")
SELF = "whatsthat"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


class LockError(Exception):
    """A problem the maintainer must act on; printed as one line, no traceback."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """{normalised name: version} from lock or `pip freeze` text (comments and pip options skipped)."""
    matches = (_PIN.match(line.split(" #", 1)[0].strip()) for line in text.splitlines())
    return {norm(m.group(1)): m.group(2) for m in matches if m}


def read_pins(path: Path) -> dict[str, str]:
    return parse_pins(path.read_text(encoding="utf-8")) if path.is_file() else {}


def inputs_digest(source: Path = DEV_IN) -> str:
    """sha256 of what a lock was resolved from: its .in file and pyproject's dependency lists.

    Only the dependency lists, so editing the description or version does not invalidate the lock.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = repr((project.get("dependencies", []), sorted(project.get("optional-dependencies", {}).items())))
    h = hashlib.sha256(source.read_bytes())
    h.update(deps.encode())
    return h.hexdigest()


def locked_digest(lock: Path = DEV_LOCK) -> str | None:
    for line in lock.read_text(encoding="utf-8").splitlines() if lock.is_file() else []:
        if line.startswith("# inputs-sha256: "):
            return line.split(": ", 1)[1].strip()
    return None


def run(*cmd: str | Path, cwd: Path = ROOT, env_path: Path | None = None) -> str:
    """Run `cmd`; `env_path` goes first on PATH (a venv's bin, for scripts that call `python`)."""
    env = None if env_path is None else {**os.environ, "PATH": f"{env_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise LockError(f"`{' '.join(map(str, cmd))}` failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def fresh_freeze(requirements: Path, where: Path) -> list[str]:
    """Install `requirements` into a new venv with the newest pip, return its `pip freeze --all` lines."""
    venv.create(where, with_pip=True)
    py = where / "bin" / "python"
    run(py, "-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools")
    print(f"  resolving {requirements.relative_to(ROOT)} in a fresh venv (pip's resolver)...", flush=True)
    run(py, "-m", "pip", "install", "--quiet", "-r", requirements)
    # --all: pip and setuptools are part of the environment too (setuptools builds `pip install -e .`)
    lines = run(py, "-m", "pip", "freeze", "--all", "--exclude-editable").splitlines()
    return sorted((ln for ln in lines if _PIN.match(ln) and norm(ln.split("==")[0]) != SELF), key=str.lower)


def header(source: Path, what: str) -> list[str]:
    return [
        f"# {what}",
        f"# Generated by `make lock` (tools/lock.py) on {dt.date.today()} from {source.relative_to(ROOT)}: do not edit.",
    ]


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a != b:
            out.append(f"  {name}: {a or '(new)'} -> {b or '(removed)'}")
    return out


def cmd_lock(_args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="whatsthat-lock-") as tmp:
        old_dev, old_serve = read_pins(DEV_LOCK), read_pins(SERVE_LOCK)
        dev = fresh_freeze(DEV_IN, Path(tmp) / "dev")
        DEV_LOCK.write_text(
            "\n".join([*header(DEV_IN, "The development and training environment, exactly (make install)."),
                       f"# inputs-sha256: {inputs_digest()}", *dev]) + "\n",
            encoding="utf-8",
        )
        write_serve_lock(fresh_freeze(SERVE_IN, Path(tmp) / "serve"))
    report("requirements/dev.lock", old_dev, read_pins(DEV_LOCK))
    report("requirements.txt", old_serve, read_pins(SERVE_LOCK))
    retrain = [n for n in MODEL_LIBS if old_dev.get(n) != read_pins(DEV_LOCK).get(n)]
    if retrain:
        print(f"\n!! {', '.join(retrain)} changed: export.pkl was made with the old versions. Run `make install`,\n"
              "!! retrain the model (whatsthat train ... or train.ipynb) and commit export.pkl with the locks.")
    print("\nNext: make install && make test, then commit the lock files.")


def write_serve_lock(serve: list[str]) -> None:
    SERVE_LOCK.write_text(
        "\n".join([*header(SERVE_IN, "What a web dyno installs (Heroku, Binder), exactly."),
                   f"# inputs-sha256: {inputs_digest(SERVE_IN)}",
                   "# CPU-only torch: a dyno has no GPU and the CUDA build is gigabytes.",
                   f"--extra-index-url {CPU_INDEX}",
                   *(ln for ln in serve if norm(ln.split("==")[0]) not in ("pip", "setuptools")),
                   ".  # whatsthat itself (the page and the model server)"]) + "\n",
        encoding="utf-8",
    )


def report(name: str, old: dict[str, str], new: dict[str, str]) -> None:
    diff = changes(old, new)
    print(f"\n{name}: {len(new)} packages, {len(diff)} changed" + (":" if diff else ""))
    print("\n".join(diff))


def cmd_check(_args: argparse.Namespace) -> None:
    if not DEV_LOCK.is_file():
        raise LockError(f"{DEV_LOCK.relative_to(ROOT)} is missing: run `make lock`")
    for source, lock in ((DEV_IN, DEV_LOCK), (SERVE_IN, SERVE_LOCK)):
        if locked_digest(lock) != inputs_digest(source):
            raise LockError(
                f"pyproject.toml's dependencies or {source.relative_to(ROOT)} changed since {lock.relative_to(ROOT)} "
                "was made: run `make lock` (it re-resolves and says what changed), then `make install`"
            )


def cmd_sync(args: argparse.Namespace) -> None:
    """Make the venv exactly the lock: install every pin, remove what the lock does not list."""
    cmd_check(args)
    py = Path(args.venv) / "bin" / "python"
    pins = read_pins(DEV_LOCK)
    run(py, "-m", "pip", "install", "--quiet", f"pip=={pins['pip']}")
    run(py, "-m", "pip", "install", "--quiet", "-r", DEV_LOCK)
    have = parse_pins(run(py, "-m", "pip", "freeze", "--all", "--exclude-editable"))
    extra = sorted(set(have) - set(pins) - {SELF})
    if extra:
        print(f"  removing packages the lock does not list: {' '.join(extra)}")
        run(py, "-m", "pip", "uninstall", "--quiet", "--yes", *extra)
    # --no-deps: every dependency is already there at its locked version; pip check proves it
    run(py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", ".")
    run(py, "-m", "pip", "check")


def without_cpu_index(requirements: str) -> str:
    """requirements.txt's text less its `--extra-index-url` line (see cmd_serve; tests/web/test_docker.py too).

    Every pin stays: torch==2.13.0+cpu must then come from pip's configured sources, or pip fails.
    """
    return "\n".join(ln for ln in requirements.splitlines() if not ln.startswith("--extra-index-url")) + "\n"


def cmd_serve(args: argparse.Namespace) -> None:
    """Build the serving environment the way Heroku does: a fresh venv, `pip install -r requirements.txt`.

    One difference: the PyTorch CPU index is not reachable from every machine (not from CI's), and pip
    waits minutes on an index it cannot reach. The line is left out here; the same pinned CPU wheel then
    comes from pip's configured sources, and `pip check` plus the import check below prove the result.
    Re-run after a code change: whatsthat itself is reinstalled (non-editable, as on a dyno) every time.
    """
    where = Path(args.venv)
    py = where / "bin" / "python"
    if not py.exists():
        venv.create(where, with_pip=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=ROOT, prefix=".serve-req-", delete=False) as f:
        f.write(without_cpu_index(SERVE_LOCK.read_text(encoding="utf-8")))  # in ROOT: '.' still means this checkout
    try:
        run(py, "-m", "pip", "install", "--quiet", "-r", f.name)
        run(py, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", ".")
    finally:
        Path(f.name).unlink()
    run(py, "-m", "pip", "check")
    # what Heroku then runs (bin/post_compile): the dyno has a pruned torch, so the tests must too
    run("bash", ROOT / "bin" / "post_compile", cwd=ROOT, env_path=where / "bin")
    # what serving must never need: if one of these imports, requirements.txt has grown a training library
    leaked = run(py, "-c", "import importlib.util as u; print(' '.join(m for m in ('fastai', 'torchvision') "
                           "if u.find_spec(m)))").strip()
    if leaked:
        raise LockError(f"the serving environment contains {leaked}: requirements/serve.in must not pull them in")
    print(f"  {where}: the serving environment of requirements.txt (torch "
          f"{run(py, '-c', 'import torch; print(torch.__version__)').strip()}, no fastai, no torchvision)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("lock", help="re-resolve requirements/*.in into the lock files and print what changed")
    sub.add_parser("check", help="fail when the lock is older than pyproject.toml's dependencies")
    sync = sub.add_parser("sync", help="make a venv exactly requirements/dev.lock")
    sync.add_argument("venv")
    serve = sub.add_parser("serve", help="build a venv from requirements.txt as a dyno does (CI's serving tests)")
    serve.add_argument("venv")
    args = parser.parse_args(argv)
    try:
        {"lock": cmd_lock, "check": cmd_check, "sync": cmd_sync, "serve": cmd_serve}[args.cmd](args)
    except LockError as e:
        print(f"lock: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
