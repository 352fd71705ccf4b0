"""The dashboard's pages under ``/ui/``: a view of the admin API, for people in a browser.

Every page gets its data from the admin-plane handler that serves the same data as JSON
(``admin_call``: the handler without its bearer-token guard, run as the signed-in user),
so the dashboard has no queries of its own and shows what ``kernex`` shows. Acts
(rollout pause/resume/promote/abort) go through the same handlers, so they are audited
as ``user:<name>`` and refused to a role the API would refuse.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from kernex_server import admin_api, bundles_api, devices_api, rollouts_api, wire
from kernex_server.api import ADMIN, Answer, operation, route
from kernex_server.auth import Endpoint, Role
from kernex_server.http import ApiError
from kernex_server.ui.assets import static_routes
from kernex_server.ui.login import login_routes
from kernex_server.ui.session import (
    read_form,
    refused,
    render,
    secure_headers,
    ui_endpoint,
    ui_state,
)

PAGE_SIZE = 50
LIVE_SECONDS = 2.0  # live data is this fresh at worst; ui.js polls every 3 s
LIVE_ENTRIES = 256  # distinct live views kept (path and filters)
HTML = "text/html"
PAGE: dict[str, Any] = {"type": "string", "description": "an HTML page"}
PAGE_ANSWERS = {
    303: Answer("not logged in: to the login page"),
    403: Answer("the user's role is too low", PAGE, HTML),
    404: Answer("no such object", PAGE, HTML),
    429: Answer("too many requests from this user", PAGE, HTML),
}
ACT_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {"csrf": {"type": "string"}, "confirm": {"type": "string"}},
}
VERBS = tuple(rollouts_api.ACTS)
LIVE_FIELDS = ("state", "phase", "label", "online", "out_of_sync")


def page(summary: str, role: Role = Role.VIEWER) -> Callable[[Endpoint], Endpoint]:
    def declare(endpoint: Endpoint) -> Endpoint:
        return operation(
            "GET", summary, ok=PAGE, media=HTML, answers={**PAGE_ANSWERS, 400: PAGE_ANSWERS[404]}
        )(ui_endpoint(role)(endpoint))

    return declare


def sub_request(request: Request, query: dict[str, Any]) -> Request:
    """``request`` with another query string (the admin handlers read their filters)."""
    pairs = [(k, v) for k, values in query.items() for v in values if v not in ("", None)]
    scope = {**request.scope, "query_string": urlencode(pairs).encode()}
    copy = Request(scope, request.receive)
    return copy


async def admin_call(handler: Endpoint, request: Request) -> Any:
    """The JSON ``handler`` answers ``request`` with, as the signed-in user; the handler's
    own role is checked against the user's (an API refusal is a refusal here too)."""
    needs = getattr(handler, "required_role", Role.ADMIN)
    user = request.state.user
    if Role.parse(user.role) < needs:
        raise ApiError(403, f"your role is {user.role}; this needs {needs.name.lower()}")
    inner = handler.__wrapped__  # type: ignore[attr-defined]
    response = await inner(request)
    return json.loads(bytes(response.body))


def _filters(request: Request) -> dict[str, list[str]]:
    return {k: request.query_params.getlist(k) for k in LIVE_FIELDS}


def _search(devices: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    text = text.strip().lower()
    if not text:
        return devices

    def hit(d: dict[str, Any]) -> bool:
        labels = " ".join(f"{k}={v}" for k, v in d["labels"].items())
        error = ((d.get("status") or {}).get("error")) or ""
        return any(text in part.lower() for part in (d["id"], labels, error))

    return [d for d in devices if hit(d)]


async def _guarded(request: Request, build: Any) -> Response:
    try:
        response: Response = await build()
    except ApiError as exc:
        status = exc.status if exc.status in (400, 403, 404, 409) else 400
        return refused(request, status, exc.message, api=False)
    return response


@page("Dashboard: fleet overview")
async def ui_overview(request: Request) -> Response:
    async def build() -> Response:
        status = await admin_call(admin_api.fleet_status, request)
        listed = await admin_call(rollouts_api.list_rollouts, sub_request(request, {}))
        active = [r for r in listed["rollouts"] if r["state"] in ("running", "paused", "halted")]
        return render(request, "overview.html", status=status, rollouts=active)

    return await _guarded(request, build)


@page("Dashboard: devices, filtered and paged")
async def ui_devices(request: Request) -> Response:
    async def build() -> Response:
        filters = _filters(request)
        listed = await admin_call(devices_api.list_devices, sub_request(request, filters))
        found = _search(listed["devices"], request.query_params.get("q", ""))
        pages = max(1, -(-len(found) // PAGE_SIZE))
        raw = request.query_params.get("page", "1")
        number = min(max(int(raw), 1), pages) if raw.isdigit() and len(raw) < 9 else 1
        shown = found[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
        chosen = {k: (v[0] if v else "") for k, v in filters.items()}
        query = {**chosen, "q": request.query_params.get("q", "")}
        live = "/ui/api/devices?" + urlencode({k: v for k, v in chosen.items() if v})
        return render(
            request, "devices.html", devices=shown, total=len(found), page=number, pages=pages,
            filters=query, query=urlencode({k: v for k, v in query.items() if v}), live=live,
        )  # fmt: skip

    return await _guarded(request, build)


@page("Dashboard: one device")
async def ui_device(request: Request) -> Response:
    async def build() -> Response:
        device = await admin_call(devices_api.show_device, request)
        return render(request, "device.html", device=device)

    return await _guarded(request, build)


@page("Dashboard: rollouts")
async def ui_rollouts(request: Request) -> Response:
    async def build() -> Response:
        listed = await admin_call(rollouts_api.list_rollouts, sub_request(request, {}))
        return render(request, "rollouts.html", rollouts=listed["rollouts"], verbs=VERBS)

    return await _guarded(request, build)


@page("Dashboard: commits seen, with their result and refusal reasons")
async def ui_revisions(request: Request) -> Response:
    async def build() -> Response:
        listed = await admin_call(admin_api.list_revisions, sub_request(request, {}))
        return render(request, "revisions.html", revisions=listed["revisions"])

    return await _guarded(request, build)


@page("Dashboard: stored bundles and the versions devices run")
async def ui_bundles(request: Request) -> Response:
    async def build() -> Response:
        stored = await admin_call(bundles_api.list_bundles, sub_request(request, {}))
        devices = await admin_call(devices_api.list_devices, sub_request(request, {}))
        running: Counter[tuple[str, str]] = Counter()
        for d in devices["devices"]:
            for name, version in ((d["status"] or {}).get("bundles") or {}).items():
                running[(str(name), str(version))] += 1
        return render(
            request, "bundles.html", bundles=stored["bundles"], running=sorted(running.items())
        )

    return await _guarded(request, build)


@page("Dashboard: audit log")
async def ui_audit(request: Request) -> Response:
    async def build() -> Response:
        keys = ("actor", "action", "target", "since")
        query = {k: request.query_params.getlist(k) for k in keys}
        listed = await admin_call(admin_api.audit_log, sub_request(request, query))
        chosen = {k: (v[0] if v else "") for k, v in query.items()}
        return render(request, "audit.html", entries=listed["entries"], filters=chosen)

    return await _guarded(request, build)


def _act_handler(verb: str) -> Endpoint:
    path = f"{ADMIN}/rollouts/{{rollout_id:int}}/{verb}"
    for r in rollouts_api.routes:
        if r.path == path:
            return r.endpoint
    raise LookupError(path)


@operation(
    "POST",
    "Dashboard: pause, resume, promote or abort a rollout (asks to confirm first)",
    ok=PAGE,
    media=HTML,
    ok_text="the confirmation page",
    body=ACT_FORM,
    body_media="application/x-www-form-urlencoded",
    answers={**PAGE_ANSWERS, 303: Answer("done (to the rollouts page), or not logged in"),
             409: Answer("the rollout's state does not allow the act", PAGE, HTML)},
)  # fmt: skip
@ui_endpoint(Role.OPERATOR)
async def ui_rollout_act(request: Request) -> Response:
    verb = request.path_params["verb"]
    rollout_id = request.path_params["rollout_id"]
    if verb not in VERBS:
        return refused(request, 404, f"no act {verb!r}; use one of {', '.join(VERBS)}", api=False)
    if (await read_form(request)).get("confirm") != "yes":
        return render(request, "confirm.html", verb=verb, rollout_id=rollout_id)

    async def build() -> Response:
        await admin_call(_act_handler(verb), request)
        return secure_headers(RedirectResponse("/ui/rollouts", status_code=303))

    return await _guarded(request, build)


def _json_op(summary: str, ok: Any) -> Callable[[Endpoint], Endpoint]:
    def declare(endpoint: Endpoint) -> Endpoint:
        return operation("GET", summary, ok=ok, errors=(400, 404))(
            ui_endpoint(Role.VIEWER, api=True)(endpoint)
        )

    return declare


async def _json(request: Request, handler: Endpoint, query: dict[str, list[str]]) -> Response:
    """The live data, shared by every open dashboard for ``LIVE_SECONDS``: ten pages
    polling the same view cost one query, not ten (bench/dashboard_poll.py)."""
    live = ui_state(request).live
    key = f"{request.url.path}?{urlencode(sorted((k, v) for k, vs in query.items() for v in vs))}"
    now = time.monotonic()
    hit = live.get(key)
    if hit is not None and now - hit[0] < LIVE_SECONDS:
        body = hit[1]
    else:
        try:
            data = await admin_call(handler, sub_request(request, query) if query else request)
        except ApiError as exc:
            return secure_headers(JSONResponse({"error": exc.message}, status_code=exc.status))
        body = bytes(JSONResponse(data).body)
        if len(live) >= LIVE_ENTRIES:
            live.clear()
        live[key] = (now, body)
    return secure_headers(Response(body, media_type="application/json"))


@_json_op("Dashboard live data: fleet status", wire.FleetStatus)
async def ui_live_status(request: Request) -> Response:
    return await _json(request, admin_api.fleet_status, {})


@_json_op("Dashboard live data: devices (same filters as the devices page)", wire.DeviceList)
async def ui_live_devices(request: Request) -> Response:
    return await _json(request, devices_api.list_devices, _filters(request))


@_json_op("Dashboard live data: one device", wire.DeviceDetail)
async def ui_live_device(request: Request) -> Response:
    return await _json(request, devices_api.show_device, {})


routes = [
    *login_routes,
    *static_routes,
    route("/ui/", ui_overview),
    route("/ui/devices", ui_devices),
    route("/ui/devices/{device_id}", ui_device),
    route("/ui/rollouts", ui_rollouts),
    route("/ui/rollouts/{rollout_id:int}/{verb}", ui_rollout_act),
    route("/ui/revisions", ui_revisions),
    route("/ui/bundles", ui_bundles),
    route("/ui/audit", ui_audit),
    route("/ui/api/status", ui_live_status),
    route("/ui/api/devices", ui_live_devices),
    route("/ui/api/devices/{device_id}", ui_live_device),
]
