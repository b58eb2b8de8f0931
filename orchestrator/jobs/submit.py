"""Submitting and aborting jobs: validation against the inventory, VM queues, idempotency."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from itertools import takewhile
from typing import cast

from orchestrator.errors import (
    Conflict,
    NotFound,
    QueueDraining,
    ValidationFailed,
    VmorchError,
)
from orchestrator.jobs.dispatch import Dispatcher
from orchestrator.jobs.transitions import abort_requested
from orchestrator.secrets import Sealer
from orchestrator.store import keys
from orchestrator.store.content import ContentStore
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from orchestrator.store.macs import MacStore
from orchestrator.store.queues import QueueControls
from orchestrator.targets import ImportAllowList, TargetRefused, file_name
from schemas.api import QueueDepth
from schemas.base import is_name, utcnow
from schemas.event_types import SOURCE_API
from schemas.inventory import ContentKind, ServerPool, Vm, VmNic, VmState
from schemas.jobs import Job, JobLinks, JobState, StepRecord, StepState
from schemas.requests import (
    CREATE_KINDS,
    INTERNAL_KINDS,
    AddVnic,
    AssemblyImport,
    CloneTemplate,
    CloneVm,
    CreateFromInstallTree,
    CreateFromIso,
    CreateFromTemplate,
    DiscoverServer,
    DiskClone,
    DiskCopy,
    EjectIso,
    FirstBoot,
    GuestKeyValue,
    ImportTemplate,
    InsertIso,
    JobRequest,
    MigrateVm,
    MoveVm,
    Noop,
    PinVcpus,
    RemoveVnic,
    RepositoryImport,
    SendMessages,
    ServerActivate,
    ServerMaintenance,
    TemplateFromVm,
    TemplateRequest,
    VmOperation,
)


def _disk_repository_problems(
    pool: ServerPool, disks: Sequence[DiskClone | DiskCopy]
) -> list[tuple[list[str | int], str]]:
    """Each disk's repository, when the request names one, must be presented to the pool."""
    return [
        (["body", "disks", i, "repository"], f"pool {pool.name} has no repository {d.repository!r}")
        for i, d in enumerate(disks)
        if d.repository is not None and not pool.presents(d.repository)
    ]


class Submitter:
    def __init__(
        self,
        jobs: JobStore,
        inventory: InventoryStore,
        dispatcher: Dispatcher,
        macs: MacStore,
        content: ContentStore,
        import_allow: ImportAllowList,
        sealer: Sealer | None = None,
        queues: QueueControls | None = None,
    ):
        self.sealer = sealer
        self.queues = queues
        self.jobs = jobs
        self.inventory = inventory
        self.dispatcher = dispatcher
        self.macs = macs
        self.content = content
        self.import_allow = import_allow

    async def _content_problem(self, repository: str, name: str, kind: ContentKind) -> str | None:
        """Why `name` cannot be used as `kind` from `repository` (None: it can)."""
        found = await self.content.get(repository, name)
        if found is None:
            return f"repository {repository} has no {kind} {name!r} (import it first)"
        if found.kind != kind:
            return f"{name!r} in repository {repository} is a {found.kind}, not a {kind}"
        if found.state != "ready":
            return f"{name!r} in repository {repository} is still being imported"
        return None

    async def _check_create(
        self, req: CreateFromTemplate | CreateFromIso | CreateFromInstallTree
    ) -> tuple[int, int]:
        """Check a create against the inventory; the VM's (vcpus, memory_mib)."""
        try:
            pool = await self.inventory.pool(req.pool)
        except NotFound as e:
            raise ValidationFailed(e.message, details=[(["body", "pool"], e.message)]) from e
        problems: list[tuple[list[str | int], str]] = []
        if isinstance(req, CreateFromTemplate):
            try:
                tmpl = await self.inventory.template(req.template)
            except NotFound as e:
                raise ValidationFailed(
                    e.message, details=[(["body", "template"], e.message)]
                ) from e
            shape = (req.vcpus or tmpl.vcpus, req.memory_mib or tmpl.memory_mib)
            if tmpl.state != "ready":
                problems.append((["body", "template"], f"template {tmpl.name} is being made"))
            if len(req.disks) > len(tmpl.disks):
                problems.append(
                    (["body", "disks"], f"template {tmpl.name} has {len(tmpl.disks)} disk(s)")
                )
            problems += _disk_repository_problems(pool, req.disks)
            # (a template without disks, which boots a kernel directly, suits every pool)
            if tmpl.disks and tmpl.repository != pool.repository.name:
                problems.append(
                    (
                        ["body", "template"],
                        f"template {tmpl.name} is not in pool {pool.name}'s repository",
                    )
                )
        elif isinstance(req, CreateFromIso):
            shape = (req.vcpus, req.memory_mib)
            if why := await self._content_problem(pool.repository.name, req.iso, "iso"):
                problems.append((["body", "iso"], why))
        else:
            shape = (req.vcpus, req.memory_mib)
            # a tree on a mount the servers see: its .treeinfo must be under an allowed path
            url = req.url.rstrip("/") + "/.treeinfo" if req.url.startswith("file:") else req.url
            if why := self._url_problem(url, files=True):
                problems.append((["body", "url"], why))
        nets = {n.name for n in pool.networks}
        for i, nic in enumerate(req.vnics):
            if nic.network not in nets:
                problems.append(
                    (
                        ["body", "vnics", i, "network"],
                        f"pool {pool.name} has no network {nic.network!r}",
                    )
                )
        if req.server and req.server not in pool.servers:
            problems.append((["body", "server"], f"server {req.server} is not in pool {pool.name}"))
        if problems:
            raise ValidationFailed("the request does not fit the inventory", details=problems)
        return shape

    def _url_problem(self, url: str, *, files: bool) -> str | None:
        """Why an import may not read `url` (None: it may): the allow-list's verdict, and
        a file of a server only for repository.import (`files`)."""
        if url.startswith("file:") and not files:
            return "only repository.import reads a file of a server (file:///...)"
        try:
            self.import_allow.check(url)
        except TargetRefused as e:
            return e.message
        return None

    async def _check_clone(self, req: CloneVm) -> tuple[Vm, list[str]]:
        """The source VM and the clone's networks (the source's, mapped)."""
        try:
            src = await self.inventory.vm(req.vm)
        except NotFound as e:
            raise NotFound(e.message, details=[(["body", "vm"], e.message)]) from e
        pool = await self.inventory.pool(src.pool)
        nets = {n.name for n in pool.networks}
        problems: list[tuple[list[str | int], str]] = []
        for k, v in req.network_map.items():
            if v not in nets:
                problems.append(
                    (["body", "network_map", k], f"pool {pool.name} has no network {v!r}")
                )
        networks = [req.network_map.get(n.network, n.network) for n in src.nics]
        if len(req.disks) > len(src.disks):
            problems.append((["body", "disks"], f"vm {src.name} has {len(src.disks)} disk(s)"))
        problems += _disk_repository_problems(pool, req.disks)
        if req.server and req.server not in pool.servers:
            problems.append((["body", "server"], f"server {req.server} is not in pool {pool.name}"))
        if src.state not in (VmState.STOPPED, VmState.CRASHED):
            problems.append((["body", "vm"], f"vm {src.name} is {src.state.value}: stop it first"))
        if problems:
            raise ValidationFailed("the request does not fit the inventory", details=problems)
        return src, networks

    async def _check_template(self, req: TemplateRequest) -> tuple[str, Vm | None]:
        """A new template's name is free, its source exists; the pool whose queue runs the
        job, and the source VM (template.create_from_vm)."""
        if not isinstance(req, ImportTemplate):
            for i, d in enumerate(req.disks):
                if d.repository is not None:
                    msg = "a template's disks are in its repository: give no repository"
                    raise ValidationFailed(msg, details=[(["body", "disks", i, "repository"], msg)])
        if await self.inventory.find_template(req.name) is not None:
            raise Conflict(
                f"a template named {req.name!r} exists",
                details=[(["body", "name"], "name is taken")],
            )
        if isinstance(req, TemplateFromVm):
            try:
                vm = await self.inventory.vm(req.vm)
            except NotFound as e:
                raise NotFound(e.message, details=[(["body", "vm"], e.message)]) from e
            if len(req.disks) > len(vm.disks):
                msg = f"vm {vm.name} has {len(vm.disks)} disk(s)"
                raise ValidationFailed(msg, details=[(["body", "disks"], msg)])
            return vm.pool, vm
        if isinstance(req, CloneTemplate):
            src = await self.inventory.find_template(req.template)
            if src is None or src.state != "ready":
                msg = f"template {req.template!r} not found" if src is None else "being made"
                raise ValidationFailed(msg, details=[(["body", "template"], msg)])
            repository = src.repository
        else:
            repository = req.repository
            if why := self._url_problem(req.url, files=False):
                raise ValidationFailed(why, details=[(["body", "url"], why)])
        pools = [p for p in await self.inventory.pools() if p.presents(repository)]
        if not pools:
            msg = f"no server pool has a repository {repository!r}"
            raise ValidationFailed(msg, details=[(["body", "repository"], msg)])
        return pools[0].name, None

    async def _check_import(self, req: RepositoryImport | AssemblyImport) -> ServerPool:
        """The repository, the URL (allow-list; its addresses are checked again at each
        connection) and the file's name; the first pool the repository is presented to."""
        pools = [p for p in await self.inventory.pools() if p.presents(req.repository)]
        if not pools:
            msg = f"no server pool has a repository {req.repository!r}"
            raise ValidationFailed(msg, details=[(["body", "repository"], msg)])
        url = req.url or ""
        files = isinstance(req, RepositoryImport)
        if req.url is not None and (why := self._url_problem(req.url, files=files)):
            raise ValidationFailed(why, details=[(["body", "url"], why)])
        if isinstance(req, AssemblyImport):
            name = req.name or file_name(url).rsplit(".", 1)[0][:40]
        else:
            name = req.name or file_name(url)
        if not name:
            msg = "the URL names no file: give a name"
            raise ValidationFailed(msg, details=[(["body", "name"], msg)])
        if not is_name(name):
            msg = f"the URL's file name {name[:80]!r} is not a valid name here: give a name"
            raise ValidationFailed(msg, details=[(["body", "name"], msg)])
        held = await self.content.get(req.repository, name)
        if held is not None:
            raise Conflict(
                f"repository {req.repository} already holds {name!r}",
                details=[(["body", "name"], "a file of this name exists in the repository")],
            )
        return pools[0]

    async def _check_vm_op(self, req: VmOperation, vm: Vm) -> None:
        """Checks of an operation on a VM that depend on the VM."""
        if isinstance(req, PinVcpus) and req.pinning:
            extra = sorted(int(k) for k in req.pinning if int(k) >= vm.vcpus)
            if extra:
                raise ValidationFailed(
                    "the request does not fit the VM",
                    details=[
                        (
                            ["body", "pinning", str(extra[0])],
                            f"vm {vm.name} has {vm.vcpus} vCPU(s): 0-{vm.vcpus - 1}",
                        )
                    ],
                )
        if isinstance(req, InsertIso | EjectIso) and not vm.has_cdrom:
            msg = f"vm {vm.name} has no CD-ROM drive (a VM created from an ISO has one)"
            raise ValidationFailed(msg, details=[(["body", "vm"], msg)])
        if isinstance(req, InsertIso):
            pool = await self.inventory.pool(vm.pool)
            if why := await self._content_problem(pool.repository.name, req.iso, "iso"):
                raise ValidationFailed(why, details=[(["body", "iso"], why)])
        if isinstance(req, MigrateVm):
            await self._check_migrate(req, vm)
        if isinstance(req, AddVnic):
            pool = await self.inventory.pool(vm.pool)
            if req.network not in {n.name for n in pool.networks}:
                why = f"pool {pool.name} has no network {req.network!r}"
                raise ValidationFailed(why, details=[(["body", "network"], why)])
            if req.mac and any(n.mac.lower() == req.mac.lower() for n in vm.nics):
                why = f"vm {vm.name} has a vNIC {req.mac} already"
                raise Conflict(why, details=[(["body", "mac"], why)])
            if len(vm.nics) >= 8:
                why = f"vm {vm.name} has 8 vNICs, the most a VM has"
                raise ValidationFailed(why, details=[(["body", "vm"], why)])
        if isinstance(req, RemoveVnic) and all(n.mac.lower() != req.mac.lower() for n in vm.nics):
            why = f"vm {vm.name} has no vNIC {req.mac}"
            raise ValidationFailed(why, details=[(["body", "mac"], why)])
        if isinstance(req, MoveVm):
            pool = await self.inventory.pool(vm.pool)
            problems: list[tuple[list[str | int], str]] = []
            if not pool.presents(req.repository):
                why = f"pool {pool.name} has no repository {req.repository!r}"
                problems.append((["body", "repository"], why))
            for i, n in enumerate(req.disks or []):
                if n >= len(vm.disks):
                    problems.append(
                        (["body", "disks", i], f"vm {vm.name} has {len(vm.disks)} disk(s)")
                    )
            if problems:
                raise ValidationFailed("the request does not fit the VM", details=problems)

    async def submit(
        self,
        req: JobRequest,
        *,
        submitted_by: str,
        idem_key: str | None = None,
        idem_scope: str = "",
        links: JobLinks | None = None,
        internal: bool = False,
        retry_of: Job | None = None,
    ) -> tuple[Job, bool]:
        """Store and dispatch a job. Returns (job, replayed); replayed: a known Idempotency-Key.

        `internal`: submitted by vmorch itself (a hook); only then are internal kinds
        (`vm.ha_restart`) accepted.
        """
        if req.kind in INTERNAL_KINDS and not internal:
            raise ValidationFailed(
                f"{req.kind} jobs are submitted by the HA hook only",
                details=[(["body", "kind"], "an internal job kind")],
            )
        fingerprint = req.model_dump_json()
        if isinstance(req, SendMessages | FirstBoot) and retry_of is None:
            req, fingerprint = self._sealed(req)  # (a retry's request is sealed already)
        sha = hashlib.sha256(fingerprint.encode()).hexdigest()
        # keys are per caller: another token's key neither replays nor reveals its job
        scoped = f"{idem_scope}:{idem_key}" if idem_key else None
        job_id = str(uuid.uuid4())
        try:
            queue, link_update, reserve = await self._place(req, job_id)
        except VmorchError:
            # a replay answers with the original job before anything else is checked: the
            # VM it worked on may be gone by now (a replayed vm.delete), or its name taken
            # by the VM it made. (Otherwise the create script finds the key itself.)
            if scoped and (replay := await self._replay(scoped, sha)) is not None:
                return replay, True
            raise
        # the work of what runs already is not refused by a drain: a parent job's children
        # (an evacuation's migrations) and HA's restarts
        running_work = internal and (
            (links is not None and links.parent_job is not None) or req.kind in INTERNAL_KINDS
        )
        claimed: list[str] = []  # an added vNIC's MAC, claimed for its VM
        if isinstance(req, AddVnic):
            vm_id = link_update["vm_id"]
            # held for this VM already (a replay of a queued add): not this call's to give back
            before = await self.macs.holder(req.mac) if req.mac else None
            try:
                [mac] = await self.macs.claim(vm_id, [req.mac])
            except Conflict as e:
                raise Conflict(e.message, details=[(["body", "mac"], e.message)]) from None
            req = req.model_copy(update={"mac": mac})  # the job adds this one
            claimed = [] if before == vm_id else [mac]
        now = utcnow()
        job = Job(
            id=job_id,
            kind=req.kind,
            request=req,
            submitted_by=submitted_by,
            queue=queue,
            created_at=now,
            updated_at=now,
            links=(links or JobLinks()).model_copy(update=link_update),
            steps=_carried(retry_of, link_update.get("vm_id")),
            idempotency_key=idem_key,
        )
        try:
            res = await self.jobs.create(
                job,
                idem_key=scoped,
                request_sha=sha,
                reserve_vm=reserve,
                message=self.dispatcher.message(job.id, job.queue),
                refuse_if_draining=not running_work,
            )
        except BaseException:
            if reserve is not None:
                await self.macs.release(reserve.id, [n.mac for n in reserve.nics])
            if claimed:
                await self.macs.release(link_update["vm_id"], claimed)
            raise
        if res.status != "created" and reserve is not None:  # no VM was reserved: no MACs
            await self.macs.release(reserve.id, [n.mac for n in reserve.nics])
        if res.status != "created" and claimed:
            await self.macs.release(link_update["vm_id"], claimed)
        if res.status == "exists":
            return await self._replayed(res.job_id), True
        if res.status == "draining":
            raise await self._draining(queue)
        if res.status == "mismatch":
            raise Conflict(f"Idempotency-Key was used for job {res.job_id} with another body")
        if res.status == "name_taken":
            raise Conflict(
                f"a VM named {reserve.name if reserve else ''!r} already exists",
                details=[(["body", "name"], "name is taken")],
            )
        return job, False

    async def _replay(self, scoped: str, sha: str) -> Job | None:
        """The job an Idempotency-Key already made, if any (Conflict: another body)."""
        known = await self.jobs.idempotent_job(scoped)
        if known is None:
            return None
        if known[1] != sha:
            raise Conflict(f"Idempotency-Key was used for job {known[0]} with another body")
        return await self._replayed(known[0])

    async def _draining(self, queue: str) -> QueueDraining:
        """The 503 of a draining queue: it names the queue, why, and what still runs there."""
        assert self.queues is not None
        ctl = await self.queues.get(queue)
        [view] = await self.queues.views([QueueDepth(queue=queue, depth=await self._depth(queue))])
        why = f" ({ctl.reason}; by {ctl.changed_by})" if ctl is not None else ""
        msg = (
            f"queue {queue} is draining{why}: new jobs are refused; {view.pending} job(s) "
            "still pending there will finish"
        )
        return QueueDraining(msg, details=[(["queue", queue], f"draining; {view.pending} pending")])

    async def _depth(self, queue: str) -> int:
        return int(await self.jobs.redis.zcard(keys.jobs_queued(queue)))

    def _sealed(self, req: SendMessages | FirstBoot) -> tuple[JobRequest, str]:
        """The request with each secret value sealed (nothing stores it plain), and its
        fingerprint for idempotency (a keyed digest in place of each secret)."""
        field = "messages" if isinstance(req, SendMessages) else "config"
        items: list[GuestKeyValue] = getattr(req, field)
        problems: list[tuple[list[str | int], str]] = []
        sealed, digested = [], []
        for i, m in enumerate(items):
            if m.sealed is not None:
                problems.append((["body", field, i, "sealed"], "set by vmorch, not by a client"))
                continue
            if not m.secret:
                sealed.append(m)
                digested.append(m)
                continue
            if self.sealer is None:
                problems.append(
                    (["body", field, i, "secret"],
                     "this vmorch has no VMORCH_GUEST_SECRET_KEY: it cannot send secret values")
                )  # fmt: skip
                continue
            sealed.append(m.model_copy(update={"value": "", "sealed": self.sealer.seal(m.value)}))
            digested.append(m.model_copy(update={"value": self.sealer.digest(m.value)}))
        if problems:
            raise ValidationFailed("the key/values cannot be taken", details=problems)
        if not any(m.secret for m in items):
            return cast(JobRequest, req), req.model_dump_json()
        fingerprint = req.model_copy(update={field: digested})
        return (
            cast(JobRequest, req.model_copy(update={field: sealed})),
            fingerprint.model_dump_json(context={"sealed": True}),
        )

    async def _check_messages(self, req: SendMessages) -> list[Vm]:
        """The VMs a message job goes to: at least one, every VM named existing."""
        vms, missing = await self.inventory.select_vms(req.vms, req.labels, req.pool)
        if missing:
            assert req.vms is not None
            raise ValidationFailed(
                "the request names VMs that do not exist",
                details=[(["body", "vms", req.vms.index(r)], f"no VM {r!r}") for r in missing],
            )
        if not vms:
            raise ValidationFailed(
                "no VM matches the selector",
                details=[(["body", f], "no VM matches") for f in ("labels", "pool")
                         if getattr(req, f) is not None],
            )  # fmt: skip
        return vms

    async def _place(self, req: JobRequest, job_id: str) -> tuple[str, dict[str, str], Vm | None]:
        """The job's queue and links from the inventory, and the VM a create reserves."""
        reserve: Vm | None = None
        link_update: dict[str, str] = {}
        queue = keys.DEFAULT_QUEUE
        if isinstance(req, CreateFromTemplate | CreateFromIso | CloneVm | CreateFromInstallTree):
            if isinstance(req, CloneVm):
                src, networks = await self._check_clone(req)
                pool = src.pool
                vcpus, memory_mib = req.vcpus or src.vcpus, req.memory_mib or src.memory_mib
                asked: list[tuple[str, str | None]] = [(n, None) for n in networks]
            else:
                vcpus, memory_mib = await self._check_create(req)
                pool = req.pool
                asked = [(n.network, n.mac) for n in req.vnics]
            vm_id = str(uuid.uuid4())
            macs = await self.macs.claim(vm_id, [m for _n, m in asked])
            reserve = Vm(
                id=vm_id,
                name=req.name,
                nics=[VmNic(network=n, mac=m) for (n, _), m in zip(asked, macs, strict=True)],
                pool=pool,
                state=VmState.PROVISIONING,
                vcpus=vcpus,
                memory_mib=memory_mib,
                ha=req.ha,
                labels=req.labels,
                created_by_job=job_id,
            )
            link_update = {"vm_id": reserve.id, "vm_name": req.name, "pool": pool}
            if isinstance(req, CloneVm):  # in the source's queue too: its jobs wait
                link_update["source_vm_id"] = src.id
            queue = keys.pool_queue(pool)
        elif isinstance(req, TemplateFromVm | CloneTemplate | ImportTemplate):
            pool, source_vm = await self._check_template(req)
            link_update = {"pool": pool}
            if source_vm is not None:  # on the VM's queue: no job of its runs meanwhile
                link_update |= {"vm_id": source_vm.id, "vm_name": source_vm.name}
            queue = keys.pool_queue(pool)
        elif isinstance(req, VmOperation):
            try:
                vm = await self.inventory.vm(req.vm)
            except NotFound as e:
                raise NotFound(e.message, details=[(["body", "vm"], e.message)]) from e
            link_update = {"vm_id": vm.id, "vm_name": vm.name, "pool": vm.pool}
            queue = keys.pool_queue(vm.pool)
            await self._check_vm_op(req, vm)
        elif isinstance(req, RepositoryImport | AssemblyImport):
            presented = await self._check_import(req)
            link_update = {"pool": presented.name}
            queue = keys.pool_queue(presented.name)
        elif isinstance(req, ServerMaintenance | ServerActivate | DiscoverServer):
            try:
                server = await self.inventory.server(req.server)
            except NotFound as e:
                raise NotFound(e.message, details=[(["body", "server"], e.message)]) from e
            link_update = {"pool": server.pool}
            queue = keys.pool_queue(server.pool)
        elif isinstance(req, SendMessages):
            # on no VM's operation queue: a message waits for its guest, and a start of
            # that VM must not wait behind it
            vms = await self._check_messages(req)
            if len(vms) == 1:
                link_update = {"vm_name": vms[0].name, "pool": vms[0].pool}
        elif isinstance(req, Noop):
            queue = keys.NOOP_QUEUE
        return queue, link_update, reserve

    async def _check_migrate(self, req: MigrateVm, vm: Vm) -> None:
        """The target pool and server, and the network map, against the inventory."""
        problems: list[tuple[list[str | int], str]] = []
        pool_name = req.target_pool or vm.pool
        if req.target_pool == vm.pool:
            problems.append((["body", "target_pool"], f"vm {vm.name} is in pool {vm.pool} already"))
        try:
            pool = await self.inventory.pool(pool_name)
        except NotFound as e:
            raise ValidationFailed(e.message, details=[(["body", "target_pool"], e.message)]) from e
        if req.target_server and req.target_server not in pool.servers:
            hint = "" if req.target_pool else " (another pool's: give target_pool)"
            problems.append(
                (
                    ["body", "target_server"],
                    f"{req.target_server!r} is not a server of pool {pool.name}{hint}",
                )
            )
        if req.target_pool:
            there = {n.name for n in pool.networks}
            for src, dst in req.network_map.items():
                if dst not in there:
                    problems.append(
                        (["body", "network_map", src], f"pool {pool.name} has no network {dst!r}")
                    )
            for nic in vm.nics:
                mapped = req.network_map.get(nic.network, nic.network)
                if nic.network not in req.network_map and mapped not in there:
                    problems.append(
                        (
                            ["body", "network_map"],
                            f"vm {vm.name}'s network {nic.network!r} is not in pool "
                            f"{pool.name}: map it to one of {sorted(there)}",
                        )
                    )
        if problems:
            raise ValidationFailed("the request does not fit the inventory", details=problems)

    async def _replayed(self, job_id: str) -> Job:
        """The job an Idempotency-Key was used for. A key outlives its job when retention
        deleted the finished job first (the cap can, within the key's TTL): the request
        was carried out, so it is not run again (no vm.restart twice); the caller is told
        to use a new key if it means to."""
        try:
            return await self.jobs.get(job_id)
        except NotFound:
            raise Conflict(
                f"Idempotency-Key was used for job {job_id}, which has ended and been deleted "
                "(retention); send a new key to submit again"
            ) from None

    async def abort(self, job_id: str, reason: str = "") -> Job:
        """Queued: dropped at once. Running or waiting: stops at the next safe point, undoes."""
        job, heads = await self.jobs.update(
            job_id, lambda j: abort_requested(j, reason), source=SOURCE_API
        )
        for head in heads:
            nxt = await self.jobs.get(head)
            await self.dispatcher.dispatch(head, nxt.queue)
        if job.state == JobState.ABORTING:
            await self.dispatcher.dispatch(job.id, job.queue)
        if job.state == JobState.ABORTED:  # a paused queue held it: no longer
            await self.jobs.redis.srem(keys.queue_held(job.queue), job.id)
        if job.state == JobState.ABORTED and job.kind in CREATE_KINDS and job.links.vm_id:
            await self.inventory.delete_vm(job.links.vm_id)  # the reservation never ran
        if (
            job.state == JobState.ABORTED
            and isinstance(job.request, AddVnic)
            and job.request.mac
            and job.links.vm_id
            and not any(s.attempts for s in job.steps)
        ):  # it never ran: the MAC claimed for it goes back
            await self.macs.release(job.links.vm_id, [job.request.mac])
        return job


def _carried(retry_of: Job | None, vm_id: str | None) -> list[StepRecord]:
    """The records a retry starts with: the leading steps its failed attempt left done
    (kept by compensation: no undo, or before a point of no return), when it works on the
    same VM (a create makes a new one: its attempt's steps are no use to it). The runner
    plans the rest afresh (`transitions.plan_records`)."""
    if retry_of is None or retry_of.links.vm_id != vm_id:
        return []
    return list(takewhile(lambda s: s.state == StepState.DONE, retry_of.steps))
