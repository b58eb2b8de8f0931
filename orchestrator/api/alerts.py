"""Alerts over HTTP: errors an operator must acknowledge."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.http import params, respond, respond_list, services
from orchestrator.api.middleware import caller


async def list_alerts(request: web.Request) -> web.Response:
    everything: bool = params(request)["all"]
    return respond_list(await services(request).alerts.all(include_acknowledged=everything))


async def ack_alert(request: web.Request) -> web.Response:
    alert = await services(request).alerts.acknowledge(
        request.match_info["alert_id"], caller(request).name
    )
    return respond(alert)
