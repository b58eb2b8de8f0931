"""One wiring module: every process builds its stores from Settings in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import fakeredis

from orchestrator.services import Services
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
STORES = {
    "JobStore",
    "Leases",
    "InventoryStore",
    "EventLog",
    "Waits",
    "Expectations",
    "HookStore",
    "AlertStore",
    "TokenStore",
    "FleetStore",
    "HaStore",
    "Dispatcher",
    "Submitter",
}
# modules that may build a store by hand: the wiring itself, and stores that read with a
# helper of their own (no settings involved)
ALLOWED = {"orchestrator/services.py"}


def test_every_setting_a_store_takes_comes_from_settings() -> None:
    # given settings far from every default
    s = Settings(
        redis_url="redis://unused",
        idempotency_ttl_s=1234,
        redispatch_after_s=7.5,
        lease_ms=4321,
        hook_firing_ttl_s=999,
        ha_max_restarts=9,
        ha_window_s=77.0,
    )
    svc = Services.build(s, fakeredis.FakeAsyncRedis(decode_responses=True))
    # then the stores carry them
    assert svc.jobs.idem_ttl_s == 1234
    assert svc.jobs.redispatch_after_ms == 7500
    assert svc.leases.lease_ms == 4321
    assert svc.hooks.firing_ttl_s == 999
    assert (svc.ha.max_restarts, svc.ha.window_ms) == (9, 77_000)
    assert svc.submitter.jobs is svc.jobs  # hook submissions use the same configured store
    assert svc.settings is s


def test_no_process_builds_its_stores_by_hand() -> None:
    """A second place that builds stores would take its own subset of the settings (jobs a
    hook submitted once ignored the idempotency TTL this way)."""
    offenders = []
    for package in ("orchestrator", "tasks", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    if name in STORES:
                        offenders.append(f"{rel}:{node.lineno} {name}(...)")
    assert offenders == [], offenders
