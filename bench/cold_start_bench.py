"""Cold start -> first prediction, with the page built from the model card against waiting for the model.

    WHATSTHAT_SERVE_VENV=.venv-serve .venv/bin/python bench/cold_start_bench.py [--runs 3] [--baseline REF]

A page kernel builds the page from the card beside the model when the card names the classes
(whatsthat.web.app.RemoteClassifier), so at a cold start the page renders while the model process is still
importing torch. Without classes in the card the kernel asks the model process for them first, as
every kernel did before: the page then waits for the model process. Both set-ups run here, the same
code and the same model files (the second with a copy of the card that names no classes, so the model
process fills them in from the artifact and the page reads the same), alternating, each run a fresh
`whatsthat serve` and a fresh browser context. Timed from starting `whatsthat serve`: the server
answering, the model process ready (its log line), the first page interactive (Classify enabled), the
first prediction shown.

`--baseline REF` compares instead the working tree's `whatsthat serve` with commit REF's (REF's package
checked out into a temporary git worktree; each package put first on PYTHONPATH, for the server, the
model process and the kernels; same venv, same model files), alternating in the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import app_bench as app
from common import ROOT, checkout, median, require_bears, table

MODEL_FILES = (".pkl", ".card.json", ".safetensors", ".serving.json", ".ood.safetensors")


def without_classes(model: Path, folder: Path) -> Path:
    """A copy of the model's files whose card names no classes (the kernel then asks the model process)."""
    folder.mkdir(parents=True)
    for suffix in MODEL_FILES:
        src = model.with_name(model.stem + suffix)
        if src.is_file():
            shutil.copy(src, folder / ("export" + suffix))
    card_path = folder / "export.card.json"
    card = json.loads(card_path.read_text())
    card.pop("classes", None)
    card_path.write_text(json.dumps(card))
    return folder / "export.pkl"


def cold_start(browser, model: Path, photo: Path, code: Path | None = None) -> dict[str, float | None]:
    with app.Server("after", model, code) as srv:
        steps, label = app.cold_start(browser, srv, photo)
    if not label.startswith("Prediction:"):
        sys.exit(f"unexpected answer {label!r}")
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "export.pkl"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", metavar="REF", help="compare with `whatsthat serve` as commit REF has it")
    args = ap.parse_args()
    photo = sorted((require_bears() / "grizzly").glob("*.jpg"))[0]
    if not args.baseline:  # with one, each set-up runs its own checkout by PYTHONPATH
        app.require_current_package()
    if not app.CHROMIUM.exists():
        sys.exit(f"the cold start bench needs {app.CHROMIUM} (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    model = Path(args.model).resolve()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="whatsthat-cold-bench-") as tmp, contextlib.ExitStack() as stack:
        # each set-up: (model, package checkout or None for the working tree)
        if args.baseline:
            # the working tree by PYTHONPATH too: the serving venv holds a non-editable copy of the package
            setups = {"now": (model, ROOT), f"@ {args.baseline}": (model, stack.enter_context(checkout(args.baseline)))}
        else:
            setups = {"page from the card": (model, None),
                      "page waits for the model (before)": (without_classes(model, Path(tmp) / "m"), None)}  # fmt: skip
        results: dict[str, list[dict]] = {name: [] for name in setups}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(app.CHROMIUM), args=app.CHROMIUM_ARGS, env=app.temp_env(Path(tmp)))
            try:
                for _ in range(args.runs):  # alternating, so a change in the machine's load hits both
                    for name, (files, code) in setups.items():
                        results[name].append(cold_start(browser, files, photo, code))
            finally:
                browser.close()
    steps = {"answering": "server answering", "model_ready": "model process ready",
             "interactive": "first page interactive (Classify enabled)", "shown": "first prediction shown"}  # fmt: skip
    rows = []
    for key, what in steps.items():
        cells = []
        for runs in results.values():
            got = [r[key] for r in runs if r[key] is not None]
            cells.append(f"{median(got):.2f} ({' '.join(f'{x:.2f}' for x in got)})" if got else "not logged")
        rows.append([what, *cells])
    print(f"# cold start, servers from {app.bin_dir().parent}; model {Path(args.model).name}; {args.runs} runs each, "
          f"alternating; seconds from starting `whatsthat serve`, median (all); load average {load_before:.1f} at "
          f"start, {os.getloadavg()[0]:.1f} at end")  # fmt: skip
    print(table(["step", *results], rows))


if __name__ == "__main__":
    main()
