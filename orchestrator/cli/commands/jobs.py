"""`vmorch jobs`: submit (any kind, from flags or JSON), list, show, watch, abort, retry,
recover."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli import submit
from orchestrator.cli.commands import COMMON, group, leaf
from orchestrator.cli.context import Context
from orchestrator.cli.durations import duration_arg
from orchestrator.cli.exitcodes import CliError, ExitCode, epilog
from orchestrator.cli.jobview import JOB_COLUMNS, Related, job_detail
from orchestrator.cli.jobwatch import follow_job, watch_queue
from orchestrator.cli.output import page, table
from schemas.jobs import JobState

CHILD_SCAN_MAX = 2000  # jobs `show` reads at most looking for a job's children
PAGE_MAX = 500


def _wait_options(p: argparse.ArgumentParser, default: Any = None) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        default=default if default is not None else False,
        help="follow the job live until it ends; the exit code says how",
    )
    p.add_argument(
        "--timeout",
        type=duration_arg,
        default=default,
        metavar="DURATION",
        help="with --wait: stop waiting after this long (90s, 5m, 1h): exit 4",
    )


def _submit_options(p: argparse.ArgumentParser, default: Any = None) -> None:
    _wait_options(p, default)
    p.add_argument(
        "--idempotency-key",
        default=default,
        metavar="KEY",
        help="the same key and request give the same job (safe to repeat)",
    )
    p.add_argument(
        "--file",
        default=default,
        metavar="PATH",
        help="the request as JSON from a file (- for stdin); with KIND, the "
        "flags given are set over it",
    )


def _later_options() -> argparse.ArgumentParser:
    """The submit and common options once more, for after KIND (or after the JSON):
    SUPPRESS, so that one given before is kept."""
    p = argparse.ArgumentParser(prog="vmorch jobs submit", add_help=False, parents=[COMMON])
    _submit_options(p, argparse.SUPPRESS)
    return p


def kind_parser(kind: str) -> argparse.ArgumentParser:
    """The parser of `vmorch jobs submit KIND ...`: the kind's flags from its model."""
    p = argparse.ArgumentParser(
        prog=f"vmorch jobs submit {kind}",
        description=submit.describe_kind(kind) or kind,
        parents=[_later_options()],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fields = p.add_argument_group(
        f"request fields (schemas.requests.{submit.KINDS[kind].__name__})"
    )
    submit.add_flags(fields, kind)
    return p


def _read(source: str) -> tuple[str, str]:
    if source == "-":
        return sys.stdin.read(), "stdin"
    try:
        return Path(source).read_text(), source
    except OSError as e:
        raise CliError(ExitCode.USAGE, f"cannot read {source}: {e.strerror}") from None


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The request the command line asks for: KIND with flags (over --file), or JSON
    given as is (the command line, a file, or - for stdin)."""
    target: str | None = args.request
    if target in submit.KINDS:
        kind_parser(target).parse_args(args.rest, namespace=args)
        base = submit.load_request(*_read(args.file)) if args.file else None
        return submit.build_request(target, vars(args), base)
    is_json = target is not None and target.lstrip().startswith("{")
    if target not in (None, "-") and not is_json and not Path(target).exists():
        near = difflib.get_close_matches(target, submit.KINDS, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise CliError(
            ExitCode.USAGE,
            f"{target!r} is not a job kind, JSON or a file{hint}; "
            "`vmorch jobs submit --help` lists the kinds",
        )
    if args.rest:
        _later_options().parse_args(args.rest, namespace=args)
    if (target is None) == (args.file is None):
        raise CliError(
            ExitCode.USAGE,
            "give the request once: a KIND and its flags, JSON, a file, - (stdin) or --file",
        )
    if is_json:
        return submit.load_request(str(target), "the request")
    return submit.load_request(*_read(str(target if target is not None else args.file)))


def cmd_submit(ctx: Context) -> int:
    args = ctx.args
    try:
        body = _request(args)
    finally:  # --json may come after KIND, parsed with the kind's flags
        ctx.out.json = bool(getattr(args, "json", False))
    submit.validate(body)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    job = ctx.client.call("POST", "/v1/jobs", body, headers)
    if args.wait:
        if not ctx.out.json:
            ctx.out.note(f"job {job['id']} submitted ({job['kind']})")
        return follow_job(
            ctx, job["id"], timeout=args.timeout, emit="final" if ctx.out.json else "view"
        )
    ctx.out.outcome(
        job,
        f"job {job['id']} submitted ({job['kind']}, {job['state']}); "
        f"`vmorch jobs watch {job['id']}` follows it",
    )
    return ExitCode.OK


def cmd_list(ctx: Context) -> int:
    a = ctx.args
    size = PAGE_MAX if a.all else a.limit
    got = ctx.get("/v1/jobs", state=a.state, kind=a.kind, vm=a.vm, limit=size, cursor=a.cursor)
    items = list(got["items"])
    while a.all and got.get("next_cursor"):
        got = ctx.get(
            "/v1/jobs", state=a.state, kind=a.kind, vm=a.vm, limit=size, cursor=got["next_cursor"]
        )
        items += got["items"]
    doc = {"items": items, "next_cursor": got.get("next_cursor")}
    ctx.out.result(
        doc, lambda d: page(table(d["items"], JOB_COLUMNS, empty="no jobs"), "--cursor",
                            d.get("next_cursor"))
    )  # fmt: skip
    return ExitCode.OK


def _children(ctx: Context, job: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Jobs whose parent is `job`, from the listing (newest first) down to the job's own
    creation; (children, whether the scan got that far)."""
    found: list[dict[str, Any]] = []
    cursor, scanned = None, 0
    while scanned < CHILD_SCAN_MAX:
        listing = ctx.get("/v1/jobs", limit=PAGE_MAX, cursor=cursor)
        for j in listing["items"]:
            if j["created_at"] < job["created_at"]:
                return found, True
            if (j.get("links") or {}).get("parent_job") == job["id"]:
                found.append(j)
        scanned += len(listing["items"])
        cursor = listing.get("next_cursor")
        if not cursor:
            return found, True
    return found, False


def related(ctx: Context, job: dict[str, Any]) -> Related:
    """The causal chain around a job: the event and hook that submitted it, its parent,
    its children (what the API still has of them)."""
    links = job.get("links") or {}
    rel = Related(
        hook_id=links.get("hook_id"),
        event_id=links.get("event_id"),
        parent_id=links.get("parent_job"),
        retry_of_id=links.get("retry_of"),
    )
    if rel.hook_id:
        rel.hook = ctx.find(f"/v1/hooks/{rel.hook_id}")
        runs = ctx.find(f"/v1/hooks/{rel.hook_id}/runs", limit=1000) or []
        rel.run = next((r for r in runs if r.get("job_id") == job["id"]), None)
    if rel.parent_id:
        rel.parent = ctx.find(f"/v1/jobs/{rel.parent_id}")
    if rel.retry_of_id:
        rel.retry_of = ctx.find(f"/v1/jobs/{rel.retry_of_id}")
    rel.children, rel.children_complete = _children(ctx, job)
    return rel


def cmd_show(ctx: Context) -> int:
    job = ctx.call("GET", f"/v1/jobs/{ctx.args.id}")
    rel = related(ctx, job)
    doc = {
        "job": job,
        "caused_by": {
            "event_id": rel.event_id,
            "hook": rel.hook,
            "hook_run": rel.run,
            "hook_id": rel.hook_id,
        },
        "parent": rel.parent,
        "retry_of": rel.retry_of,
        "children": rel.children,
    }
    ctx.out.result(doc, lambda _: job_detail(job, rel))
    return ExitCode.OK


def cmd_watch(ctx: Context) -> int:
    a = ctx.args
    if a.id is None:
        return watch_queue(ctx, duration=a.duration)
    return follow_job(ctx, a.id, timeout=a.timeout, emit="lines" if ctx.out.json else "view")


def _then(ctx: Context, job: dict[str, Any], done: str) -> int:
    """After an abort, retry or recovery: the job (or its end, with --wait)."""
    if getattr(ctx.args, "wait", False):
        if not ctx.out.json:
            ctx.out.note(f"job {job['id']} {done}")
        return follow_job(
            ctx, job["id"], timeout=ctx.args.timeout, emit="final" if ctx.out.json else "view"
        )
    ctx.out.outcome(job, f"job {job['id']} {done} (now {job['state']})")
    return ExitCode.OK


def cmd_abort(ctx: Context) -> int:
    a = ctx.args
    body = {"reason": a.reason} if a.reason else None
    return _then(ctx, ctx.call("POST", f"/v1/jobs/{a.id}/abort", body), "abort requested")


def cmd_retry(ctx: Context) -> int:
    a = ctx.args
    job = ctx.call("POST", f"/v1/jobs/{a.id}/retry", {"reason": a.reason or ""})
    return _then(ctx, job, f"retried (of {a.id})" if job["id"] != a.id else "retried")


def cmd_recover(ctx: Context) -> int:
    a = ctx.args
    body = {"state": a.state, "reason": a.reason}
    return _then(ctx, ctx.call("POST", f"/v1/jobs/{a.id}/recover", body), f"recovered as {a.state}")


def register(sub: Any) -> None:
    jobs = group(
        sub, "jobs", "submit, list, show, watch, abort, retry and recover jobs", "jobs_cmd"
    )

    s = leaf(
        jobs,
        "submit",
        "submit a job: KIND with flags, or a JSON request",
        epilog=f"{submit.kinds_epilog()}\n\n{epilog()}",
    )
    s.add_argument(
        "request",
        nargs="?",
        metavar="KIND | JSON | FILE | -",
        help="a job kind (then its flags: `vmorch jobs submit KIND --help`), a "
        "JSON request, a file holding one, or - for stdin",
    )
    s.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    _submit_options(s)
    s.set_defaults(fn=cmd_submit)

    ls = leaf(jobs, "list", "list jobs, newest first")
    ls.add_argument("--state", choices=[st.value for st in JobState])
    ls.add_argument("--kind", help="a job kind (vm.start)")
    ls.add_argument("--vm", help="jobs of this VM (id or name)")
    ls.add_argument("--limit", type=int, default=50, help="a page of this many (1-500, default 50)")
    ls.add_argument("--all", action="store_true", help="every page (the jobs still kept)")
    ls.add_argument("--cursor", help="start after this position (next_cursor of a page)")
    ls.set_defaults(fn=cmd_list)

    sh = leaf(
        jobs, "show", "a job: its steps, and its causal chain (event, hook, parent, children)"
    )
    sh.add_argument("id")
    sh.set_defaults(fn=cmd_show)

    w = leaf(
        jobs,
        "watch",
        "follow one job live (steps, progress) until it ends; without ID, the live queue board",
    )
    w.add_argument("id", nargs="?", help="the job to follow (none: the queue board)")
    w.add_argument(
        "--timeout",
        type=duration_arg,
        metavar="DURATION",
        help="with ID: stop waiting after this long: exit 4",
    )
    w.add_argument(
        "--duration",
        type=duration_arg,
        metavar="DURATION",
        help="without ID: show the board this long, then exit 0",
    )
    w.set_defaults(fn=cmd_watch)

    ab = leaf(jobs, "abort", "abort a job (its done steps are undone)")
    ab.add_argument("id")
    ab.add_argument("--reason", default="", help="recorded with the abort")
    _wait_options(ab)
    ab.set_defaults(fn=cmd_abort)

    rt = leaf(jobs, "retry", "run a failed or aborted job again")
    rt.add_argument("id")
    rt.add_argument("--reason", default="", help="recorded in the audit trail")
    _wait_options(rt)
    rt.set_defaults(fn=cmd_retry)

    rc = leaf(jobs, "recover", "end a stuck job by hand as succeeded or failed (admin)")
    rc.add_argument("id")
    rc.add_argument("--state", required=True, choices=["succeeded", "failed"])
    rc.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    rc.set_defaults(fn=cmd_recover)
