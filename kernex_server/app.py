"""The server application: ``create_app(settings, ...)`` builds a Starlette app.

The lifespan migrates the database, fills the manifest cache from it, runs a first
reconcile (waiting at most ``STARTUP_FETCH_WAIT`` for the first Git fetch, which otherwise
goes on in the background: serving never waits on Git), and then keeps three background
loops: reconcile every ``poll_interval`` or at once when a webhook wakes it (re-signing
manifests close to expiry), and batch writes of device status reports and of device
heartbeats (both flushed again at shutdown).
Blocking work (Git, database, signing many manifests) runs in worker threads.

The request handlers live in the route modules (``device_api``, ``admin_api``,
``devices_api``, ``tokens_api``, ``bundles_api``, ``rollouts_api``, ``webhooks``, ``ops``,
``openapi``, ...); they reach the app's state through
``kernex_server.context`` and never import this module.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import anyio
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kernex_core import fleet, keys
from kernex_core.errors import KernexError
from kernex_git import GitEnv, NetworkLimits, stop_all
from kernex_server import (
    admin_api,
    alerts_api,
    bundle_gc,
    bundles_api,
    device_api,
    devices_api,
    info_api,
    keys_api,
    labels_api,
    openapi,
    ops,
    rollouts_api,
    tokens_api,
    users_api,
    webhooks,
)
from kernex_server.alerts import Alerter, alert_loop
from kernex_server.api import route
from kernex_server.audit import Auditor
from kernex_server.auth import AdminAuth, AuthError, DeviceAuth
from kernex_server.bundles import BlobStore
from kernex_server.changes import ChangeListener, ChangeRecorder, new_origin
from kernex_server.context import ServerContext
from kernex_server.cors import AdminCORSMiddleware, check_origins
from kernex_server.database import (
    is_postgres,
    make_engine,
    migrate,
    session_factory,
)
from kernex_server.enrollment import Enroller
from kernex_server.errors import ServerSetupError
from kernex_server.git_fetch import Fetcher
from kernex_server.git_source import FleetSource, GitFleetSource
from kernex_server.http import ApiError, error_response
from kernex_server.keyring import Keyring
from kernex_server.manifests import ManifestCache, ManifestIssuer
from kernex_server.metrics import AlertMetrics, DeviceCensus, Metrics, RolloutMetrics
from kernex_server.middleware import ObservabilityMiddleware
from kernex_server.nonces import PRUNE_SECONDS, SharedNonces
from kernex_server.outage import (
    RETRY_AFTER,
    DatabaseUnavailableError,
    background_failed,
    database_error,
    probe_loop,
    unavailable,
)
from kernex_server.ratelimit import RateLimiter
from kernex_server.reconciler import FleetLoader, Reconciler
from kernex_server.retention import Pruner, RetentionPolicy
from kernex_server.settings import Settings
from kernex_server.status import StatusRecorder
from kernex_server.store import Store
from kernex_server.ui import pages as ui_pages

log = logging.getLogger("kernex.server")
STARTUP_FETCH_WAIT = 0.25  # seconds start-up waits for the first fetch before serving
LISTEN_TIMEOUT = 5.0  # seconds start-up waits for the change listener's LISTEN


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
        env=GitEnv.server(settings.git_config_path, limits=network_limits(settings)),
    )


def network_limits(settings: Settings) -> NetworkLimits:
    return NetworkLimits(
        timeout=settings.git_timeout,
        connect_timeout=settings.git_connect_timeout,
        low_speed_limit=settings.git_low_speed_limit,
        low_speed_time=settings.git_low_speed_time,
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
        loader = fleet.load_fleet
    issuer = ManifestIssuer(key, bundle_base_url=settings.bundle_base_url)
    keyring = Keyring(settings.data_dir / "keys", issuer)  # announcements, a rotation
    metrics = Metrics()
    reconciler = Reconciler(
        settings, sessions, issuer, src, loader, postgres=is_postgres(engine), clock=clock
    )
    kx = ServerContext(
        settings=settings,
        engine=engine,
        store=store,
        blobs=BlobStore(settings.blob_dir),
        cache=ManifestCache(),
        device_auth=DeviceAuth(
            store,
            max_skew=settings.max_skew,
            clock=clock,
            limiter=RateLimiter(settings.device_rate, settings.device_burst),
            on_reject=metrics.device_rejected,
        ),
        admin_auth=AdminAuth(
            store,
            clock=clock,
            limiter=RateLimiter(settings.token_rate, settings.token_burst),
            failures=RateLimiter(settings.auth_failure_rate, settings.auth_failure_burst),
        ),
        enroller=Enroller(
            sessions, limiter=RateLimiter(settings.enroll_rate, settings.enroll_burst)
        ),
        reconciler=reconciler,
        manifest_public_key=keyring.signing.public_key(),
        clock=clock,
        auditor=Auditor(store, clock=clock),
        metrics=metrics,
        census=DeviceCensus(),
        statuses=StatusRecorder(store, keep=settings.status_history),
    )
    metrics.watch_devices(
        kx.census, kx.device_auth.last_seen.get, lambda: kx.reconciler.offline_after(), clock
    )
    kx.rollout_metrics = RolloutMetrics(metrics.registry)
    kx.keyring = keyring
    kx.bundle_gc = bundle_gc.BundleCollector(
        sessions, kx.blobs, reconciler, grace_days=settings.bundle_gc_grace_days, clock=clock
    )
    metrics.watch_store(lambda: kx.blobs.total_bytes)
    kx.fetcher = Fetcher(src.sync if src else None, clock=clock, registry=metrics.registry)
    reconciler.rollouts.online = lambda device_id: _online(kx, device_id)
    listener: ChangeListener | None = None
    if is_postgres(engine):  # other server processes may share the database
        origin = new_origin()
        ChangeRecorder(sessions, origin)
        listener = ChangeListener(
            engine,
            settings.database_schema,
            origin,
            kx.apply_change,
            check_interval=settings.change_check_interval,
        )
        kx.device_auth.shared = SharedNonces(engine, window_seconds=2 * settings.max_skew)
    kx.alerter = alerter = Alerter(
        settings,
        sessions,
        AlertMetrics(metrics.registry),
        clock=clock,
        offline=lambda: _offline_count(kx),
        reconcile_error=lambda: kx.last_reconcile_error,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if run_migrations:
            await anyio.to_thread.run_sync(lambda: migrate(engine, schema=settings.database_schema))
        async with anyio.create_task_group() as tg:
            if listener is not None:  # first hear others' changes, then load what is there
                tg.start_soon(listener.run)
                with anyio.move_on_after(LISTEN_TIMEOUT):
                    await listener.connected.wait()
            # after a restore, serials resume above anything a device could have seen
            await anyio.to_thread.run_sync(kx.reconciler.lift_serials)
            await kx.reload_cache()
            await kx.load_census()
            await anyio.to_thread.run_sync(kx.blobs.stored)  # the store's size, for the metric
            await _remove_stale_uploads(kx)
            # Serving never waits on Git: a slow first fetch goes on in the background.
            await kx.reconcile_once(wait=STARTUP_FETCH_WAIT)
            await kx.evaluate_rollouts()  # rollouts survive restarts: their state is in the DB
            tg.start_soon(_status_loop, kx)  # always: a status report waits for its commit
            tg.start_soon(probe_loop, kx)
            if background:
                tg.start_soon(_reconcile_loop, kx)
                tg.start_soon(_rollout_loop, kx)
                if settings.prune_interval > 0:
                    pruner = Pruner(sessions, RetentionPolicy.of(settings), clock=clock)
                    tg.start_soon(_prune_loop, kx, pruner)
                tg.start_soon(_heartbeat_loop, kx)
                if kx.device_auth.shared is not None:
                    tg.start_soon(_nonce_loop, kx, kx.device_auth.shared)
                if settings.alerts:
                    tg.start_soon(alert_loop, alerter, settings.alert_interval, kx.database)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        stop_all()  # a fetch hanging on a silent remote ends with the server
        await kx.flush_statuses()
        await kx.flush_heartbeats()
        engine.dispose()

    middleware = [Middleware(ObservabilityMiddleware, metrics=metrics)]
    if settings.cors_origins:  # off by default; the admin API only
        middleware.append(
            Middleware(AdminCORSMiddleware, origins=check_origins(settings.cors_origins))
        )
    app = Starlette(
        routes=[
            *ops.routes,
            route(openapi.PATH, openapi.openapi_document),
            *device_api.routes,
            *info_api.routes,
            *bundle_gc.routes,
            *admin_api.routes,
            *keys_api.routes,
            *devices_api.routes,
            *tokens_api.routes,
            *bundles_api.routes,
            *alerts_api.routes,
            *labels_api.routes,
            *rollouts_api.routes,
            *users_api.routes,
            *ui_pages.routes,
            *webhooks.routes,
        ],
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            AuthError: _auth_error,
            KernexError: _kernex_error,
            sa.exc.SQLAlchemyError: database_error,
            HTTPException: _http_error,
        },
        lifespan=lifespan,
    )
    app.state.kx = kx
    return app


async def _reconcile_once(kx: ServerContext) -> None:
    await kx.reconcile_once()


async def _reconcile_loop(kx: ServerContext) -> None:
    while True:
        kx._wake = wake = anyio.Event()
        if kx.fetcher is None or kx.fetcher.running_since is None:  # else join the fetch
            with anyio.move_on_after(kx.settings.poll_interval):
                await wake.wait()
        await _reconcile_once(kx)


async def _status_loop(kx: ServerContext) -> None:
    """Group commit: write what is queued; reports arriving meanwhile form the next batch."""
    while True:
        await kx.statuses.wait_for_reports()
        if kx.settings.status_flush_interval > 0:  # let more reports join this batch
            await anyio.sleep(kx.settings.status_flush_interval)
        try:
            await kx.flush_statuses()
        except Exception as exc:  # its requests were answered 503; their agents resend
            background_failed(kx.database, exc, "recording status reports")
            await anyio.sleep(min(1.0, RETRY_AFTER))  # no busy loop while the database is away


ROLLOUT_DEBOUNCE = 0.2  # seconds: reports arriving together make one evaluation


def _online(kx: ServerContext, device_id: str) -> bool:
    seen = kx.device_auth.last_seen.get(device_id)
    return seen is not None and kx.clock() - seen <= kx.reconciler.offline_after()


def _offline_count(kx: ServerContext) -> tuple[int, int]:
    """(offline, accepted) devices now, for the fleet-offline alert."""
    accepted = [d for d, state in list(kx.census.state.items()) if state == "accepted"]
    return sum(not _online(kx, d) for d in accepted), len(accepted)


async def _rollout_loop(kx: ServerContext) -> None:
    while True:
        kx._rollout_wake = wake = anyio.Event()
        with anyio.move_on_after(kx.settings.rollout_interval):
            await wake.wait()
        try:
            await kx.evaluate_rollouts()
        except Exception as exc:  # a database outage must not stop the loop
            background_failed(kx.database, exc, "evaluating rollouts")
        await anyio.sleep(ROLLOUT_DEBOUNCE)


async def _remove_stale_uploads(kx: ServerContext) -> None:
    """Temporary files of uploads cut off by a server that died (kernex_server.bundles)."""
    try:
        removed = await anyio.to_thread.run_sync(
            lambda: kx.blobs.remove_stale_uploads(now=kx.clock())
        )
    except OSError as exc:  # keep serving; the next pass tries again
        log.warning("cannot remove stale uploads in %s: %s", kx.blobs.root / "tmp", exc)
        return
    if removed:
        log.info("removed %d stale upload file(s) from %s", removed, kx.blobs.root / "tmp")


async def _prune_loop(kx: ServerContext, pruner: Pruner) -> None:
    """Drop rows past their retention (kernex_server.retention), in small batches, and
    stale temporary upload files."""
    while True:
        await anyio.sleep(kx.settings.prune_interval)
        await _remove_stale_uploads(kx)
        try:
            removed = await anyio.to_thread.run_sync(pruner.prune)
        except Exception as exc:  # a database outage must not stop the loop; the next retries
            background_failed(kx.database, exc, "pruning old rows")
            continue
        if any(removed.values()):
            log.info("pruned %s", ", ".join(f"{n} {k}" for k, n in removed.items() if n))


async def _nonce_loop(kx: ServerContext, shared: SharedNonces) -> None:
    """Forget shared request nonces whose replay window has passed."""
    while True:
        await anyio.sleep(PRUNE_SECONDS)
        try:
            await anyio.to_thread.run_sync(shared.prune, kx.clock())
        except Exception as exc:  # keep serving; the next pass deletes them
            background_failed(kx.database, exc, "pruning request nonces")


async def _heartbeat_loop(kx: ServerContext) -> None:
    while True:
        await anyio.sleep(kx.settings.heartbeat_flush_interval)
        try:
            await kx.flush_heartbeats()
        except Exception as exc:  # keep serving; the batch is written with the next one
            background_failed(kx.database, exc, "recording heartbeats")


async def _api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):  # registered for this class only
        raise exc
    return error_response(exc.status, exc.message, exc.hint, **exc.extra)


async def _auth_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, AuthError):  # registered for this class only
        raise exc
    response = error_response(exc.status, exc.message, exc.hint)
    if exc.status == 401 and request.url.path.startswith(("/v1/admin", "/metrics")):
        response.headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def _kernex_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, KernexError):  # registered for this class only
        raise exc
    status = getattr(exc, "status", 500)
    if isinstance(exc, DatabaseUnavailableError):
        return unavailable(request, exc, exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(status, exc.message, exc.hint)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for this class only
        raise exc
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
