"""HTTP load generation: N keep-alive clients sharing one aiohttp ClientSession."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    sent: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    first_error: str = ""

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


def session(clients: int) -> aiohttp.ClientSession:
    """One session, at most `clients` keep-alive connections (one per client)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients, limit_per_host=clients),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def drive(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    total: int,
    clients: int,
    max_s: float,
    *,
    collect_ids: bool = False,
    expect: int = 202,
) -> LoadResult:
    """POST `body` `total` times from `clients` concurrent loops; stop early after `max_s`."""
    res = LoadResult()
    remaining = total
    deadline = time.perf_counter() + max_s

    async def client() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            res.sent += 1
            t = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if collect_ids:
                        doc = await resp.json()
                    else:
                        await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                res.errors += 1
                res.first_error = res.first_error or repr(e)
                continue
            if status != expect:
                res.errors += 1
                res.first_error = res.first_error or f"HTTP {status}"
                continue
            res.latencies_ms.append((time.perf_counter() - t) * 1000)
            if collect_ids:
                res.ids.append(doc["id"])

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    res.elapsed_s = time.perf_counter() - t0
    return res
