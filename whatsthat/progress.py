"""Progress with an estimate of the time left, for work that takes more than a few seconds.

On a terminal: one bar redrawn in place on stderr. In a log (not a TTY): a plain line every
`every` seconds, so a log file shows the run is alive without thousands of carriage returns.
`epoch_line` is the one line per epoch that training prints. Pure Python: the training code drives
it, nothing here imports torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def format_seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """`update(done)` after each unit of work; `close()` when finished (prints the total time)."""

    def __init__(self, label: str, total: int, *, bar: bool, echo: Callable[[str], None] | None = None,
                 every: float = 10.0, stream=None, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.bar, self.every = label, max(1, total), bar, every
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.stream = stream or sys.stderr
        self.clock = clock
        self.t0 = self.last = clock()
        self.done = 0

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None before the first unit is done."""
        if self.done <= 0:
            return None
        return (self.clock() - self.t0) / self.done * (self.total - self.done)

    def status(self) -> str:
        eta = self.eta()
        left = "estimating" if eta is None else f"about {format_seconds(eta)} left"
        return f"{self.done}/{self.total}, {format_seconds(self.clock() - self.t0)} so far, {left}"

    def update(self, done: int) -> None:
        self.done = min(done, self.total)
        now = self.clock()
        if self.bar:
            width = 24
            filled = round(width * self.done / self.total)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.status()}   ")
            self.stream.flush()
        elif now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.echo(f"{self.label}: {self.status()}")

    def close(self) -> float:
        """Finish the bar (or say nothing more in a log: the caller prints the result line). Returns seconds."""
        took = self.clock() - self.t0
        if self.bar:
            self.stream.write("\r" + " " * 100 + "\r")  # the result line printed next replaces the bar
            self.stream.flush()
        return took


def epoch_line(stage: str, rec: dict) -> str:
    """One printed line per epoch: '[stage] epoch N: train_loss 0.1234  valid_loss ...  (time)'."""
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float))
    return f"[{stage}] epoch {rec['epoch']}: {metrics}  ({rec.get('time', '')})"
