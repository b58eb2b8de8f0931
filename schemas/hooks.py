"""Hooks: a rule that matches events and takes an action, and the record of each firing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, HttpUrl, field_validator

from schemas.base import Frozen, Name
from schemas.events import Event
from schemas.guest import GuestKey


class HookMatch(Frozen):
    """All given criteria must hold. Globs use fnmatch syntax (`vm.lifecycle.*`, `web-*`)."""

    types: Annotated[
        list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=20)
    ]
    vm_name: Annotated[str, Field(max_length=200)] | None = None
    labels: dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=200)]] = (
        Field(default_factory=dict, max_length=20)
    )
    server: Name | None = None
    pool: Name | None = None
    data: dict[Annotated[str, Field(max_length=63)], str | int | float | bool | None] = Field(
        default_factory=dict, max_length=20, description="event data fields that must be equal"
    )
    unexpected_only: bool = Field(
        default=True, description="skip events a vmorch job caused (attributed events)"
    )


class SubmitJobAction(Frozen):
    """Submit a job. String values of `request` may hold placeholders filled from the event:
    {vm_id} {vm_name} {server} {pool} {event_id} {event_type} {subject}."""

    kind: Literal["submit_job"]
    request: dict[str, Any]

    @field_validator("request")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        # a hook is stored and shown as written: a value marked secret would not stay one
        def has_secret(x: Any) -> bool:
            if isinstance(x, dict):
                return x.get("secret") is True or any(has_secret(y) for y in x.values())
            return isinstance(x, list) and any(has_secret(y) for y in x)

        if has_secret(v):
            raise ValueError("a hook's request cannot carry secret values (it is stored as is)")
        return v


_URL_MAX = 2083  # HttpUrl's own limit, which it applies to the text it is given


def _fits_when_stored(url: HttpUrl) -> HttpUrl:
    # The URL is stored normalized ("é" becomes "%C3%A9"): one that grows past the limit
    # would be accepted here and then fail to load, taking every hook listing down with it.
    if len(str(url)) > _URL_MAX:
        raise ValueError(f"must be at most {_URL_MAX} characters once percent-encoded")
    return url


class WebhookAction(Frozen):
    """POST the event (CloudEvents JSON) to `url`, signed with HMAC-SHA256 of the body."""

    kind: Literal["webhook"]
    url: Annotated[HttpUrl, AfterValidator(_fits_when_stored)]
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3


class GuestMessageAction(Frozen):
    """Send a key/value message to the guest of the event's VM (a `vm.message` job). The
    value may hold the same placeholders as a `submit_job` request."""

    kind: Literal["guest_message"]
    key: GuestKey
    value: Annotated[str, Field(max_length=4096)]
    timeout_s: Annotated[float, Field(ge=1, le=86400)] = 300.0


HookAction = Annotated[
    SubmitJobAction | WebhookAction | GuestMessageAction, Field(discriminator="kind")
]


class HookSpec(Frozen):
    """What a client sends to create or replace a hook."""

    name: Name
    match: HookMatch
    action: HookAction
    window_s: Annotated[float, Field(ge=0, le=86400)] = Field(
        default=60.0, description="fire at most once per subject within this window"
    )
    enabled: bool = True


def _no_null_branches(schema: dict[str, Any]) -> None:
    """In a PATCH body None stands for "not given" and an explicit null is refused: the
    schema says what a client may send, so it offers no null."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
        if "anyOf" in prop and len(branches) < len(prop["anyOf"]):
            del prop["anyOf"]
            prop.update(branches[0] if len(branches) == 1 else {"anyOf": branches})


class HookPatch(Frozen):
    """What a client sends to change a hook: only the fields given change.

    A webhook hook gets a new secret, shown once, when `rotate_secret` is true or when its
    URL changes: the receiver at the old URL knows the old secret, and must not be able to
    forge deliveries to the new one."""

    model_config = ConfigDict(json_schema_extra=_no_null_branches)

    name: Name | None = None
    match: HookMatch | None = None
    action: HookAction | None = None
    window_s: Annotated[float, Field(ge=0, le=86400)] | None = None
    enabled: bool | None = None
    rotate_secret: bool = Field(
        default=False, description="make a new webhook secret (returned once); the old one stops"
    )

    @field_validator("name", "match", "action", "window_s", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # None stands for "not given": an explicit null would erase a required field
        if value is None:
            raise ValueError("must not be null (leave the field out to keep it)")
        return value

    def changes(self) -> dict[str, Any]:
        """The hook fields given, by name (`rotate_secret` is not one)."""
        return {f: getattr(self, f) for f in self.model_fields_set if f != "rotate_secret"}


class Hook(HookSpec):
    """A stored hook. The webhook secret is stored apart and never returned."""

    id: str
    created_at: datetime
    builtin: bool = False
    suppressed: int = Field(default=0, description="firings skipped by flood control")


class HookRun(Frozen):
    """One firing of a hook, with the event that caused it and what came of it."""

    id: str = Field(default="", description="the run's id (runs of older versions have none)")
    hook_id: str
    event_id: str
    event_type: str
    subject: str | None
    at: datetime
    action: str
    outcome: Literal["submitted", "delivered", "failed", "refused", "suppressed", "skipped"]
    detail: str = ""
    job_id: str | None = None
    retry_of: str | None = Field(default=None, description="the run this one retried")
    retried_by: str | None = Field(default=None, description="who asked for the retry")
    event: Event | None = Field(
        default=None, description="the event itself, kept so the run can be retried with it"
    )
