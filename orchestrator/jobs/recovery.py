"""Recovery verbs (OpenNebula's `onevm recover` vocabulary): retry a failed or aborted job
from its failed step, or mark a stuck or failed job succeeded or failed by hand.

- **retry** submits a new job with the same request, linked both ways (`links.retry_of`,
  `retried_as`): the failed job stays as the record of its attempt. The new job starts
  from the first step whose effect is gone: the leading steps the attempt left done are
  carried over (`submit._carried`). It goes through every check a new job does (the VM may
  be gone, a name taken, its queue draining). Asking twice gives the same new job.
- **recover** ends the job as the operator says, with a reason: nothing is undone or run.
  A worker still running a step is refused its next write and its lease is taken, so it
  stops; a waiting job's wait is dropped; the VM goes to the next job in its queue, after
  a lease's time when a worker was on the job (it may still be inside a libvirt call).
"""

from __future__ import annotations

from orchestrator.clock import due_in_ms
from orchestrator.errors import Conflict
from orchestrator.jobs.submit import Submitter
from orchestrator.store.leases import Leases
from orchestrator.store.waits import Waits
from schemas.base import utcnow
from schemas.event_types import SOURCE_API
from schemas.jobs import ErrorInfo, Job, JobLinks, JobState, Recovery

RETRYABLE_STATES = (JobState.FAILED, JobState.ABORTED)
RECOVERABLE_TO = (JobState.SUCCEEDED, JobState.FAILED)


class JobRecovery:
    def __init__(self, submitter: Submitter, leases: Leases, waits: Waits):
        self.submitter, self.leases, self.waits = submitter, leases, waits
        self.jobs = submitter.jobs

    async def retry(self, job_id: str, *, by: str) -> tuple[Job, bool]:
        """(the new job, whether it existed already)."""
        old = await self.jobs.get(job_id)
        if old.retried_as is not None:
            return await self.jobs.get(old.retried_as), True
        if old.state not in RETRYABLE_STATES:
            raise Conflict(
                f"job {job_id} is {old.state.value}: only a failed or aborted job is retried"
            )
        links = JobLinks(
            parent_job=old.links.parent_job,
            hook_id=old.links.hook_id,
            event_id=old.links.event_id,
            retry_of=old.id,
        )
        job, replayed = await self.submitter.submit(
            old.request,
            submitted_by=by,
            idem_key=f"retry:{old.id}",  # one retry per job, however often it is asked
            links=links,
            internal=True,  # the request was accepted once (an HA restart is internal)
            retry_of=old,
        )
        await self.jobs.update(
            old.id,
            lambda j: None if j.retried_as else j.model_copy(update={"retried_as": job.id}),
            source=SOURCE_API,
        )
        return job, replayed

    async def recover(self, job_id: str, state: JobState, *, by: str, reason: str) -> Job:
        if state not in RECOVERABLE_TO:
            raise Conflict(f"a job is marked succeeded or failed, not {state.value}")

        def mark(j: Job) -> Job:
            if j.state == JobState.QUEUED:
                raise Conflict(f"job {j.id} is queued, nothing of it ran: abort it instead")
            if j.state in (state, JobState.SUCCEEDED):
                raise Conflict(f"job {j.id} is {j.state.value} already")
            now = utcnow()
            rec = Recovery(state=state, from_state=j.state, by=by, reason=reason, at=now)
            error = (
                None
                if state == JobState.SUCCEEDED
                else ErrorInfo(code="marked_failed", message=f"marked failed by {by}: {reason}")
            )
            return j.model_copy(
                update={
                    "state": state,
                    "ended_at": now,
                    "recovery": rec,
                    "error": error,
                    "wait": None,
                    "progress": 1.0 if state == JobState.SUCCEEDED else j.progress,
                }
            )

        before = await self.jobs.get(job_id)
        mark(before)  # refused (409) before anything changes
        held_ms = await self.leases.remaining_ms(job_id)
        # the end first: from now on no worker's write is taken (the commit refuses a fenced
        # write to a recovered job); then the lease, so its heartbeat stops the worker
        # a worker inside a step: the VM's next job waits until that worker has surely seen
        # its lease go (or its lease would have lapsed), not at once (set in the commit)
        later = due_in_ms(self.leases.lease_ms) if held_ms > 0 else None
        job, heads = await self.jobs.update(
            job_id, mark, source=SOURCE_API, force=True, heads_due_ms=later
        )
        await self.leases.revoke(job_id)
        if before.wait is not None:
            await self.waits.clear(job_id, before.wait.subject)
        for head in heads if later is None else ():  # (else the router's timer, then)
            nxt = await self.jobs.get(head)
            await self.submitter.dispatcher.dispatch(head, nxt.queue)
        return job
