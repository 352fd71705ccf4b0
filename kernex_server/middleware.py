"""The one HTTP middleware: request ids, security headers, metrics and the access log.

Pure ASGI (no ``BaseHTTPMiddleware``): it wraps ``send`` to stamp headers and count
bytes, and costs a few microseconds, so the device long-poll path stays cheap.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernex_core.protocol import BUNDLE_PATH
from kernex_server.logs import REQUEST_ID
from kernex_server.metrics import Metrics

log = logging.getLogger("kernex.server.http")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")

ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"


def request_id_of(headers: Headers) -> str:
    """The caller's ``X-Request-ID`` when it is sane, else a new one."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(Headers(scope=scope))
        reset = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        body_bytes = 0
        path = scope["path"]

        async def stamped(message: Message) -> None:
            nonlocal status, body_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in ALWAYS.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("application/json"):
                    headers.setdefault("content-security-policy", JSON_CSP)
                    if path.startswith(("/v1/admin", "/v1/hooks")):
                        headers["cache-control"] = "no-store"
            elif message["type"] == "http.response.body":
                body_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(elapsed)
            if template == BUNDLE_PATH and status in (200, 206):
                self.metrics.bundle_bytes.inc(body_bytes)
            log.info(
                "%s %s %d",
                method,
                path,
                status,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
            REQUEST_ID.reset(reset)
