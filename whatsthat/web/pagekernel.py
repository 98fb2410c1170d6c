"""A visitor's kernel: ipykernel without its debugger.

Voila starts one kernel per page view, and nobody attaches a debugger to a visitor's page. Yet
ipykernel imports debugpy and pydevd at start whenever they are installed (ipykernel requires
debugpy, so they always are): about 140 modules and several MB of private memory per visitor
(measured: docs/serving.md), and start-up time on a 2-core dyno.

ipykernel already handles a missing debugpy (its debugger is then off and kernel_info says so). This
launcher makes debugpy missing for this process only, with the import system's documented sentinel
(a ``None`` entry in ``sys.modules`` makes ``import debugpy`` raise ImportError), before ipykernel is
imported. Nothing of ipykernel is replaced. `whatsthat.web.serve` points Voila's ``python3`` kernelspec here
(and `whatsthat.web.kernelfactory` forks kernels that run the same `run_kernel`).

It also turns IPython's input history off (``HistoryManager.enabled``, IPython's own setting): every
kernel otherwise opens the same SQLite file under IPYTHONDIR and keeps a thread to write the cells it
ran, which for a page are always the notebook's: a thread and some memory less per visitor
(docs/serving.md); start-up time unchanged.
Flags given on the command line come after it, so a kernelspec can still turn it back on.

On SIGTERM it finishes what it is doing first. Heroku stops a dyno by sending SIGTERM to every process
in it at once, the kernels too, and SIGKILL 30 s later; by default a kernel would die at once, and the
answer to a classification in flight would never reach its page. ipykernel runs a page's callbacks (a
Classify click) on its main thread's event loop, one at a time, so the kernel asks that loop to exit
after the callback running now: a classification in flight finishes and its answer is sent first.

    python -m whatsthat.web.pagekernel -f CONNECTION_FILE
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

BLOCKED = ("debugpy",)  # what a page never needs
SETTINGS = ("--HistoryManager.enabled=False",)  # a page's kernel keeps no input history (see above)
EXIT_AFTER = 0.5  # s after the last callback, for its answer to leave (ipykernel sends it from another thread)


def mark_not_importable(names: Sequence[str]) -> list[str]:
    """Make `import name` raise ImportError in this process, for each name not imported yet; returns those.

    A ``None`` entry in ``sys.modules`` is the import system's documented "not importable" marker.
    A module already imported is left as it is. Stdlib only: the page kernel calls it before anything
    else is imported, and `whatsthat.web.serve` uses it for the server process.
    """
    marked = [name for name in names if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]
    return marked


def stop_after_current_callback(signum: int = signal.SIGTERM, frame: Any = None) -> None:
    """SIGTERM's handler: exit once the callback running now, if any, has finished (see above)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()  # the kernel's main loop, when the signal interrupts it or its callback
    except RuntimeError:  # still starting: nothing is in flight
        raise SystemExit(0) from None
    loop.call_soon_threadsafe(loop.call_later, EXIT_AFTER, _exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_kernel(argv: Sequence[str]) -> None:
    """Run ipykernel with this module's settings ahead of `argv` (e.g. ``-f CONNECTION_FILE``) until it stops.

    Also what a kernel forked by `whatsthat.web.kernelfactory` runs.
    """
    mark_not_importable(BLOCKED)
    signal.signal(signal.SIGTERM, stop_after_current_callback)
    from ipykernel import kernelapp

    kernelapp.launch_new_instance([*SETTINGS, *argv])


def main() -> None:
    run_kernel(sys.argv[1:])


if __name__ == "__main__":
    main()
