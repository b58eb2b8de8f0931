"""Every Redis key vmorch uses, in one place. Prefix: `vmorch:`.

Jobs (owner: job store; lifetime: a finished job, with every entry below that names it, is
deleted by the router's retention (store/retention.py) job_retention_s after it ended, or
sooner when more than job_retention_max finished jobs are kept; the oldest go first)
- job:{id}                hash   doc (Job JSON, with the step journal), state, version (CAS
                                 counter)
- jobs:all                zset   job id -> created µs; newest-first listing
- jobs:state:{state}      zset   job id -> created µs; one per job state
- jobs:kind:{kind}        zset   job id -> created µs
- jobs:vm:{vm_id}         zset   job id -> created µs; jobs that worked on a VM
- jobs:queued:{queue}     zset   job id -> created µs; queued jobs per Celery queue
- jobs:ended              zset   job id -> ms it ended (written by the terminal commit); the
                                 retention's queue: it deletes from the oldest end
- jobs:due                zset   job id -> ms when the router must (re)dispatch it unless leased;
                                 covers lost messages, dead workers and retry timers
- vmq:{vm_id}             list   the VM's operation queue: job ids in submission order, head
                                 runs; a job leaves it in its terminal commit
- idem:{key}              string "<job id> <request sha256>"; TTL idempotency_ttl_s, kept
                                 when retention deletes the job (a replay then gets 409)
Leases (owner: engine runner; deleted with their job by retention)
- lease:{job_id}          string fencing token of the worker running the job; PX lease_ms
- fence:{job_id}          string counter; INCR gives each lease a new fencing token (never
                                 made for a job that is gone)
Events
- events                  stream every event envelope (JSON in field `e`); trimmed by the router
                                 to about event_stream_maxlen, never below what its group owes.
                                 Group `router_group`: a consumer per router start; the router
                                 removes those idle router_consumer_idle_s with nothing pending
- events:dead             stream unreadable entries set aside (raw fields); MAXLEN ~ 10000
- events:lost             string count of entries trimmed before a router handled them
Inventory (owner: inventory store; lifetime: until removed; a VM's keys go with its record)
- pool:{name} / server:{name} / template:{name}   string  JSON of the model
- pools / servers / templates                      set     names
- vm:{id}                 string JSON of Vm, as provisioned (owner: workflows)
- vmstate:{id}            hash   state, observed_at: last observed on the hypervisor (owner:
                                 agent and workflows; read over the record, which alone says
                                 where the VM is placed)
- vms                     zset   vm id -> created ms
- vms:server:{server}     set    ids of the VMs placed on the server (HA covers them all)
- vmname:{name}           string vm id (names are unique)
Repositories (owner: repository.import; lifetime: until removed)
- repo:{name}:content     hash   file name -> JSON of RepositoryContent: ISOs and virtual disks
                                 imported into the repository (`importing` while its job runs;
                                 the entry goes when the import fails)
Auth (lifetime: until revoked)
- token:{sha256}          string JSON of TokenInfo; the token itself is never stored
- tokens                  hash   token id -> sha256 (for listing and revoking)
Waits and attribution (owner: engine runner and router)
- wait:{job_id}           string JSON of WaitInfo while the job waits (the matched event too);
                                 deleted when the wait ends, or with its job by retention
- waits:{subject}         set    job ids waiting for an event about this subject (likewise)
- expect:{vm_id}          hash   job id -> JSON event-type globs the job's action will cause;
                                 TTL 1 day from the last expectation; entries of jobs ended
                                 over 20 s ago are removed at the VM's next expectation and
                                 when an event matches them, and with their job by retention
Hooks (owner: API for definitions, router for firings; a hook's keys go with the hook)
- hooks                   set    hook ids;  hooks:version  string  new token at every change
- hook:{id}               string JSON of Hook;  hooksecret:{id} string its webhook secret
- hookruns:{id}           list   JSON HookRun, newest first, trimmed to 1000
- hooksuppressed:{id}     string count of firings skipped by flood control
- hookfired:{id}:{ev}:{s} string "busy" while a router acts (PX hook_lease_ms), then "done"
                                 (TTL hook_firing_ttl_s): each (hook, event, subject) acts once
- hookflood:{id}:{subj}   string present while the hook's window for a subject is open (PX
                                 window_s)
HA and alerts (owner: router and the HA workflow)
- harestarts:{vm_id}      zset   restart attempt -> ms, within the HA window (PX window + 60 s)
- alerts                  hash   alert id -> JSON (an error an operator must acknowledge)
- alerts:raised           zset   alert id -> µs raised: every alert, listed newest first
- alerts:open             zset   alert id -> µs raised: those not yet acknowledged (kept until
                                 they are)
- alerts:acked            zset   alert id -> ms acknowledged; the router deletes those
                                 acknowledged job_retention_s ago (from all four)
- vmdesired:{vm_id}       string "running" or "stopped": what the last start/stop job asked for;
                                 HA restarts only VMs meant to run (owner: workflows; deleted
                                 with the VM, like vmstate)
Agents
- serverdown:{server}     string ms since when the agent has found its server unreachable;
                                 deleted when it answers again
- agent:{server}:last     hash   domain uuid -> state last published (owner: that server's
                                 agent; an entry per domain on the server, removed when it goes)
Guest messages (owner: the message jobs write, the agent of the VM's server delivers)
- guest:{vm_id}           hash   the guest program as the agent saw it last: connected, server,
                                 version, boot_id, ready_at, last_seen, dropped:{reason}
                                 counters (deleted with the VM)
- guest:{vm_id}:keys      hash   key -> the last value the guest reported (bounded; with the VM)
- guest:{vm_id}:outbox    list   message ids to deliver, in order; an id leaves when answered
                                 or failed (with the VM)
- gmsg:{id}               hash   one message to a guest (MessageRecord fields); TTL
                                 guest_message_ttl_s from its creation
- gjob:{job_id}           hash   pending: the job's messages not yet answered (counted down
                                 by each answer; the last appends guest.messages.answered);
                                 TTL guest_message_ttl_s
- guest:doorbell          stream "vm" -> a VM whose outbox has new messages; every agent
                                 reads it (no group), MAXLEN ~ 10000
Workers
- workers                 zset   worker name -> last heartbeat ms; a name per worker start, the
                                 router removes those not seen for worker_forget_after_s
- worker:{name}           string the queues it consumes, comma-separated; TTL 60 s
Celery queues (vmorch.pool.*, vmorch.default, vmorch.noop): lists of messages, consumed
"""

from __future__ import annotations

PREFIX = "vmorch:"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


JOBS_ALL = f"{PREFIX}jobs:all"
JOBS_DUE = f"{PREFIX}jobs:due"
JOBS_ENDED = f"{PREFIX}jobs:ended"


def jobs_state(state: str) -> str:
    return f"{PREFIX}jobs:state:{state}"


def jobs_kind(kind: str) -> str:
    return f"{PREFIX}jobs:kind:{kind}"


def jobs_vm(vm_id: str) -> str:
    return f"{PREFIX}jobs:vm:{vm_id}"


def jobs_queued(queue: str) -> str:
    return f"{PREFIX}jobs:queued:{queue}"


def vm_queue(vm_id: str) -> str:
    return f"{PREFIX}vmq:{vm_id}"


def idempotency(key: str) -> str:
    return f"{PREFIX}idem:{key}"


def lease(job_id: str) -> str:
    return f"{PREFIX}lease:{job_id}"


def fence(job_id: str) -> str:
    return f"{PREFIX}fence:{job_id}"


EVENTS = f"{PREFIX}events"
EVENTS_DEAD = f"{PREFIX}events:dead"
EVENTS_LOST = f"{PREFIX}events:lost"


def pool(name: str) -> str:
    return f"{PREFIX}pool:{name}"


def server(name: str) -> str:
    return f"{PREFIX}server:{name}"


def template(name: str) -> str:
    return f"{PREFIX}template:{name}"


POOLS = f"{PREFIX}pools"
SERVERS = f"{PREFIX}servers"
TEMPLATES = f"{PREFIX}templates"


def repo_content(repository: str) -> str:
    return f"{PREFIX}repo:{repository}:content"


def vm(vm_id: str) -> str:
    return f"{PREFIX}vm:{vm_id}"


def vm_state(vm_id: str) -> str:
    return f"{PREFIX}vmstate:{vm_id}"


VMS = f"{PREFIX}vms"


def vms_on(server_name: str) -> str:
    return f"{PREFIX}vms:server:{server_name}"


def vm_name(name: str) -> str:
    return f"{PREFIX}vmname:{name}"


def token(sha256: str) -> str:
    return f"{PREFIX}token:{sha256}"


TOKENS = f"{PREFIX}tokens"


def wait(job_id: str) -> str:
    return f"{PREFIX}wait:{job_id}"


def waits_on(subject: str) -> str:
    return f"{PREFIX}waits:{subject}"


def expectations(vm_id: str) -> str:
    return f"{PREFIX}expect:{vm_id}"


HOOKS = f"{PREFIX}hooks"
HOOKS_VERSION = f"{PREFIX}hooks:version"  # a new random token at every hook write


def hook(hook_id: str) -> str:
    return f"{PREFIX}hook:{hook_id}"


def hook_secret(hook_id: str) -> str:
    return f"{PREFIX}hooksecret:{hook_id}"


def hook_runs(hook_id: str) -> str:
    return f"{PREFIX}hookruns:{hook_id}"


def hook_suppressed(hook_id: str) -> str:
    return f"{PREFIX}hooksuppressed:{hook_id}"


def hook_fired(hook_id: str, event_id: str) -> str:
    return f"{PREFIX}hookfired:{hook_id}:{event_id}"


def hook_flood(hook_id: str, subject: str) -> str:
    return f"{PREFIX}hookflood:{hook_id}:{subject}"


# the audit trail: a stream of AuditRecord docs, trimmed to the job retention
AUDIT = f"{PREFIX}audit"
ALERTS = f"{PREFIX}alerts"
ALERTS_RAISED = f"{PREFIX}alerts:raised"
ALERTS_OPEN = f"{PREFIX}alerts:open"
ALERTS_ACKED = f"{PREFIX}alerts:acked"


def ha_restarts(vm_id: str) -> str:
    return f"{PREFIX}harestarts:{vm_id}"


def server_fenced(server_name: str) -> str:
    """JSON: proof that the server's guests are off (a fence command's outcome, or an
    operator's acknowledgement); deleted when the server answers again."""
    return f"{PREFIX}serverfenced:{server_name}"


def server_maintenance(server_name: str) -> str:
    """JSON: the server is in maintenance (since, by which job or caller, why)."""
    return f"{PREFIX}servermaint:{server_name}"


MACS = f"{PREFIX}macs"  # hash: MAC (12 hex digits) -> the VM id holding it
MACS_CURSOR = f"{PREFIX}macs:next"  # the next MAC of the range to try (an integer)


def server_facts(server_name: str) -> str:
    """JSON ServerFacts: what the server's agent last read from libvirt."""
    return f"{PREFIX}serverfacts:{server_name}"


def placements(server_name: str) -> str:
    """Hash: VM id -> "MiB job" of each VM placed on the server and not yet running there."""
    return f"{PREFIX}placements:{server_name}"


def migration_slots(pool: str) -> str:
    """Hash: job id -> source server of each migration running in the pool now."""
    return f"{PREFIX}migrations:{pool}"


def server_down(server_name: str) -> str:
    return f"{PREFIX}serverdown:{server_name}"


def vm_desired(vm_id: str) -> str:
    return f"{PREFIX}vmdesired:{vm_id}"


def agent_last(server_name: str) -> str:
    return f"{PREFIX}agent:{server_name}:last"


def guest(vm_id: str) -> str:
    return f"{PREFIX}guest:{vm_id}"


def guest_keys(vm_id: str) -> str:
    return f"{PREFIX}guest:{vm_id}:keys"


def guest_outbox(vm_id: str) -> str:
    return f"{PREFIX}guest:{vm_id}:outbox"


def guest_message(msg_id: str) -> str:
    return f"{PREFIX}gmsg:{msg_id}"


def guest_job(job_id: str) -> str:
    return f"{PREFIX}gjob:{job_id}"


GUEST_DOORBELL = f"{PREFIX}guest:doorbell"

WORKERS = f"{PREFIX}workers"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


# Celery queue names: one per server pool, plus one for jobs tied to no pool.
DEFAULT_QUEUE = "vmorch.default"
# Engine drills and benchmarks (`noop` jobs) run apart, on workers started to consume it.
NOOP_QUEUE = "vmorch.noop"


def pool_queue(pool_name: str) -> str:
    return f"vmorch.pool.{pool_name}"


# Queue controls: queue name -> QueueControl doc (no field: accept, no limit).
QUEUE_CONTROLS = f"{PREFIX}queuectl"


def queue_held(queue: str) -> str:
    """Queued jobs a paused queue keeps from starting; dispatched again when it resumes."""
    return f"{PREFIX}queueheld:{queue}"


def queue_starts(queue: str) -> str:
    """Jobs started in the last minute (score: ms), for the queue's rate limit."""
    return f"{PREFIX}queuestarts:{queue}"
