"""The exit codes of `vmorch`: one table, what scripts branch on. `--help` and docs/cli.md
show it; every command ends through `exit_code_for_*` or a `CliError` carrying one."""

from __future__ import annotations

import textwrap
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2  # argparse's own
    ABORTED = 3
    TIMED_OUT = 4
    REFUSED = 5
    UNREACHABLE = 6
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "succeeded (a job waited for ended succeeded)",
    ExitCode.FAILED: "failed: a job waited for ended failed; `lab status`: not running or "
    "something is down",
    ExitCode.USAGE: "usage error: unknown command or flag, missing argument, a value not "
    "among a flag's choices",
    ExitCode.ABORTED: "aborted: a job waited for ended aborted",
    ExitCode.TIMED_OUT: "timed out: --timeout ran out before the job ended (the job goes on)",
    ExitCode.REFUSED: "refused: the request is not valid (checked locally), or the API "
    "answered 4xx: bad input, unauthorized, forbidden, not found, conflict, too many streams",
    ExitCode.UNREACHABLE: "unreachable or server error: no answer from the API (or Redis), "
    "or a 5xx",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class CliError(Exception):
    """An ending with a message: what main() prints (or, with --json, writes as a JSON
    error document on stderr) before exiting with `code`. `details` are (loc, msg) pairs
    in the API's error shape, so a local refusal reads like the API's own."""

    def __init__(
        self,
        code: ExitCode,
        message: str,
        *,
        error_code: str = "error",
        details: list[tuple[list[str | int], str]] | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_code = error_code
        self.details = details or []
        self.status = status
        self.request_id = request_id

    def document(self) -> dict[str, object]:
        """The error as --json prints it: the API's error shape, with the exit code."""
        doc: dict[str, object] = {
            "error": {
                "code": self.error_code,
                "message": self.message,
                "details": [{"loc": loc, "msg": msg} for loc, msg in self.details],
            },
            "exit_code": int(self.code),
        }
        if self.status is not None:
            doc["status"] = self.status
        if self.request_id:
            doc["request_id"] = self.request_id
        return doc


_JOB_STATES = {
    "succeeded": ExitCode.OK,
    "failed": ExitCode.FAILED,
    "aborted": ExitCode.ABORTED,
}


def exit_code_for_job(state: str) -> ExitCode:
    """The exit code of a command that waited for a job which ended in `state`."""
    return _JOB_STATES.get(state, ExitCode.FAILED)


def exit_code_for_status(status: int) -> ExitCode:
    """The exit code of an HTTP answer (0: no answer at all)."""
    if 0 < status < 400:
        return ExitCode.OK
    if 400 <= status < 500:
        return ExitCode.REFUSED
    return ExitCode.UNREACHABLE


def epilog() -> str:
    """The table for `vmorch --help`."""
    rows = [
        textwrap.fill(text, 88, initial_indent=f"  {int(code):>3}  ", subsequent_indent=" " * 7)
        for code, text in MEANINGS.items()
    ]
    return "exit codes:\n" + "\n".join(rows)


def from_api_error(status: int, body: object, request_id: str | None = None) -> CliError:
    """The CliError for an API answer of `status` (0: no answer): its code by status, its
    message and details from the API's error body."""
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    text = str(err.get("message") or body or "")
    details = [
        (list(d.get("loc") or []), str(d.get("msg", "")))
        for d in err.get("details") or []
        if isinstance(d, dict)
    ]
    code = exit_code_for_status(status)
    if status == 0:
        message = text
    else:
        kind = "refused" if code == ExitCode.REFUSED else "server error"
        message = f"{kind} ({status} {err.get('code', 'error')}): {text}"
    return CliError(
        code,
        message,
        error_code=str(err.get("code", "unreachable" if status == 0 else "error")),
        details=details,
        status=status or None,
        request_id=request_id,
    )
