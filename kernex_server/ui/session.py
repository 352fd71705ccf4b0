"""Dashboard sessions: a signed cookie, CSRF tokens, and the guard every /ui route wears.

The session is a cookie (``kx_session``, HttpOnly, SameSite=Strict, Secure over HTTPS,
Path=/ui) holding the user id, when it was issued, when it ends and the session's CSRF
token, signed with HMAC-SHA256 under a key of the data directory
(``ui-session.key``, 32 random bytes, mode 0600, made at ``kernex server init`` or at the
first start; there is no default). Each request re-reads the user: a disabled user, or a
password changed after the session was issued, ends the session.

``@ui_endpoint(role)`` guards a page: without a valid session a page answers 303 to the
login page and a JSON endpoint 401; a role too low answers 403; every POST must carry the
session's CSRF token in its ``csrf`` form field (403 without it). The login form, which has
no session yet, uses a double-submit token (cookie ``kx_login_csrf`` = form field).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import anyio
from jinja2 import Environment, PackageLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from kernex_core.fsutil import atomic_write_bytes
from kernex_core.timefmt import format_time
from kernex_server.accounts import Accounts, UserIdentity
from kernex_server.auth import Endpoint, Role
from kernex_server.context import ServerContext, context_of
from kernex_server.http import read_body
from kernex_server.ratelimit import RateLimiter
from kernex_server.settings import Settings

COOKIE = "kx_session"
LOGIN_CSRF_COOKIE = "kx_login_csrf"
KEY_FILE = "ui-session.key"
SESSION_SECONDS = 8 * 3600
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def session_key(settings: Settings) -> bytes:
    """The data directory's session key, made (0600) when there is none yet."""
    path = Path(settings.data_dir) / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        made = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        atomic_write_bytes(made, secrets.token_bytes(32), mode=0o600)
        try:
            os.link(made, path)  # never replaces a key another server process made
        except FileExistsError:
            pass
        finally:
            made.unlink()
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path} holds {len(key)} bytes, not a 32-byte session key")
    return key


@dataclass(frozen=True)
class Session:
    user_id: int
    issued_at: float
    expires_at: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_session(key: bytes, session: Session) -> str:
    payload = json.dumps(
        [session.user_id, session.issued_at, session.expires_at, session.csrf],
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def read_session(key: bytes, cookie: str, *, now: float) -> Session | None:
    """The session a cookie holds, if its signature is ours and it has not expired."""
    payload_text, dot, mac_text = cookie.partition(".")
    if not dot or len(cookie) > 1024:
        return None
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
        if not hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), mac):
            return None
        user_id, issued, expires, csrf = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not (isinstance(user_id, int) and isinstance(csrf, str)):
        return None
    if not isinstance(expires, int | float) or expires <= now:
        return None
    return Session(user_id, float(issued), float(expires), csrf)


class UIState:
    """What the dashboard keeps per app: the session key, templates, the login limiter."""

    def __init__(self, kx: ServerContext) -> None:
        self.key = session_key(kx.settings)
        self.accounts = Accounts(kx.store.sessions)
        self.logins = RateLimiter(kx.settings.auth_failure_rate, kx.settings.auth_failure_burst)
        self.templates = Environment(
            loader=PackageLoader("kernex_server.ui", "templates"), autoescape=True
        )
        self.templates.filters["when"] = lambda v: format_time(v) if v else "-"
        self.live: dict[str, tuple[float, bytes]] = {}  # live JSON by view (kernex_server.ui.pages)


def ui_state(request: Request) -> UIState:
    state: UIState | None = getattr(request.app.state, "ui", None)
    if state is None:
        state = request.app.state.ui = UIState(context_of(request))
    return state


def secure_headers(response: Response) -> Response:
    response.headers["content-security-policy"] = CSP
    response.headers["cache-control"] = "no-store"
    return response


def render(request: Request, template: str, code: int = 200, **values: Any) -> HTMLResponse:
    ui = ui_state(request)
    user: UserIdentity | None = getattr(request.state, "user", None)
    session: Session | None = getattr(request.state, "session", None)
    html = ui.templates.get_template(template).render(
        user=user,
        csrf=session.csrf if session else "",
        path=request.url.path,
        can_operate=user is not None and Role.parse(user.role) >= Role.OPERATOR,
        **values,
    )
    return secure_headers(HTMLResponse(html, status_code=code))  # type: ignore[return-value]


def set_session_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def new_session(request: Request, user: UserIdentity, now: float) -> str:
    session = Session(user.id, now, now + SESSION_SECONDS, secrets.token_urlsafe(24))
    return sign_session(ui_state(request).key, session)


def login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    response = RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)
    return secure_headers(response)


def refused(request: Request, status: int, message: str, *, api: bool) -> Response:
    if api:
        return secure_headers(JSONResponse({"error": message}, status_code=status))
    return render(request, "error.html", status, message=message)


async def current_user(request: Request) -> tuple[Session, UserIdentity] | None:
    kx = context_of(request)
    ui = ui_state(request)
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    session = read_session(ui.key, cookie, now=kx.clock())
    if session is None:
        return None
    user = await anyio.to_thread.run_sync(lambda: ui.accounts.identity(session.user_id))
    if user is None or user.password_changed_at > session.issued_at:
        return None
    return session, user


FORM_LIMIT = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (first value of each field), read once."""
    found: dict[str, str] | None = getattr(request.state, "form", None)
    if found is None:
        body = await read_body(request, FORM_LIMIT)
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        found = {}
        for name, value in pairs:
            found.setdefault(name, value)
        request.state.form = found
    return found


def ui_endpoint(role: Role, *, api: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Guard a dashboard route: a session of a user of at least ``role``; CSRF on POST."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            kx = context_of(request)
            found = await current_user(request)
            if found is None:
                if api:
                    return refused(request, 401, "not logged in", api=True)
                return login_redirect(request)
            session, user = found
            request.state.session, request.state.user = session, user
            request.state.identity = user.as_token_identity()
            if kx.admin_auth.limiter.take(f"user:{user.id}") is not None:
                return refused(request, 429, "too many requests; wait a moment", api=api)
            if request.method == "POST":
                given = (await read_form(request)).get("csrf", "")
                if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                    await kx.auditor.request(request, "ui.csrf", request.url.path, result="denied")
                    return refused(
                        request, 403, "the form's CSRF token is missing or wrong", api=api
                    )
            if Role.parse(user.role) < role:
                await kx.auditor.request(
                    request,
                    "auth",
                    request.url.path,
                    result="denied",
                    detail={"status": 403, "method": request.method, "role": user.role},
                )
                return refused(
                    request,
                    403,
                    f"your role is {user.role}; this needs {role.name.lower()}",
                    api=api,
                )
            return await endpoint(request)

        guarded.ui_role = role  # type: ignore[attr-defined]
        return guarded

    return wrap
