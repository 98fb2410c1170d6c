"""Training: whatsthat's default vs the plain course recipe, same data, same backbone, same machine.

    python bench/train_bench.py [--runs 3] [--data ../shared/datasets/bears]

Each run is a fresh `whatsthat train` process (what a user runs), timed from start to export.pkl
written; the validation error is read from the model card. Both recipes use efficientnet_lite0 with
its offline ImageNet weights and the same seeds, so the validation images are the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, median, require_bears, table

RECIPES = {
    # lesson 2: RandomResizedCrop(224, min_scale=0.5) + aug_transforms, fine_tune(4) (1 frozen + 4 epochs)
    "course recipe": ["--size", "224", "--head-epochs", "0", "--freeze-epochs", "1", "--epochs", "4"],
    "whatsthat default": [],
}


def run_once(data: Path, extra: list[str], seed: int) -> dict:
    whatsthat = Path(sys.executable).parent / "whatsthat"
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([str(whatsthat), "train", str(data), "--out", out, "--arch", "efficientnet_lite0",
                        "--seed", str(seed), *extra], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t
        card = json.loads((Path(out) / "export.card.json").read_text())
    return {"wall": wall, "error": card["metrics"]["error_rate"], "card": card}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--only", choices=list(RECIPES))
    args = ap.parse_args()
    data = args.data or require_bears()

    rows, results = [], {}
    for name, extra in RECIPES.items():
        if args.only and name != args.only:
            continue
        runs = [run_once(data, extra, seed) for seed in range(args.runs)]
        card = runs[0]["card"]
        results[name] = runs
        tr = card["training"]
        rows.append([name, f"{card['image_size']}px, head {tr['head_epochs']} + frozen {tr['freeze_epochs']} + "
                     f"all {tr['epochs']} epochs",
                     len(runs), f"{median([r['wall'] for r in runs]):.0f}",
                     " ".join(f"{r['wall']:.0f}" for r in runs),
                     f"{median([r['error'] for r in runs]):.3f}",
                     " ".join(f"{r['error']:.3f}" for r in runs)])
        print(f"  {name}: " + ", ".join(f"{r['wall']:.0f}s err {r['error']:.3f}" for r in runs), file=sys.stderr)
    print(f"# training on {data} ({card['dataset']['n_images']} images, {card['dataset']['n_valid']} validation), "
          f"efficientnet_lite0, {machine()}")
    print(table(["recipe", "schedule", "runs", "median s", "all s", "median error", "all errors"], rows))
    if len(results) == 2:
        a, b = (median([r["wall"] for r in results[k]]) for k in RECIPES)
        print(f"\nwhatsthat default takes {b / a:.0%} of the course recipe's time")


if __name__ == "__main__":
    main()
