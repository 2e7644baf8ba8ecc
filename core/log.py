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
