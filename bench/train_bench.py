"""Training: whatsthat's default vs the plain course recipe, same data, same backbone, same machine.

    python bench/train_bench.py [--runs 3] [--data ../shared/datasets/bears] [--baseline REF]

`--baseline REF` adds the default recipe as commit REF trains it (its package checked out into a
temporary git worktree and put first on PYTHONPATH; same venv), in the same run: how a change to the
training code moved the time, the error being the same or not. Each run is a fresh `whatsthat
train` process (what a user runs), timed from start to export.pkl written; the validation error is read from the model card. Both recipes use efficientnet_lite0 with
its offline ImageNet weights and the same seeds, so the validation images are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import checkout, machine, median, require_bears, table

RECIPES = {
    # lesson 2: RandomResizedCrop(224, min_scale=0.5) + aug_transforms, fine_tune(4) (1 frozen + 4 epochs)
    "course recipe": ["--size", "224", "--head-epochs", "0", "--top-epochs", "0", "--freeze-epochs", "1", "--epochs", "4"],
    "whatsthat default": [],
}


def run_once(data: Path, extra: list[str], seed: int, code: Path | None = None) -> dict:
    whatsthat = Path(sys.executable).parent / "whatsthat"
    # the console script's sys.path starts with its own folder, then PYTHONPATH: a checkout put there
    # wins over the editable install of the working tree
    env = {**os.environ, "PYTHONPATH": str(code)} if code else None
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([str(whatsthat), "train", str(data), "--out", out, "--arch", "efficientnet_lite0",
                        "--seed", str(seed), *extra], check=True, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        card = json.loads((Path(out) / "export.card.json").read_text())
    return {"wall": wall, "error": card["metrics"]["error_rate"], "card": card}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--only", choices=list(RECIPES))
    ap.add_argument("--baseline", metavar="REF", help="also run the default recipe as commit REF trains it")
    args = ap.parse_args()
    data = args.data or require_bears()

    rows, results = [], {}
    recipes = [(name, extra, None) for name, extra in RECIPES.items() if not args.only or name == args.only]
    with contextlib.ExitStack() as stack:
        if args.baseline:
            recipes.append((f"whatsthat default @ {args.baseline}", RECIPES["whatsthat default"],
                            stack.enter_context(checkout(args.baseline))))
        for name, extra, code in recipes:
            runs = [run_once(data, extra, seed, code) for seed in range(args.runs)]
            card = runs[0]["card"]
            results[name] = runs
            tr = card["training"]
            top = f"top {tr['top_epochs']} + " if "top_epochs" in tr else ""  # older cards have no top stage
            rows.append([name, f"{card['image_size']}px, head {tr['head_epochs']} + {top}frozen {tr['freeze_epochs']} + "
                         f"all {tr['epochs']} epochs",
                         len(runs), f"{median([r['wall'] for r in runs]):.0f}",
                         " ".join(f"{r['wall']:.0f}" for r in runs),
                         f"{median([r['error'] for r in runs]):.3f}",
                         " ".join(f"{r['error']:.3f}" for r in runs)])
            print(f"  {name}: " + ", ".join(f"{r['wall']:.0f}s err {r['error']:.3f}" for r in runs), file=sys.stderr)
    print(f"# training on {data} ({card['dataset']['n_images']} images, {card['dataset']['n_valid']} validation), "
          f"efficientnet_lite0, {machine()}")
    print(table(["recipe", "schedule", "runs", "median s", "all s", "median error", "all errors"], rows))
    walls = {name: median([r["wall"] for r in runs]) for name, runs in results.items()}
    if all(k in walls for k in RECIPES):
        print(f"\nwhatsthat default takes {walls['whatsthat default'] / walls['course recipe']:.0%} of the course "
              f"recipe's time")
    old = f"whatsthat default @ {args.baseline}"
    if old in walls and "whatsthat default" in walls:
        print(f"whatsthat default takes {walls['whatsthat default'] / walls[old]:.0%} of the time it took at {args.baseline}")


if __name__ == "__main__":
    main()
