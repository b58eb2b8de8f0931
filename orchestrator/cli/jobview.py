"""How a job looks to people: its steps, its progress (live, or a line per change when
the output is not a terminal), and where it came from (the causal chain: the event and
hook that submitted it, its parent job) and what it started (child jobs).

Everything here renders the API's JSON as it is (dicts), so that the CLI shows what the
API answered even when it is a version apart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from orchestrator.cli.output import (
    Column,
    clock,
    key_values,
    percent,
    safe,
    span,
    state,
    table,
)

Doc = Mapping[str, Any]
TERMINAL = frozenset({"succeeded", "failed", "aborted"})


@dataclass
class Related:
    """What `vmorch jobs show` gathers around a job for its causal chain. Each part is
    None when the job has no such link, or when the API no longer has it (`*_id` then
    still says what the link named)."""

    hook_id: str | None = None
    hook: Doc | None = None
    run: Doc | None = None  # the hook's firing that submitted the job: event type, subject
    event_id: str | None = None
    parent_id: str | None = None
    parent: Doc | None = None
    retry_of_id: str | None = None  # the failed or aborted job this one runs again
    retry_of: Doc | None = None
    children: Sequence[Doc] = field(default_factory=list)
    children_complete: bool = True  # False: the listing scanned for them was cut short


def _error(err: Doc | None) -> Text:
    if not err:
        return Text("")
    return Text(safe(f"{err.get('code', '')}: {err.get('message', '')}"), style="red")


def _recovery(rec: Doc | None) -> str | None:
    if not rec:
        return None
    return (
        f"{rec.get('from_state')} -> {rec.get('state')} by {rec.get('by')} at "
        f"{clock(rec.get('at'))}: {rec.get('reason')}"
    )


def _step_note(step: Doc) -> RenderableType:
    """The last column of a step: its error, its retry time, or what it last reported."""
    if step.get("error"):
        return _error(step["error"])
    notes = []
    if step.get("retry_at") and step.get("state") in ("pending", "running"):
        notes.append(f"retry at {clock(step['retry_at'])}")
    if step.get("detail"):
        notes.append(json.dumps(step["detail"], separators=(",", ":")))
    return Text(" ".join(notes), style="dim")


def steps_table(job: Doc) -> RenderableType:
    rows = [{"n": i + 1, **s} for i, s in enumerate(job.get("steps") or [])]
    return table(
        rows,
        [
            Column("#", lambda s: s["n"], justify="right"),
            Column("step", lambda s: s["name"], no_wrap=True),
            Column("state", lambda s: state(s.get("state"))),
            Column("tries", lambda s: s.get("attempts") or "", justify="right"),
            Column("started", lambda s: clock(s.get("started_at"))),
            Column("took", lambda s: span(s.get("started_at"), s.get("ended_at"))),
            Column("progress", lambda s: percent(s.get("progress"))),
            Column("error / detail", _step_note),
        ],
        title="steps",
    )


def headline(job: Doc) -> Text:
    """One line: id, kind, state, progress, VM."""
    links = job.get("links") or {}
    text = Text.assemble(
        (f"{job.get('id', '')}  ", "bold"),
        (f"{job.get('kind', '')}  ", ""),
        state(job.get("state")),
        f"  {percent(job.get('progress')).strip()}",
    )
    if vm := links.get("vm_name") or links.get("vm_id"):
        text.append(f"  vm {vm}")
    return text


def progress_view(job: Doc) -> RenderableType:
    """The live view of one job: its headline, a progress bar and its steps."""
    done = float(job.get("progress") or 0.0)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=1.0, completed=done, width=50), percent(done))
    parts: list[RenderableType] = [headline(job), bar, steps_table(job)]
    if job.get("error"):
        parts.append(_error(job["error"]))
    return Group(*parts)


def progress_line(job: Doc) -> str:
    """A line for logs and pipes, printed when it changes."""
    steps = " ".join(f"{s['name']}:{s['state']}" for s in job.get("steps") or [])
    return f"{job.get('state', ''):<9} {percent(job.get('progress'))}  {steps}"


def _job_label(doc: Doc | None, job_id: str | None, prefix: str = "job") -> Text:
    if doc is None:
        return Text(f"{prefix} {job_id} (no longer kept)", style="dim")
    vm = (doc.get("links") or {}).get("vm_name")
    return Text.assemble(
        f"{prefix} {doc['id']}  {doc.get('kind', '')}  ",
        state(doc.get("state")),
        f"  vm {vm}" if vm else "",
    )


def causal_chain(job: Doc, rel: Related) -> Tree:
    """From the first cause down: event -> hook -> parent job -> the job this one retries
    -> this job -> its children."""
    nodes: list[Text] = []
    if rel.event_id or rel.run:
        run = rel.run or {}
        parts = [run.get("event_type"), f"id {rel.event_id or run.get('event_id')}"]
        if run.get("subject"):
            parts.append(f"subject {run['subject']}")
        if run.get("at"):
            parts.append(f"at {clock(run['at'])}")
        nodes.append(Text.assemble(("event ", "bold"), "  ".join(p for p in parts if p)))
    if rel.hook_id:
        name = (rel.hook or {}).get("name")
        hook = f"hook {name} ({rel.hook_id})" if name else f"hook {rel.hook_id} (deleted)"
        outcome = (rel.run or {}).get("outcome")
        nodes.append(Text.assemble(hook, f"  {outcome}" if outcome else ""))
    if rel.parent_id:
        nodes.append(_job_label(rel.parent, rel.parent_id, "parent job"))
    if rel.retry_of_id:
        nodes.append(_job_label(rel.retry_of, rel.retry_of_id, "retry of job"))
    me = _job_label(job, str(job.get("id")), "this job")
    me.stylize("bold", 0, len("this job"))
    by = job.get("submitted_by")
    if by:
        me.append(f"  submitted by {by}", style="dim")
    root = Tree(nodes[0] if nodes else me, guide_style="dim")
    branch = root
    for node in [*nodes[1:], me] if nodes else []:
        branch = branch.add(node)
    for child in rel.children:
        branch.add(_job_label(child, str(child.get("id")), "child"))
    if not rel.children_complete:
        branch.add(Text("(more child jobs may exist: the listing was cut short)", style="dim"))
    return root


def job_detail(job: Doc, rel: Related) -> RenderableType:
    """`vmorch jobs show`: what the job is, why it exists, how its steps went."""
    links = job.get("links") or {}
    wait = job.get("wait") or {}
    facts = key_values(
        [
            ("job", job.get("id")),
            ("kind", job.get("kind")),
            ("state", state(job.get("state"))),
            ("progress", percent(job.get("progress")).strip()),
            ("submitted by", job.get("submitted_by")),
            ("queue", job.get("queue")),
            ("created", clock(job.get("created_at"))),
            ("started", clock(job.get("started_at"))),
            ("ended", clock(job.get("ended_at"))),
            (
                "took",
                span(job.get("started_at"), job.get("ended_at")) if job.get("started_at") else "",
            ),
            ("vm", " ".join(x for x in (links.get("vm_name"), links.get("vm_id")) if x)),
            ("pool", links.get("pool")),
            ("source vm", links.get("source_vm_id")),
            ("waits behind", job.get("waiting_for_job")),
            ("vm queue position", job.get("vm_queue_position")),
            (
                "waiting for",
                f"{', '.join(wait.get('types', []))} about {wait.get('subject')} "
                f"until {clock(wait.get('deadline'))}"
                if wait
                else "",
            ),
            ("abort requested", job.get("abort_requested") or None),
            ("retried as", job.get("retried_as")),
            ("recovered", _recovery(job.get("recovery"))),
            ("undone", job.get("undone_steps")),
            ("error", _error(job.get("error")) if job.get("error") else None),
            ("idempotency key", job.get("idempotency_key")),
            ("request", json.dumps(job.get("request"), separators=(", ", ": "))),
            (
                "result",
                json.dumps(job["result"], separators=(", ", ": ")) if job.get("result") else None,
            ),
        ]
    )
    return Group(
        facts,
        Text(""),
        Text("causal chain", style="bold"),
        causal_chain(job, rel),
        Text(""),
        steps_table(job),
    )


JOB_COLUMNS = [
    Column("id", lambda j: j["id"], no_wrap=True),
    Column("kind", lambda j: j.get("kind"), no_wrap=True),
    Column("state", lambda j: state(j.get("state"))),
    Column("progress", lambda j: percent(j.get("progress")), justify="right"),
    Column("vm", lambda j: (j.get("links") or {}).get("vm_name")),
    Column("created", lambda j: clock(j.get("created_at"))),
    Column("took", lambda j: span(j.get("started_at"), j.get("ended_at"))),
    Column("by", lambda j: j.get("submitted_by")),
]
