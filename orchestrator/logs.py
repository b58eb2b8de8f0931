"""Logging of every vmorch process: one line per record, text or JSON lines (structlog).

Every line carries the context it was written in: the job, its kind and step, the VM and
the server a worker or agent works on, the api's request id. The code binds them where it
learns them (`bind`, structlog's context variables: per thread in a worker, per task in
the asyncio processes) and the existing `logging` calls need not repeat them.

Secrets are never written: whatever a line says passes through `redact` first, which
blanks API tokens, bearer credentials, the password of a Redis URL and the values of fields
named like secrets. The test suite greps every process's log for the secrets it used.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

from orchestrator.settings import Settings

MASK = "********"
_TOKEN = re.compile(r"vmo_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(@)")
_SECRET_KV = re.compile(
    r"(?i)(\b[\w-]*(?:secret|password|passwd|token|authorization|api[_-]?key)[\w-]*\b"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"
)
_SECRET_KEY = re.compile(r"(?i)secret|password|passwd|token|authorization|api[_-]?key")
_SAFE_KEYS = frozenset({"token_id", "token_name"})  # who, never the credential


# what every credential pattern below needs somewhere in the line (lower case): most
# lines (a step's transition, a request) have none of it and skip the patterns
_NEEDS = ("vmo_", "bearer", "://", "secret", "passw", "token", "authoriz", "key")


def redact(text: str) -> str:
    """`text` with every credential-looking part blanked."""
    low = text.lower()
    if not any(n in low for n in _NEEDS):
        return text
    text = _TOKEN.sub(MASK, text)
    text = _BEARER.sub(rf"\g<1>{MASK}", text)
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", text)
    return _SECRET_KV.sub(lambda m: m.group(0) if _safe(m.group(1)) else m.group(1) + MASK, text)


def _safe(key_part: str) -> bool:
    key = re.sub(r"[\"'\s:=]", "", key_part).lower()
    return key in _SAFE_KEYS or key.endswith(("_id", "_name"))


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event.items()):
        if k not in _SAFE_KEYS and _SECRET_KEY.search(k) and k != "event":
            event[k] = MASK
        elif isinstance(v, str):
            event[k] = redact(v)
    return event


class _TextFormatter(logging.Formatter):
    """The readable line: time, level, logger, message, then the bound context."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = structlog.contextvars.get_contextvars()
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items() if v is not None)
        return redact(line)


def setup(settings: Settings) -> None:
    """Configure the root logger of this process (before anything logs)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.contextvars.merge_contextvars,
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    _redact_event,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(settings.log_level)


def bind(**context: Any) -> None:
    """Add fields to every later line of this thread or task (None: leave out)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in context.items() if v is not None})


@contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Fields on every line written inside the block; the context before it comes back
    after it, whatever the block bound meanwhile (a worker's next job starts clean)."""
    before = structlog.contextvars.get_contextvars()
    bind(**context)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**before)
