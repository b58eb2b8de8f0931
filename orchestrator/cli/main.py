"""`vmorch`: run the processes and the lab, manage tokens and inventory, submit, follow and
inspect jobs, events, queues, hooks and alerts. Tables and live views for people; --json
for scripts; exit codes that say how it ended (below, and docs/cli.md)."""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.cli.client import ApiError
from orchestrator.cli.commands import COMMON, audit, events, get, hooks, jobs, lab, processes
from orchestrator.cli.commands import queue as queue_cmd
from orchestrator.cli.commands import tokens as token_cmd
from orchestrator.cli.context import Context
from orchestrator.cli.exitcodes import CliError, ExitCode, epilog, from_api_error
from orchestrator.cli.output import Output
from orchestrator.settings import Settings


def _setup_logging(settings: Settings) -> None:
    from orchestrator import logs

    logs.setup(settings)  # text or JSON lines, with context, secrets blanked


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmorch",
        description=__doc__,
        epilog=epilog(),
        parents=[COMMON],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for area in (jobs, events, queue_cmd, hooks, token_cmd, audit, get, lab, processes):
        area.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(bool(getattr(args, "json", False)))
    try:
        settings = Settings()
        _setup_logging(settings)
        rc: int = args.fn(Context(settings, args, out))
        return rc
    except CliError as e:
        out.error(e)
        return e.code
    except ApiError as e:
        err = from_api_error(e.status, e.body, e.request_id)
        out.error(err)
        return err.code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `vmorch ... | head`: the reader has gone, nothing to say
        # (and nothing to flush at exit either: stdout goes to /dev/null from here)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
