"""The alert endpoints, under ``/v1/admin/alerts`` (docs/operations.md#alerts).

``GET /v1/admin/alerts`` (viewer) shows the receivers (origin only: a Slack URL's path is
its secret) and the outbox; ``POST /v1/admin/alerts/test`` (admin, audited) stores a
sample alert for every receiver, or the one named in ``{"receiver": NAME}``, and
delivers it at once, answering with each delivery's outcome (``kernex alerts test``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from kernex_server import wire
from kernex_server.api import operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import ServerContext, context_of
from kernex_server.http import ApiError, json_response, parse_json, read_body

if TYPE_CHECKING:
    from kernex_server.alerts import Alerter

PREFIX = "/v1/admin/alerts"
NO_RECEIVERS_HINT = (
    "Add an [[alerts]] table (name, url, secret) at the end of server.toml and restart "
    "the server; see docs/operations.md#alerts."
)


def _alerter(kx: ServerContext) -> Alerter:
    if kx.alerter is None or not kx.alerter.receivers:
        raise ApiError(409, "no alert receivers are configured", hint=NO_RECEIVERS_HINT)
    return kx.alerter


@operation("GET", "Alert receivers (origins only) and the outbox", ok=wire.AlertOverview)
@requires(Role.VIEWER)
async def show(request: Request) -> Response:
    kx = context_of(request)
    if kx.alerter is None:
        return json_response({"receivers": [], "outbox": {}, "recent": []})
    return json_response(await kx.alerter.overview())


@operation(
    "POST",
    "Store a sample alert for every receiver, or the one named, and deliver it now",
    ok=wire.AlertTestResult,
    body=wire.AlertTest,
    body_required=False,
    errors=(404, 409),
)
@requires(Role.ADMIN)
@audited("alerts.test")
async def send_test(request: Request) -> Response:
    kx = context_of(request)
    body = await read_body(request, kx.settings.max_body_bytes)
    doc = parse_json(body) if body.strip() else {}
    receiver = doc.get("receiver") if isinstance(doc, dict) else None
    if receiver is not None and not isinstance(receiver, str):
        raise ApiError(400, "receiver must be a string", hint='Send {"receiver": "ops"}.')
    alerter = _alerter(kx)
    if receiver is not None and receiver not in alerter.receivers:
        raise ApiError(
            404,
            f"no alert receiver named {receiver!r}",
            hint=f"Receivers: {', '.join(sorted(alerter.receivers))}.",
        )
    identity = getattr(request.state, "identity", None)
    actor = identity.name if identity is not None else "an admin"
    request.state.audit_target = receiver or "*"
    outcomes = await alerter.send_test(receiver, actor)
    request.state.audit_detail = {"delivered": sum(o.state == "delivered" for o in outcomes)}
    return json_response({"deliveries": [o.to_dict() for o in outcomes]})


routes = [
    route(PREFIX, show),
    route(f"{PREFIX}/test", send_test),
]
