"""Admin acts on the labels a device proposed when it re-enrolled (docs/server.md).

An accepted, rejected or revoked device cannot change its own labels: a re-enrollment
with other labels is kept as ``proposed_labels``. An admin accepts them (they become the
device's labels and its manifest is resolved again) or rejects them; both are audited.
"""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_server import wire
from kernex_server.api import operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import context_of
from kernex_server.http import ApiError, json_response

PREFIX = "/v1/admin/devices/{device_id}/labels"


async def _settle(request: Request, *, accept: bool) -> Response:
    kx = context_of(request)
    device_id = request.path_params["device_id"]
    settle = kx.enroller.accept_labels if accept else kx.enroller.reject_labels
    found = await anyio.to_thread.run_sync(lambda: settle(device_id, now=kx.clock()))
    if found is None:
        raise ApiError(404, f"no device {device_id}")
    labels, proposed = found
    if proposed is None:
        raise ApiError(
            409,
            f"device {device_id} has no proposed labels",
            hint="A device proposes labels when it re-enrolls with labels other than its own.",
        )
    if accept:
        request.state.audit_detail = {"from": labels, "to": proposed}
        await kx.issue_for(device_id)  # its groups may have changed
        labels = dict(proposed)
    else:
        request.state.audit_detail = {"labels": labels, "proposed": proposed}
    return json_response({"id": device_id, "labels": labels, "proposed_labels": None})


@operation(
    "POST",
    "Make the labels a device proposed its labels (409 when it proposed none)",
    ok=wire.DeviceLabels,
    errors=(404, 409),
)
@requires(Role.ADMIN)
@audited("device.labels.accept")
async def accept_labels(request: Request) -> Response:
    return await _settle(request, accept=True)


@operation(
    "POST",
    "Drop the labels a device proposed (409 when it proposed none)",
    ok=wire.DeviceLabels,
    errors=(404, 409),
)
@requires(Role.ADMIN)
@audited("device.labels.reject")
async def reject_labels(request: Request) -> Response:
    return await _settle(request, accept=False)


routes = [
    route(f"{PREFIX}/accept", accept_labels),
    route(f"{PREFIX}/reject", reject_labels),
]
