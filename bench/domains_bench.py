"""Does the default recipe hold on every domain? whatsthat's default vs the course recipe, per shared dataset.

    python bench/domains_bench.py            # every dataset, seeds 0 1 2 (about 2 h on 2 CPU cores)
    python bench/domains_bench.py --quick    # one seed (about 45 min)
    python bench/domains_bench.py --datasets faces-fer insects --seeds 0 1 --results runs.jsonl

For every folder of ../shared/datasets except none/ (photos of no class, for the "not sure" check),
both recipes train efficientnet_lite0 in a fresh `whatsthat train` process with the same seed, hence
the same validation split. Printed per dataset and recipe: validation error (median and every seed),
the majority-class baseline's error on the same split, the head stage's error inside the default run,
the stage the exported weights came from, and seconds from start to export.pkl written. With
--results each finished run is appended to a JSON-lines file and not run again: an interrupted
benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_run, children_cpu, machine, median, read_runs, table

SHARED = Path(os.environ.get("WHATSTHAT_DATASETS", ROOT.parent / "shared" / "datasets"))
NOT_A_DOMAIN = {"none"}  # out-of-class photos: nothing to train on
RECIPES = {
    "course": ["--head-epochs", "0", "--top-epochs", "0", "--freeze-epochs", "1", "--epochs", "4"],  # lesson 2's fine_tune(4)
    "default": [],
}


def domains() -> list[str]:
    return sorted(p.name for p in SHARED.iterdir() if p.is_dir() and p.name not in NOT_A_DOMAIN)


def run_once(data: Path, recipe: str, seed: int) -> dict:
    whatsthat = Path(sys.executable).parent / "whatsthat"
    with tempfile.TemporaryDirectory() as out:
        t, cpu = time.perf_counter(), children_cpu()
        proc = subprocess.run([str(whatsthat), "train", str(data), "--out", out, "--arch", "efficientnet_lite0",
                               "--seed", str(seed), "--no-progress", *RECIPES[recipe]], capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t, children_cpu() - cpu
        if proc.returncode != 0:
            sys.exit(f"{recipe} on {data} (seed {seed}) failed:\n{proc.stderr[-3000:]}")
        card = json.loads((Path(out) / "export.card.json").read_text())
    m, tr = card["metrics"], card["training"]
    heads = [h for h in tr["history"] if h["stage"].startswith("head")]
    return {"dataset": data.name, "recipe": recipe, "seed": seed, "seconds": round(wall, 1), "cpu": round(cpu, 1),
            "error": m["error_rate"], "valid_loss": m["valid_loss"], "n_valid": m["n_valid"],
            "baseline_error": round(1 - m["baseline"]["accuracy"], 4), "baseline_label": m["baseline"]["label"],
            "head_error": heads[-1]["error_rate"] if heads else None, "best_stage": tr.get("best_stage"),
            "ci95": m.get("accuracy_ci95")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", help="dataset folder names (default: all but none/)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="one seed (0) only")
    ap.add_argument("--results", type=Path, help="JSON-lines file: append each run, skip runs already in it")
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                    help="run only these now (the table needs both: resume with --results)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench needs the shared datasets at {SHARED} (set WHATSTHAT_DATASETS)")
    seeds = [0] if args.quick else args.seeds
    names = args.datasets or domains()

    done = read_runs(args.results)
    key = {(r["dataset"], r["recipe"], r["seed"]): r for r in done}
    # seeds outermost: a run stopped part-way still covers every domain for the seeds it finished
    for seed in seeds:
        for name in names:
            for recipe in args.recipes:
                if (name, recipe, seed) in key:
                    continue
                r = run_once(SHARED / name, recipe, seed)
                key[(name, recipe, seed)] = r
                print(f"  {name} {recipe} seed {seed}: error {r['error']:.3f} (head {r['head_error']}, "
                      f"guessing {r['baseline_error']:.3f}) {r['seconds']:.0f}s ({r['cpu']:.0f} CPU s), "
                      f"exported {r['best_stage']}",
                      file=sys.stderr, flush=True)
                append_run(args.results, r)

    if any((n, r, s) not in key for n in names for r in RECIPES for s in seeds):
        print("runs missing for the table: resume with --results and both recipes", file=sys.stderr)
        return
    rows, verdicts = [], []
    for name in names:
        runs = {rec: [key[(name, rec, s)] for s in seeds] for rec in RECIPES}
        for rec, rs in runs.items():
            rows.append([name, rec, len(rs), f"{median([r['seconds'] for r in rs]):.0f}",
                         " ".join(f"{r['seconds']:.0f}" for r in rs), _cpu(rs),
                         f"{median([r['error'] for r in rs]):.3f}", " ".join(f"{r['error']:.3f}" for r in rs),
                         " ".join(f"{r['head_error']:.3f}" for r in rs) if rec == "default" else "",
                         f"{median([r['baseline_error'] for r in rs]):.3f}", rs[0]["n_valid"]])
        d, c = runs["default"], runs["course"]
        # CPU seconds, not wall: on a shared machine the wall time says more about the neighbours
        both = all("cpu" in r for r in d + c)
        time_ratio = (median([r["cpu" if both else "seconds"] for r in d])
                      / median([r["cpu" if both else "seconds"] for r in c]))
        per_seed_ok = all(a["error"] <= b["error"] for a, b in zip(d, c, strict=True))
        head_ok = all(r["error"] <= round(r["head_error"], 4) for r in d)  # the card rounds to 4 places
        verdicts.append([name, f"{time_ratio:.0%}" + ("" if both else " (wall)"), "yes" if per_seed_ok else "NO",
                         "yes" if head_ok else "NO",
                         f"{1 - median([r['error'] for r in d]):.1%}", f"{1 - median([r['baseline_error'] for r in d]):.1%}"])
    print(f"# default vs course recipe, efficientnet_lite0, seeds {' '.join(map(str, seeds))}, {machine()}")
    print(table(["dataset", "recipe", "runs", "median wall s", "all wall s", "CPU s", "median error", "all errors",
                 "head-stage errors", "guessing error", "n valid"], rows))
    print()
    print(table(["dataset", "default CPU time / course", "default error <= course (every seed)",
                 "default error <= its head stage", "default accuracy", "guessing accuracy"], verdicts))


def _cpu(runs: list[dict]) -> str:
    return " ".join(f"{r['cpu']:.0f}" if "cpu" in r else "-" for r in runs)


if __name__ == "__main__":
    main()
