"""What guests, events, hooks and API errors say reaches the operator's terminal as text:
never rich markup, never a control sequence."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.cli.output import Column, cell, table


def _render(value: str) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200, color_system=None)
    console.print(table([{"detail": value}], [Column("detail", lambda r: r["detail"])]))
    return buf.getvalue()


def test_markup_in_untrusted_text_stays_text() -> None:
    assert "[/oops]" in _render("[/oops]")  # rich would raise MarkupError on it
    out = _render("[link=https://evil.example]click[/link]")
    assert "[link=https://evil.example]click[/link]" in out
    assert "\x1b]8;" not in out  # no OSC 8 hyperlink was made


def test_control_sequences_are_taken_out() -> None:
    out = _render("ok\x1b[2J\x1b]0;pwned\x07\x9b31m")
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "ok" in out and "pwned" in out  # the text itself is kept, disarmed
    assert "\x1b" not in cell(["a\x1bb"]).plain  # type: ignore[union-attr]
