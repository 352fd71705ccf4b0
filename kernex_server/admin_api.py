"""The admin endpoints of the device plane, under ``/v1/admin``.

Every endpoint declares the least role it needs (``@requires``); callers send
``Authorization: Bearer <token>``. See docs/server.md for the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernex_core.protocol import EnrollmentState
from kernex_core.timefmt import format_time
from kernex_server.auth import Role, requires
from kernex_server.bundles import SHA256_RE
from kernex_server.errors import BundleStoreError
from kernex_server.http import ApiError, json_response, parse_json, read_body
from kernex_server.store import DeviceRecord

if TYPE_CHECKING:
    from kernex_server.app import ServerContext

PREFIX = "/v1/admin"


def _kx(request: Request) -> ServerContext:
    kx: ServerContext = request.app.state.kx
    return kx


def _time(value: float | None) -> str | None:
    return format_time(value) if value is not None else None


def _status_out(status: dict[str, Any] | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {**status, "received_at": _time(status["received_at"])}


def device_json(
    kx: ServerContext,
    device: DeviceRecord,
    desired_serial: int | None,
    desired_revision: str | None,
    status: dict[str, Any] | None,
) -> dict[str, Any]:
    last_seen = max(device.last_seen or 0.0, kx.device_auth.pending_heartbeat(device.id) or 0.0)
    online = bool(last_seen) and kx.clock() - last_seen <= kx.reconciler.offline_after()
    reported = status["serial"] if status else None
    return {
        "id": device.id,
        "state": device.state,
        "fingerprint": device.fingerprint,
        "algorithm": device.algorithm,
        "labels": dict(device.labels),
        "admitted_by": device.admitted_by,
        "agent_version": device.agent_version,
        "enrolled_at": _time(device.enrolled_at),
        "last_seen": _time(last_seen) if last_seen else None,
        "online": online,
        "desired_serial": desired_serial,
        "desired_revision": desired_revision,
        "reported_serial": reported,
        "deployment_pending": desired_serial is not None and reported != desired_serial,
        "status": _status_out(status),
    }


@requires(Role.VIEWER)
async def whoami(request: Request) -> Response:
    identity = request.state.identity
    return json_response({"name": identity.name, "role": identity.role})


@requires(Role.VIEWER)
async def list_devices(request: Request) -> Response:
    kx = _kx(request)
    rows = await anyio.to_thread.run_sync(kx.store.device_overview)
    return json_response(
        {
            "devices": [
                device_json(
                    kx, r["device"], r["desired_serial"], r["desired_revision"], r["status"]
                )
                for r in rows
            ]
        }
    )


@requires(Role.VIEWER)
async def show_device(request: Request) -> Response:
    kx = _kx(request)
    device_id = request.path_params["device_id"]

    def load() -> dict[str, Any] | None:
        rows = [r for r in kx.store.device_overview() if r["device"].id == device_id]
        if not rows:
            return None
        r = rows[0]
        out = device_json(kx, r["device"], r["desired_serial"], r["desired_revision"], r["status"])
        out["deployments"] = [
            {**d, "created_at": _time(d["created_at"])} for d in kx.store.deployments(device_id)
        ]
        out["status_history"] = [_status_out(s) for s in kx.store.status_history(device_id)]
        return out

    found = await anyio.to_thread.run_sync(load)
    if found is None:
        raise ApiError(404, f"no device {device_id}")
    return json_response(found)


async def _transition(request: Request, target: EnrollmentState, allowed: set[str]) -> Response:
    kx = _kx(request)
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
    updated = await anyio.to_thread.run_sync(
        lambda: kx.store.set_device_state(device_id, target, by=by, now=kx.clock())
    )
    kx.device_auth.forget(device_id)
    if target is EnrollmentState.ACCEPTED:
        await kx.issue_for(device_id)
    else:
        kx.cache.drop(device_id)
    if updated is None:
        raise ApiError(404, f"no device {device_id}")
    return json_response({"id": device_id, "state": updated.state})


@requires(Role.OPERATOR)
async def accept_device(request: Request) -> Response:
    return await _transition(request, EnrollmentState.ACCEPTED, {"pending", "rejected"})


@requires(Role.OPERATOR)
async def reject_device(request: Request) -> Response:
    return await _transition(request, EnrollmentState.REJECTED, {"pending"})


@requires(Role.OPERATOR)
async def revoke_device(request: Request) -> Response:
    return await _transition(request, EnrollmentState.REVOKED, {"pending", "accepted", "rejected"})


def _enroll_token_out(token: dict[str, Any]) -> dict[str, Any]:
    return {
        **token,
        "created_at": _time(token["created_at"]),
        "expires_at": _time(token["expires_at"]),
        "revoked_at": _time(token["revoked_at"]),
    }


@requires(Role.ADMIN)
async def create_enrollment_token(request: Request) -> Response:
    kx = _kx(request)
    data = parse_json(await read_body(request, kx.settings.max_body_bytes) or b"{}")
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    name = data.get("name") or "enrollment"
    expires_in = data.get("expires_in", 24 * 3600)
    max_uses = data.get("max_uses")
    if not isinstance(name, str) or len(name) > 120:
        raise ApiError(400, "'name' must be a string of at most 120 characters")
    if expires_in is not None and (not isinstance(expires_in, int) or expires_in <= 0):
        raise ApiError(400, "'expires_in' must be a positive number of seconds, or null")
    if max_uses is not None and (not isinstance(max_uses, int) or max_uses <= 0):
        raise ApiError(400, "'max_uses' must be a positive integer, or null")
    now = kx.clock()
    token, row = await anyio.to_thread.run_sync(
        lambda: kx.store.create_enrollment_token(
            name,
            now=now,
            expires_at=now + expires_in if expires_in else None,
            max_uses=max_uses,
            created_by=request.state.identity.name,
        )
    )
    return json_response({**_enroll_token_out(row), "token": token}, status=201)


@requires(Role.ADMIN)
async def list_enrollment_tokens(request: Request) -> Response:
    kx = _kx(request)
    rows = await anyio.to_thread.run_sync(kx.store.list_enrollment_tokens)
    return json_response({"tokens": [_enroll_token_out(r) for r in rows]})


@requires(Role.ADMIN)
async def revoke_enrollment_token(request: Request) -> Response:
    kx = _kx(request)
    raw = request.path_params["token_id"]
    found = await anyio.to_thread.run_sync(
        lambda: kx.store.revoke_enrollment_token(int(raw), now=kx.clock())
    )
    if not found:
        raise ApiError(404, f"no enrollment token {raw}")
    return Response(status_code=204)


async def _upload(request: Request, expected: str | None) -> Response:
    kx = _kx(request)
    if expected is not None and not SHA256_RE.match(expected):
        raise ApiError(400, "bundle address must be a lowercase sha256 hex digest")
    try:
        stored = await kx.blobs.put_stream(
            request.stream(), expected_sha256=expected, max_bytes=kx.settings.max_bundle_bytes
        )
    except BundleStoreError as exc:
        status = 413 if "limit" in exc.message else 400
        raise ApiError(status, exc.message, hint=exc.hint) from exc
    by = request.state.identity.name
    await anyio.to_thread.run_sync(
        lambda: kx.store.record_blob(stored.sha256, stored.size, now=kx.clock(), by=by)
    )
    return json_response(
        {"sha256": stored.sha256, "size": stored.size, "created": stored.created},
        status=201 if stored.created else 200,
    )


@requires(Role.OPERATOR)
async def put_bundle(request: Request) -> Response:
    return await _upload(request, request.path_params["sha256"])


@requires(Role.OPERATOR)
async def post_bundle(request: Request) -> Response:
    return await _upload(request, None)


@requires(Role.VIEWER)
async def list_bundles(request: Request) -> Response:
    kx = _kx(request)
    rows = await anyio.to_thread.run_sync(kx.store.list_blobs)
    return json_response({"bundles": [{**r, "uploaded_at": _time(r["uploaded_at"])} for r in rows]})


@requires(Role.OPERATOR)
async def reconcile(request: Request) -> Response:
    kx = _kx(request)
    force = request.query_params.get("force") in {"1", "true", "yes"}
    result = await kx.run_reconcile(force=force)
    return json_response(result.to_dict())


@requires(Role.VIEWER)
async def list_revisions(request: Request) -> Response:
    kx = _kx(request)
    rows = await anyio.to_thread.run_sync(kx.store.revisions)
    return json_response({"revisions": [{**r, "created_at": _time(r["created_at"])} for r in rows]})


routes = [
    Route(f"{PREFIX}/whoami", whoami, methods=["GET"]),
    Route(f"{PREFIX}/devices", list_devices, methods=["GET"]),
    Route(f"{PREFIX}/devices/{{device_id}}", show_device, methods=["GET"]),
    Route(f"{PREFIX}/devices/{{device_id}}/accept", accept_device, methods=["POST"]),
    Route(f"{PREFIX}/devices/{{device_id}}/reject", reject_device, methods=["POST"]),
    Route(f"{PREFIX}/devices/{{device_id}}/revoke", revoke_device, methods=["POST"]),
    Route(f"{PREFIX}/enrollment-tokens", list_enrollment_tokens, methods=["GET"]),
    Route(f"{PREFIX}/enrollment-tokens", create_enrollment_token, methods=["POST"]),
    Route(
        f"{PREFIX}/enrollment-tokens/{{token_id:int}}", revoke_enrollment_token, methods=["DELETE"]
    ),
    Route(f"{PREFIX}/bundles", list_bundles, methods=["GET"]),
    Route(f"{PREFIX}/bundles", post_bundle, methods=["POST"]),
    Route(f"{PREFIX}/bundles/{{sha256}}", put_bundle, methods=["PUT"]),
    Route(f"{PREFIX}/reconcile", reconcile, methods=["POST"]),
    Route(f"{PREFIX}/revisions", list_revisions, methods=["GET"]),
]
