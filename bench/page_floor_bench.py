"""How fast can a warm Voila page be on this machine at all? whatsthat's page against Voila's floor.

    WHATSTHAT_SERVE_VENV=.venv-serve .venv/bin/python bench/page_floor_bench.py [--runs 3] [--pages 3]

The app bench's warm page (page.goto -> Classify enabled) has a target of 1.5 s. Its breakdown shows
where the time goes: nearly all of it in Chromium fetching and running Voila's JavaScript, on the same
2 cores as the server. This bench measures the floor under that: Voila serving a notebook with the same
four widgets (FileUpload, Classify, Output, Label) and nothing of whatsthat, started with the same
flags (whatsthat.web.serve.voila_command: preheated pool of 1, the page kernel), against `whatsthat serve`
with the shipped model. The two alternate, each run a fresh server; every page a fresh browser context
(an empty cache, as for a new visitor) once the server and its kernels are idle.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import app_bench as app
from common import ROOT, machine, median, table


def warm_pages(browser, srv: app.Server, pages: int, ready) -> list[float]:
    """Seconds from page.goto to Classify enabled, for `pages` pages one after another, each on an idle server."""
    app.wait_until(lambda: srv.alive() and srv.answers(), app.START_TIMEOUT, f"{srv.mode}: server answering")
    times = []
    for served in range(pages):
        ready(served)
        context, _, seconds = app.open_app(browser, srv.url)
        times.append(seconds)
        context.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "export.pkl"))
    ap.add_argument("--runs", type=int, default=3, help="fresh servers of each kind, alternating")
    ap.add_argument("--pages", type=int, default=3, help="warm pages per server")
    args = ap.parse_args()
    app.require_current_package()
    if not app.CHROMIUM.exists():
        sys.exit(f"the page floor bench needs {app.CHROMIUM} (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    results: dict[str, list[float]] = {"after": [], "bare": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="whatsthat-floor-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(app.CHROMIUM), args=app.CHROMIUM_ARGS,
                                    env=app.temp_env(Path(tmp)))
        try:
            for _ in range(args.runs):
                for mode in results:  # alternating: a change in the machine's load hits both
                    with app.Server(mode, Path(args.model).resolve()) as srv:
                        # whatsthat's kernels log when their page is ready; the bare page has no such line
                        ready = srv.wait_ready if mode == "after" else (lambda _served, srv=srv: srv.wait_idle())
                        results[mode] += warm_pages(browser, srv, args.pages, ready)
        finally:
            browser.close()
    names = {"after": "whatsthat serve (the shipped model)", "bare": "Voila alone, the same four widgets, no whatsthat"}
    rows = [[names[m], len(t), f"{median(t):.2f}", f"{min(t):.2f}", " ".join(f"{x:.2f}" for x in t)]
            for m, t in results.items()]
    print(f"# warm page (page.goto -> Classify enabled), servers from {app.bin_dir().parent}; {args.runs} servers x "
          f"{args.pages} pages each, alternating; load average {load_before:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end; {machine()}")
    print(table(["page", "pages", "median s", "best s", "all s"], rows))
    print(f"\nwhatsthat's page over Voila's floor: {median(results['after']) - median(results['bare']):+.2f} s (median)")


if __name__ == "__main__":
    main()
