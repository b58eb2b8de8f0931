"""The `type`/`subject`/`source` filter of the event listing and streams, and reading an entry
only as far as the filter needs.

Type globs come from users, so they are bounded in length and matched through
`orchestrator.globs` (a bounded cache of compiled patterns), never `fnmatch.fnmatchcase`,
whose own cache grows with every distinct pattern (review L6). Readers match the raw
attributes of an entry first and validate the envelope with pydantic only when it matches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from orchestrator.errors import ValidationFailed
from orchestrator.globs import MAX_GLOB_CHARS, glob_match
from schemas.events import Event

log = logging.getLogger("vmorch.api.events")
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class EventFilter:
    """Events whose type matches `type_glob` and whose subject and source are the ones given
    (None: any)."""

    type_glob: str | None = None
    subject: str | None = None
    source: str | None = None

    @classmethod
    def from_query(cls, request: web.Request) -> EventFilter:
        glob, subject, source = (
            request.query.get(k) or None for k in ("type", "subject", "source")
        )
        if glob is not None and len(glob) > MAX_GLOB_CHARS:
            raise ValidationFailed(
                f"type is longer than {MAX_GLOB_CHARS} characters",
                details=[(["query", "type"], f"at most {MAX_GLOB_CHARS} characters")],
            )
        return cls(glob, subject, source)

    def matches(self, type_: object, subject: object, source: object) -> bool:
        """Whether these attributes pass (raw values from an entry: anything but a string
        type fails a glob)."""
        return (
            (
                self.type_glob is None
                or (isinstance(type_, str) and glob_match(type_, self.type_glob))
            )
            and (self.subject is None or subject == self.subject)
            and (self.source is None or source == self.source)
        )

    def __call__(self, ev: Event) -> bool:
        return self.matches(ev.type, ev.subject, ev.source)


def read_matching(
    sid: str, fields: dict[str, str], flt: EventFilter, model: type[E], **extra: Any
) -> E | None:
    """The entry's event as `model` if it passes `flt`; None when it does not or is not an
    event at all (logged; the router sets such entries aside as dead letters)."""
    try:
        doc = json.loads(fields["e"])
        if not isinstance(doc, dict):
            raise ValueError("an event envelope is a JSON object")
        if not flt.matches(doc.get("type"), doc.get("subject"), doc.get("source")):
            return None
        return model.from_doc(doc, **extra)
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError too
        log.warning("skipping unreadable event %s: %s", sid, str(e)[:200])
        return None
