"""The operations endpoints: ``/healthz`` (liveness), ``/readyz`` (readiness, naming the
failing check) and ``/metrics`` (Prometheus, optionally behind ``metrics_token``)."""

from __future__ import annotations

import hmac
import shutil
import tempfile
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.errors import KernexError
from kernex_server import wire
from kernex_server.api import Answer, operation, route
from kernex_server.auth import AuthError, public_endpoint
from kernex_server.context import context_of
from kernex_server.database import check_connection
from kernex_server.git_fetch import git_check
from kernex_server.http import json_response
from kernex_server.metrics import CONTENT_TYPE
from kernex_server.settings import Settings


@operation("GET", "Liveness: the process answers", ok=wire.Health)
@public_endpoint
async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@operation(
    "GET",
    "Readiness: database, Git source, deployed revision, data directory",
    ok=wire.Ready,
    ok_text="ready",
    answers={503: Answer("not ready; names what failed", wire.Ready)},
)
@public_endpoint
async def readyz(request: Request) -> Response:
    """Ready when the database answers, the Git source was fetched within
    ``ready_poll_intervals`` poll intervals and no fetch runs longer than
    ``poll_interval`` (``git_fetch.git_check``), a revision is deployed, and the data
    directory is writable with ``min_free_bytes`` free. 503 names what failed."""
    kx = context_of(request)
    checks: dict[str, Any] = {}
    try:
        await anyio.to_thread.run_sync(check_connection, kx.engine)
        checks["database"] = "ok"
    except KernexError as exc:
        checks["database"] = exc.message
    checks["git"] = git_check(kx)
    checks["fleet"] = (
        "ok" if kx.reconciler.fleet is not None or kx.reconciler.source is None else "no revision"
    )
    checks["disk"] = await anyio.to_thread.run_sync(_disk_check, kx.settings)
    failing = sorted(k for k, v in checks.items() if v != "ok")
    body = {"ready": not failing, "checks": checks, "failing": failing}
    return json_response(body, status=503 if failing else 200)


def _disk_check(settings: Settings) -> str:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.data_dir, prefix=".ready-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(settings.data_dir).free
    except OSError as exc:
        return f"data directory not writable: {exc.strerror or exc}"
    if free < settings.min_free_bytes:
        return f"{free} bytes free, under min_free_bytes {settings.min_free_bytes}"
    return "ok"


@operation(
    "GET",
    "Prometheus metrics (bearer metrics_token when that setting is set)",
    ok=str,
    ok_text="Prometheus text format 0.0.4",
    media="text/plain",
    errors=(401,),
)
@public_endpoint
async def metrics_endpoint(request: Request) -> Response:
    kx = context_of(request)
    expected = kx.settings.metrics_token
    if expected:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthError(401, "metrics need `Authorization: Bearer <metrics_token>`")
    return Response(kx.metrics.render(), media_type=CONTENT_TYPE)


routes = [
    route("/healthz", healthz),
    route("/readyz", readyz),
    route("/metrics", metrics_endpoint),
]
