"""How accurate is a trained model on pictures that no part of training has seen? An outer held-out fifth.

    python bench/holdout_bench.py                                   # every dataset, seeds 1 2 (about 25 min)
    python bench/holdout_bench.py --datasets faces-fer --seeds 1 2 3 4 --results holdout.jsonl
    python bench/holdout_bench.py --datasets faces-fer --label mirrors --train-args=--mirrors

The card's accuracy is measured on the validation pictures, which also chose the exported epoch (the
one with the lowest validation loss among a dozen): a selection that can flatter it. Here, for every
dataset and seed, a fifth of each class is drawn first (seeded) and never shown to `whatsthat train`,
which trains on the other four fifths as a user would (its own validation split inside them). The
exported model is then scored on the held-out fifth: what "we check on pictures you never see" means.
Printed per run: held-out accuracy, the card's validation accuracy, the epoch exported and CPU seconds.
A model here learns from four fifths of what a user's run on the whole folder would, so on a small
dataset these accuracies are, if anything, lower than that run's. With --results each finished run is
appended to a JSON-lines file and not run again.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_run, children_cpu, machine, read_runs, table
from domains_bench import SHARED, domains

HOLDOUT = 0.2


def held_out(data: Path, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, test) files: a seeded fifth of every class as test, the rest to train on."""
    from whatsthat.training.data import get_dataset_images

    by_class: dict[str, list[Path]] = {}
    for f in sorted(get_dataset_images(data)):
        by_class.setdefault(f.parent.name, []).append(f)
    rng = random.Random(f"holdout-bench {data.name} {seed}")
    train, test = [], []
    for files in by_class.values():
        rng.shuffle(files)
        k = round(len(files) * HOLDOUT)
        test += files[:k]
        train += files[k:]
    return train, test


def run_once(data: Path, seed: int, label: str, train_args: list[str]) -> dict:
    from whatsthat.training.classifier import load_classifier

    train, test = held_out(data, seed)
    whatsthat = Path(sys.executable).parent / "whatsthat"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / data.name  # the four fifths, as links: the dataset itself is never copied
        for f in train:
            (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / f.parent.name / f.name).symlink_to(f)
        out = Path(tmp) / "out"
        t, cpu = time.perf_counter(), children_cpu()
        proc = subprocess.run([str(whatsthat), "train", str(folder), "--out", str(out), "--seed", str(seed),
                               "--no-progress", *train_args], capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t, children_cpu() - cpu
        if proc.returncode != 0:
            sys.exit(f"{label} on {data} (seed {seed}) failed:\n{proc.stderr[-3000:]}")
        card = json.loads((out / "export.card.json").read_text())
        ranked = load_classifier(out / "export.pkl").predict_many([str(f) for f in test], batch_size=16)
    right = sum(r[0][0] == f.parent.name for r, f in zip(ranked, test, strict=True))
    return {"dataset": data.name, "label": label, "seed": seed, "n_test": len(test), "right": right,
            "accuracy": round(right / len(test), 4), "valid_accuracy": card["metrics"]["accuracy"],
            "n_valid": card["metrics"]["n_valid"], "best_stage": card["training"]["best_stage"],
            "seconds": round(wall, 1), "cpu": round(cpu, 1)}


def main() -> None:
    from whatsthat.model.quality import wilson_interval

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", help="dataset folder names (default: all but none/)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--label", default="default", help="name of the recipe in the table (default: default)")
    ap.add_argument("--train-args", default="", help="extra `whatsthat train` arguments, one string")
    ap.add_argument("--results", type=Path, help="JSON-lines file: append each run, skip runs already in it")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench needs the shared datasets at {SHARED} (set WHATSTHAT_DATASETS)")
    names = args.datasets or domains()
    done = read_runs(args.results)
    key = {(r["dataset"], r["label"], r["seed"]): r for r in done}
    for seed in args.seeds:
        for name in names:
            if (name, args.label, seed) in key:
                continue
            r = run_once(SHARED / name, seed, args.label, shlex.split(args.train_args))
            key[(name, args.label, seed)] = r
            print(f"  {name} {args.label} seed {seed}: held-out {r['right']}/{r['n_test']} ({r['accuracy']:.1%}), "
                  f"validation {r['valid_accuracy']:.1%}, {r['cpu']:.0f} CPU s", file=sys.stderr, flush=True)
            append_run(args.results, r)

    rows, summary = [], []
    for name in names:
        runs = [key[(name, args.label, s)] for s in args.seeds]
        for r in runs:
            rows.append([name, r["seed"], f"{r['right']}/{r['n_test']}", f"{r['accuracy']:.1%}",
                         f"{r['valid_accuracy']:.1%} of {r['n_valid']}", r["best_stage"], f"{r['cpu']:.0f}"])
        n, right = sum(r["n_test"] for r in runs), sum(r["right"] for r in runs)
        low, high = wilson_interval(right, n)
        valid = sum(round(r["valid_accuracy"] * r["n_valid"]) for r in runs) / sum(r["n_valid"] for r in runs)
        summary.append([name, len(runs), f"{right}/{n}", f"{right / n:.1%}", f"{low:.1%}-{high:.1%}", f"{valid:.1%}"])
    print(f"# {args.label} ({args.train_args or 'whatsthat train'}), held-out fifth, seeds "
          f"{' '.join(map(str, args.seeds))}, {machine()}")
    print(table(["dataset", "seed", "held out right", "held-out accuracy", "validation accuracy (card)",
                 "exported epoch", "CPU s"], rows))
    print()
    print(table(["dataset", "seeds", "held out right", "held-out accuracy", "95% interval (pooled)",
                 "validation accuracy (pooled)"], summary))


if __name__ == "__main__":
    main()
