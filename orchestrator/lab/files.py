"""Owner-only directories and files for the lab: its directory, logs and Redis data hold the
admin token, the Redis password and hook secrets in plain text, so no other local user may
read them (review M9).

Modes are set explicitly after creating, not left to the umask: the caller's umask only
narrows a mode, and a directory made by an older vmorch (0755) must be tightened too.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it 0700; return it.

    An existing directory is tightened only if it is ours and not a shared one: pointing
    the lab at /tmp or at another user's directory is refused rather than chmod-ed.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us ({os.geteuid()})")
    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        raise PermissionError(
            f"{path} (mode {stat.filemode(st.st_mode)}) is a shared directory; "
            "give the lab a directory of its own"
        )
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def open_private_append(path: Path) -> int:
    """Open `path` for appending as a raw fd, created 0600 (an existing file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, mode 0600: a reader sees the old file or the
    new one, never half of it (`vmorch down` and the CLI read it while `vmorch up` writes)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
