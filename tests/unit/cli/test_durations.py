"""Durations as `--expires-in`, `--timeout` and `--duration` take them."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from orchestrator.cli.durations import duration_arg, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("1h30m", 5400),
        ("45", 45),
        ("0.5s", 0.5),
        ("1.5h", 5400),
        (" 2D ", 172800),
    ],
)
def test_durations_people_write(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "12x", "h", "-5s", "1h-30m", "0s", "0", "5 m", "1e3"])
def test_what_is_not_a_duration_is_refused_saying_what_is(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_as_an_argparse_type_a_bad_duration_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="90s, 30m, 12h, 7d"):
        duration_arg("soon")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0.42, "0.4s"), (12.7, "12s"), (184, "3m04s"), (7500, "2h05m"), (273600, "3d04h")],
)
def test_durations_are_shown_short(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
