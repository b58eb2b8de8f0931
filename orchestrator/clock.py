"""Wall-clock helpers in epoch milliseconds, the unit every Redis timer and score uses."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)


def due_in_ms(delay_ms: float) -> int:
    """The epoch-ms timestamp `delay_ms` from now (for `jobs:due` and other timers)."""
    return now_ms() + int(delay_ms)
