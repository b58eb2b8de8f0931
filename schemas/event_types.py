"""Every event type and source vmorch emits, as named constants (one line each).

Types are dotted names; hooks and filters match them with fnmatch globs (`vm.lifecycle.*`).
"""

from __future__ import annotations

# --- sources (CloudEvents `source`) ---------------------------------------------------------
SOURCE_API = "vmorch://api"  # jobs submitted or aborted over HTTP; gaps told to SSE readers
SOURCE_ENGINE = "vmorch://engine"  # job transitions made by workers; alerts
SOURCE_ROUTER = "vmorch://router"  # bookkeeping of the event path (gaps, dead letters)


def source_libvirt(server: str) -> str:
    """Events a server's agent saw on its libvirt connection."""
    return f"libvirt://{server}"


# --- jobs (subject: the job id) -------------------------------------------------------------
JOB_PREFIX = "job."
JOB_STEP = "job.step"  # a step changed state; the job did not
# a job submitted by another job (an evacuation's migrations) ended; subject: the parent
JOB_CHILD_ENDED = "job.child_ended"


def job_state(state: str) -> str:
    """`job.queued`, `job.running`, `job.waiting`, `job.succeeded`, ... (a transition)."""
    return f"{JOB_PREFIX}{state}"


# --- VM lifecycle, from libvirt (subject: the VM's uuid) ------------------------------------
VM_LIFECYCLE = "vm.lifecycle."
VM_DEFINED = "vm.lifecycle.defined"
VM_UNDEFINED = "vm.lifecycle.undefined"
VM_STARTED = "vm.lifecycle.started"
VM_SUSPENDED = "vm.lifecycle.suspended"
VM_RESUMED = "vm.lifecycle.resumed"
VM_STOPPED = "vm.lifecycle.stopped"
VM_SHUTDOWN = "vm.lifecycle.shutdown"  # the guest finished shutting down (before stopped)
VM_CRASHED = "vm.lifecycle.crashed"
VM_MIGRATED = "vm.lifecycle.migrated"  # the VM left this server
VM_PMSUSPENDED = "vm.lifecycle.pmsuspended"
VM_REBOOT = "vm.reboot"
VM_AGENT_LIFECYCLE = "vm.agent.lifecycle"
VM_DEVICE_ADDED = "vm.device.added"
VM_DEVICE_REMOVED = "vm.device.removed"
VM_JOB_COMPLETED = "vm.job.completed"  # a libvirt job (migration, dump) ended

# --- servers (subject: the server's name) ---------------------------------------------------
SERVER_UP = "server.up"
SERVER_DOWN = "server.down"
SERVER_FENCED = "server.fenced"  # proof that an unreachable server's guests are off
SERVER_MAINTENANCE = "server.maintenance"  # placement skips it (an evacuation may follow)
SERVER_ACTIVATED = "server.activated"  # out of maintenance
# a server that came back had a copy of a VM placed elsewhere meanwhile: it was removed
VM_STALE_COPY_REMOVED = "vm.stale_copy_removed"


# --- guests, from the agents' guest channels (source guest://<vm id>) -----------------------
def source_guest(vm_id: str) -> str:
    return f"guest://{vm_id}"


GUEST_READY = "guest.ready"  # the guest program said it is ready (subject: the VM's uuid)
GUEST_MESSAGE = "guest.message"  # the guest reported key/values (subject: the VM's uuid)
GUEST_EVENT = "guest.event."  # + the name the guest gave (subject: the VM's uuid)
GUEST_DISCONNECTED = "guest.disconnected"  # its channel closed (subject: the VM's uuid)
# the answer to a message a job sent (subject: that job's id, so the job's wait matches)
GUEST_ACKNOWLEDGED = "guest.message.acknowledged"
GUEST_FAILED = "guest.message.failed"
GUEST_ANSWERED = "guest.messages.answered"  # every message of the job (subject) answered

# --- alerts (subject: what the alert is about) ----------------------------------------------
VM_HA_EXHAUSTED = "vm.ha.exhausted"  # an HA VM's restart budget is spent
SERVER_UNFENCED = "server.unfenced"  # HA waits: no proof that a down server's guests are off

# --- operators (source vmorch://api) ----------------------------------------------------------
QUEUE_CONTROL_CHANGED = "queue.control_changed"  # accept, pause, drain, rate limit (subject: queue)
# an operator asked for a hook run again with its original event (subject: the hook id);
# the router acts on it as on a firing and records the new run
HOOK_RETRY_REQUESTED = "hook.retry_requested"

# --- the event path itself ------------------------------------------------------------------
EVENTS_GAP = "events.gap"  # SSE: entries after the client's position were trimmed
EVENTS_DEAD_LETTER = "events.dead_letter"  # an unreadable stream entry was set aside
