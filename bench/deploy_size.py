"""Deploy size: an estimate of the Heroku slug that requirements.txt produces (limit: 500 MB compressed).

    python bench/deploy_size.py [--torch-wheel /opt/wheels/torch-...+cpu-....whl] [--baseline REF]

Heroku's slug is a tar.gz of the app plus the installed packages. We build the same: the dependency
closure of requirements.txt taken from this venv's installed files, except torch, whose CUDA build
here is replaced by the files of a CPU torch wheel (what requirements.txt's CPU index installs),
plus the repository's tracked files less what `.slugignore` keeps off the dyno. Everything is
streamed through gzip to count the bytes. `--baseline REF` measures REF's requirements.txt (and no
.slugignore) the same way in the same run: the dev venv has every package either of them names.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import re
import subprocess
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from common import ROOT, table

from whatsthat.web.deploy import torch_pruned

CUDA_ONLY = re.compile(r"^(nvidia-|triton$|cuda-)")  # pulled by the CUDA torch build only


class CountingSink:
    def __init__(self):
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)

    def flush(self) -> None:
        pass


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith(("-", ".")):
            continue
        names.append(re.split(r"[=<>!~\[; ]", line)[0])
    return names


def closure(names: list[str]) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen or CUDA_ONLY.match(name):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue  # optional extras are not installed by a plain requirement
            todo.append(re.split(r"[=<>!~\[; (]", req)[0])
    return list(seen.values())


def slugignored(root: Path) -> list[str]:
    """Heroku's .slugignore patterns (one per line, '#' comments): files left out of the slug."""
    path = root / ".slugignore"
    if not path.is_file():
        return []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def ignored(f: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(f, p.lstrip("/")) or f.startswith(p.strip("/") + "/") for p in patterns)


def measure(requirements: Path, torch_wheel: str, patterns: list[str], prune: bool = True) -> tuple[list[list], int, int, int]:
    """(rows, raw bytes, compressed bytes, number of distributions) of one slug.

    `prune`: leave out what bin/post_compile deletes from torch on the dyno (whatsthat.web.deploy.prune_torch).
    """
    dists = closure(requirement_names(requirements))
    rows = []
    sink = CountingSink()
    raw_total = 0
    with tarfile.open(fileobj=sink, mode="w|gz") as tar:  # stream mode: gzip level 9
        def add(path: Path, arcname: str) -> int:
            tar.add(path, arcname=arcname, recursive=False)
            return path.stat().st_size

        # the CPU torch wheel's files, as pip would install them
        before = sink.n
        raw = 0
        with zipfile.ZipFile(torch_wheel) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if prune and info.filename.startswith("torch/") and torch_pruned(info.filename[len("torch/"):]):
                    continue
                ti = tarfile.TarInfo("site-packages/" + info.filename)
                ti.size = info.file_size
                with zf.open(info) as f:
                    tar.addfile(ti, f)
                raw += info.file_size
        pruned = ", pruned by bin/post_compile" if prune else ""
        rows.append(["torch (CPU wheel " + Path(torch_wheel).name.split("-")[1] + pruned + ")", raw, sink.n - before])
        raw_total += raw

        sizes = []
        for dist in dists:
            if dist.metadata["Name"].lower() == "torch":
                continue
            before, raw = sink.n, 0
            for f in dist.files or []:
                p = Path(dist.locate_file(f))
                if p.is_file() and "__pycache__" not in p.parts:
                    raw += add(p, f"site-packages/{f}")
            sizes.append([dist.metadata["Name"], raw, sink.n - before])
            raw_total += raw

        before, raw = sink.n, 0
        for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split():
            p = ROOT / f
            if p.is_file() and not ignored(f, patterns):
                raw += add(p, f"app/{f}")
        what = "less .slugignore" if patterns else "incl. export.pkl"
        rows.append([f"the repository (git ls-files, {what})", raw, sink.n - before])
        raw_total += raw

    sizes.sort(key=lambda r: -r[2])
    rest = sizes[8:]
    rows += sizes[:8] + [[f"{len(rest)} other packages", sum(r[1] for r in rest), sum(r[2] for r in rest)]]
    return rows, raw_total, sink.n, len(dists)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    ap.add_argument("--torch-wheel", default=next(iter(sorted(glob.glob("/opt/wheels/torch-*+cpu-*.whl"))), None))
    ap.add_argument("--baseline", metavar="REF", help="also measure this commit's requirements.txt (e.g. 4bb5d13)")
    args = ap.parse_args()
    if not args.torch_wheel:
        raise SystemExit("need a CPU torch wheel to measure (--torch-wheel)")

    mb = 1e6
    rows, raw_total, total, n = measure(args.requirements, args.torch_wheel, slugignored(ROOT))
    print(f"# estimated Heroku slug for {args.requirements.name} ({n} distributions, CUDA-only ones excluded)")
    print(table(["part", "installed MB", "compressed MB"], [[n, f"{r / mb:.1f}", f"{c / mb:.1f}"] for n, r, c in rows]
                + [["total", f"{raw_total / mb:.1f}", f"{total / mb:.1f}"]]))
    verdict = "under" if total < 500 * mb else "OVER"
    print(f"\n{total / mb:.0f} MB compressed: {verdict} Heroku's 500 MB slug limit")
    if args.baseline:
        old = subprocess.run(["git", "show", f"{args.baseline}:requirements.txt"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(old)
            f.flush()
            _, old_raw, old_total, old_n = measure(Path(f.name), args.torch_wheel, [], prune=False)
        print(f"\n# same run, baseline requirements.txt of {args.baseline}")
        print(table(["slug", "distributions", "installed MB", "compressed MB"], [
            [f"{args.baseline} (fastai stack, whole torch, no .slugignore)", old_n, f"{old_raw / mb:.0f}", f"{old_total / mb:.0f}"],
            ["now (serving stack, pruned torch, .slugignore)", n, f"{raw_total / mb:.0f}", f"{total / mb:.0f}"]]))


if __name__ == "__main__":
    main()
