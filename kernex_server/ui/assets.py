"""The dashboard's two static files (``ui.js``, ``ui.css``), read once from the package.

They hold no secret, so they are served without a session (the login page needs the
style sheet). The JavaScript is a file, never inline, so the pages' Content-Security-Policy
can forbid inline script.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kernex_server.api import operation, route
from kernex_server.auth import public_endpoint
from kernex_server.ui.session import CSP

TYPES = {"ui.js": "text/javascript", "ui.css": "text/css"}
_FILES: dict[str, bytes] = {}
TEXT: dict[str, Any] = {"type": "string"}


def _file(name: str) -> bytes:
    if name not in _FILES:
        _FILES[name] = (resources.files("kernex_server.ui") / "static" / name).read_bytes()
    return _FILES[name]


def _static(name: str) -> Any:
    media = TYPES[name]

    async def serve(request: Request) -> Response:
        headers = {"cache-control": "max-age=300", "content-security-policy": CSP}
        return Response(_file(name), media_type=media, headers=headers)

    serve.__name__ = "ui_static_" + name.replace(".", "_")
    declare = operation("GET", f"Dashboard: {name}", ok=TEXT, media=media)
    return declare(public_endpoint(serve))


static_routes = [route(f"/ui/static/{name}", _static(name)) for name in TYPES]
