"""Durations as people write them: `90s`, `30m`, `12h`, `7d`, `1h30m`; a bare number is
seconds. For `--expires-in`, `--timeout` and `--duration`."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+|\d+(?:\.\d+)?")


def parse_duration(text: str) -> timedelta:
    """The duration `text` says; ValueError (naming the forms) when it says none or zero."""
    raw = text.strip().lower()
    if not _WHOLE.fullmatch(raw):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d or 1h30m)")
    if raw[-1].isdigit():
        seconds = float(raw)
    else:
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(raw))
    if seconds <= 0:
        raise ValueError(f"a duration must be more than zero: {text!r}")
    return timedelta(seconds=seconds)


def duration_arg(text: str) -> timedelta:
    """parse_duration as an argparse `type`: a bad value is a usage error naming the flag."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def format_duration(seconds: float | None) -> str:
    """`0.4s`, `12s`, `3m04s`, `2h05m`, `3d04h`: short, for tables."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
