"""``GET /openapi.json``: the OpenAPI 3.1 description, built from the app's routes.

Nothing here describes an endpoint: each handler declares its operation
(``kernex_server.api.operation``) and its authentication kind (``kernex_server.auth``);
this module walks the routes, turns the declared wire types into schemas
(``kernex_server.schema``) and adds the answers every operation of an authentication
kind has. A route whose handler declares no operation is an error at build time.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernex_core import __version__
from kernex_server import wire
from kernex_server.api import JSON, Operation, handlers, operation, operation_of
from kernex_server.auth import auth_kind, public_endpoint
from kernex_server.http import json_response
from kernex_server.schema import Components, Schema

PATH = "/openapi.json"

ERROR_TEXT = {
    400: "the request is malformed; the error names what",
    401: "not authenticated",
    403: "role too low, or the device is not admitted or acts for another",
    404: "no such object",
    409: "the object's state does not allow this",
    413: "the body is over the server's limit",
    422: "the body is well-formed but not a valid report",
    429: "rate limited (Retry-After)",
    500: "the server failed; the error says why",
    503: "unavailable: the database cannot be reached (Retry-After), or the feature is not "
    "set up on this server",
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
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "kx_session",
        "description": "dashboard login session (docs/dashboard.md)",
    },
}

_PARAM_RE = re.compile(r"\{(\w+)(?::(\w+))?\}")


def _security(kind: str) -> list[dict[str, list[str]]]:
    if kind.startswith("role:"):
        return [{"bearer": []}]
    if kind.startswith("session:"):
        return [{"session": []}]
    if kind == "device":
        return [{"deviceSignature": []}]
    if kind == "webhook":
        return [{"githubSignature": []}, {"gitlabToken": []}]
    return []


def _kind_errors(kind: str, op: Operation) -> set[int]:
    """The error answers an operation has for its authentication kind and its body."""
    found = set(op.errors)
    if kind != "public":
        found |= {401, 503}  # 503: the database is down (kernex_server.outage)
    if kind.startswith("role:") or kind == "device":
        found |= {403, 429}
    if op.body is not None:
        found |= {400, 413}  # read_body: a bad Content-Length, a body over the limit
    return found


def _content(components: Components, body: Any, media: str) -> dict[str, Any]:
    return {media: {"schema": components.of(body)}}


def _operation(
    components: Components, path: str, endpoint: Any, op: Operation, method: str
) -> dict[str, Any]:
    kind = auth_kind(endpoint) or "public"
    params: list[dict[str, Any]] = [
        {
            "name": m.group(1),
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 0}
            if m.group(2) == "int"
            else {"type": "string"},
        }
        for m in _PARAM_RE.finditer(path)
    ]
    for p in op.query:
        schema = components.of(p.type)
        param: dict[str, Any] = {"name": p.name, "in": "query", "description": p.description}
        if p.many:
            param.update(schema={"type": "array", "items": schema}, style="form", explode=True)
        else:
            param["schema"] = schema
        params.append(param)
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        out: dict[str, Any] = {"description": answer.description}
        if answer.body is not None:
            out["content"] = _content(components, answer.body, answer.media)
        responses[str(status)] = out
    error = {JSON: {"schema": components.of(wire.Error)}}
    for status in sorted(_kind_errors(kind, op)):
        responses.setdefault(str(status), {"description": ERROR_TEXT[status], "content": error})
    out = {
        "summary": op.summary,
        "operationId": endpoint.__name__,
        "security": _security(kind),
        "x-kernex-auth": kind,
        "parameters": params,
        "responses": responses,
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": _content(components, op.body, op.body_media),
        }
    if method not in {"POST", "PUT", "PATCH"} and op.body is not None:
        raise TypeError(f"{method} {path} declares a body")
    return out


def build(routes: list[Any], version: str) -> dict[str, Any]:
    components = Components()
    components.of(wire.Error)
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    for route in routes:
        if not isinstance(route, Route):
            continue
        oas_path = _PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", route.path)
        for method, endpoint in handlers(route).items():
            op = operation_of(endpoint)
            if op is None or op.method != method:
                raise TypeError(f"{method} {route.path} declares no @operation for {method}")
            if endpoint.__name__ in seen_ids:
                raise TypeError(f"two operations named {endpoint.__name__}")
            seen_ids.add(endpoint.__name__)
            paths.setdefault(oas_path, {})[method.lower()] = _operation(
                components, route.path, endpoint, op, method
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kernex server",
            "version": version,
            "description": "Device protocol, admin API and operations endpoints of Kernex. "
            'Errors are {"error", "hint"}. Times are RFC 3339 UTC.',
        },
        "paths": paths,
        "components": {"schemas": components.schemas, "securitySchemes": SECURITY_SCHEMES},
    }


OPENAPI_DOCUMENT: Schema = {"type": "object", "description": "OpenAPI 3.1"}


@operation("GET", "This description", ok=OPENAPI_DOCUMENT)
@public_endpoint
async def openapi_document(request: Request) -> Response:
    cached = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = request.app.state.openapi = build(request.app.routes, __version__)
    return json_response(cached)
