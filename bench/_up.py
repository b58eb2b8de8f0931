"""Benchmarks that drive `vmorch up` as a user would: start the lab in a temporary lab
directory on a free port, talk to its API with the admin token, stop it at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _procs import free_port, note

TERMINAL = ("succeeded", "failed", "aborted")


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def run(self, body: dict[str, Any], timeout_s: float = 120) -> tuple[dict[str, Any], float]:
        """Submit a job and poll it (every 10 ms) until it ends: (the job, seconds from the
        POST until it read ended)."""
        t0 = time.perf_counter()
        job = self.call("POST", "/v1/jobs", body)
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.call("GET", f"/v1/jobs/{job['id']}")
            if job["state"] in TERMINAL:
                return job, time.perf_counter() - t0
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} did not end: {job['state']}")
            time.sleep(0.01)

    def ok(self, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        job, took = self.run(body)
        if job["state"] != "succeeded":
            raise RuntimeError(f"{body['kind']} failed: {job['error']}")
        return job, took


@contextlib.contextmanager
def lab_up(*flags: str) -> Iterator[tuple[Api, dict[str, Any]]]:
    """`vmorch up FLAGS` in a temporary lab directory: (its API, its vmorch.json)."""
    lab_dir = Path(tempfile.mkdtemp(prefix="vmorch-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMORCH_")}
    env["VMORCH_LAB_DIR"] = str(lab_dir)
    out = open(lab_dir / "up.log", "wb")  # noqa: SIM115 (kept open for the subprocess)
    note(f"starting the lab ({' '.join(flags)}) in {lab_dir}")
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", *flags, "--port", str(free_port())],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while b"vmorch is up" not in (lab_dir / "up.log").read_bytes():
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((lab_dir / "up.log").read_text(errors="replace"))
            time.sleep(0.2)
        state = json.loads((lab_dir / "vmorch.json").read_text())
        yield Api(state["api_url"], state["admin_token"]), state
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "down"], env=env, timeout=120,
                capture_output=True,
            )  # fmt: skip
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(60)
        out.close()
