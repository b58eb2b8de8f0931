"""The one event envelope, with CloudEvents 1.0 attribute names."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Self

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from schemas.base import Frozen


class Event(Frozen):
    specversion: str = "1.0"
    id: str
    source: str = Field(description="libvirt://<server>, guest://<vm>, vmorch://api, ...")
    type: str = Field(description="vm.lifecycle.started, job.succeeded, server.down, ...")
    subject: str | None = None
    time: datetime
    data: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _no_null_attributes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """CloudEvents has no null attributes: an absent subject is left out, not null."""
        out: dict[str, Any] = handler(self)
        return {k: v for k, v in out.items() if v is not None or k == "data"}

    @classmethod
    def read(cls, raw: str | bytes) -> Event:
        """Decode an envelope written by any vmorch version: attributes this version does
        not know (added by a newer writer in a rolling upgrade) are ignored, not an error.
        Raises ValueError when `raw` is not an envelope at all."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("an event envelope is a JSON object")
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc: dict[str, Any], **extra: Any) -> Self:
        """`read` for an envelope already parsed (readers that filter on the raw attributes
        first); `extra` adds fields of a subclass, such as StreamEvent's stream_id."""
        return cls.model_validate({k: v for k, v in doc.items() if k in cls.model_fields} | extra)
