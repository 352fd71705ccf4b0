"""The OpenAPI 3.1 description of the server, served at ``GET /openapi.json``.

Hand-written: one entry per (method, path) in ``OPERATIONS`` with its request and
response schemas, plus the component schemas. The document is built from the app's
routes, so each route's security comes from what it declares (``auth_kind``); a test
checks every route is described, with its methods.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernex_core import __version__
from kernex_core.rollout import STATES as ROLLOUT_STATES
from kernex_server.auth import auth_kind, public_endpoint
from kernex_server.http import json_response

PATH = "/openapi.json"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str] | None = None, **props: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def arr(item: Schema) -> Schema:
    return {"type": "array", "items": item}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
NSTR: Schema = {"type": ["string", "null"]}
NINT: Schema = {"type": ["integer", "null"]}
ANY_OBJ: Schema = {"type": "object"}
ROLE: Schema = {"type": "string", "enum": ["viewer", "operator", "admin"]}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(["error"], error=STR, hint=NSTR),
    "Identity": obj(["name", "role"], name=STR, role=ROLE),
    "DeviceStatus": obj(
        phase=STR,
        serial=NINT,
        revision=NSTR,
        bundles=ANY_OBJ,
        config_hash=NSTR,
        error=NSTR,
        log_tail=NSTR,
        agent_version=STR,
        reported_at=NSTR,
        received_at=TIME,
    ),
    "Device": obj(
        ["id", "state"],
        id=STR,
        state={"type": "string", "enum": ["pending", "accepted", "rejected", "revoked"]},
        fingerprint=STR,
        algorithm=STR,
        labels={"type": "object", "additionalProperties": STR},
        proposed_labels={
            "oneOf": [{"type": "object", "additionalProperties": STR}, {"type": "null"}],
            "description": "labels the device asked for at re-enrollment, for an admin",
        },
        admitted_by=NSTR,
        agent_version=STR,
        enrolled_at=TIME,
        last_seen=TIME,
        online=BOOL,
        desired_serial=NINT,
        desired_revision=NSTR,
        reported_serial=NINT,
        deployment_pending=BOOL,
        status={"oneOf": [ref("DeviceStatus"), {"type": "null"}]},
    ),
    "DeviceDetail": {
        "allOf": [
            ref("Device"),
            obj(deployments=arr(ANY_OBJ), status_history=arr(ref("DeviceStatus"))),
        ]
    },
    "DeviceList": obj(["devices"], devices=arr(ref("Device"))),
    "DeviceState": obj(["id", "state"], id=STR, state=STR),
    "DeviceLabels": obj(
        ["id", "labels"],
        id=STR,
        labels={"type": "object", "additionalProperties": STR},
        proposed_labels={"type": "null"},
    ),
    "ValidationIssue": obj(file=STR, line=NINT, key=NSTR, message=STR),
    "FleetStatus": obj(
        ["revision", "devices", "rollouts", "bundles"],
        revision=obj(
            current=NSTR,
            deployed=NSTR,
            last_reconcile_at=TIME,
            last_result={
                "type": ["string", "null"],
                "enum": ["ok", "invalid", "unsigned", "error", None],
            },
            last_error=NSTR,
            errors=arr(ref("ValidationIssue")),
            forced=BOOL,
        ),
        devices=obj(
            total=INT,
            online=INT,
            offline=INT,
            pending=INT,
            by_phase={"type": "object", "additionalProperties": INT},
            out_of_sync=INT,
        ),
        rollouts=obj(active=INT),
        bundles=INT,
    ),
    "Token": obj(
        ["id", "name", "role", "revoked"],
        id=INT,
        name=STR,
        role=ROLE,
        created_by=NSTR,
        created_at=TIME,
        expires_at=TIME,
        last_used_at=TIME,
        revoked=BOOL,
        revoked_at=TIME,
    ),
    "NewToken": {"allOf": [ref("Token"), obj(["token"], token=STR)]},
    "TokenCreate": obj(
        ["name", "role"],
        name={"type": "string", "minLength": 1, "maxLength": 120},
        role=ROLE,
        expires_in={"type": ["integer", "null"], "minimum": 1, "description": "seconds"},
    ),
    "TokenList": obj(["tokens"], tokens=arr(ref("Token"))),
    "EnrollmentToken": obj(
        id=INT,
        name=STR,
        created_at=TIME,
        created_by=NSTR,
        expires_at=TIME,
        max_uses=NINT,
        uses=INT,
        revoked_at=TIME,
    ),
    "NewEnrollmentToken": {"allOf": [ref("EnrollmentToken"), obj(["token"], token=STR)]},
    "EnrollmentTokenCreate": obj(
        name={"type": "string", "maxLength": 120},
        expires_in={"type": ["integer", "null"], "minimum": 1, "default": 86400},
        max_uses={"type": ["integer", "null"], "minimum": 1},
    ),
    "EnrollmentTokenList": obj(["tokens"], tokens=arr(ref("EnrollmentToken"))),
    "AuditEntry": obj(
        ["id", "at", "actor", "action", "target", "address", "result", "detail"],
        id=INT,
        at={"type": "string", "format": "date-time"},
        actor=STR,
        action=STR,
        target=STR,
        address=STR,
        result={"type": "string", "enum": ["ok", "denied", "error"]},
        detail=ANY_OBJ,
    ),
    "AuditList": obj(["entries"], entries=arr(ref("AuditEntry"))),
    "StoredBundle": obj(["sha256", "size", "created"], sha256=STR, size=INT, created=BOOL),
    "BundleGc": obj(
        ["dry_run", "removed", "removed_bytes", "kept", "store_bytes"],
        dry_run=BOOL,
        removed=arr(obj(sha256=STR, size=INT)),
        removed_bytes=INT,
        kept=INT,
        store_bytes=INT,
        unreadable_revisions=arr(STR),
    ),
    "BundleList": obj(
        ["bundles"],
        bundles=arr(obj(sha256=STR, size=INT, uploaded_at=TIME, uploaded_by=NSTR)),
    ),
    "ReconcileResult": obj(
        commit=NSTR,
        state=STR,
        devices_changed=INT,
        admitted=arr(STR),
        errors=arr(ANY_OBJ),
        forced=BOOL,
    ),
    "RevisionList": obj(
        ["revisions"],
        revisions=arr(
            obj(
                id=INT,
                commit=STR,
                branch=STR,
                state=STR,
                errors=arr(ANY_OBJ),
                forced=BOOL,
                previous=NSTR,
                devices_changed=INT,
                created_at=TIME,
            )
        ),
    ),
    "EnrollRequest": obj(
        ["device_id", "public_key"],
        device_id=STR,
        public_key={"type": "string", "description": "SubjectPublicKeyInfo PEM"},
        labels={"type": "object", "additionalProperties": STR},
        agent_version=STR,
        enrollment_token=NSTR,
    ),
    "EnrollResponse": obj(device_id=STR, state=STR, manifest_public_key=STR, manifest_key_id=STR),
    "Envelope": obj(
        ["payloadType", "payload", "signatures"],
        payloadType=STR,
        payload={"type": "string", "contentEncoding": "base64"},
        signatures=arr(obj(keyid=STR, sig=STR)),
    ),
    "StatusReport": obj(
        ["phase"],
        phase={
            "type": "string",
            "enum": ["downloading", "installing", "healthy", "failed", "rolled_back"],
        },
        serial=NINT,
        revision=NSTR,
        bundles=ANY_OBJ,
        config_hash=NSTR,
        error=NSTR,
        log_tail=NSTR,
        agent_version=STR,
        reported_at=NSTR,
    ),
    "Rollout": obj(
        ["id", "state", "revision", "wave", "waves"],
        id=INT,
        group=NSTR,
        revision=STR,
        previous_revision=NSTR,
        state={"type": "string", "enum": list(ROLLOUT_STATES)},
        policy=ANY_OBJ,
        wave={"type": "integer", "description": "highest admitted wave, from 0"},
        waves=arr(
            obj(
                index=INT,
                percent=INT,
                size=INT,
                admitted=BOOL,
                healthy=INT,
                failed=INT,
                pending=INT,
                offline=INT,
                rolled_back=INT,
            )
        ),
        devices=INT,
        failed=INT,
        failures_allowed=INT,
        failure_allowance=INT,
        awaiting_promotion=BOOL,
        reason=NSTR,
        superseded_by=NSTR,
        wave_started_at=TIME,
        created_at=TIME,
        updated_at=TIME,
        device_list=arr(ANY_OBJ),
    ),
    "RolloutList": obj(["rollouts"], rollouts=arr(ref("Rollout"))),
    "Keys": obj(
        ["manifest_key_id", "rotation", "release_keys"],
        manifest_key_id=STR,
        rotation={
            "type": ["object", "null"],
            "properties": {
                "next_key_id": STR,
                "started_at": STR,
                "devices_not_moved": arr(STR),
            },
        },
        release_keys={
            "type": ["object", "null"],
            "properties": {"version": INT, "threshold": INT, "keys": arr(STR)},
        },
        retired_key_id=STR,
        manifests_reissued=INT,
    ),
    "WebhookResult": obj(["reconcile"], reconcile=BOOL, event=STR, ref=NSTR),
    "Health": obj(status=STR),
    "ServerInfo": obj(
        ["url", "version", "manifest_key_id", "manifest_public_key"],
        url=STR,
        version=STR,
        manifest_key_id=STR,
        manifest_public_key=STR,
        proof={"$ref": "#/components/schemas/Envelope", "description": "with ?challenge="},
    ),
    "Ready": obj(
        ["ready", "checks", "failing"],
        ready=BOOL,
        checks={"type": "object", "additionalProperties": STR},
        failing=arr(STR),
    ),
}

JSON = "application/json"
BYTES = "application/octet-stream"


def _body(schema: Schema, media: str = JSON) -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema}}}


def _q(name: str, schema: Schema, text: str, *, many: bool = False) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema, "description": text}
    if many:
        param["schema"] = arr(schema)
        param["style"], param["explode"] = "form", True
    return param


# (method, path) -> summary, request body, {status: (description, schema or None, media)},
# query parameters
Op = tuple[str, dict[str, Any] | None, dict[int, tuple[str, Schema | None, str]], list[Any]]

DEVICE_FILTERS = [
    _q("state", STR, "enrollment state"),
    _q("phase", STR, "last reported phase"),
    _q("online", BOOL, "seen within offline_after"),
    _q("label", STR, "key=value; repeat to require several", many=True),
    _q("out_of_sync", BOOL, "accepted and reported serial != desired serial"),
]
AUDIT_FILTERS = [
    _q("since", STR, "RFC 3339 time or a duration back from now (90s, 15m, 1h, 7d)"),
    _q("until", STR, "RFC 3339 time or a duration back from now"),
    _q("actor", STR, "token name, device:<id>, reconciler, webhook:<host>"),
    _q("target", STR, "device id, token name, commit, sha256 ..."),
    _q("action", STR, "e.g. token.create, device.accept, reconcile, webhook, auth"),
    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "max rows"),
]


def _ok(schema: str, status: int = 200) -> dict[int, tuple[str, Schema | None, str]]:
    return {status: ("OK", ref(schema), JSON)}


OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/healthz"): ("Liveness: the process answers", None, _ok("Health"), []),
    ("GET", "/readyz"): (
        "Readiness: database, Git source, deployed revision, data directory",
        None,
        {
            200: ("ready", ref("Ready"), JSON),
            503: ("not ready; names what failed", ref("Ready"), JSON),
        },
        [],
    ),
    ("GET", "/metrics"): (
        "Prometheus metrics (bearer metrics_token when that setting is set)",
        None,
        {200: ("Prometheus text format 0.0.4", STR, "text/plain")},
        [],
    ),
    ("GET", PATH): ("This description", None, {200: ("OpenAPI 3.1", ANY_OBJ, JSON)}, []),
    ("GET", "/v1/server-info"): (
        "The server's URL, version and manifest key; with ?challenge= a proof signed by it",
        None,
        _ok("ServerInfo"),
        [_q("challenge", STR, "16-128 random URL-safe characters to sign")],
    ),
    ("POST", "/v1/enroll"): (
        "Enroll a device key (signed by that key)",
        _body(ref("EnrollRequest")),
        {
            201: ("enrolled", ref("EnrollResponse"), JSON),
            200: ("already enrolled", ref("EnrollResponse"), JSON),
        },
        [],
    ),
    ("GET", "/v1/devices/{device_id}/manifest"): (
        "The device's signed manifest; long poll with ?wait= and If-None-Match",
        None,
        {200: ("DSSE envelope", ref("Envelope"), JSON), 304: ("unchanged", None, JSON)},
        [_q("wait", {"type": "integer", "minimum": 0}, "seconds to wait for a change")],
    ),
    ("POST", "/v1/devices/{device_id}/status"): (
        "Report the device's status",
        _body(ref("StatusReport")),
        {204: ("recorded", None, JSON)},
        [],
    ),
    ("GET", "/v1/bundles/{sha256}"): (
        "Download bundle bytes (HTTP Range supported)",
        None,
        {
            200: ("bytes", {"type": "string", "format": "binary"}, BYTES),
            206: ("partial bytes", {"type": "string", "format": "binary"}, BYTES),
        },
        [],
    ),
    ("POST", "/v1/hooks/git"): (
        "Git host webhook: GitHub (X-Hub-Signature-256) or GitLab (X-Gitlab-Token)",
        _body(ANY_OBJ),
        {
            202: ("a reconcile is started", ref("WebhookResult"), JSON),
            200: ("ignored event or branch", ref("WebhookResult"), JSON),
        },
        [],
    ),
    ("GET", "/v1/admin/whoami"): ("The calling token", None, _ok("Identity"), []),
    ("GET", "/v1/admin/status"): ("Fleet status and stats", None, _ok("FleetStatus"), []),
    ("GET", "/v1/admin/tokens"): ("Admin tokens (no secrets)", None, _ok("TokenList"), []),
    ("POST", "/v1/admin/tokens"): (
        "Create an admin token; the secret is in the answer only",
        _body(ref("TokenCreate")),
        _ok("NewToken", 201),
        [],
    ),
    ("DELETE", "/v1/admin/tokens/{token_id}"): (
        "Revoke a token (not the calling one)",
        None,
        _ok("Token"),
        [],
    ),
    ("GET", "/v1/admin/audit"): ("Audit log, newest first", None, _ok("AuditList"), AUDIT_FILTERS),
    ("GET", "/v1/admin/devices"): ("Devices", None, _ok("DeviceList"), DEVICE_FILTERS),
    ("GET", "/v1/admin/devices/{device_id}"): (
        "One device with deployments and status history",
        None,
        _ok("DeviceDetail"),
        [],
    ),
    ("POST", "/v1/admin/devices/{device_id}/accept"): (
        "Admit a pending or rejected device",
        None,
        _ok("DeviceState"),
        [],
    ),
    ("POST", "/v1/admin/devices/{device_id}/reject"): (
        "Reject a pending device",
        None,
        _ok("DeviceState"),
        [],
    ),
    ("POST", "/v1/admin/devices/{device_id}/revoke"): (
        "Revoke a device (final)",
        None,
        _ok("DeviceState"),
        [],
    ),
    ("POST", "/v1/admin/devices/{device_id}/labels/accept"): (
        "Make the labels a device proposed its labels (409 when it proposed none)",
        None,
        _ok("DeviceLabels"),
        [],
    ),
    ("POST", "/v1/admin/devices/{device_id}/labels/reject"): (
        "Drop the labels a device proposed (409 when it proposed none)",
        None,
        _ok("DeviceLabels"),
        [],
    ),
    ("GET", "/v1/admin/enrollment-tokens"): (
        "Enrollment tokens (no secrets)",
        None,
        _ok("EnrollmentTokenList"),
        [],
    ),
    ("POST", "/v1/admin/enrollment-tokens"): (
        "Create an enrollment token; the secret is in the answer only",
        _body(ref("EnrollmentTokenCreate")),
        _ok("NewEnrollmentToken", 201),
        [],
    ),
    ("DELETE", "/v1/admin/enrollment-tokens/{token_id}"): (
        "Revoke an enrollment token",
        None,
        {204: ("revoked", None, JSON)},
        [],
    ),
    ("GET", "/v1/admin/bundles"): ("Stored bundles, newest first", None, _ok("BundleList"), []),
    ("POST", "/v1/admin/bundles"): (
        "Upload bundle bytes",
        _body({"type": "string", "format": "binary"}, BYTES),
        _ok("StoredBundle", 201),
        [],
    ),
    ("PUT", "/v1/admin/bundles/{sha256}"): (
        "Upload bundle bytes that must hash to {sha256}",
        _body({"type": "string", "format": "binary"}, BYTES),
        {
            201: ("stored", ref("StoredBundle"), JSON),
            200: ("already stored", ref("StoredBundle"), JSON),
        },
        [],
    ),
    ("POST", "/v1/admin/bundles/gc"): (
        "Remove stored bundles nothing retained names, past the grace period "
        "(?dry_run=1 lists them only; admin)",
        None,
        _ok("BundleGc"),
        [_q("dry_run", BOOL, "1: only list what would be removed")],
    ),
    ("POST", "/v1/admin/reconcile"): (
        "Run a reconcile pass now",
        None,
        _ok("ReconcileResult"),
        [_q("force", BOOL, "re-run even when the head commit was seen")],
    ),
    ("GET", "/v1/admin/revisions"): ("Commits seen, newest first", None, _ok("RevisionList"), []),
    ("GET", "/v1/admin/keys"): (
        "The manifest key, a rotation in progress and the release-key set manifests carry",
        None,
        _ok("Keys"),
        [],
    ),
    ("POST", "/v1/admin/keys/manifest/rotate"): (
        "Start a manifest-key rotation: a new key, announced in every manifest (admin)",
        None,
        {
            201: ("rotation started", ref("Keys"), JSON),
            409: ("a rotation is in progress", ref("Error"), JSON),
        },
        [],
    ),
    ("POST", "/v1/admin/keys/manifest/finish"): (
        "Sign with the new manifest key alone and delete the old one (admin)",
        None,
        {
            200: ("rotation finished", ref("Keys"), JSON),
            409: ("no rotation, or devices have not moved", ref("Error"), JSON),
        },
        [_q("force", BOOL, "finish although some devices have not moved")],
    ),
    ("PUT", "/v1/admin/keys/release"): (
        "Hand devices a new release-key set signed by the current one (admin)",
        _body(ref("Envelope")),
        {
            200: ("every manifest carries it", ref("Keys"), JSON),
            400: ("not signed by the current set, or not newer", ref("Error"), JSON),
        },
        [],
    ),
    ("GET", "/v1/admin/rollouts"): (
        "Rollouts, newest first",
        None,
        _ok("RolloutList"),
        [_q("state", STR, "only rollouts in this state")],
    ),
    ("GET", "/v1/admin/rollouts/{rollout_id}"): (
        "One rollout with its waves and devices",
        None,
        _ok("Rollout"),
        [],
    ),
    **{
        ("POST", f"/v1/admin/rollouts/{{rollout_id}}/{verb}"): (
            text,
            None,
            {
                200: ("the rollout after the act", ref("Rollout"), JSON),
                409: ("the rollout's state does not allow the act", ref("Error"), JSON),
            },
            [],
        )
        for verb, text in (
            ("pause", "Pause a running rollout: no wave is promoted until it resumes"),
            ("resume", "Resume a paused or halted rollout (a halt's failures are accepted)"),
            ("promote", "Admit the next wave now"),
            ("abort", "Stop a rollout and serve its previous state to devices that moved"),
        )
    },
}

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "admin token (kx_...)"},
    "deviceSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Signature",
        "description": "RFC 9421 HTTP Message Signature by the device key (docs/protocol.md)",
    },
    "githubSignature": {"type": "apiKey", "in": "header", "name": "X-Hub-Signature-256"},
    "gitlabToken": {"type": "apiKey", "in": "header", "name": "X-Gitlab-Token"},
}

_PARAM_RE = re.compile(r"\{(\w+)(?::(\w+))?\}")


def _security(kind: str) -> list[dict[str, list[str]]]:
    if kind.startswith("role:"):
        return [{"bearer": []}]
    if kind == "device":
        return [{"deviceSignature": []}]
    if kind == "webhook":
        return [{"githubSignature": []}, {"gitlabToken": []}]
    return []


def _operation(route: Route, method: str, op: Op) -> dict[str, Any]:
    summary, body, responses, query = op
    kind = auth_kind(route.endpoint) or "public"
    params = [
        {
            "name": m.group(1),
            "in": "path",
            "required": True,
            "schema": INT if m.group(2) == "int" else STR,
        }
        for m in _PARAM_RE.finditer(route.path)
    ]
    out: dict[str, Any] = {
        "summary": summary,
        "operationId": f"{method.lower()}_{route.name}",
        "security": _security(kind),
        "x-kernex-auth": kind,
        "parameters": params + query,
        "responses": {
            str(status): {
                "description": text,
                **({"content": {media: {"schema": schema}}} if schema is not None else {}),
            }
            for status, (text, schema, media) in responses.items()
        },
    }
    if kind != "public":
        out["responses"]["401"] = {
            "description": "not authenticated",
            "content": {JSON: {"schema": ref("Error")}},
        }
    if kind.startswith("role:") or kind == "device":
        out["responses"]["403"] = {
            "description": "role too low or device not admitted",
            "content": {JSON: {"schema": ref("Error")}},
        }
        out["responses"]["429"] = {
            "description": "rate limited (Retry-After)",
            "content": {JSON: {"schema": ref("Error")}},
        }
    if body is not None:
        out["requestBody"] = body
    return out


def build(routes: list[Any], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        oas_path = _PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op = OPERATIONS.get((method, oas_path))
            if op is None:
                raise KeyError(f"no OpenAPI description for {method} {oas_path}")
            paths.setdefault(oas_path, {})[method.lower()] = _operation(route, method, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kernex server",
            "version": version,
            "description": "Device protocol, admin API and operations endpoints of Kernex. "
            'Errors are {"error", "hint"}. Times are RFC 3339 UTC.',
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


@public_endpoint
async def endpoint(request: Request) -> Response:
    cached = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = request.app.state.openapi = build(request.app.routes, __version__)
    return json_response(cached)
