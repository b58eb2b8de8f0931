"""Prometheus metrics: every counter and histogram of every vmorch process, in one place.

Each process counts what it does (the api and workers: job transitions; workers: step
durations and libvirt errors; routers: events, hook runs, webhook deliveries, re-dispatches,
lease expiries; agents: reconnects, guest channel drops, libvirt errors). How each is
scraped (README, "Metrics"):

- the api serves `/metrics`: its own counters and the fleet's state read from Redis at
  each scrape (`state_metrics`: jobs by state, queue depth and oldest age, held jobs, waits
  pending, workers seen, open alerts, the event stream's length);
- routers and agents serve their counters on `VMORCH_METRICS_PORT` (`serve`);
- a worker's tasks run in Celery's forked pool processes: `serve_multiprocess` switches
  prometheus_client to its multiprocess mode before the pool forks, and the worker's main
  process serves what every pool process counted.

Labels are bounded: kinds, states, steps, queues and servers come from vmorch; an event
type a guest names (`guest.event.<name>`) is counted under `guest.event.*`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("vmorch.metrics")

JOB_TRANSITIONS = Counter(
    "vmorch_job_transitions",
    "Jobs that entered a state (queued at submission, then each transition), by kind",
    ["kind", "state"],
)
STEP_DURATION = Histogram(
    "vmorch_step_duration_seconds",
    "How long one attempt of a step ran, by job kind, step and outcome",
    ["kind", "step", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
EVENTS = Counter("vmorch_events", "Events the routers handled, by type", ["type"])
HOOK_RUNS = Counter(
    "vmorch_hook_runs",
    "Hook firings recorded, by action and outcome (suppressed: flood control; skipped: "
    "the hook's filters or HA policy)",
    ["action", "outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "vmorch_webhook_deliveries", "Webhook deliveries, by outcome", ["outcome"]
)
REDISPATCHES = Counter(
    "vmorch_redispatches",
    "Jobs a router's timer dispatched again, by the job's state then (a lost message, a "
    "dead worker's step, a retry's backoff or a wait's deadline)",
    ["state"],
)
LEASE_EXPIRIES = Counter(
    "vmorch_lease_expiries",
    "Jobs a router found with a step running and no lease: their worker died or stalled",
    ["queue"],
)
LIBVIRT_ERRORS = Counter(
    "vmorch_libvirt_errors",
    "libvirt calls that failed, by libvirt's error code name (no_domain, operation_timeout)",
    ["code"],
)
AGENT_RECONNECTS = Counter(
    "vmorch_agent_reconnects", "Times an agent connected to its server again", ["server"]
)
GUEST_CHANNEL_DROPS = Counter(
    "vmorch_guest_channel_drops", "Lines from guests dropped, by why", ["reason"]
)


def event_type_label(event_type: str) -> str:
    """A bounded label for an event type (guests name their own events)."""
    return "guest.event.*" if event_type.startswith("guest.event.") else event_type


def serve(host: str, port: int) -> None:
    """Serve this process's metrics on host:port (a thread), if a port is set."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)


def serve_multiprocess(host: str, port: int) -> str | None:
    """Before a process forks its workers: count in files every process of the tree
    shares, and serve their sum here. Returns the directory (removed by the caller)."""
    if not port:
        return None
    # a directory of its own, always: two workers of one host sharing one would count each
    # other's values, and each removes its own when it ends
    path = tempfile.mkdtemp(prefix="vmorch-prom-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics of the worker's processes on http://%s:%d/metrics", host, port)
    return path


def remove_multiprocess_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class FleetState:
    """What the api reads from Redis for one scrape."""

    jobs_by_state: dict[str, int]
    queue_depth: dict[str, int]
    queue_oldest_age_s: dict[str, float]
    queue_held: dict[str, int]
    queue_mode: dict[str, str]
    workers_seen: int
    alerts_open: int
    events_stream_length: int


class _FleetCollector(Collector):
    def __init__(self, state: FleetState) -> None:
        self.state = state

    def collect(self):  # type: ignore[no-untyped-def]
        s = self.state
        jobs = GaugeMetricFamily("vmorch_jobs", "Jobs kept, by state", labels=["state"])
        for state, n in s.jobs_by_state.items():
            jobs.add_metric([state], n)
        yield jobs
        waits = GaugeMetricFamily("vmorch_waits_pending", "Jobs waiting for an event")
        waits.add_metric([], s.jobs_by_state.get("waiting", 0))
        yield waits
        for name, doc, data in (
            ("vmorch_queue_depth", "Queued jobs, per queue", s.queue_depth),
            (
                "vmorch_queue_oldest_job_age_seconds",
                "Age of the oldest queued job, per queue",
                s.queue_oldest_age_s,
            ),
            ("vmorch_queue_held", "Queued jobs a paused queue holds", s.queue_held),
        ):
            g = GaugeMetricFamily(name, doc, labels=["queue"])
            for queue, value in data.items():
                g.add_metric([queue], value)
            yield g
        mode = GaugeMetricFamily(
            "vmorch_queue_mode", "A queue's control (1 for its mode)", labels=["queue", "mode"]
        )
        for queue, m in s.queue_mode.items():
            mode.add_metric([queue, m], 1)
        yield mode
        for name, doc, value in (
            ("vmorch_workers_seen", "Workers that beat in the last minute", s.workers_seen),
            ("vmorch_alerts_open", "Alerts not acknowledged", s.alerts_open),
            ("vmorch_events_stream_length", "Entries in the event stream", s.events_stream_length),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g


def exposition(state: FleetState) -> bytes:
    """This process's metrics, then the fleet's state (the api's `/metrics`)."""
    fleet = CollectorRegistry()
    fleet.register(_FleetCollector(state))
    return generate_latest() + generate_latest(fleet)
