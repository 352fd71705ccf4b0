"""The server context: everything a request handler needs, built once per app.

``create_app`` (kernex_server.app) builds one ``ServerContext`` and keeps it on
``app.state``; handlers reach it with ``context_of(request)``. Route modules import this
module, never the app factory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.engine import Engine
from starlette.requests import Request

from kernex_core import keys
from kernex_core.errors import KernexError
from kernex_git import redact_text
from kernex_server.audit import ERROR, OK, Auditor
from kernex_server.auth import AdminAuth, DeviceAuth
from kernex_server.bundle_pins import missing_bundles
from kernex_server.bundles import BlobStore
from kernex_server.changes import Change, served_manifests
from kernex_server.enrollment import Enroller
from kernex_server.manifests import ManifestCache, ServedManifest
from kernex_server.metrics import DeviceCensus, Metrics, RolloutMetrics
from kernex_server.models import Rollout
from kernex_server.outage import DatabaseHealth, background_failed
from kernex_server.reconciler import (
    DEPLOYED,
    Reconciler,
    ReconcileResult,
    served_from_row,
)
from kernex_server.rollouts import RolloutActError
from kernex_server.serials import lift_device
from kernex_server.settings import Settings
from kernex_server.status import StatusRecorder
from kernex_server.store import Store
from kernex_server.wire import BundleWarning

if TYPE_CHECKING:
    from kernex_server.alerts import Alerter
    from kernex_server.bundle_gc import BundleCollector
    from kernex_server.git_fetch import Fetcher
    from kernex_server.keyring import Keyring

log = logging.getLogger("kernex.server")
MAX_SERIAL = 2**53  # a reported serial at or above this is not followed (JSON-safe integers)


def context_of(request: Request) -> ServerContext:
    """The ``ServerContext`` of the app serving ``request``."""
    kx: ServerContext = request.app.state.kx
    return kx


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
    bundle_gc: BundleCollector | None = None  # set by create_app
    keyring: Keyring | None = None  # set by create_app
    alerter: Alerter | None = None  # set by create_app
    database: DatabaseHealth = field(default_factory=DatabaseHealth)  # outages, logged once
    fetcher: Fetcher | None = None  # set by create_app: Git fetches in the background

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

    async def serial_seen(self, device_id: str, seen: int) -> None:
        """A device reported serial ``seen``: when that is above the serial it is served
        (state lost, e.g. restored with too small a jump), serve it above ``seen``."""
        served = self.cache.get(device_id)
        if served is None or seen <= served.serial or seen >= MAX_SERIAL:
            return
        reconciler = self.reconciler

        def lift(s: Any, now: float) -> ServedManifest | None:
            ttl = reconciler.manifest_ttl()
            return lift_device(s, reconciler.issuer, device_id, seen, now=now, ttl=ttl)

        done = await anyio.to_thread.run_sync(lambda: reconciler.locked(lift))
        if done is None:
            return
        self.cache.publish([done])
        if done.serial > seen:
            log.warning("device %s reported serial %d, above its %d: now %d",
                        device_id, seen, served.serial, done.serial)  # fmt: skip
            detail = {"reported": seen, "was": served.serial, "serial": done.serial}
            await anyio.to_thread.run_sync(
                lambda: self.auditor.record(
                    "reconciler", "device.serial_resumed", device_id, detail=detail
                )
            )

    async def issue_for(self, device_id: str) -> ServedManifest | None:
        served = await anyio.to_thread.run_sync(self.reconciler.issue_for, device_id)
        if served is not None:
            self.cache.publish([served])
        return served

    async def run_reconcile(
        self, *, force: bool = False, wait: float | None = None
    ) -> ReconcileResult:
        """Fetch (waiting at most ``wait`` seconds; the fetch goes on in the background),
        then reconcile what the source holds. A failed fetch is raised after the pass."""
        started = time.perf_counter()
        fetcher = self.fetcher if self.reconciler.source is not None else None
        fetching, fetch_error = False, None
        if fetcher is not None:
            try:
                fetching = not await fetcher.fetch(wait)
            except Exception as exc:
                fetch_error = exc
        try:
            result = await anyio.to_thread.run_sync(
                lambda: self.reconciler.reconcile(force=force, fetch=fetcher is None)
            )
        except Exception as exc:
            if not (fetching and isinstance(exc, KernexError)):
                self._reconcile_failed(fetch_error or exc, started)
                raise (fetch_error or exc) from None
            result = ReconcileResult(None, "fetching")  # nothing was fetched before
        result = replace(result, fetching=fetching)
        if result.state == DEPLOYED:  # deployed, but never silently without its bundles
            result = replace(result, warnings=tuple(self.missing_bundles()))
        if fetch_error is not None:
            await self._apply(result)  # what the mirror held is served; the fetch failed
            self._reconcile_failed(fetch_error, started)
            raise fetch_error
        self._observe(result.state, started)
        await self._apply(result)
        self.last_reconcile_error = None
        if result.state != "no_source" and not fetching:
            self.last_fetch_at = self.clock()
        return result

    def missing_bundles(self) -> list[BundleWarning]:
        """Bundles the deployed revision uses that the bundle store lacks (logged)."""
        missing = missing_bundles(
            self.reconciler.fleet, self.blobs.has, bundle_base_url=self.settings.bundle_base_url
        )
        for warning in missing:
            log.warning("%s", warning["message"])
        return missing

    def _reconcile_failed(self, exc: BaseException, started: float) -> None:
        self._observe("error", started)
        message = exc.message if isinstance(exc, KernexError) else str(exc)
        self.last_reconcile_error = redact_text(message)  # shown in /readyz and status

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
                "warnings": [dict(w) for w in result.warnings[:20]],
            },
        )
        for device_id in result.admitted:
            self.auditor.record(
                "reconciler",
                "device.admit",
                device_id,
                detail={"by": "fingerprint", "commit": commit},
            )

    async def reconcile_once(self, wait: float | None = None) -> None:
        """One pass of the background loop: reconcile, re-sign; never raises."""
        try:
            result = await self.run_reconcile(wait=wait)
            if result.state == "skipped":
                await self.reload_cache()
            resigned = await anyio.to_thread.run_sync(self.reconciler.resign_expiring)
            self.cache.publish(resigned)
        except KernexError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            log.error("reconcile failed: %s", redact_text(f"{exc.message}{hint}"))
        except Exception as exc:  # a database outage must not stop the loop; the next retries
            background_failed(self.database, exc, "reconcile")

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
        devices = set(self.cache.served_devices())
        rows = await anyio.to_thread.run_sync(self.store.all_manifests)
        self._refresh(rows, devices)

    def _refresh(self, rows: list[Any], devices: set[str]) -> None:
        """Publish ``rows`` where they are newer than the cache (a higher serial, or the
        same one signed for longer); of ``devices``, drop those without a row (revoked,
        rejected or deleted)."""
        fresh = [served_from_row(r) for r in rows]
        self.cache.publish(
            s
            for s in fresh
            if (c := self.cache.get(s.device_id)) is None
            or (s.serial, s.expires_at) > (c.serial, c.expires_at)
        )
        for device_id in devices - {s.device_id for s in fresh}:
            self.cache.drop(device_id)

    async def apply_change(self, change: Change) -> None:
        """Another server process sharing the database committed ``change``: serve the
        same here (kernex_server.changes)."""
        if change.deployed:
            followed = await anyio.to_thread.run_sync(self.reconciler.follow_deployed)
            if not followed and self.fetcher is not None:
                self.fetcher.start()  # in the background; the reconcile loop loads it next
        if change.devices is None:
            self.device_auth.forget_all()
            await self.load_census()
        else:
            for device_id in change.devices:
                self.device_auth.forget(device_id)
        if change.devices is None or change.manifests is None:
            await self.reload_cache()
        elif changed := change.devices | change.manifests:
            rows = await anyio.to_thread.run_sync(
                lambda: served_manifests(self.store.sessions, changed)
            )
            self._refresh(rows, changed)
        if change.rollouts and self._rollout_wake is not None:
            self._rollout_wake.set()

    async def flush_statuses(self) -> None:
        """Commit every status report accepted so far (admin reads call this first)."""
        if self.statuses.pending():
            await anyio.to_thread.run_sync(self.statuses.flush)
            self.database.ok()

    async def flush_heartbeats(self) -> None:
        seen = self.device_auth.take_heartbeats()
        if seen:
            try:
                await anyio.to_thread.run_sync(self.store.touch, seen)
            except Exception:  # kept for the next flush; newer heartbeats win
                for device_id, at in seen.items():
                    self.device_auth.heartbeats.setdefault(device_id, at)
                raise
