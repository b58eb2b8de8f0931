"""The commands, one module per area; each `register`s its parsers, whose `fn(ctx)` runs
the command and returns its exit code."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli.exitcodes import epilog


def common_options() -> argparse.ArgumentParser:
    """--json, --api and --token, accepted before the command and after it. Defaults are
    SUPPRESS here: given before, a value is not reset by the subcommand's parser."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output: one JSON document (JSON lines when "
        "following a stream); errors as JSON on stderr",
    )
    g.add_argument(
        "--api",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the API (default: VMORCH_API_URL, else the running lab's)",
    )
    g.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="one token for every request (default: VMORCH_TOKEN, else the least "
        "privileged known token that the route allows; see docs/cli.md)",
    )
    return p


COMMON = common_options()


def leaf(sub: Any, name: str, text: str, **kw: Any) -> argparse.ArgumentParser:
    """A command's parser: its help as description, the common options, the exit codes."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=text,
        description=kw.pop("description", text),
        parents=[COMMON, *kw.pop("parents", [])],
        epilog=kw.pop("epilog", epilog()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )
    return parser


def group(sub: Any, name: str, text: str, dest: str, **kw: Any) -> Any:
    """A command with subcommands (`vmorch jobs ...`); returns their subparsers."""
    parser = sub.add_parser(name, help=text, description=text, **kw)
    return parser.add_subparsers(dest=dest, required=True, metavar="COMMAND")
