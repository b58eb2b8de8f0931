"""A private ``redis-server`` process for tests and the local "lab" deployment.

Why: integration tests and the lab need a real Redis that belongs to us alone.
The machine may already run a shared Redis (e.g. on 6379); this module never
talks to, signals or reuses any Redis it did not start itself:

* the port is checked to be free before starting (``port=None`` picks one),
* readiness is only accepted when the answering server reports our own PID,
* ``stop()`` signals only the process we spawned (by its PID, via Popen).

Its data directory is 0700 and the server runs with umask 077, so the AOF (which holds
tokens and hook secrets in plain text) is readable by its owner only.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.lab.files import private_dir, write_private
from orchestrator.lab.process import free_port, port_is_free, spawn, terminate, wait_ready
from orchestrator.redisurl import SentinelUrl

_HOST = "127.0.0.1"


class RedisServer:
    """One private, non-daemonized ``redis-server`` bound to 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        require_password: bool = False,
        *,
        replica_of: RedisServer | None = None,
        config: Sequence[str] = (),
    ) -> None:
        """`require_password`: make up a random password (kept in memory, and in `url`) and
        refuse every client that does not give it: on a shared host the port is anyone's.
        `replica_of`: start as a replica of that server, with its password (after a
        failover either may be the master clients reach). `config`: more redis.conf lines
        (e.g. `min-replicas-to-write 1`)."""
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"invalid TCP port {port}")
        self._data_dir = Path(data_dir).resolve()
        self._port = free_port(_HOST) if port is None else port
        self._appendonly = appendonly
        self._password = secrets.token_urlsafe(32) if require_password else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._replica_of = replica_of
        self._config = list(config)
        if replica_of is not None:
            self._password = replica_of.password

    @property
    def port(self) -> int:
        return self._port

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def url(self) -> str:
        """The URL every client is built from (redis-py, Celery's broker, kombu); it holds
        the password, if any, so keep it where only the owner can read it."""
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        return f"redis://{auth}{_HOST}:{self._port}/0"

    @property
    def pid(self) -> int:
        """PID of the running server; RuntimeError if it was never started."""
        if self._proc is None:
            raise RuntimeError("RedisServer is not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self._data_dir / "redis.log"

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server, wait until it answers PING (authenticated), return its URL."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"redis-server already running (pid {self._proc.pid})")
        if not port_is_free(_HOST, self._port):
            raise RuntimeError(f"port {_HOST}:{self._port} is already in use")
        private_dir(self._data_dir)
        argv = ["redis-server"]
        config = self._private_config()
        if config:
            # In a file, not on the command line, which every local user can read in /proc;
            # the file is removed once the server has read it.
            write_private(self._auth_conf, config)
            argv.append(str(self._auth_conf))
        argv += [
            "--bind", _HOST,
            "--port", str(self._port),
            "--dir", str(self._data_dir),
            "--appendonly", "yes" if self._appendonly else "no",
            "--save", "",
            "--pidfile", str(self._data_dir / "redis.pid"),
            "--logfile", str(self.log_path),
            "--protected-mode", "yes",
        ]  # fmt: skip
        # Early errors (bad arguments) go to stderr: the log gets them too. umask 077: the
        # AOF, the pid file and the log it creates are the owner's only.
        try:
            self._proc = spawn(argv, self.log_path, umask=0o077)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        finally:
            self._auth_conf.unlink(missing_ok=True)
        return self.url

    @property
    def _auth_conf(self) -> Path:
        return self._data_dir / "auth.conf"

    def _private_config(self) -> str:
        """The redis.conf lines that hold secrets (the password), or name the master."""
        lines = list(self._config)
        if self._password is not None:
            # masterauth too: a master that Sentinel demotes must log in to its successor
            lines += [f"requirepass {self._password}", f"masterauth {self._password}"]
        if self._replica_of is not None:
            lines.append(f"replicaof {_HOST} {self._replica_of.port}")
        return "".join(f"{line}\n" for line in lines)

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll until *our* process answers PING, or raise RuntimeError."""
        if self._proc is None:
            raise RuntimeError("not started")
        _wait_ours(self._proc, "redis-server", self._port, self._password, timeout_s, self.log_path)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM our process, wait up to ``timeout_s``, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_ours(
    proc: subprocess.Popen[bytes],
    what: str,
    port: int,
    password: str | None,
    timeout_s: float,
    log_path: Path,
) -> None:
    """Poll until *our* process (`proc`) answers PING on `port`, or raise RuntimeError: a
    server that refuses our password or reports another PID is not ours."""
    client = redis.Redis(
        host=_HOST,
        port=port,
        password=password,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),  # we poll; redis-py's own retries only add delay
    )

    def answers() -> bool:
        try:
            if not client.ping():
                return False
        # AuthenticationError first: it is a subclass of ConnectionError
        except redis.exceptions.AuthenticationError as exc:
            raise RuntimeError(
                f"port {port} is answered by a Redis that refuses our password ({exc}): not ours"
            ) from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
            return False  # not listening yet, or still loading the AOF
        server_pid = int(client.info("server")["process_id"])
        if server_pid != proc.pid:
            raise RuntimeError(
                f"port {port} is answered by a foreign Redis "
                f"(pid {server_pid}), not ours ({proc.pid})"
            )
        return True

    try:
        wait_ready(proc, what, answers, timeout_s, log_path)
    finally:
        client.close()


class RedisSentinel:
    """One private ``redis-server --sentinel`` on 127.0.0.1, monitoring `master` (and so
    its replicas) as `service`, for tests of failover. Like `RedisServer`, it refuses clients
    without its own random password and is stopped by its PID.

    Its configuration file stays in its 0700 directory while it runs: Sentinel rewrites it
    with what it learns (replicas, other Sentinels, the current master)."""

    def __init__(
        self,
        data_dir: Path,
        master: RedisServer,
        service: str = "vmorch",
        *,
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        password: str | None = None,
    ) -> None:
        """`password`: the Sentinels' own (every Sentinel of a group shares one, to talk to
        each other); a random one by default."""
        self._data_dir = Path(data_dir).resolve()
        self._port = free_port(_HOST)
        self._master = master
        self.service = service
        self._quorum = quorum
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self.password = password or secrets.token_urlsafe(32)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("RedisSentinel is not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self._data_dir / "sentinel.log"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the Sentinel and wait until it answers PING (authenticated)."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"redis-sentinel already running (pid {self._proc.pid})")
        if not port_is_free(_HOST, self._port):
            raise RuntimeError(f"port {_HOST}:{self._port} is already in use")
        private_dir(self._data_dir)
        conf = self._data_dir / "sentinel.conf"
        write_private(conf, self._config())
        try:
            self._proc = spawn(
                ["redis-server", str(conf), "--sentinel"], self.log_path, umask=0o077
            )
            _wait_ours(
                self._proc, "redis-sentinel", self._port, self.password, timeout_s, self.log_path
            )
        except BaseException:
            self.stop()
            raise

    def _config(self) -> str:
        name, master = self.service, self._master
        lines = [
            f"port {self._port}",
            f"bind {_HOST}",
            f"dir {self._data_dir}",
            f"logfile {self.log_path}",
            f"pidfile {self._data_dir / 'sentinel.pid'}",
            f"requirepass {self.password}",
            f"sentinel sentinel-pass {self.password}",
            f"sentinel monitor {name} {_HOST} {master.port} {self._quorum}",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
        ]
        if master.password is not None:
            lines.append(f"sentinel auth-pass {name} {master.password}")
        return "".join(f"{line}\n" for line in lines)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM our process, wait up to ``timeout_s``, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout_s)


def sentinels_url(sentinels: Sequence[RedisSentinel], master: RedisServer, db: int = 0) -> str:
    """The `redis+sentinel://` URL of `sentinels`' service (they share one, and a password),
    with the master's password: what every vmorch process is given as VMORCH_REDIS_URL."""
    first = sentinels[0]
    return str(
        SentinelUrl(
            sentinels=tuple((_HOST, s.port) for s in sentinels),
            service=first.service,
            db=db,
            password=master.password,
            sentinel_password=first.password,
        )
    )
