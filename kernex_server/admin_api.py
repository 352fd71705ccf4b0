"""The admin endpoints, under ``/v1/admin``.

Every endpoint declares the least role it needs (``@requires``); callers send
``Authorization: Bearer <token>``. Every mutating endpoint is ``@audited``: its outcome
(ok or error) is appended to the audit log under the caller's token name. See
docs/server.md for the list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.formats import DURATION_EXAMPLES
from kernex_core.protocol import EnrollmentState
from kernex_core.timefmt import format_time
from kernex_server import wire
from kernex_server.api import Param, operation, route
from kernex_server.audit import parse_when
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import ServerContext, context_of
from kernex_server.http import (
    MAX_ROW_ID,
    ApiError,
    json_response,
    parse_json,
    path_id,
    read_body,
)
from kernex_server.store import AuditQuery, DeviceRecord
from kernex_server.tokens import TokenNameTakenError

ROLES = ("viewer", "operator", "admin")
AUDIT_LIMIT_DEFAULT = 100
AUDIT_LIMIT_MAX = 1000


PREFIX = "/v1/admin"

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
AUDIT_FILTERS = [
    Param("since", str, f"RFC 3339 time or a duration back from now ({DURATION_EXAMPLES})"),
    Param("until", str, "RFC 3339 time or a duration back from now"),
    Param("actor", str, "token name, device:<id>, reconciler, webhook:<host>"),
    Param("target", str, "device id, token name, commit, sha256 ..."),
    Param("action", str, "e.g. token.create, device.accept, reconcile, webhook, auth"),
    Param(
        "limit",
        Annotated[int, {"minimum": 1, "maximum": AUDIT_LIMIT_MAX, "default": 100}],
        "max rows",
    ),
]


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
    served_digest: str | None = None,
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
        "proposed_labels": device.proposed_labels,
        "admitted_by": device.admitted_by,
        "agent_version": device.agent_version,
        "enrolled_at": _time(device.enrolled_at),
        "last_seen": _time(last_seen) if last_seen else None,
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


@operation("GET", "The calling token", ok=wire.Identity)
@requires(Role.VIEWER)
async def whoami(request: Request) -> Response:
    identity = request.state.identity
    return json_response({"name": identity.name, "role": identity.role})


def _bool_param(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise ApiError(400, f"{name} must be true or false, not {raw!r}")


def device_filter(request: Request) -> Callable[[dict[str, Any]], bool]:
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

    def keep(d: dict[str, Any]) -> bool:
        if state is not None and d["state"] != state:
            return False
        if phase is not None and (d["status"] or {}).get("phase") != phase:
            return False
        if online is not None and d["online"] != online:
            return False
        if out_of_sync is not None and _out_of_sync(d) != out_of_sync:
            return False
        return all(d["labels"].get(k) == v for k, v in labels)

    return keep


def _out_of_sync(d: dict[str, Any]) -> bool:
    return d["state"] == "accepted" and bool(d["deployment_pending"] or d["held_back"])


async def _device_rows(kx: ServerContext) -> list[dict[str, Any]]:
    await kx.flush_statuses()
    rows = await anyio.to_thread.run_sync(kx.store.device_overview)
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
    return json_response({"devices": [d for d in await _device_rows(kx) if keep(d)]})


@operation("GET", "Fleet status and stats", ok=wire.FleetStatus)
@requires(Role.VIEWER)
async def fleet_status(request: Request) -> Response:
    kx = context_of(request)
    devices = await _device_rows(kx)
    newest, deployed = await anyio.to_thread.run_sync(kx.store.latest_revisions)
    bundles = await anyio.to_thread.run_sync(kx.store.count_blobs)
    accepted = [d for d in devices if d["state"] == "accepted"]
    online = sum(1 for d in accepted if d["online"])
    phases = Counter((d["status"] or {}).get("phase") for d in accepted)
    rollouts = await anyio.to_thread.run_sync(kx.rollout_counts)
    return json_response(
        {
            "revision": _revision_status(kx, newest, deployed),
            "devices": {
                "total": len(devices),
                "online": online,
                "offline": len(accepted) - online,
                "pending": sum(1 for d in devices if d["state"] == "pending"),
                "by_phase": {p: phases[p] for p in sorted(p for p in phases if p is not None)},
                "out_of_sync": sum(1 for d in accepted if _out_of_sync(d)),
            },
            "rollouts": {
                "active": rollouts["running"] + rollouts["paused"],
                "halted": rollouts["halted"],
            },
            "bundles": bundles,
        }
    )


_RESULT_OF_STATE = {"deployed": "ok", "invalid": "invalid", "unsigned": "unsigned"}


def _revision_status(
    kx: ServerContext, newest: dict[str, Any] | None, deployed: dict[str, Any] | None
) -> dict[str, Any]:
    last_result: str | None = _RESULT_OF_STATE.get(newest["state"]) if newest else None
    errors = list(newest["errors"]) if newest and newest["state"] != "deployed" else []
    last_error = None
    if errors:
        first = errors[0]
        last_error = first.get("message") if isinstance(first, dict) else str(first)
        if len(errors) > 1:
            last_error = f"{last_error} (and {len(errors) - 1} more)"
    if kx.last_reconcile_error is not None:
        last_result, last_error = "error", kx.last_reconcile_error
    last_at = kx.last_reconcile_at or (newest["created_at"] if newest else None)
    return {
        "current": newest["commit"] if newest else None,
        "deployed": deployed["commit"] if deployed else None,
        "last_reconcile_at": _time(last_at),
        "last_result": last_result,
        "last_error": last_error,
        "errors": errors,
        "forced": bool(deployed and deployed["forced"]),
    }


@operation(
    "GET", "One device with deployments and status history", ok=wire.DeviceDetail, errors=(404,)
)
@requires(Role.VIEWER)
async def show_device(request: Request) -> Response:
    kx = context_of(request)
    device_id = request.path_params["device_id"]

    def load() -> dict[str, Any] | None:
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
        out["deployments"] = [
            {**d, "created_at": _time(d["created_at"])} for d in kx.store.deployments(device_id)
        ]
        out["status_history"] = [_status_out(s) for s in kx.store.status_history(device_id)]
        return out

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


def _enroll_token_out(token: dict[str, Any]) -> dict[str, Any]:
    return {
        **token,
        "created_at": _time(token["created_at"]),
        "expires_at": _time(token["expires_at"]),
        "revoked_at": _time(token["revoked_at"]),
    }


def _positive_int(value: object) -> bool:
    """A JSON whole number above 0 (``true`` is an int in Python, not here), and one the
    database holds."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ROW_ID


@operation(
    "POST",
    "Create an enrollment token; the secret is in the answer only",
    ok=wire.NewEnrollmentToken,
    status=201,
    body=wire.EnrollmentTokenCreate,
)
@requires(Role.ADMIN)
@audited("enrollment_token.create")
async def create_enrollment_token(request: Request) -> Response:
    kx = context_of(request)
    data = parse_json(await read_body(request, kx.settings.max_body_bytes) or b"{}")
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    name = data.get("name") or "enrollment"
    expires_in = data.get("expires_in", 24 * 3600)
    max_uses = data.get("max_uses")
    if not isinstance(name, str) or len(name) > 120:
        raise ApiError(400, "'name' must be a string of at most 120 characters")
    if expires_in is not None and not _positive_int(expires_in):
        raise ApiError(400, "'expires_in' must be a positive number of seconds, or null")
    if max_uses is not None and not _positive_int(max_uses):
        raise ApiError(400, "'max_uses' must be a positive integer, or null")
    request.state.audit_target = name
    request.state.audit_detail = {"expires_in": expires_in, "max_uses": max_uses}
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
    request.state.audit_detail["id"] = row["id"]
    return json_response({**_enroll_token_out(row), "token": token}, status=201)


@operation("GET", "Enrollment tokens (no secrets)", ok=wire.EnrollmentTokenList)
@requires(Role.ADMIN)
async def list_enrollment_tokens(request: Request) -> Response:
    kx = context_of(request)
    rows = await anyio.to_thread.run_sync(kx.store.list_enrollment_tokens)
    return json_response({"tokens": [_enroll_token_out(r) for r in rows]})


@operation("DELETE", "Revoke an enrollment token", status=204, ok_text="revoked", errors=(404,))
@requires(Role.ADMIN)
@audited("enrollment_token.revoke")
async def revoke_enrollment_token(request: Request) -> Response:
    kx = context_of(request)
    token_id = path_id(request, "token_id", "enrollment token")
    found = await anyio.to_thread.run_sync(
        lambda: kx.store.revoke_enrollment_token(token_id, now=kx.clock())
    )
    if not found:
        raise ApiError(404, f"no enrollment token {token_id}")
    return Response(status_code=204)


@operation(
    "POST",
    "Run a reconcile pass now",
    ok=wire.ReconcileResult,
    query=[Param("force", bool, "re-run even when the head commit was seen")],
    errors=(500,),
)
@requires(Role.OPERATOR)
@audited("reconcile.trigger")
async def reconcile(request: Request) -> Response:
    kx = context_of(request)
    force = request.query_params.get("force") in {"1", "true", "yes"}
    result = await kx.run_reconcile(force=force)
    request.state.audit_target = result.commit or ""
    request.state.audit_detail = {"force": force, "state": result.state}
    return json_response(result.to_dict())


@operation("GET", "Commits seen, newest first", ok=wire.RevisionList)
@requires(Role.VIEWER)
async def list_revisions(request: Request) -> Response:
    kx = context_of(request)
    rows = await anyio.to_thread.run_sync(kx.store.revisions)
    return json_response({"revisions": [{**r, "created_at": _time(r["created_at"])} for r in rows]})


def _api_token_out(token: dict[str, Any]) -> dict[str, Any]:
    return {
        **token,
        "created_at": _time(token["created_at"]),
        "expires_at": _time(token["expires_at"]),
        "last_used_at": _time(token["last_used_at"]),
        "revoked_at": _time(token["revoked_at"]),
    }


@operation("GET", "Admin tokens (no secrets)", ok=wire.TokenList)
@requires(Role.ADMIN)
async def list_tokens(request: Request) -> Response:
    kx = context_of(request)
    rows = await anyio.to_thread.run_sync(kx.store.list_api_tokens)
    return json_response({"tokens": [_api_token_out(r) for r in rows]})


@operation(
    "POST",
    "Create an admin token; the secret is in the answer only",
    ok=wire.NewToken,
    status=201,
    body=wire.TokenCreate,
    errors=(409,),
)
@requires(Role.ADMIN)
@audited("token.create")
async def create_token(request: Request) -> Response:
    kx = context_of(request)
    data = parse_json(await read_body(request, kx.settings.max_body_bytes) or b"{}")
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    name, role, expires_in = data.get("name"), data.get("role"), data.get("expires_in")
    if not isinstance(name, str) or not 0 < len(name) <= 120 or not name.isprintable():
        raise ApiError(400, "'name' must be a string of 1 to 120 printable characters")
    request.state.audit_target = name
    if role not in ROLES:
        raise ApiError(400, f"'role' must be one of {', '.join(ROLES)}")
    if expires_in is not None and not _positive_int(expires_in):
        raise ApiError(400, "'expires_in' must be a positive number of seconds, or null")
    request.state.audit_detail = {"role": role, "expires_in": expires_in}
    now = kx.clock()
    creator = request.state.identity.name
    try:
        token, row = await anyio.to_thread.run_sync(
            lambda: kx.store.create_api_token_row(
                name,
                role,
                now=now,
                expires_at=now + expires_in if expires_in else None,
                created_by=creator,
            )
        )
    except TokenNameTakenError as exc:
        raise ApiError(
            409,
            f"a token named {name!r} exists already",
            hint="Pick another name, or revoke the old token first (names stay taken).",
        ) from exc
    request.state.audit_detail["id"] = row["id"]
    return json_response({**_api_token_out(row), "token": token}, status=201)


@operation("DELETE", "Revoke a token (not the calling one)", ok=wire.Token, errors=(404, 409))
@requires(Role.ADMIN)
@audited("token.revoke")
async def revoke_token(request: Request) -> Response:
    kx = context_of(request)
    token_id = path_id(request, "token_id", "token")
    if token_id == request.state.identity.id:
        raise ApiError(
            409,
            "a token may not revoke itself",
            hint="Revoke it with another admin token, so an admin token always remains.",
        )
    row = await anyio.to_thread.run_sync(
        lambda: kx.store.revoke_api_token(token_id, now=kx.clock())
    )
    if row is None:
        raise ApiError(404, f"no token {token_id}")
    request.state.audit_target = row["name"]
    request.state.audit_detail = {"id": token_id}
    return json_response(_api_token_out(row))


@operation("GET", "Audit log, newest first", ok=wire.AuditList, query=AUDIT_FILTERS, errors=(400,))
@requires(Role.VIEWER)
async def audit_log(request: Request) -> Response:
    kx = context_of(request)
    params = request.query_params
    now = kx.clock()

    def when(name: str) -> float | None:
        raw = params.get(name)
        if not raw:
            return None
        try:
            return parse_when(raw, now=now)
        except ValueError as exc:
            raise ApiError(
                400,
                f"{name}={raw!r} is neither an RFC 3339 time nor a duration",
                hint=f"Examples: 2026-11-22T02:05:37Z, {DURATION_EXAMPLES}.",
            ) from exc

    raw_limit = params.get("limit") or str(AUDIT_LIMIT_DEFAULT)
    if not raw_limit.isdigit() or not 0 < int(raw_limit) <= AUDIT_LIMIT_MAX:
        raise ApiError(400, f"limit must be a whole number from 1 to {AUDIT_LIMIT_MAX}")
    query = AuditQuery(
        since=when("since"),
        until=when("until"),
        actor=params.get("actor") or None,
        target=params.get("target") or None,
        action=params.get("action") or None,
        limit=int(raw_limit),
    )
    rows = await anyio.to_thread.run_sync(lambda: kx.store.audit_entries(query))
    return json_response({"entries": [{**r, "at": _time(r["at"])} for r in rows]})


routes = [
    route(f"{PREFIX}/whoami", whoami),
    route(f"{PREFIX}/status", fleet_status),
    route(f"{PREFIX}/tokens", list_tokens, create_token),
    route(f"{PREFIX}/tokens/{{token_id:int}}", revoke_token),
    route(f"{PREFIX}/audit", audit_log),
    route(f"{PREFIX}/devices", list_devices),
    route(f"{PREFIX}/devices/{{device_id}}", show_device),
    route(f"{PREFIX}/devices/{{device_id}}/accept", accept_device),
    route(f"{PREFIX}/devices/{{device_id}}/reject", reject_device),
    route(f"{PREFIX}/devices/{{device_id}}/revoke", revoke_device),
    route(f"{PREFIX}/enrollment-tokens", list_enrollment_tokens, create_enrollment_token),
    route(f"{PREFIX}/enrollment-tokens/{{token_id:int}}", revoke_enrollment_token),
    route(f"{PREFIX}/reconcile", reconcile),
    route(f"{PREFIX}/revisions", list_revisions),
]
