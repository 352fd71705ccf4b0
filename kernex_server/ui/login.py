"""The dashboard's login and logout.

``GET /ui/login`` shows the form with a double-submit CSRF token (a cookie and a hidden
field that must match; there is no session yet). ``POST /ui/login`` spends from a bucket
per client address first (429 when empty), checks the password (``Accounts.login``:
lockout after repeated failures), audits the outcome as ``user:<name>`` and sets the
session cookie. ``POST /ui/logout`` (with the session's CSRF token) drops the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kernex_server.accounts import LoginRefusedError, actor_of
from kernex_server.api import Answer, operation, route
from kernex_server.audit import DENIED, OK, client_address
from kernex_server.auth import Role, public_endpoint
from kernex_server.context import context_of
from kernex_server.ui.session import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    SESSION_SECONDS,
    current_user,
    new_session,
    read_form,
    render,
    secure_headers,
    set_session_cookie,
    ui_endpoint,
    ui_state,
)

HTML = "text/html"
PAGE: dict[str, Any] = {"type": "string", "description": "an HTML page"}
LOGIN_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "password": {"type": "string"},
        "csrf": {"type": "string"},
        "next": {"type": "string"},
    },
}
FORM = "application/x-www-form-urlencoded"


def safe_next(target: str | None) -> str:
    """Where to go after login: a dashboard path only, never another site."""
    if not target or not target.startswith("/ui/") or "\\" in target:
        return "/ui/"
    return target if target.isprintable() else "/ui/"


def _login_form(request: Request, status: int = 200, error: str = "", name: str = "") -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status,
        login_csrf=token,
        error=error,
        name=name,
        next=safe_next(request.query_params.get("next") or request.state.login_next),
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=3600,
    )
    return response


@operation(
    "GET",
    "Dashboard: the login form",
    ok=PAGE,
    media=HTML,
    answers={303: Answer("already logged in: to the dashboard")},
)
@public_endpoint
async def ui_login_page(request: Request) -> Response:
    if await current_user(request) is not None:
        return secure_headers(RedirectResponse("/ui/", status_code=303))
    request.state.login_next = None
    return _login_form(request)


@operation(
    "POST",
    "Dashboard: log in with a name and password",
    ok=PAGE,
    status=401,
    ok_text="wrong name or password, or the account is locked or disabled",
    media=HTML,
    body=LOGIN_FORM,
    body_media=FORM,
    answers={
        303: Answer("logged in: to the page asked for"),
        403: Answer("the form's CSRF token is missing or wrong", PAGE, HTML),
        429: Answer("too many login attempts from this address", PAGE, HTML),
    },
)
@public_endpoint
async def ui_login(request: Request) -> Response:
    kx = context_of(request)
    ui = ui_state(request)
    form = await read_form(request)
    name, password = form.get("name", ""), form.get("password", "")
    given, expected = form.get("csrf", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    request.state.login_next = form.get("next")
    if not (expected and hmac.compare_digest(given.encode(), expected.encode())):
        request.state.login_next = None
        return _login_form(request, 403, "The form expired; log in again.")
    address = client_address(request)
    if ui.logins.take(address) is not None:
        await kx.auditor.request(
            request,
            "user.login",
            address,
            result=DENIED,
            actor="anonymous",
            detail={"reason": "rate limited"},
        )
        return _login_form(request, 429, "Too many login attempts; wait a minute.")
    now = kx.clock()
    try:
        user = await anyio.to_thread.run_sync(lambda: ui.accounts.login(name, password, now=now))
    except LoginRefusedError as exc:
        await kx.auditor.request(
            request,
            "user.login",
            name[:64],
            result=DENIED,
            actor=actor_of(name[:64]),
            detail={"reason": exc.reason},
        )
        return _login_form(request, 401, exc.message.capitalize() + ".", name=name)
    await kx.auditor.request(request, "user.login", user.name, result=OK, actor=user.actor)
    target = safe_next(request.state.login_next)
    response = secure_headers(RedirectResponse(target, status_code=303))
    set_session_cookie(request, response, new_session(request, user, now), SESSION_SECONDS)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


@operation(
    "POST",
    "Dashboard: log out",
    status=303,
    ok_text="logged out (or not logged in): to the login page",
    body={"type": "object", "properties": {"csrf": {"type": "string"}}},
    body_media=FORM,
    answers={
        403: Answer("the form's CSRF token is missing or wrong", PAGE, HTML),
        429: Answer("too many requests from this user", PAGE, HTML),
    },
)
@ui_endpoint(Role.VIEWER)
async def ui_logout(request: Request) -> Response:
    kx = context_of(request)
    await kx.auditor.request(request, "user.logout", request.state.user.name)
    response = secure_headers(RedirectResponse("/ui/login", status_code=303))
    response.delete_cookie(COOKIE, path="/ui")
    return response


login_routes = [
    route("/ui/login", ui_login_page, ui_login),
    route("/ui/logout", ui_logout),
]
