"""The device endpoints of the admin API: list (with filters), show, accept, reject,
revoke (``/v1/admin/devices``). Labels a device proposed are ``labels_api``'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.protocol import EnrollmentState
from kernex_server import wire
from kernex_server.api import ADMIN as PREFIX
from kernex_server.api import Param, operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import ServerContext, context_of
from kernex_server.http import (
    ApiError,
    json_response,
    wire_time,
)
from kernex_server.store import DeviceRecord

DEVICE_FILTERS = [
    Param("state", EnrollmentState, "enrollment state"),
    Param("phase", str, "last reported phase"),
    Param("online", bool, "seen within offline_after"),
    Param("label", str, "key=value; repeat to require several", many=True),
    Param(
        "out_of_sync",
        bool,
        "accepted and not on the deployed revision's state (reported serial != desired "
        "serial, or held back by a rollout)",
    ),
]


def _status_out(status: dict[str, Any] | None) -> wire.DeviceStatus | None:
    if status is None:
        return None
    return cast(wire.DeviceStatus, {**status, "received_at": wire_time(status["received_at"])})


def device_json(
    kx: ServerContext,
    device: DeviceRecord,
    desired_serial: int | None,
    desired_revision: str | None,
    status: dict[str, Any] | None,
    served_digest: str | None = None,
) -> wire.Device:
    last_seen = max(device.last_seen or 0.0, kx.device_auth.pending_heartbeat(device.id) or 0.0)
    online = bool(last_seen) and kx.clock() - last_seen <= kx.reconciler.offline_after()
    reported = status["serial"] if status else None
    return {
        "id": device.id,
        "state": device.state,
        "fingerprint": device.fingerprint,
        "algorithm": device.algorithm,
        "labels": dict(device.labels),
        "proposed_labels": (
            dict(device.proposed_labels) if device.proposed_labels is not None else None
        ),
        "admitted_by": device.admitted_by,
        "agent_version": device.agent_version,
        "enrolled_at": wire_time(device.enrolled_at),
        "last_seen": wire_time(last_seen) if last_seen else None,
        "online": online,
        "desired_serial": desired_serial,
        "desired_revision": desired_revision,
        "reported_serial": reported,
        "deployment_pending": desired_serial is not None and reported != desired_serial,
        "held_back": _held_back(kx, device, served_digest),
        "status": _status_out(status),
    }


def _held_back(kx: ServerContext, device: DeviceRecord, served_digest: str | None) -> bool:
    """Served something other than what the deployed revision wants for it (a staged,
    halted or aborted rollout holds it)."""
    if served_digest is None or device.state != "accepted":
        return False
    wanted = kx.reconciler.git_digest(device.id, dict(device.labels))
    return wanted is not None and wanted != served_digest


def _bool_param(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise ApiError(400, f"{name} must be true or false, not {raw!r}")


def device_filter(request: Request) -> Callable[[wire.Device], bool]:
    """The ``?state=&phase=&online=&label=k=v&out_of_sync=`` filters as a predicate."""
    state = request.query_params.get("state") or None
    phase = request.query_params.get("phase") or None
    online = _bool_param(request, "online")
    out_of_sync = _bool_param(request, "out_of_sync")
    labels: list[tuple[str, str]] = []  # every one must match
    for item in request.query_params.getlist("label"):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ApiError(400, f"label filter {item!r} is not key=value")
        labels.append((key, value))

    def keep(d: wire.Device) -> bool:
        if state is not None and d["state"] != state:
            return False
        if phase is not None and (d["status"] or {}).get("phase") != phase:
            return False
        if online is not None and d["online"] != online:
            return False
        if out_of_sync is not None and is_out_of_sync(d) != out_of_sync:
            return False
        return all(d["labels"].get(k) == v for k, v in labels)

    return keep


def is_out_of_sync(d: wire.Device) -> bool:
    return d["state"] == "accepted" and bool(d["deployment_pending"] or d["held_back"])


async def device_rows(kx: ServerContext) -> list[wire.Device]:
    await kx.flush_statuses()

    def load() -> list[dict[str, Any]]:
        rows = kx.store.device_overview()
        for r in rows:  # resolve off the event loop (~50 us a device after a deploy)
            if r["desired_digest"] is not None and r["device"].state == "accepted":
                kx.reconciler.git_digest(r["device"].id, dict(r["device"].labels))
        return rows

    rows = await anyio.to_thread.run_sync(load)
    return [
        device_json(
            kx,
            r["device"],
            r["desired_serial"],
            r["desired_revision"],
            r["status"],
            r["desired_digest"],
        )
        for r in rows
    ]


@operation("GET", "Devices", ok=wire.DeviceList, query=DEVICE_FILTERS, errors=(400,))
@requires(Role.VIEWER)
async def list_devices(request: Request) -> Response:
    kx = context_of(request)
    keep = device_filter(request)
    return json_response({"devices": [d for d in await device_rows(kx) if keep(d)]})


@operation(
    "GET", "One device with deployments and status history", ok=wire.DeviceDetail, errors=(404,)
)
@requires(Role.VIEWER)
async def show_device(request: Request) -> Response:
    kx = context_of(request)
    device_id = request.path_params["device_id"]

    def load() -> wire.DeviceDetail | None:
        rows = [r for r in kx.store.device_overview() if r["device"].id == device_id]
        if not rows:
            return None
        r = rows[0]
        out = device_json(
            kx,
            r["device"],
            r["desired_serial"],
            r["desired_revision"],
            r["status"],
            r["desired_digest"],
        )
        deployments: list[Any] = [
            {**d, "created_at": wire_time(d["created_at"])} for d in kx.store.deployments(device_id)
        ]
        history = [_status_out(s) for s in kx.store.status_history(device_id)]
        return {
            **out,
            "deployments": deployments,
            "status_history": [s for s in history if s is not None],
        }

    await kx.flush_statuses()
    found = await anyio.to_thread.run_sync(load)
    if found is None:
        raise ApiError(404, f"no device {device_id}")
    return json_response(found)


async def _transition(request: Request, target: EnrollmentState, allowed: set[str]) -> Response:
    kx = context_of(request)
    device_id = request.path_params["device_id"]
    device = await anyio.to_thread.run_sync(kx.store.get_device, device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id}")
    if device.state != target.value and device.state not in allowed:
        raise ApiError(
            409,
            f"device {device_id} is {device.state}; it cannot become {target.value}",
            hint="A revoked device stays revoked; enroll the hardware under a new id.",
        )
    by = f"admin:{request.state.identity.name}"
    request.state.audit_detail = {"from": device.state, "to": target.value}
    updated = await anyio.to_thread.run_sync(
        lambda: kx.store.set_device_state(device_id, target, by=by, now=kx.clock())
    )
    kx.device_auth.forget(device_id)
    kx.census.set_state(device_id, target.value)
    if target is EnrollmentState.ACCEPTED:
        await kx.issue_for(device_id)
    else:
        kx.cache.drop(device_id)
    if updated is None:
        raise ApiError(404, f"no device {device_id}")
    return json_response({"id": device_id, "state": updated.state})


@operation("POST", "Admit a pending or rejected device", ok=wire.DeviceState, errors=(404, 409))
@requires(Role.ADMIN)
@audited("device.accept")
async def accept_device(request: Request) -> Response:
    return await _transition(request, EnrollmentState.ACCEPTED, {"pending", "rejected"})


@operation("POST", "Reject a pending device", ok=wire.DeviceState, errors=(404, 409))
@requires(Role.ADMIN)
@audited("device.reject")
async def reject_device(request: Request) -> Response:
    return await _transition(request, EnrollmentState.REJECTED, {"pending"})


@operation("POST", "Revoke a device (final)", ok=wire.DeviceState, errors=(404, 409))
@requires(Role.ADMIN)
@audited("device.revoke")
async def revoke_device(request: Request) -> Response:
    return await _transition(request, EnrollmentState.REVOKED, {"pending", "accepted", "rejected"})


routes = [
    route(f"{PREFIX}/devices", list_devices),
    route(f"{PREFIX}/devices/{{device_id}}", show_device),
    route(f"{PREFIX}/devices/{{device_id}}/accept", accept_device),
    route(f"{PREFIX}/devices/{{device_id}}/reject", reject_device),
    route(f"{PREFIX}/devices/{{device_id}}/revoke", revoke_device),
]
