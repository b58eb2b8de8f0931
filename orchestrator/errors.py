"""The one exception tree. The API maps it to HTTP statuses; the engine to retry or fail."""

from __future__ import annotations


class VmorchError(Exception):
    """Base of every vmorch error. `code` is stable and machine-readable."""

    code = "error"
    http_status = 500
    retryable = False

    def __init__(self, message: str, *, details: list[tuple[list[str | int], str]] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []


# --- retryable: the same call may succeed later -------------------------------------------
class Retryable(VmorchError):
    code = "retryable"
    retryable = True
    http_status = 503
    retry_after_s: float = 1.0  # the API's Retry-After


class HypervisorUnavailable(Retryable):
    """The hypervisor could not be reached or answered with a temporary error."""

    code = "hypervisor_unavailable"


class HypervisorTimeout(HypervisorUnavailable):
    """A libvirt call got no answer within its deadline (a hung daemon, a black-holed link).

    Retried as a new attempt of the step, never inside the call: waiting once is enough.
    Same code as its parent, as clients see it the same way."""


class RedisUnavailable(Retryable):
    """Redis refused the connection, timed out or is loading: the API answers 503 with
    Retry-After, and the next request tries again (redis-py reconnects by itself)."""

    code = "redis_unavailable"
    retry_after_s = 2.0


class QueueDraining(Retryable):
    """The job's queue is draining: new jobs are refused until an admin accepts again."""

    code = "queue_draining"
    retry_after_s = 60.0


class RetryLater(Retryable):
    """A step asks to be run again after `delay_s` (deliberate control flow, not a failure)."""

    code = "retry_later"

    def __init__(self, message: str, delay_s: float):
        super().__init__(message)
        self.delay_s = delay_s
        self.retry_after_s = delay_s


class SourceUnavailable(Retryable):
    """An import's source could not be reached, answered with a server error, or cut the
    transfer short: the step tries again (from the start)."""

    code = "source_unavailable"


class TooManyRequests(Retryable):
    """A limit on concurrent use was reached (429); `retry_after_s` is sent as Retry-After."""

    code = "too_many_requests"
    http_status = 429

    def __init__(
        self,
        message: str,
        retry_after_s: float,
        *,
        details: list[tuple[list[str | int], str]] | None = None,
    ):
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class TooManyStreams(TooManyRequests):
    """An event stream past the per-token or per-process cap (sse_max_per_token/_total)."""

    code = "too_many_streams"


# --- permanent ----------------------------------------------------------------------------
class Permanent(VmorchError):
    code = "failed"


class HypervisorError(Permanent):
    """libvirt refused the operation for a reason retrying will not fix."""

    code = "hypervisor_error"


class NoCapacity(Permanent):
    code = "no_capacity"
    http_status = 409


class MigrationRefused(Permanent):
    """A migration's pre-check failed: the message says which and why."""

    code = "migration_refused"


class ImportFailed(Permanent):
    """An import's source refused it (not found, no size given, too large) or its data is
    not what was asked for (checksum, format): trying again would give the same."""

    code = "import_failed"


class LeaseLost(Permanent):
    """This worker no longer holds the job's lease: it must stop without recording anything."""

    code = "lease_lost"


class AbortRequested(Permanent):
    code = "aborted"


# --- request errors (API) -----------------------------------------------------------------
class BadRequest(Permanent):
    code = "bad_request"
    http_status = 400


class BadJson(BadRequest):
    """The body is not JSON we read: not UTF-8, not JSON, too deep, or a number too long."""

    code = "bad_json"


class UnsupportedMediaType(BadRequest):
    code = "unsupported_media_type"
    http_status = 415


class ValidationFailed(BadRequest):
    code = "validation_error"
    http_status = 422


class Unauthorized(Permanent):
    code = "unauthorized"
    http_status = 401


class Forbidden(Permanent):
    code = "forbidden"
    http_status = 403


class NotFound(Permanent):
    code = "not_found"
    http_status = 404


class Conflict(Permanent):
    code = "conflict"
    http_status = 409


class LengthRequired(BadRequest):
    code = "length_required"
    http_status = 411


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"
    http_status = 413
