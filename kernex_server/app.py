"""The server application: ``create_app(settings, ...)`` builds a Starlette app.

The lifespan migrates the database, fills the manifest cache from it, runs a first
reconcile, and then keeps three background loops: reconcile every ``poll_interval`` or at
once when a webhook wakes it (re-signing manifests close to expiry), and batch writes of
device status reports and of device heartbeats (both flushed again at shutdown).
Blocking work (Git, database, signing many manifests) runs in worker threads.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kernex_core import keys
from kernex_core.errors import KernexError
from kernex_git import GitEnv, redact_text
from kernex_server import admin_api, device_api, openapi, rollouts_api, webhooks
from kernex_server.audit import ERROR, OK, Auditor
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
from kernex_server.metrics import CONTENT_TYPE, DeviceCensus, Metrics
from kernex_server.middleware import ObservabilityMiddleware
from kernex_server.models import Rollout
from kernex_server.ratelimit import RateLimiter
from kernex_server.reconciler import (
    DEPLOYED,
    Reconciler,
    ReconcileResult,
    served_from_row,
)
from kernex_server.rollouts import RolloutActError, RolloutMetrics
from kernex_server.settings import Settings
from kernex_server.status import StatusRecorder
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
    auditor: Auditor
    metrics: Metrics
    census: DeviceCensus
    statuses: StatusRecorder
    last_reconcile_at: float | None = None
    last_reconcile_error: str | None = None  # the last pass raised (Git or database down)
    last_fetch_at: float | None = None  # the last pass that read the Git source
    _wake: anyio.Event | None = None  # set by a webhook; the reconcile loop waits on it
    rollout_metrics: RolloutMetrics | None = None
    _rollout_wake: anyio.Event | None = None  # set by a rollout device's report

    # -- staged rollouts (kernex_server.rollouts) ------------------------------------------

    async def evaluate_rollouts(self) -> None:
        served = await anyio.to_thread.run_sync(self._evaluate_rollouts)
        self.cache.publish(served)

    def _evaluate_rollouts(self) -> list[ServedManifest]:
        # Rollouts decide on reported phases, which reach the database in batches.
        self.statuses.flush()
        engine = self.reconciler.rollouts
        served = self.reconciler.evaluate_rollouts()
        with self.store.sessions() as s:
            counts = engine.counts(s)
        halts, engine.halts = engine.halts, 0
        if self.rollout_metrics is not None:
            self.rollout_metrics.observe(counts, halts)
        for event in engine.take_events():
            self.auditor.record(
                "rollouts", event.action, str(event.rollout_id), detail=event.detail
            )
        return served

    def rollout_counts(self) -> dict[str, int]:
        with self.store.sessions() as s:
            return self.reconciler.rollouts.counts(s)

    async def rollout_report(self, device_id: str) -> None:
        """A device reported: if a running rollout watches it, evaluate soon."""
        if device_id not in self.reconciler.rollouts.watched:
            return
        if self._rollout_wake is not None:
            self._rollout_wake.set()  # the loop evaluates, at most every ROLLOUT_DEBOUNCE
        else:
            await self.evaluate_rollouts()

    async def rollout_act(self, rollout_id: int, verb: str) -> dict[str, Any]:
        engine = self.reconciler.rollouts

        def act(s: Any, now: float) -> tuple[list[ServedManifest], dict[str, Any]]:
            served = engine.act(s, rollout_id, verb, now)
            s.flush()
            return served, engine.describe(s, s.get(Rollout, rollout_id))

        done = await anyio.to_thread.run_sync(lambda: self.reconciler.locked(act))
        if done is None:
            raise RolloutActError(
                "another server holds the reconcile lock", hint="Try again.", status=503
            )
        self.cache.publish(done[0])
        await self.evaluate_rollouts()
        return done[1]

    async def issue_for(self, device_id: str) -> ServedManifest | None:
        served = await anyio.to_thread.run_sync(self.reconciler.issue_for, device_id)
        if served is not None:
            self.cache.publish([served])
        return served

    async def run_reconcile(self, *, force: bool = False) -> ReconcileResult:
        started = time.perf_counter()
        try:
            result = await anyio.to_thread.run_sync(lambda: self.reconciler.reconcile(force=force))
        except Exception as exc:
            self._observe("error", started)
            message = exc.message if isinstance(exc, KernexError) else str(exc)
            self.last_reconcile_error = redact_text(message)  # shown in /readyz and status
            raise
        self._observe(result.state, started)
        self.last_reconcile_error = None
        if result.state != "no_source":
            self.last_fetch_at = self.clock()
        await self._apply(result)
        return result

    def _observe(self, state: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.reconcile_duration.labels(result=state).observe(elapsed)
        self.metrics.reconciles.labels(result=state).inc()
        self.last_reconcile_at = self.clock()

    async def _apply(self, result: ReconcileResult) -> None:
        for device_id in result.admitted:
            self.device_auth.forget(device_id)
            self.census.set_state(device_id, "accepted")
        self.cache.publish(result.changed)
        if result.state == DEPLOYED:
            await self.evaluate_rollouts()
        if result.state in {"deployed", "invalid", "unsigned"} and result.commit:
            await anyio.to_thread.run_sync(lambda: self._audit_pass(result))

    def _audit_pass(self, result: ReconcileResult) -> None:
        commit = result.commit or ""
        self.auditor.record(
            "reconciler",
            "reconcile",
            commit,
            result=OK if result.state == DEPLOYED else ERROR,
            detail={
                "state": result.state,
                "devices_changed": len(result.changed),
                "errors": [dict(e) for e in result.errors[:20]],
                "error_count": len(result.errors),
                "forced": result.forced,
            },
        )
        for device_id in result.admitted:
            self.auditor.record(
                "reconciler",
                "device.admit",
                device_id,
                detail={"by": "fingerprint", "commit": commit},
            )

    async def reconcile_once(self) -> None:
        """One pass of the background loop: reconcile, re-sign; never raises."""
        try:
            result = await self.run_reconcile()
            if result.state == "skipped":
                await self.reload_cache()
            resigned = await anyio.to_thread.run_sync(self.reconciler.resign_expiring)
            self.cache.publish(resigned)
        except KernexError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            log.error("reconcile failed: %s", redact_text(f"{exc.message}{hint}"))
        except Exception:  # a database outage must not stop the loop; the next pass retries
            log.exception("reconcile failed")

    def wake_reconciler(self) -> bool:
        """Ask the reconcile loop for a pass now; False when no loop runs."""
        if self._wake is None:
            return False
        self._wake.set()
        return True

    async def load_census(self) -> None:
        rows = await anyio.to_thread.run_sync(self.store.device_overview)
        for r in rows:
            device = r["device"]
            self.census.set_state(device.id, device.state)
            if r["status"] is not None:
                self.census.set_phase(device.id, r["status"]["phase"])
            if device.last_seen:
                seen = self.device_auth.last_seen.get(device.id) or 0.0
                self.device_auth.last_seen[device.id] = max(seen, device.last_seen)

    async def reload_cache(self) -> None:
        """Publish what the database holds (at start; when another server reconciles)."""
        rows = await anyio.to_thread.run_sync(self.store.all_manifests)
        fresh = [served_from_row(r) for r in rows]
        self.cache.publish(
            s for s in fresh if (c := self.cache.get(s.device_id)) is None or c.etag != s.etag
        )

    async def flush_statuses(self) -> None:
        """Commit every status report accepted so far (admin reads call this first)."""
        if self.statuses.pending():
            await anyio.to_thread.run_sync(self.statuses.flush)

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
        env=GitEnv.server(settings.git_config_path),
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
            store, clock=clock, limiter=RateLimiter(settings.token_rate, settings.token_burst)
        ),
        enroller=Enroller(sessions),
        reconciler=reconciler,
        manifest_public_key=key.public_key(),
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
    reconciler.rollouts.online = lambda device_id: _online(kx, device_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if run_migrations:
            await anyio.to_thread.run_sync(lambda: migrate(engine, schema=settings.database_schema))
        await kx.reload_cache()
        await kx.load_census()
        await _reconcile_once(kx)
        await kx.evaluate_rollouts()  # rollouts survive restarts: their state is in the DB
        async with anyio.create_task_group() as tg:
            if background:
                tg.start_soon(_reconcile_loop, kx)
                tg.start_soon(_status_loop, kx)
                tg.start_soon(_rollout_loop, kx)
                tg.start_soon(_heartbeat_loop, kx)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        await kx.flush_statuses()
        await kx.flush_heartbeats()
        engine.dispose()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route(openapi.PATH, openapi.endpoint, methods=["GET"]),
            *device_api.routes,
            *admin_api.routes,
            *rollouts_api.routes,
            *webhooks.routes,
        ],
        middleware=[Middleware(ObservabilityMiddleware, metrics=metrics)],
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
    await kx.reconcile_once()


async def _reconcile_loop(kx: ServerContext) -> None:
    while True:
        kx._wake = wake = anyio.Event()
        with anyio.move_on_after(kx.settings.poll_interval):
            await wake.wait()
        await _reconcile_once(kx)


async def _status_loop(kx: ServerContext) -> None:
    while True:
        await anyio.sleep(kx.settings.status_flush_interval)
        try:
            await kx.flush_statuses()
        except Exception:  # keep serving; the batch went back to the queue for the next try
            log.exception("cannot record status reports")


ROLLOUT_DEBOUNCE = 0.2  # seconds: reports arriving together make one evaluation


def _online(kx: ServerContext, device_id: str) -> bool:
    seen = kx.device_auth.last_seen.get(device_id)
    return seen is not None and kx.clock() - seen <= kx.reconciler.offline_after()


async def _rollout_loop(kx: ServerContext) -> None:
    while True:
        kx._rollout_wake = wake = anyio.Event()
        with anyio.move_on_after(kx.settings.rollout_interval):
            await wake.wait()
        try:
            await kx.evaluate_rollouts()
        except Exception:  # a database outage must not stop the loop
            log.exception("cannot evaluate rollouts")
        await anyio.sleep(ROLLOUT_DEBOUNCE)


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
    """Ready when the database answers, the Git source was read within
    ``ready_poll_intervals`` poll intervals, a revision is deployed, and the data
    directory is writable with ``min_free_bytes`` free. 503 names what failed."""
    kx: ServerContext = request.app.state.kx
    checks: dict[str, Any] = {}
    try:
        await anyio.to_thread.run_sync(check_connection, kx.engine)
        checks["database"] = "ok"
    except KernexError as exc:
        checks["database"] = exc.message
    checks["git"] = _git_check(kx)
    checks["fleet"] = (
        "ok" if kx.reconciler.fleet is not None or kx.reconciler.source is None else "no revision"
    )
    checks["disk"] = await anyio.to_thread.run_sync(_disk_check, kx.settings)
    failing = sorted(k for k, v in checks.items() if v != "ok")
    body = {"ready": not failing, "checks": checks, "failing": failing}
    return json_response(body, status=503 if failing else 200)


def _git_check(kx: ServerContext) -> str:
    if kx.reconciler.source is None:
        return "ok"
    limit = kx.settings.poll_interval * kx.settings.ready_poll_intervals
    if kx.last_fetch_at is None:
        return kx.last_reconcile_error or "not fetched yet"
    age = kx.clock() - kx.last_fetch_at
    if age > limit:
        reason = f": {kx.last_reconcile_error}" if kx.last_reconcile_error else ""
        return f"not fetched for {int(age)} s{reason}"
    return "ok"


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


@public_endpoint
async def metrics_endpoint(request: Request) -> Response:
    kx: ServerContext = request.app.state.kx
    expected = kx.settings.metrics_token
    if expected:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthError(401, "metrics need `Authorization: Bearer <metrics_token>`")
    return Response(kx.metrics.render(), media_type=CONTENT_TYPE)


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
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(status, exc.message, exc.hint)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for this class only
        raise exc
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
