"""Code checks of the progress reporter: time left from the pace so far, bar on a terminal, lines in a log."""

from __future__ import annotations

import io

from whatsthat.progress import Progress, format_seconds


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_mode_prints_a_line_every_few_seconds_with_time_left():
    clock, lines = Clock(), []
    p = Progress("[head] computing body features", 10, bar=False, echo=lines.append, every=10, clock=clock)
    for i in range(1, 11):
        clock.t = 4.0 * i  # 4 s per unit
        p.update(i)
    assert p.close() == 40.0
    # at 12 s (3/10) the pace says 28 s left; lines come at most every 10 s and none for the finished state
    assert lines[0] == "[head] computing body features: 3/10, 12s so far, about 28s left"
    assert len(lines) == 3 and all("about" in line for line in lines)


def test_bar_mode_redraws_one_line_in_place():
    clock, out = Clock(), io.StringIO()
    p = Progress("[unfrozen] epoch 0", 4, bar=True, stream=out, clock=clock)
    assert p.eta() is None and "estimating" in p.status()
    clock.t = 30.0
    p.update(1)
    assert out.getvalue().startswith("\r[unfrozen] epoch 0 [######..................] 1/4, 30s so far, about 1m30s left")
    p.close()
    assert "\n" not in out.getvalue()  # the result line printed next replaces the bar


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 60, 125)] == ["0s", "59s", "1m00s", "2m05s"]
