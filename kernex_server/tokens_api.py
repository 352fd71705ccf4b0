"""The token endpoints of the admin API: admin tokens (``/v1/admin/tokens``, with a role)
and enrollment tokens (``/v1/admin/enrollment-tokens``). A secret is in the answer that
makes it, never again; the store keeps its hash (``kernex_server.tokens``)."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_server import wire
from kernex_server.api import ADMIN as PREFIX
from kernex_server.api import operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import context_of
from kernex_server.http import (
    MAX_ROW_ID,
    ApiError,
    json_response,
    parse_json,
    path_id,
    read_body,
    wire_time,
)
from kernex_server.tokens import TokenNameTakenError

ROLES = ("viewer", "operator", "admin")


def _enroll_token_out(token: dict[str, Any]) -> dict[str, Any]:
    return {
        **token,
        "created_at": wire_time(token["created_at"]),
        "expires_at": wire_time(token["expires_at"]),
        "revoked_at": wire_time(token["revoked_at"]),
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


def _api_token_out(token: dict[str, Any]) -> dict[str, Any]:
    return {
        **token,
        "created_at": wire_time(token["created_at"]),
        "expires_at": wire_time(token["expires_at"]),
        "last_used_at": wire_time(token["last_used_at"]),
        "revoked_at": wire_time(token["revoked_at"]),
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


routes = [
    route(f"{PREFIX}/tokens", list_tokens, create_token),
    route(f"{PREFIX}/tokens/{{token_id:int}}", revoke_token),
    route(f"{PREFIX}/enrollment-tokens", list_enrollment_tokens, create_enrollment_token),
    route(f"{PREFIX}/enrollment-tokens/{{token_id:int}}", revoke_enrollment_token),
]
