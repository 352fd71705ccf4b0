"""Cross-origin requests to the admin API, for a browser dashboard on another origin.

Off by default. ``cors_origins`` in ``server.toml`` lists the exact origins
(``scheme://host[:port]``) a browser may call ``/v1/admin/*`` from; Starlette's
``CORSMiddleware`` answers their preflights and stamps the response headers. Every other
route (the device API, enrollment, bundles, webhooks, metrics) never sends CORS headers:
no browser page has a reason to call them. Admin calls carry a bearer token, never a
cookie, so credentials are not allowed and ``*`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from kernex_server.errors import ServerSetupError

ADMIN_PREFIX = "/v1/admin"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
HEADERS = ("Authorization", "Content-Type", "X-Request-ID")
EXPOSED = ("X-Request-ID", "Retry-After")
MAX_AGE = 600  # seconds a browser may cache a preflight answer

_ORIGIN_RE = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z"
)


def check_origins(origins: Sequence[str]) -> tuple[str, ...]:
    """The configured origins, each ``scheme://host[:port]`` exactly as a browser sends it."""
    for origin in origins:
        if origin == "*":
            raise ServerSetupError(
                "cors_origins may not contain '*'",
                hint='List each dashboard origin, e.g. cors_origins = ["https://ops.example.com"].',
            )
        if not _ORIGIN_RE.match(origin):
            raise ServerSetupError(
                f"cors_origins: {origin!r} is not an origin",
                hint="Write scheme://host[:port], no path and no trailing slash, "
                'e.g. "https://ops.example.com".',
            )
    return tuple(origins)


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class AdminCORSMiddleware:
    """``CORSMiddleware`` for ``/v1/admin`` paths only; other paths pass untouched."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=check_origins(origins),
            allow_methods=METHODS,
            allow_headers=HEADERS,
            expose_headers=EXPOSED,
            allow_credentials=False,
            max_age=MAX_AGE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_admin_path(scope["path"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
