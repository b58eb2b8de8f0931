"""The guest message channel's protocol (version 1) as the host reads and writes it, and
the guest's state as the API shows it.

Lines are newline-delimited JSON on the virtio-serial port `org.vmorch.agent.0`. The guest
program (`workers/guest/vmorch_guest.py`, standard library only) speaks the same protocol;
everything it sends is untrusted and is validated here, with bounds on every field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from schemas.base import Frozen

PROTOCOL = 1
PORT_NAME = "org.vmorch.agent.0"
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
GuestKey = Annotated[str, Field(pattern=KEY_PATTERN)]
MessageId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Short = Annotated[str, Field(max_length=1024)]
# characters of a value sent to a guest; a request holds at most MESSAGES_MAX of them, so
# that the largest request the document allows fits the api's body limit (1 MiB) even
# with every character written as a JSON escape pair (12 bytes)
VALUE_MAX = 2048
MESSAGES_MAX = 32
SEALED_MAX = 16384  # a sealed secret value (Fernet token of VALUE_MAX characters)
REDACTED = "********"  # a secret value as shown


# --- guest -> host --------------------------------------------------------------------------
class _FromGuest(Frozen):
    v: Literal[1]


class Ready(_FromGuest):
    type: Literal["ready"]
    version: Annotated[str, Field(max_length=64)]
    boot_id: Annotated[str, Field(max_length=64)] = ""
    uptime_s: Annotated[float, Field(ge=0)] = 0.0
    keys: Annotated[list[GuestKey], Field(max_length=256)] = Field(default_factory=list)


class Ack(_FromGuest):
    type: Literal["ack"]
    id: MessageId
    result: Annotated[dict[GuestKey, Any] | Short | None, Field()] = None


class GuestError(_FromGuest):
    type: Literal["error"]
    id: MessageId
    error: Annotated[str, Field(max_length=4096)]


class Report(_FromGuest):
    type: Literal["report"]
    keys: Annotated[dict[GuestKey, Short], Field(max_length=32)]


class GuestEvent(_FromGuest):
    type: Literal["event"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
    data: Annotated[dict[GuestKey, Short], Field(max_length=16)] = Field(default_factory=dict)


FromGuest = Annotated[Ready | Ack | GuestError | Report | GuestEvent, Field(discriminator="type")]
from_guest: TypeAdapter[Ready | Ack | GuestError | Report | GuestEvent] = TypeAdapter(FromGuest)


# --- host -> guest --------------------------------------------------------------------------
class ToGuest(Frozen):
    """One message to a guest (`op`: hello, set, get, ping, action)."""

    v: Literal[1] = 1
    id: MessageId
    op: Literal["hello", "set", "get", "ping", "action"]
    key: GuestKey | None = None
    value: Annotated[str, Field(max_length=SEALED_MAX)] | None = None
    secret: bool = False
    keys: Annotated[list[GuestKey], Field(max_length=256)] | None = None
    name: GuestKey | None = None
    args: dict[str, Any] | None = None

    def line(self) -> bytes:
        return (self.model_dump_json(exclude_none=True) + "\n").encode()


# --- what the API shows ---------------------------------------------------------------------
class GuestInterface(Frozen):
    name: str
    mac: str | None = None
    addresses: list[str] = Field(default_factory=list, description="address/prefix")


class QemuAgent(Frozen):
    """The VM's QEMU guest agent (qemu-ga), as its server's agent last read it through
    libvirt."""

    version: str
    ping_ms: float | None = Field(default=None, description="its guest-ping's round trip")
    interfaces: list[GuestInterface] = Field(default_factory=list)
    seen_at: datetime | None = None


class GuestState(Frozen):
    """A VM's guest program as its server's agent last saw it."""

    vm_id: str
    connected: bool = False
    server: str | None = None
    version: str | None = None
    boot_id: str | None = None
    ready_at: datetime | None = None
    last_seen: datetime | None = None
    keys: dict[str, str] = Field(
        default_factory=dict, description="the last value the guest reported for each key"
    )
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="lines from the guest dropped, by reason: too_long, invalid, rate",
    )
    qemu_agent: QemuAgent | None = Field(
        default=None, description="its QEMU guest agent, when it has one that answers"
    )
