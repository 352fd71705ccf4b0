"""Dashboard accounts over the admin API (admin only), as tokens are: ``/v1/admin/users``.

``kernex users add|list|disable|enable|passwd`` calls these. Passwords travel in the
request body only (never in the audit log) and are stored as argon2 hashes
(``kernex_server.accounts``).
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.timefmt import format_time
from kernex_server.accounts import MAX_PASSWORD, MIN_PASSWORD, AccountError, Accounts
from kernex_server.api import operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import ServerContext, context_of
from kernex_server.http import ApiError, json_response, parse_json, read_body
from kernex_server.wire import RoleName, Time

PREFIX = "/v1/admin/users"
UserName = Annotated[str, {"minLength": 1, "maxLength": 64}]
Password = Annotated[str, {"minLength": MIN_PASSWORD, "maxLength": MAX_PASSWORD}]


class User(TypedDict):
    id: int
    name: str
    role: RoleName
    created_by: str | None
    created_at: Time
    disabled: bool
    locked_until: Time
    last_login_at: Time


class UserList(TypedDict):
    users: list[User]


class UserCreate(TypedDict):
    name: UserName
    role: RoleName
    password: Password


class PasswordChange(TypedDict):
    password: Password


def accounts_of(kx: ServerContext) -> Accounts:
    return Accounts(kx.store.sessions)


def user_out(row: dict[str, Any]) -> dict[str, Any]:
    def when(value: float | None) -> str | None:
        return format_time(value) if value is not None else None

    return {
        **row,
        "created_at": when(row["created_at"]),
        "locked_until": when(row["locked_until"]),
        "last_login_at": when(row["last_login_at"]),
    }


async def _body(request: Request, kx: ServerContext) -> dict[str, Any]:
    data = parse_json(await read_body(request, kx.settings.max_body_bytes) or b"{}")
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    return data


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ApiError(400, f"{key!r} must be a string")
    return value


def _refused(exc: AccountError) -> ApiError:
    return ApiError(exc.status, exc.message, hint=exc.hint)


@operation("GET", "Dashboard users (no password hashes)", ok=UserList)
@requires(Role.ADMIN)
async def list_users(request: Request) -> Response:
    accounts = accounts_of(context_of(request))
    rows = await anyio.to_thread.run_sync(accounts.list)
    return json_response({"users": [user_out(r) for r in rows]})


@operation("POST", "Add a dashboard user", ok=User, status=201, body=UserCreate, errors=(409,))
@requires(Role.ADMIN)
@audited("user.add")
async def add_user(request: Request) -> Response:
    kx = context_of(request)
    data = await _body(request, kx)
    name, role = _string(data, "name"), _string(data, "role")
    request.state.audit_target = name
    request.state.audit_detail = {"role": role}
    password = _string(data, "password")
    by = request.state.identity.name
    try:
        row = await anyio.to_thread.run_sync(
            lambda: accounts_of(kx).add(name, role, password, now=kx.clock(), created_by=by)
        )
    except AccountError as exc:
        raise _refused(exc) from exc
    return json_response(user_out(row), status=201)


async def _set_disabled(request: Request, disabled: bool) -> Response:
    kx = context_of(request)
    name = request.path_params["name"]
    try:
        row = await anyio.to_thread.run_sync(
            lambda: accounts_of(kx).set_disabled(name, disabled, now=kx.clock())
        )
    except AccountError as exc:
        raise _refused(exc) from exc
    return json_response(user_out(row))


@operation("POST", "Disable a user: no login, sessions end", ok=User, errors=(404,))
@requires(Role.ADMIN)
@audited("user.disable")
async def disable_user(request: Request) -> Response:
    return await _set_disabled(request, True)


@operation("POST", "Enable a disabled user again", ok=User, errors=(404,))
@requires(Role.ADMIN)
@audited("user.enable")
async def enable_user(request: Request) -> Response:
    return await _set_disabled(request, False)


@operation(
    "POST",
    "Set a user's password: older sessions end, a lockout is lifted",
    ok=User,
    body=PasswordChange,
    errors=(404,),
)
@requires(Role.ADMIN)
@audited("user.passwd")
async def set_password(request: Request) -> Response:
    kx = context_of(request)
    name = request.path_params["name"]
    password = _string(await _body(request, kx), "password")
    try:
        row = await anyio.to_thread.run_sync(
            lambda: accounts_of(kx).set_password(name, password, now=kx.clock())
        )
    except AccountError as exc:
        raise _refused(exc) from exc
    return json_response(user_out(row))


routes = [
    route(PREFIX, list_users, add_user),
    route(f"{PREFIX}/{{name}}/disable", disable_user),
    route(f"{PREFIX}/{{name}}/enable", enable_user),
    route(f"{PREFIX}/{{name}}/password", set_password),
]
