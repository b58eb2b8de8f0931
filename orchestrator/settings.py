"""One settings object, read from VMORCH_* environment variables by each entry point."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VMORCH_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis client fails fast instead of hanging on a stalled server or a half-open
    # connection: a reply must come within socket_timeout_s (blocking reads ask for less).
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)
    redis_max_connections: int = Field(default=256, ge=8)  # per process (a pool)
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    redis_health_check_s: float = Field(default=10.0, ge=0)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Engine timing. A dead worker's step is re-run within about lease_ms + sweep_interval_s.
    lease_ms: int = Field(default=10_000, ge=500)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    redispatch_after_s: float = Field(default=15.0, gt=0)
    # ...but while a job's queue holds messages, its own may be among them: wait this long
    # before publishing a duplicate (a job whose worker died mid-step is not kept waiting).
    redispatch_max_wait_s: float = Field(default=300.0, gt=0)
    step_max_attempts: int = Field(default=5, ge=1)
    # A worker runs further steps of the same job in one message while they end within this
    # time (0: one step per message). Quick steps then cost no extra publish and no queueing.
    step_slice_ms: int = Field(default=200, ge=0)
    # A waiting step also checks its target state this often (an event may be missed).
    wait_recheck_s: float = Field(default=5.0, gt=0)
    retry_base_s: float = Field(default=0.5, ge=0)
    retry_max_s: float = Field(default=30.0, ge=0)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    event_stream_maxlen: int = Field(default=100_000, ge=100)
    # Retention (run by the router): a finished job, its step journal and every index entry,
    # fence and wait that names it, is deleted this long after it ended...
    job_retention_s: float = Field(default=7 * 86400, gt=0)
    # ...or sooner, oldest first, when more finished jobs than this are kept (about 2.5 KB
    # of Redis memory each for 5 steps, record and index entries; its events are the
    # stream's, bounded apart). Acknowledged alerts are kept job_retention_s.
    job_retention_max: int = Field(default=100_000, ge=1)
    # A worker not seen for this long is forgotten (every worker start adds a name).
    worker_forget_after_s: float = Field(default=86400, ge=60)
    # A router consumer idle this long, owning no pending event, leaves the group (every
    # router start adds one; a live router that was only idle joins again at its next read).
    router_consumer_idle_s: float = Field(default=86400, ge=60)

    # libvirt calls: transient errors are retried inside one call for at most this long.
    libvirt_retry_s: float = Field(default=20.0, ge=0)
    # Each libvirt call (one try) gets no more than this to answer; then the step's attempt
    # fails as retryable: a hung daemon does not hold a worker slot. Volume copies get longer.
    libvirt_call_timeout_s: float = Field(default=30.0, gt=0)
    libvirt_copy_timeout_s: float = Field(default=1800.0, gt=0)
    # Every connection (workers and agents) pings its daemon this often and is closed by
    # libvirt after this many unanswered pings: a dead daemon is noticed in about 8 s.
    libvirt_keepalive_interval_s: int = Field(default=2, ge=1)
    libvirt_keepalive_count: int = Field(default=3, ge=1)
    # Agents: live events wait in a queue of at most this many; when it is full the agent
    # stops taking them and compares states once it has caught up (nothing is lost).
    # They are published in batches of up to agent_batch_max, one round trip each.
    agent_queue_max: int = Field(default=10_000, ge=1)
    agent_batch_max: int = Field(default=200, ge=1)
    # ...and record what their server has (CPUs, memory free, networks, storage pools) when
    # they connect and this often: the API's server views and migration targets read it.
    agent_facts_interval_s: float = Field(default=10.0, gt=0)
    # Guest channels (everything a guest sends is untrusted): the longest line taken, the
    # lines per second each guest may send (a bucket of guest_burst), and the most keys a
    # message job sends to one VM.
    guest_line_max: int = Field(default=65536, ge=1024)
    guest_rate_per_s: float = Field(default=50.0, gt=0)
    guest_burst: int = Field(default=200, ge=1)
    guest_bytes_per_s: int = Field(default=131072, ge=1024)  # read from one guest at most
    # The key that seals secret values for guests (api) and opens them (agents): a Fernet
    # key (`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key()
    # .decode())'`); `vmorch up` makes one. Without it, secret values are refused.
    guest_secret_key: SecretStr | None = None

    # Fault injection for chaos drills and tests (off by default): sleep before every step,
    # and fail for good the steps named "<job kind>:<step name>".
    chaos_step_delay_ms: int = Field(default=0, ge=0)
    chaos_fail_steps: list[str] = Field(default_factory=list)

    # Routers: a dead router's unacknowledged events are claimed after this long.
    claim_idle_ms: int = Field(default=5000, ge=100)
    router_group: str = "routers"
    # A hook firing in progress is one router's for this long; a router that died in the
    # middle loses it, and another router fires again (hook actions are idempotent).
    hook_lease_ms: int = Field(default=30_000, ge=100)
    # An acted-on firing is remembered this long, so a re-read event does not act twice.
    hook_firing_ttl_s: int = Field(default=86_400, ge=60)
    # Webhook deliveries run beside the event path, at most this many at once per router,
    # each (all its attempts) cut off after webhook_delivery_max_s.
    webhook_concurrency: int = Field(default=16, ge=1)
    webhook_delivery_max_s: float = Field(default=120.0, gt=0)
    # Webhooks go only to these targets (empty: none at all): host[:port], an address or a
    # CIDR, with an optional :port (IPv6 in brackets then). Loopback, private and other
    # special addresses need an address or CIDR entry; a host name never allows them.
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    # Repository imports fetch only from these (same entries and rules as the webhook
    # allow-list; empty: no import from a URL at all), at most import_max_bytes a file, and
    # give up on a source silent for import_read_timeout_s.
    import_allowed_hosts: list[str] = Field(default_factory=list)
    # ...and read these directories of the servers (file:///path URLs: an NFS export
    # mounted on every server, say); empty: no file of a server is read
    import_allowed_paths: list[str] = Field(default_factory=list)
    import_max_bytes: int = Field(default=64 * 1024**3, ge=1)
    import_read_timeout_s: float = Field(default=60.0, gt=0)
    # Assemblies are unpacked and converted here, on the worker, then uploaded (each job's
    # directory is removed when its step ends).
    staging_dir: Path = Path(tempfile.gettempdir()) / "vmorch-staging"
    # Files uploaded through the api wait here for their import job: a directory the api
    # and the workers share (one host, or a shared mount).
    upload_dir: Path = Path(tempfile.gettempdir()) / "vmorch-uploads"
    # HA: at most this many restarts of a VM per window, then an alert to acknowledge.
    ha_max_restarts: int = Field(default=3, ge=1)
    ha_window_s: float = Field(default=3600.0, gt=0)
    # ...and move a VM to another server only once its own has been unreachable this long.
    ha_relocate_after_s: float = Field(default=60.0, ge=0)
    # Fencing before HA starts a VM elsewhere (review C1): the command that powers a server
    # off, run with `{server}` replaced by its name (e.g. an IPMI or Redfish fence agent that
    # keeps its credentials in its own configuration); exit 0 means the server's guests are
    # off. Without one (or when it fails), only an operator's acknowledgement
    # (`POST /v1/servers/{name}/fence`) lets HA relocate; it raises an alert and waits.
    fence_command: list[str] = Field(default_factory=list)
    fence_timeout_s: float = Field(default=60.0, gt=0)
    ha_fence_wait_s: float = Field(default=3600.0, gt=0)
    # vNIC MACs are handed out from this range (both ends included), never twice across the
    # fleet; a MAC a request names is checked against all in use. QEMU's 52:54:00 prefix.
    mac_range: str = "52:54:00:00:00:00-52:54:00:ff:ff:ff"
    # Migrations: at most this many at once in a pool, and leaving one server (KubeVirt's
    # defaults); others wait for a slot (without a worker) for migration_slot_wait_s.
    migrations_per_pool: int = Field(default=5, ge=1)
    migrations_per_server: int = Field(default=2, ge=1)
    migration_slot_wait_s: float = Field(default=3600.0, gt=0)
    # A live migration must end within this per GiB of the VM's memory and make
    # progress (less data remaining) at least this often; else migration_on_timeout runs:
    # abort (the VM keeps running on the source), pause (it converges) or postcopy.
    migration_completion_per_gib_s: float = Field(default=800.0, gt=0)
    migration_progress_timeout_s: float = Field(default=150.0, gt=0)
    migration_on_timeout: Literal["abort", "pause", "postcopy"] = "abort"
    # SSE (each api process): open event streams per token and in total; past either a new
    # stream is refused with 429 and Retry-After, so viewers cannot exhaust the api.
    sse_max_per_token: int = Field(default=8, ge=1)
    sse_max_total: int = Field(default=256, ge=1)
    # Matching events queued for one SSE stream at most: a stream further behind drops its
    # queue and catches up from Redis instead (bounded memory, nothing lost).
    sse_queue_max: int = Field(default=1000, ge=1)

    lab_dir: Path = Path(".vmorch")
    # The CLI's API and token (else `vmorch up`'s, from <lab_dir>/vmorch.json)
    api_url: str | None = None
    token: str | None = None
    worker_concurrency: int = Field(default=2, ge=1)
    log_level: str = "INFO"
    # text: one readable line per record; json: JSON lines (structlog), with the job, step,
    # VM, server and request id of the record as fields wherever they are known
    log_format: Literal["text", "json"] = "text"
    # Prometheus: routers, agents and workers serve /metrics on this port when it is set
    # (one port per process; `vmorch up` gives each its own); the api serves /metrics on
    # its own port always
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("mac_range")
    @classmethod
    def _mac_range(cls, value: str) -> str:
        from orchestrator.store.macs import MacRange  # the parser lives with the registry

        MacRange.parse(value)
        return value
