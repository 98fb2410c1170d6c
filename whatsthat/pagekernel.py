"""A visitor's kernel: ipykernel without its debugger.

Voila starts one kernel per page view, and nobody attaches a debugger to a visitor's page. Yet
ipykernel imports debugpy and pydevd at start whenever they are installed (ipykernel requires
debugpy, so they always are): 137 modules, 8 MB of private memory per visitor (49 -> 42 MB PSS,
measured in the serving venv), and start-up time on a 2-core dyno.

ipykernel already handles a missing debugpy (its debugger is then off and kernel_info says so). This
launcher makes debugpy missing for this process only, with the import system's documented sentinel
(a ``None`` entry in ``sys.modules`` makes ``import debugpy`` raise ImportError), before ipykernel is
imported. Nothing of ipykernel is replaced. `whatsthat.serve` points Voila's ``python3`` kernelspec here.

    python -m whatsthat.pagekernel -f CONNECTION_FILE
"""

from __future__ import annotations

import sys

BLOCKED = ("debugpy",)  # what a page never needs


def main() -> None:
    for name in BLOCKED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not importable here"
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
