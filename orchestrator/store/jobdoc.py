"""How a job's document is stored in its record: deflated with a preset dictionary.

A finished job stays in Redis for the retention period (a week by default, up to
`VMORCH_JOB_RETENTION_MAX` jobs), so its record is most of what vmorch keeps. Its JSON is
mostly the same field names and values in every job (`"state":"done","attempts":1,
"started_at":"20..`), which is what DEFLATE with a preset dictionary of those strings
takes out: a finished 5-step job's 1,464 bytes of JSON are stored in about 320 (base64, so
that the record stays text for every Redis client).

`decode` reads both forms: a record of an older version holds plain JSON (it starts with
`{`). The dictionary of a format never changes once released: a new one gets a new prefix
and `decode` keeps reading the old.
"""

from __future__ import annotations

import base64
import zlib

from schemas.jobs import Job

PREFIX = "z1:"  # raw DEFLATE with Z1_DICT, then base64
WBITS = -15  # raw DEFLATE: no zlib header or checksum (base64 and Redis carry the bytes)

# Strings a job document repeats, least common first (DEFLATE reaches the end of the
# dictionary most cheaply). Frozen: changing it would make z1 records unreadable.
Z1_DICT = (
    b'"retryable":false},"error":{"code":"","message":"","retryable":true}'
    b',"links":{"vm_id":"","vm_name":"","pool":"","parent_job":"","hook_id":"","event_id":""}'
    b',"waiting_for_job":"","vm_queue_position":0,"idempotency_key":"","abort_requested":true'
    b',"undone_steps":[],"retry_at":"","state":"undone","state":"failed","state":"skipped"'
    b',"state":"waiting","wait":{"step":0,"types":["vm.lifecycle.started"],"subject":"'
    b'","since":"","deadline":"","on_timeout":"fail","matched":null}'
    b'{"request":{"kind":"vm.create","name":"","pool":"","template":"","memory_mib":'
    b',"vcpus":,"ha":true,"labels":{},"vm":"","kind":"vm.start","kind":"vm.stop"'
    b',"kind":"noop","steps":,"step_delay_ms":0,"fail_at":null,"transient_failures":0'
    b',"wait_for":null,"wait_timeout_s":30.0,"on_timeout":"fail"},"id":"","kind":"'
    b'","state":"succeeded","steps":[{"name":"","description":"","state":"done"'
    b',"attempts":1,"started_at":"20","ended_at":"20","outputs":{}}],"progress":1.0'
    b',"submitted_by":"","queue":"vmorch.default","queue":"vmorch.noop","created_at":"20'
    b'","updated_at":"20","started_at":"20","ended_at":"20","result":{}'
    b'{"name":"","description":"","state":"done","attempts":1,"started_at":"20'
    b'","ended_at":"20","outputs":{}},'
)


def encode_json(doc: str) -> str:
    c = zlib.compressobj(6, zlib.DEFLATED, WBITS, 9, zlib.Z_DEFAULT_STRATEGY, Z1_DICT)
    raw = c.compress(doc.encode()) + c.flush()
    return PREFIX + base64.b64encode(raw).decode("ascii")


def decode_json(stored: str) -> str:
    if not stored.startswith(PREFIX):
        return stored  # plain JSON, written before the z1 format
    try:
        d = zlib.decompressobj(WBITS, Z1_DICT)
        raw = d.decompress(base64.b64decode(stored[len(PREFIX) :], validate=True)) + d.flush()
    except zlib.error as e:
        raise ValueError(f"unreadable job document: {e}") from e
    return raw.decode()


def decode(stored: str) -> Job:
    """The Job in a record's `doc` field, in either stored form."""
    return Job.model_validate_json(decode_json(stored))
