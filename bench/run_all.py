"""Run every benchmark in turn (each prints its own table): `make bench` or `python bench/run_all.py`.

Takes about half an hour on a 2-core CPU, mostly the training runs, plus about 2 hours for
domains_bench.py (every shared dataset, 3 seeds) and half an hour for holdout_bench.py (every shared
dataset, 2 seeds). Run on an otherwise idle machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["train_bench.py", "domains_bench.py", "holdout_bench.py", "predict_bench.py", "not_sure_bench.py", "app_bench.py",
           "cold_start_bench.py", "page_floor_bench.py", "phone_bench.py", "gather_bench.py", "deploy_size.py"]

if __name__ == "__main__":
    failed = []
    for script in SCRIPTS:
        print(f"\n## {script}\n", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)], cwd=HERE.parent).returncode != 0:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
