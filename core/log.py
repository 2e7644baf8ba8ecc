"""One logger for the project. Only rank 0 prints INFO in distributed runs; every rank prints warnings."""

from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def get_logger(name: str = "videopoet") -> logging.Logger:
    global _CONFIGURED
    if not _CONFIGURED:
        root = logging.getLogger("videopoet")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO if rank() == 0 else logging.WARNING)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("videopoet") else f"videopoet.{name}")


class Progress:
    """Rate-limited progress lines for a streaming loop: `done / total` units, rate and time left.

    `update(done, **extra)` logs at most once per `interval` seconds (and `finish()` once at the end), so a
    long step that commits nothing for minutes still shows that it is moving and how fast.
    """

    def __init__(self, what: str, total: int, unit: str, interval: float = 15.0, logger=None):
        import time

        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.log = logger or get_logger("videopoet.progress")
        self._clock = time.monotonic
        self.start = self._last = self._clock()
        self.done = 0
        self.extra: dict = {}
        self._first: tuple[float, int] | None = None
        """(time, units done) at the first update that saw a unit done."""

    def line(self) -> str:
        now = self._clock()
        elapsed = max(now - self.start, 1e-9)
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit}"]
        parts += [f"{v} {k}" for k, v in self.extra.items()]
        parts.append(f"{elapsed:.0f} s")
        if self._first is not None and self._first[1] < self.done < self.total and now > self._first[0]:
            # the rate since the first unit finished: start-up (workers, models) is not repeated per unit
            rate = (self.done - self._first[1]) / (now - self._first[0])
            parts.append(f"~{(self.total - self.done) / rate:.0f} s left")
        return ", ".join(parts)

    def update(self, done: int, **extra) -> None:
        if done > 0 and self._first is None:
            self._first = (self._clock(), done)
        self.done, self.extra = done, extra
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self.log.info("%s", self.line())

    def finish(self) -> None:
        self.log.info("%s (done)", self.line())
