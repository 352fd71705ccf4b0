"""The server application: ``create_app(settings, ...)`` builds a Starlette app.

The lifespan migrates the database, fills the manifest cache from it, runs a first
reconcile, and then keeps three background loops: reconcile every ``poll_interval``
(re-signing manifests close to expiry), and batch writes of device heartbeats. Blocking
work (Git, database, signing many manifests) runs in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kernex_core import keys
from kernex_core.errors import KernexError
from kernex_server import admin_api, device_api
from kernex_server.auth import AdminAuth, AuthError, DeviceAuth, public_endpoint
from kernex_server.bundles import BlobStore
from kernex_server.database import (
    check_connection,
    is_postgres,
    make_engine,
    migrate,
    session_factory,
)
from kernex_server.desired import FleetLoader, default_fleet_loader
from kernex_server.enrollment import Enroller
from kernex_server.errors import ServerSetupError
from kernex_server.git_source import FleetSource, GitFleetSource
from kernex_server.http import ApiError, error_response, json_response
from kernex_server.manifests import ManifestCache, ManifestIssuer, ServedManifest
from kernex_server.reconciler import Reconciler, ReconcileResult, served_from_row
from kernex_server.settings import Settings
from kernex_server.store import Store

log = logging.getLogger("kernex.server")


@dataclass
class ServerContext:
    """Everything a request handler needs, built once per app."""

    settings: Settings
    engine: Engine
    store: Store
    blobs: BlobStore
    cache: ManifestCache
    device_auth: DeviceAuth
    admin_auth: AdminAuth
    enroller: Enroller
    reconciler: Reconciler
    manifest_public_key: keys.PublicKey
    clock: Callable[[], float]

    async def issue_for(self, device_id: str) -> ServedManifest | None:
        served = await anyio.to_thread.run_sync(self.reconciler.issue_for, device_id)
        if served is not None:
            self.cache.publish([served])
        return served

    async def run_reconcile(self, *, force: bool = False) -> ReconcileResult:
        result = await anyio.to_thread.run_sync(lambda: self.reconciler.reconcile(force=force))
        self._apply(result)
        return result

    def _apply(self, result: ReconcileResult) -> None:
        for device_id in result.admitted:
            self.device_auth.forget(device_id)
        self.cache.publish(result.changed)

    async def reload_cache(self) -> None:
        """Publish what the database holds (at start; when another server reconciles)."""
        rows = await anyio.to_thread.run_sync(self.store.all_manifests)
        fresh = [served_from_row(r) for r in rows]
        self.cache.publish(
            s for s in fresh if (c := self.cache.get(s.device_id)) is None or c.etag != s.etag
        )

    async def flush_heartbeats(self) -> None:
        seen = self.device_auth.take_heartbeats()
        if seen:
            await anyio.to_thread.run_sync(self.store.touch, seen)


def load_manifest_key(settings: Settings) -> keys.PrivateKey:
    path = settings.manifest_key_path
    if not path.is_file():
        raise ServerSetupError(
            f"no manifest key at {path}",
            hint=f"Run `kernex server init --data-dir {settings.data_dir}` first.",
        )
    return keys.load_private_key_pem(path.read_bytes(), source=str(path))


def default_source(settings: Settings) -> FleetSource | None:
    if not settings.repo:
        return None
    return GitFleetSource(
        settings.repo,
        settings.branch,
        clone_dir=settings.clone_dir,
        allowed_signers=settings.signers_path(),
    )


def create_app(
    settings: Settings,
    *,
    manifest_key: keys.PrivateKey | None = None,
    source: FleetSource | None = None,
    load_fleet: FleetLoader | None = None,
    clock: Callable[[], float] = time.time,
    run_migrations: bool = True,
    background: bool = True,
) -> Starlette:
    """Build the server. ``source`` and ``load_fleet`` default to the configured Git
    repository and the core's fleet loader; tests pass stubs."""
    key = manifest_key if manifest_key is not None else load_manifest_key(settings)
    engine = make_engine(settings.effective_database_url(), schema=settings.database_schema)
    sessions = session_factory(engine)
    store = Store(sessions)
    src = source if source is not None else default_source(settings)
    loader = load_fleet
    if loader is None and src is not None:
        loader = default_fleet_loader()
    issuer = ManifestIssuer(key, bundle_base_url=settings.bundle_base_url)
    reconciler = Reconciler(
        settings, sessions, issuer, src, loader, postgres=is_postgres(engine), clock=clock
    )
    kx = ServerContext(
        settings=settings,
        engine=engine,
        store=store,
        blobs=BlobStore(settings.blob_dir),
        cache=ManifestCache(),
        device_auth=DeviceAuth(store, max_skew=settings.max_skew, clock=clock),
        admin_auth=AdminAuth(store, clock=clock),
        enroller=Enroller(sessions),
        reconciler=reconciler,
        manifest_public_key=key.public_key(),
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if run_migrations:
            await anyio.to_thread.run_sync(lambda: migrate(engine, schema=settings.database_schema))
        await kx.reload_cache()
        await _reconcile_once(kx)
        async with anyio.create_task_group() as tg:
            if background:
                tg.start_soon(_reconcile_loop, kx)
                tg.start_soon(_heartbeat_loop, kx)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        await kx.flush_heartbeats()
        engine.dispose()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *device_api.routes,
            *admin_api.routes,
        ],
        exception_handlers={
            ApiError: _api_error,
            AuthError: _auth_error,
            KernexError: _kernex_error,
            HTTPException: _http_error,
        },
        lifespan=lifespan,
    )
    app.state.kx = kx
    return app


async def _reconcile_once(kx: ServerContext) -> None:
    try:
        result = await kx.run_reconcile()
        if result.state == "skipped":
            await kx.reload_cache()
        resigned = await anyio.to_thread.run_sync(kx.reconciler.resign_expiring)
        kx.cache.publish(resigned)
    except KernexError as exc:
        log.error("reconcile failed: %s%s", exc.message, f" ({exc.hint})" if exc.hint else "")
    except Exception:  # a database outage must not stop the loop; the next pass retries
        log.exception("reconcile failed")


async def _reconcile_loop(kx: ServerContext) -> None:
    while True:
        await anyio.sleep(kx.settings.poll_interval)
        await _reconcile_once(kx)


async def _heartbeat_loop(kx: ServerContext) -> None:
    while True:
        await anyio.sleep(kx.settings.heartbeat_flush_interval)
        try:
            await kx.flush_heartbeats()
        except Exception:  # keep serving; the heartbeats of this batch are lost
            log.exception("cannot record heartbeats")


@public_endpoint
async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@public_endpoint
async def readyz(request: Request) -> Response:
    kx: ServerContext = request.app.state.kx
    checks: dict[str, Any] = {}
    try:
        await anyio.to_thread.run_sync(check_connection, kx.engine)
        checks["database"] = "ok"
    except KernexError as exc:
        checks["database"] = exc.message
    checks["fleet"] = (
        "ok" if kx.reconciler.fleet is not None or kx.reconciler.source is None else "no revision"
    )
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def _api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):  # registered for this class only
        raise exc
    return error_response(exc.status, exc.message, exc.hint, **exc.extra)


async def _auth_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, AuthError):  # registered for this class only
        raise exc
    headers = {"WWW-Authenticate": "Bearer"} if request.url.path.startswith("/v1/admin") else {}
    response = error_response(exc.status, exc.message, exc.hint)
    response.headers.update(headers)
    return response


async def _kernex_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, KernexError):  # registered for this class only
        raise exc
    status = getattr(exc, "status", 500)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(status, exc.message, exc.hint)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for this class only
        raise exc
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
