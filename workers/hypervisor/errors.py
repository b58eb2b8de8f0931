"""libvirt's errors as vmorch's: the one mapping every libvirt caller in vmorch uses."""

from __future__ import annotations

import libvirt

from orchestrator.errors import HypervisorError, HypervisorUnavailable, NotFound
from orchestrator.metrics import LIBVIRT_ERRORS

# Codes that mean "the call may work if repeated": the connection, the daemon or the guest
# agent did not answer in time.
_TRANSIENT_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_NETWORK,
}

LibvirtError = libvirt.libvirtError


def silence_libvirt_errors() -> None:
    """libvirt prints every error to stderr by default; vmorch logs the ones it acts on."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


_CODE_NAMES = {
    getattr(libvirt, n): n[len("VIR_ERR_") :].lower()
    for n in dir(libvirt)
    if n.startswith("VIR_ERR_")
    and isinstance(getattr(libvirt, n), int)
    and n not in ("VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR")  # levels, not codes
}


def error_code_name(code: int | None) -> str:
    """libvirt's name for an error code, lower case (`no_domain`, `operation_timeout`)."""
    return _CODE_NAMES.get(code, f"code_{code}") if code is not None else "unknown"


def classify(err: libvirt.libvirtError) -> Exception:
    """Map a libvirt error to HypervisorUnavailable (retry), NotFound or HypervisorError,
    counted by its code (`vmorch_libvirt_errors_total`): every failed call a worker or an
    agent acts on comes through here once."""
    code = err.get_error_code()
    LIBVIRT_ERRORS.labels(error_code_name(code)).inc()
    msg = err.get_error_message() or str(err)
    if code in _TRANSIENT_CODES:
        return HypervisorUnavailable(msg)
    if code in _NOT_FOUND_CODES:
        return NotFound(msg)
    return HypervisorError(msg)


def is_transient(err: libvirt.libvirtError) -> bool:
    """The call may work if repeated (the connection, the daemon or the guest)."""
    return err.get_error_code() in _TRANSIENT_CODES


def is_not_found(err: libvirt.libvirtError) -> bool:
    """The object is gone (not counted as an error: callers expect it)."""
    return err.get_error_code() in _NOT_FOUND_CODES


def is_unsupported(err: libvirt.libvirtError) -> bool:
    """The driver does not implement the call (e.g. keepalive on an in-process driver)."""
    return bool(err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT)
