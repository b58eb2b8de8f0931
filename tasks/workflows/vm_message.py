"""`vm.message`: key/value messages to the guests of one or many VMs, with a status per VM
and per message; and the same steps as a create's first-boot configuration
(`first_boot_steps`: the request's `config`, to the job's own VM, after its start).

1. `select_vms`: the VMs the selector names, now (names, labels, pool).
2. `queue_messages`: each VM's messages into its outbox, in the request's order, with a
   deadline; ids come from the job, so a step run again writes nothing twice. The agent of
   each VM's server sends them when the guest is ready (at once, or when it comes up).
   Undone (an abort, a failure): messages not yet answered fail and leave the outboxes.
3. `await_answers`: waits (no worker held) until every message is answered (the last
   answer appends `guest.messages.answered`, subject this job; a recheck every
   `wait_recheck_s` shows progress), or the deadline, when the rest fail saying why: the
   guest never reported ready, or it had the message and did not answer.
4. `verdict`: the job fails when any VM was not configured, naming them; the outputs of
   step 3 hold each VM's and each message's status either way.
"""

from __future__ import annotations

import time
from typing import Any, cast

from orchestrator.errors import Permanent
from orchestrator.store.guest import TERMINAL, MessageRecord
from schemas import event_types as et
from schemas.requests import FirstBoot, GuestKeyValue, SendMessages
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.steps.vm import vm_of


class NotConfigured(Permanent):
    code = "guest_messages_failed"


def _select(ctx: StepContext) -> Outputs:
    req = cast(SendMessages, ctx.request)
    vms, missing = ctx.run(ctx.runtime.inventory.select_vms(req.vms, req.labels, req.pool))
    if missing:
        raise Permanent(f"no VM {', '.join(missing)} (deleted since the job was submitted)")
    if not vms:
        raise Permanent("no VM matches the selector any more")
    return {"targets": {v.id: v.name for v in sorted(vms, key=lambda v: v.name)}}


def _own_vm(ctx: StepContext) -> Outputs:
    vm = vm_of(ctx)
    return {"targets": {vm.id: vm.name}}


def _messages(ctx: StepContext) -> tuple[list[GuestKeyValue], float]:
    """The key/values and the time the guests have: a message job's, or a create's
    first-boot configuration."""
    req = ctx.request
    if isinstance(req, SendMessages):
        return list(req.messages), req.timeout_s
    boot = cast(FirstBoot, req)
    return list(boot.config), boot.config_timeout_s


def _ids(ctx: StepContext) -> dict[str, list[str]]:
    n_msgs = len(_messages(ctx)[0])
    vms = cast(dict[str, str], ctx.outputs["targets"])
    return {vm_id: [f"{ctx.job.id}.{n}.{i}" for i in range(n_msgs)] for n, vm_id in enumerate(vms)}


def _queue(ctx: StepContext) -> Outputs:
    messages, timeout_s = _messages(ctx)
    deadline_ms = int((time.time() + timeout_s) * 1000)
    first = next((mids[0] for mids in _ids(ctx).values() if mids), None)
    if first is not None:  # a step run again: the deadline the records were written with
        [written] = ctx.run(ctx.runtime.services.guests.messages([first]))
        if written is not None:
            deadline_ms = written.deadline_ms
    records = [
        MessageRecord(
            id=mid,
            vm_id=vm_id,
            job_id=ctx.job.id,
            key=m.key,
            value=m.sealed if m.secret else m.value,  # a secret only sealed
            secret=m.secret,
            deadline_ms=deadline_ms,
        )
        for vm_id, mids in _ids(ctx).items()
        for mid, m in zip(mids, messages, strict=True)
    ]
    ctx.check()
    ctx.run(ctx.runtime.services.guests.enqueue(records))
    return {"deadline_ms": deadline_ms, "queued": len(records)}


def _unqueue(ctx: StepContext) -> None:
    for mids in _ids(ctx).values():
        for mid in mids:
            ctx.run(ctx.runtime.services.guests.fail(mid, "the job ended before an answer"))


def _status(ctx: StepContext, late: bool) -> tuple[dict[str, Any], int]:
    """Each VM's status and its messages', and how many messages await an answer. `late`:
    the deadline passed, so those fail now, saying what the guest did."""
    guests = ctx.runtime.services.guests
    vms = cast(dict[str, str], ctx.outputs["targets"])
    timeout_s = _messages(ctx)[1]
    out: dict[str, Any] = {}
    pending = 0
    ids = _ids(ctx)
    # every record in one round trip (a fan-out job looks at all of them each round)
    every = ctx.run(guests.messages([m for mids in ids.values() for m in mids]))
    at = 0
    for vm_id, mids in ids.items():
        recs, at = every[at : at + len(mids)], at + len(mids)
        guest = ctx.run(guests.state(vm_id)) if late else None
        msgs = []
        for mid, rec in zip(mids, recs, strict=True):
            status = rec.status if rec is not None else "failed"
            answer = dict(rec.answer) if rec is not None else {"error": "the message expired"}
            if status not in TERMINAL and late:
                error = _silence(
                    status, guest is not None and guest.ready_at is not None, timeout_s
                )
                if ctx.run(guests.fail(mid, error)):
                    status, answer = "failed", {"error": error}
                else:  # answered meanwhile
                    [rec] = ctx.run(guests.messages([mid]))
                    status, answer = (rec.status, dict(rec.answer)) if rec else (status, answer)
            if status not in TERMINAL:
                pending += 1
            key = rec.key if rec is not None else None
            msgs.append({"id": mid, "key": key, "status": status, **answer})
        states = {m["status"] for m in msgs}
        state = (
            "failed" if "failed" in states
            else "acknowledged" if states == {"acknowledged"}
            else "delivered" if "delivered" in states
            else "queued"
        )  # fmt: skip
        out[vms[vm_id]] = {"vm_id": vm_id, "state": state, "messages": msgs}
    return out, pending


def _silence(status: str, ever_ready: bool, timeout_s: float) -> str:
    if status == "delivered":
        return f"the guest had the message and did not answer within {timeout_s:g} s"
    if ever_ready:
        return f"the guest was not ready again within {timeout_s:g} s (not delivered)"
    return (
        f"the guest never answered: no guest program reported ready within {timeout_s:g} s "
        "(not delivered)"
    )


def _answers(ctx: StepContext) -> Outputs | Wait:
    since = ctx.stream_position()
    deadline_ms = int(ctx.outputs["deadline_ms"])
    late = time.time() * 1000 >= deadline_ms
    vms, pending = _status(ctx, late)
    if not pending:
        return {"vms": vms}
    ctx.report(1 - pending / max(1, int(ctx.outputs["queued"])), {})
    return Wait(
        types=[et.GUEST_ANSWERED],  # one event for all (a fan-out's job wakes once)
        subject=ctx.job.id,
        since=since,
        timeout_s=max(0.1, deadline_ms / 1000 - time.time()),
        outputs={"vms": vms},
    )


def _verdict(ctx: StepContext) -> Outputs:
    vms = cast(dict[str, Any], ctx.outputs["vms"])
    failed = {name: v for name, v in vms.items() if v["state"] != "acknowledged"}
    if failed:
        first = {
            name: next(
                m.get("error", m["status"]) for m in v["messages"] if m["status"] != "acknowledged"
            )
            for name, v in failed.items()
        }
        detail = "; ".join(f"{n}: {e}" for n, e in sorted(first.items())[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise NotConfigured(f"{len(failed)} of {len(vms)} VM(s) not configured: {detail}{more}")
    return {"acknowledged": len(vms)}


QUEUE = Step("queue_messages", _queue, _unqueue, "queue the messages in each VM's outbox")
AWAIT = Step(
    "await_answers",
    _answers,
    None,
    "wait for each guest to acknowledge its messages",
    resume=_answers,
    last_look=True,
)
VERDICT = Step("verdict", _verdict, None, "check that every guest acknowledged")


def steps(_req: SendMessages) -> list[Step]:
    return [Step("select_vms", _select, None, "find the VMs the messages go to"), QUEUE, AWAIT,
            VERDICT]  # fmt: skip


def first_boot_steps(req: FirstBoot) -> list[Step]:
    """After a create's start: its `config` to the new VM's guest, acknowledged (none
    when the request has no config)."""
    if not req.config or getattr(req, "config_via", "guest") != "guest":
        return []  # (config_via cloud-init: the seed carries it; cloud-init answers nothing)
    return [Step("config_target", _own_vm, None, "the new VM's guest gets the config"),
            QUEUE, AWAIT, VERDICT]  # fmt: skip
