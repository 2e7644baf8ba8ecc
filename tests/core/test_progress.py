"""core.log.Progress: rate-limited progress lines with counts, rate and time left."""

from __future__ import annotations

import logging

from videopoet.core.log import Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_logs_at_most_once_per_interval_and_at_the_end(caplog):
    logger = logging.getLogger("videopoet.test_progress")
    logger.propagate = True
    clock = Clock()
    p = Progress("tokenize", 10, "clips", interval=10.0, logger=logger)
    p._clock, p.start, p._last = clock, 0.0, 0.0
    with caplog.at_level(logging.INFO, logger="videopoet.test_progress"):
        p.update(0, windows=0)  # start-up: 4 s before the first clip
        for i in range(1, 6):
            clock.t = 4.0 + 1.5 * i  # then 1.5 s per clip
            p.update(i, windows=3 * i)
        lines = [r.getMessage() for r in caplog.records]
        # at 10 s: the rate counts from the first finished clip (3 more in 4.5 s), not from the start
        assert lines == ["tokenize: 4/10 clips, 12 windows, 10 s, ~9 s left"]
        clock.t = 20.0
        p.update(10, windows=30)
        p.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[1:] == [
        "tokenize: 10/10 clips, 30 windows, 20 s",
        "tokenize: 10/10 clips, 30 windows, 20 s (done)",
    ]
