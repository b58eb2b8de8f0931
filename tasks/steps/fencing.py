"""Fencing: running the configured command that powers a server off (review C1).

HA starts a VM on another server only with proof that its copy on the unreachable one is
off. The command comes from the settings (`VMORCH_FENCE_COMMAND`, an argv list; `{server}`
in an argument is replaced by the server's name) and is run without a shell, with a
deadline. Its outcome is recorded whole: exit code, how long it took, the tail of its
output. Only exit 0 counts as proof.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

OUTPUT_TAIL = 500  # characters of the command's output kept in the record


def run_fence(argv: list[str], server: str, timeout_s: float) -> dict[str, Any]:
    """Run the fence command for `server`: {"ok", "exit_code", "duration_s", "output"}."""
    cmd = [a.replace("{server}", server) for a in argv]
    t0 = time.monotonic()
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "exit_code": None,
            "duration_s": round(time.monotonic() - t0, 3),
            "output": f"no answer within {timeout_s:g} s",
        }
    except OSError as e:
        return {"ok": False, "exit_code": None, "duration_s": 0.0, "output": str(e)[:OUTPUT_TAIL]}
    out = (res.stdout + res.stderr).strip()[-OUTPUT_TAIL:]
    return {
        "ok": res.returncode == 0,
        "exit_code": res.returncode,
        "duration_s": round(time.monotonic() - t0, 3),
        "output": out,
    }
