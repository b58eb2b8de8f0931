"""The exit codes: one table, mapped from job ends and HTTP answers, shown in --help and
in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.cli.exitcodes import (
    MEANINGS,
    ExitCode,
    epilog,
    exit_code_for_job,
    exit_code_for_status,
    from_api_error,
)
from orchestrator.cli.main import build_parser, main

DOCS = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def test_codes_are_distinct_and_usage_is_argparse_s() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert set(MEANINGS) == set(ExitCode)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["jobs", "frobnicate"])
    assert e.value.code == 2 and ExitCode.USAGE.value == 2


@pytest.mark.parametrize(
    ("state", "code"),
    [("succeeded", 0), ("failed", 1), ("aborted", 3)],
)
def test_a_job_s_end_is_its_exit_code(state: str, code: int) -> None:
    assert exit_code_for_job(state) == code


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (200, 0),
        (202, 0),
        (400, 5),
        (401, 5),
        (403, 5),
        (404, 5),
        (409, 5),
        (422, 5),
        (429, 5),
        (500, 6),
        (503, 6),
        (0, 6),
    ],
)
def test_an_http_answer_is_its_exit_code(status: int, code: int) -> None:
    assert exit_code_for_status(status) == code


def test_an_api_error_keeps_its_code_message_details_and_request_id() -> None:
    body = {
        "error": {
            "code": "validation_error",
            "message": "the job request is not valid",
            "details": [{"loc": ["body", "vcpus"], "msg": "too small"}],
        }
    }
    err = from_api_error(422, body, "rid-1")
    assert err.code == ExitCode.REFUSED
    assert err.message == "refused (422 validation_error): the job request is not valid"
    assert err.details == [(["body", "vcpus"], "too small")]
    doc = err.document()
    assert doc["status"] == 422 and doc["request_id"] == "rid-1" and doc["exit_code"] == 5
    assert from_api_error(0, {"error": {"code": "unreachable", "message": "x"}}).code == 6
    assert from_api_error(502, "<html>bad gateway</html>").message.startswith("server error")


def test_unreachable_is_6(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--api", "http://127.0.0.1:9", "--token", "t", "jobs", "list"]) == 6
    assert "cannot reach the api at http://127.0.0.1:9" in capsys.readouterr().err


def test_the_table_is_in_the_help_and_in_the_docs() -> None:
    text = epilog()
    docs = DOCS.read_text()
    for code, meaning in MEANINGS.items():
        assert re.search(rf"^\s+{int(code)}\s", text, re.M), code
        row = re.search(rf"^\| `{int(code)}` \| (.+) \|$", docs, re.M)
        assert row is not None, f"docs/cli.md has no row for exit code {int(code)}"
        assert row[1] == meaning, f"docs/cli.md's row for {int(code)} differs from MEANINGS"
    assert "exit codes:" in build_parser().format_help()
