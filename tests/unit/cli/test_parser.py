"""The command line: --json and the common options before or after the command, the old
spellings kept (`token`, `up`/`down`, `get`), and every command's help ending with the
exit codes."""

from __future__ import annotations

import argparse

import pytest

from orchestrator.cli.main import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("--json", "queue"),
        ("queue", "--json"),
        ("--json", "jobs", "list"),
        ("jobs", "list", "--json"),
        ("--json", "--api", "http://x", "events", "--follow"),
        ("events", "--follow", "--json"),
    ],
)
def test_json_is_taken_before_or_after_the_command(argv: tuple[str, ...]) -> None:
    assert getattr(parse(*argv), "json", False) is True


def test_no_json_unless_asked() -> None:
    assert getattr(parse("jobs", "list"), "json", False) is False
    assert getattr(parse("--api", "http://x", "queue"), "json", False) is False


def test_the_old_spellings_still_parse() -> None:
    assert parse("token", "revoke", "abc").fn is parse("tokens", "revoke", "abc").fn
    up, lab_up = parse("up", "--pools", "1", "--quiet"), parse("lab", "up", "--pools", "1")
    assert up.fn is lab_up.fn and up.quiet and not lab_up.quiet
    assert parse("down").fn is parse("lab", "down").fn
    assert parse("get", "pools").what == "pools"
    legacy = parse("jobs", "submit", "--wait", '{"kind": "vm.start", "vm": "w"}')
    assert legacy.wait and legacy.request.startswith("{")


def test_queue_alone_is_its_status() -> None:
    assert parse("queue").fn is parse("queue", "status").fn
    switch = parse("queue", "pause", "vmorch.noop", "--reason", "drill", "--rate-limit", "5")
    assert (switch.queue_cmd, switch.queue, switch.rate_limit) == ("pause", "vmorch.noop", 5)


def test_every_command_s_help_ends_with_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (("jobs", "submit"), ("jobs", "watch"), ("events",), ("lab", "status"),
                 ("tokens", "create"), ("jobs", "submit", "vm.migrate")):  # fmt: skip
        with pytest.raises(SystemExit):
            parse(*argv, "--help") if argv[-1] != "vm.migrate" else _kind_help()
        assert "exit codes:" in capsys.readouterr().out, argv


def _kind_help() -> None:
    from orchestrator.cli.commands.jobs import kind_parser

    kind_parser("vm.migrate").parse_args(["--help"])
