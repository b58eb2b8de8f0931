"""The heartbeat: renews a job's lease while a worker runs its steps.

It also notices a lost lease and an abort request. The lease counts as lost when a renewal
is refused (another worker took it) or when no renewal has succeeded for `lease_ms` (this
worker cannot reach Redis, so by now the router may have handed the job to another worker).
Every Redis call has a timeout, so a hung Redis cannot keep it from noticing.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from orchestrator.clock import due_in_ms
from tasks.runtime import Runtime

log = logging.getLogger("vmorch.runner")


class Heartbeat:
    def __init__(self, rt: Runtime, job_id: str, token: int):
        self.rt, self.job_id, self.token = rt, job_id, token
        self.lost = threading.Event()
        self.abort = threading.Event()
        self._stop = threading.Event()
        # in the context of the job's runner: its lines name the job too
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), daemon=True, name="vmorch-heartbeat"
        )

    def _beat(self, timeout_s: float) -> None:
        rt = self.rt
        run = rt.loop.run
        if not run(rt.leases.renew(self.job_id, self.token), timeout_s=timeout_s):
            self.lost.set()
            return
        # the router's dead-worker timer: due when the lease runs out, should we die now
        run(rt.jobs.set_due(self.job_id, due_in_ms(rt.settings.lease_ms)), timeout_s=timeout_s)
        if run(rt.jobs.get(self.job_id), timeout_s=timeout_s).abort_requested:
            self.abort.set()

    def _loop(self) -> None:
        lease_s = self.rt.settings.lease_ms / 1000
        interval_s = lease_s / 3
        last_ok = time.monotonic()
        while not self._stop.wait(interval_s) and not self.lost.is_set():
            try:
                self._beat(timeout_s=interval_s)
                last_ok = time.monotonic()
            except Exception:
                log.warning("job=%s heartbeat failed", self.job_id, exc_info=True)
                if time.monotonic() - last_ok >= lease_s:
                    self.lost.set()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
