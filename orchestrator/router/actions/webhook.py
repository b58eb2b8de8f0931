"""Deliver a hook's event to a webhook: signed, allow-listed, and treating the target as untrusted.

Receivers check `X-Vmorch-Signature` with `verify` and de-duplicate on `X-Vmorch-Delivery`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from orchestrator.metrics import WEBHOOK_DELIVERIES
from orchestrator.targets import CheckingResolver, WebhookAllowList, WebhookRefused
from schemas.hooks import HookRun, WebhookAction

if TYPE_CHECKING:
    from orchestrator.router.actions import ActionContext, Firing

log = logging.getLogger("vmorch.webhooks")

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "vmorch-webhook/1"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    timestamp: int,
    body: bytes,
    header: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """Check an `X-Vmorch-Signature` header (`sha256=<hex>`); stale timestamps are refused."""
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    scheme, _, digest = header.partition("=")
    expected = sign(secret, timestamp, body)
    return scheme == "sha256" and hmac.compare_digest(digest.encode(), expected.encode())


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Literal["delivered", "failed", "refused"]
    attempts: int
    status: int | None
    detail: str
    elapsed_s: float


class _Transient(Exception):
    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class WebhookSender:
    """POSTs events; owns its aiohttp session (created on first use; call `close`)."""

    def __init__(
        self,
        allow_list: WebhookAllowList,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.allow_list = allow_list
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._resolver = CheckingResolver(
                self.allow_list, self._inner_resolver or DefaultResolver()
            )
            connector = aiohttp.TCPConnector(resolver=self._resolver, limit=100)
            # No proxies from the environment, no decompression of untrusted bodies.
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._resolver is not None:
            await self._resolver.close()
        self._session = self._resolver = None

    async def _post(
        self, url: str, secret: bytes, body: bytes, delivery_id: str, timeout_s: float
    ) -> int:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/cloudevents+json",
            "User-Agent": USER_AGENT,
            "X-Vmorch-Timestamp": str(timestamp),
            "X-Vmorch-Delivery": delivery_id,
            "X-Vmorch-Signature": "sha256=" + sign(secret, timestamp, body),
        }
        try:
            async with self._get_session().post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)  # capped; content is ignored
                status = resp.status
        except TimeoutError as exc:
            raise _Transient(None, f"timed out after {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise _Transient(None, f"connection error ({type(exc).__name__})") from exc
        if status >= 500 or status == 429:
            raise _Transient(status, f"HTTP {status}")
        return status

    async def deliver(
        self,
        url: str,
        secret: bytes,
        event_json: bytes,
        delivery_id: str,
        timeout_s: float,
        retries: int,
    ) -> DeliveryResult:
        started, attempts = time.monotonic(), 0

        def done(
            outcome: Literal["delivered", "failed", "refused"], status: int | None, detail: str
        ) -> DeliveryResult:
            result = DeliveryResult(
                outcome, attempts, status, detail, round(time.monotonic() - started, 3)
            )
            log.info(
                "webhook delivery %s to %s: %s after %d attempt(s) (%s)",
                delivery_id,
                URL(url).host if outcome != "refused" else "-",
                outcome,
                attempts,
                detail,
            )
            return result

        try:
            self.allow_list.check(url)
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(max(retries, 0) + 1),
                reraise=True,
                wait=wait_random_exponential(self.backoff_base_s, self.backoff_max_s),
                retry=retry_if_exception_type(_Transient),
            ):
                with attempt:
                    attempts += 1
                    status = await self._post(url, secret, event_json, delivery_id, timeout_s)
        except WebhookRefused as exc:
            return done("refused", None, exc.message)
        except _Transient as exc:
            return done("failed", exc.status, exc.detail)
        if 200 <= status < 300:
            return done("delivered", status, f"HTTP {status}")
        if 300 <= status < 400:
            return done("failed", status, f"HTTP {status}: redirects are not followed")
        return done("failed", status, f"HTTP {status}")


async def act(ctx: ActionContext, firing: Firing) -> HookRun:
    """POST the event, signed with the hook's secret; a hook without a secret is refused
    (it never signs with an empty key). The delivery id is stable per (hook, event), so a
    receiver de-duplicates a firing delivered again by another router."""
    action = firing.hook.action
    if not isinstance(action, WebhookAction):
        raise TypeError(f"not a webhook action: {action.kind}")
    secret = await ctx.services.hooks.secret(firing.hook.id)
    if not secret:
        return firing.run("refused", "no webhook secret: PATCH the hook with rotate_secret")
    result = await ctx.sender.deliver(
        str(action.url),
        secret.encode(),
        firing.event.model_dump_json().encode(),
        f"{firing.hook.id}:{firing.event.id}",
        action.timeout_s,
        action.retries,
    )
    detail = f"{result.detail} (attempts {result.attempts}, status {result.status})"
    WEBHOOK_DELIVERIES.labels(result.outcome).inc()
    return firing.run(result.outcome, detail)
