"""The agent loop: poll, verify, download, install, health-check, switch, report, roll back.

One ``Agent`` drives one device. Its edges are handed in: the ``httpx.AsyncClient``, the
data directory (in ``AgentConfig``), the hook runner, the file-system edge, the clock and
the sleep, so a fleet simulator can run hundreds of agents in one event loop::

    agent = Agent(config, client, clock=..., sleep=..., hooks=..., fs=...)
    await agent.run_once()            # one cycle; CycleResult(ok, phase, error)
    await agent.run_forever(stop)     # until the asyncio.Event is set

The install transaction is in ``install.py`` (``Installer``), the status reports and their
queue in ``reports.py`` (``Reporter``); ``Agent`` is built on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from kernex_agent.client import DeviceClient
from kernex_agent.config import AgentConfig, Layout
from kernex_agent.errors import AgentError, AgentStateError
from kernex_agent.hooks import HookRunner, SubprocessHookRunner
from kernex_agent.install import CycleResult, Installer, describe
from kernex_agent.reports import Clock, Sleep
from kernex_agent.state import AgentState
from kernex_agent.storage import DeviceFS
from kernex_core import keys
from kernex_core.bundle import ExtractLimits
from kernex_core.errors import KernexError, ManifestRejectedError
from kernex_core.manifest import MAX_MANIFEST_BYTES
from kernex_core.protocol import Phase
from kernex_core.timefmt import format_time, parse_time
from kernex_core.trust import TrustAnchors, accept_manifest

log = logging.getLogger("kernex.agent")


class Agent(Installer):
    def __init__(
        self,
        config: AgentConfig,
        http: httpx.AsyncClient,
        *,
        key: keys.PrivateKey | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        hooks: HookRunner | None = None,
        fs: DeviceFS | None = None,
        rng: random.Random | None = None,
        crash_at: str | None = None,
        extract_limits: ExtractLimits | None = None,
    ) -> None:
        self.config = config
        self.layout = Layout(config.data_dir)
        self.clock = clock
        self.sleep = sleep
        self.fs = fs or DeviceFS()
        self.hooks = hooks or SubprocessHookRunner(os.environ)
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.crash_at = crash_at
        self.extract_limits = extract_limits or config.extract_limits()
        self.key = key or _load_key(self.layout.key)
        self.client = DeviceClient(
            http,
            config.server_url,
            config.device_id,
            self.key,
            clock=clock,
            request_timeout=config.request_timeout,
        )
        self._started = False
        self._reports_made = 0
        self._status = None  # status.json's content, once read
        self._installing = False  # inside apply/recover: a stop waits for it

    # ----------------------------------------------------------------- the loop

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run cycles until ``stop`` is set; back off with full jitter after failures.

        ``stop`` ends a cycle at once while it waits (long poll, report, backoff); an
        install in progress (or its recovery after a restart) finishes first."""
        failures = 0
        while not stop.is_set():
            started = self.clock()
            result = await self._cycle_until(stop)
            if result is None:
                return
            if result.ok:
                failures = 0
                delay = max(0.0, self.config.min_cycle_interval - (self.clock() - started))
            else:
                failures += 1
                delay = self.backoff_delay(failures)
            await self._pause(delay, stop)

    async def _cycle_until(self, stop: asyncio.Event) -> CycleResult | None:
        """One cycle, or ``None`` when ``stop`` ended it."""
        cycle = asyncio.ensure_future(self.run_once())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({cycle, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if cycle.done():
            return cycle.result()
        if self._installing:  # never leave an install half done: it ends, then we stop
            log.info("stopping once the install in progress has finished")
            await cycle
        else:  # waiting outside an install (a long poll): safe to drop
            cycle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cycle
        return None

    def backoff_delay(self, failures: int) -> float:
        """Exponential backoff with full jitter, capped (seconds)."""
        ceiling = min(self.config.backoff_cap, self.config.backoff_base * 2 ** min(failures, 30))
        return self.rng.uniform(0, ceiling)

    async def _pause(self, delay: float, stop: asyncio.Event) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        sleeper = asyncio.ensure_future(self.sleep(delay))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeper, stopper):
            task.cancel()

    async def run_once(self) -> CycleResult:
        """One cycle: recover (first time), flush reports, long-poll, verify, converge."""
        try:
            return await self._cycle()
        except Exception as exc:  # report it and back off, never crash-loop
            error = describe(exc)
            expected = isinstance(exc, (KernexError, OSError))
            log.warning("cycle failed: %s", error, exc_info=None if expected else exc)
            self._note_error(error)
            return CycleResult(False, error=error)

    async def _cycle(self) -> CycleResult:
        now = self.clock()  # one clock reading per cycle (manifest expiry, retry times)
        state = self.load_state()
        if not self._started:
            self._reports_made = 0
            with self._install_section():
                state = await self.recover(state)
            self._started = True
            if not self._reports_made:  # say what runs after a (re)start
                await self.report(_steady_phase(state), state)
        else:
            await self.flush_reports()
        try:
            fetch = await self.client.fetch_manifest(
                self._etag_to_send(state, now), self.config.poll_wait, MAX_MANIFEST_BYTES
            )
        except AgentError as exc:
            self._note_error(describe(exc))
            return CycleResult(False, error=describe(exc))
        if fetch.raw is None:
            expired_at = _expired_at(state, now)
            if expired_at is not None:  # a 304 is not signed: it cannot extend a manifest
                error = (
                    f"no fresh manifest: the last one expired at {expired_at} and the server "
                    "answers 'not modified' (freeze attack, or a server that stopped signing)"
                )
                await self.report(Phase.FAILED, state, error=error)
                return CycleResult(False, Phase.FAILED, error)
            return CycleResult(True)
        try:
            manifest, anchors = accept_manifest(fetch.raw, self.anchors(state), now)
        except ManifestRejectedError as exc:
            error = f"manifest rejected ({exc.reason}): {exc}"
            await self.report(Phase.FAILED, state, error=error)
            return CycleResult(False, Phase.FAILED, error)
        digest = manifest.desired_digest()
        state.trust = anchors.to_dict()
        state.etag = fetch.etag
        state.last_manifest = {
            "serial": manifest.serial,
            "revision": manifest.revision,
            "issued_at": format_time(manifest.issued_at),
            "expires_at": format_time(manifest.expires_at),
            "digest": digest,
        }
        if digest == state.applied_digest:
            refreshed = state.applied_serial != manifest.serial
            state.applied_serial, state.applied_revision = manifest.serial, manifest.revision
            self.save_state(state)
            if refreshed:
                await self.report(Phase.HEALTHY, state)
            return CycleResult(True)
        self.save_state(state)
        failed = state.failed
        if failed is not None and failed.serial == manifest.serial and now < failed.retry_at:
            return CycleResult(True)  # this serial failed: wait before trying it again
        with self._install_section():
            return await self.apply(manifest, state, now)

    @contextlib.contextmanager
    def _install_section(self) -> Iterator[None]:
        """Marks the part of a cycle a stop request must not interrupt."""
        self._installing = True
        try:
            yield
        finally:
            self._installing = False

    def _etag_to_send(self, state: AgentState, now: float) -> str | None:
        if _expired_at(state, now) is not None:
            return None  # the last manifest expired: only a freshly signed one will do
        last = state.last_manifest or {}
        converged = state.applied_digest is not None and last.get("digest") == state.applied_digest
        waiting = state.failed is not None and state.failed.serial == last.get("serial")
        if converged or (waiting and state.failed is not None and now < state.failed.retry_at):
            return state.etag
        return None  # fetch the manifest again: it still has to be applied

    def anchors(self, state: AgentState) -> TrustAnchors:
        return TrustAnchors.from_dict(self.config.device_id, state.trust)


def _load_key(path: Path) -> keys.PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentStateError(
            f"cannot read the device key {path}: {exc.strerror}",
            hint="Run `kernex agent enroll` first, or pass --data-dir.",
        ) from exc
    return keys.load_private_key_pem(data, source=str(path))


def _expired_at(state: AgentState, now: float) -> str | None:
    """When the last accepted manifest expired (RFC 3339), or None if it has not."""
    expires_at = (state.last_manifest or {}).get("expires_at")
    try:
        return expires_at if expires_at and now >= parse_time(expires_at) else None
    except ValueError:
        return None


def _steady_phase(state: AgentState) -> Phase:
    return Phase.HEALTHY if state.applied_serial is not None else Phase.IDLE
