"""The admin endpoints, under ``/v1/admin``: whoami, fleet status, the audit log,
reconcile and revisions here; devices in ``devices_api``, tokens in ``tokens_api``,
bundles in ``bundles_api``, labels in ``labels_api``, rollouts in ``rollouts_api``,
alerts in ``alerts_api``.

Every endpoint declares the least role it needs (``@requires``); callers send
``Authorization: Bearer <token>``. Every mutating endpoint is ``@audited``: its outcome
(ok or error) is appended to the audit log under the caller's token name. See
docs/server.md for the list.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, cast

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.formats import DURATION_EXAMPLES
from kernex_server import wire
from kernex_server.api import ADMIN, Answer, Param, operation, route
from kernex_server.audit import parse_when
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.bundle_pins import missing_bundles
from kernex_server.context import ServerContext, context_of
from kernex_server.devices_api import device_rows, is_out_of_sync
from kernex_server.git_fetch import git_status
from kernex_server.http import (
    ApiError,
    json_response,
    wire_time,
)
from kernex_server.store import AuditQuery

AUDIT_LIMIT_DEFAULT = 100
AUDIT_LIMIT_MAX = 1000


PREFIX = ADMIN

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


@operation("GET", "The calling token", ok=wire.Identity)
@requires(Role.VIEWER)
async def whoami(request: Request) -> Response:
    identity = request.state.identity
    answer: wire.Identity = {"name": identity.name, "role": identity.role}
    return json_response(answer)


@operation("GET", "Fleet status and stats", ok=wire.FleetStatus)
@requires(Role.VIEWER)
async def fleet_status(request: Request) -> Response:
    kx = context_of(request)
    devices = await device_rows(kx)
    newest, deployed = await anyio.to_thread.run_sync(kx.store.latest_revisions)
    bundles = await anyio.to_thread.run_sync(kx.store.count_blobs)
    accepted = [d for d in devices if d["state"] == "accepted"]
    online = sum(1 for d in accepted if d["online"])
    phases = Counter((d["status"] or {}).get("phase") for d in accepted)
    rollouts = await anyio.to_thread.run_sync(kx.rollout_counts)
    answer: wire.FleetStatus = {
        "revision": _revision_status(kx, newest, deployed),
        "devices": {
            "total": len(devices),
            "online": online,
            "offline": len(accepted) - online,
            "pending": sum(1 for d in devices if d["state"] == "pending"),
            "by_phase": {p: phases[p] for p in sorted(p for p in phases if p is not None)},
            "out_of_sync": sum(1 for d in accepted if is_out_of_sync(d)),
        },
        "rollouts": {
            "active": rollouts["running"] + rollouts["paused"],
            "halted": rollouts["halted"],
        },
        "bundles": bundles,
        "git": cast(wire.GitFetch, git_status(kx)),
    }
    return json_response(answer)


_RESULT_OF_STATE = {"deployed": "ok", "invalid": "invalid", "unsigned": "unsigned"}


def _revision_status(
    kx: ServerContext, newest: dict[str, Any] | None, deployed: dict[str, Any] | None
) -> wire.RevisionStatus:
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
    elif (git := git_status(kx)["problem"]) is not None:
        last_result, last_error = "error", git  # e.g. a fetch hanging on a silent remote
    last_at = kx.last_reconcile_at or (newest["created_at"] if newest else None)
    return {
        "current": newest["commit"] if newest else None,
        "deployed": deployed["commit"] if deployed else None,
        "last_reconcile_at": wire_time(last_at),
        "last_result": last_result,
        "last_error": last_error,
        "errors": errors,
        "forced": bool(deployed and deployed["forced"]),
        "warnings": missing_bundles(
            kx.reconciler.fleet, kx.blobs.has, bundle_base_url=kx.settings.bundle_base_url
        ),
    }


@operation(
    "POST",
    "Run a reconcile pass now",
    ok=wire.ReconcileResult,
    answers={202: Answer("the fetch still runs after reconcile_wait", wire.ReconcileFetching)},
    query=[Param("force", bool, "re-run even when the head commit was seen")],
    errors=(500,),
)
@requires(Role.OPERATOR)
@audited("reconcile.trigger")
async def reconcile(request: Request) -> Response:
    kx = context_of(request)
    force = request.query_params.get("force") in {"1", "true", "yes"}
    result = await kx.run_reconcile(force=force, wait=kx.settings.reconcile_wait)
    request.state.audit_target = result.commit or ""
    request.state.audit_detail = {"force": force, "state": result.state}
    if result.fetching:  # the fetch goes on; the reconcile loop deploys what it brings
        kx.wake_reconciler()
        body = {**result.to_dict(), "git": git_status(kx)}
        body["hint"] = "The fetch still runs in the background; see `kernex status`."
        return json_response(body, status=202)
    return json_response(result.to_dict())


@operation("GET", "Commits seen, newest first", ok=wire.RevisionList)
@requires(Role.VIEWER)
async def list_revisions(request: Request) -> Response:
    kx = context_of(request)
    rows = await anyio.to_thread.run_sync(kx.store.revisions)
    return json_response(
        {"revisions": [{**r, "created_at": wire_time(r["created_at"])} for r in rows]}
    )


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
    return json_response({"entries": [{**r, "at": wire_time(r["at"])} for r in rows]})


routes = [
    route(f"{PREFIX}/whoami", whoami),
    route(f"{PREFIX}/status", fleet_status),
    route(f"{PREFIX}/audit", audit_log),
    route(f"{PREFIX}/reconcile", reconcile),
    route(f"{PREFIX}/revisions", list_revisions),
]
