"""The agent loop: poll, verify, download, install, health-check, switch, report, roll back.

One ``Agent`` drives one device. Its edges are handed in: the ``httpx.AsyncClient``, the
data directory (in ``AgentConfig``), the hook runner, the file-system edge, the clock and
the sleep, so a fleet simulator can run hundreds of agents in one event loop::

    agent = Agent(config, client, clock=..., sleep=..., hooks=..., fs=...)
    await agent.run_once()            # one cycle; CycleResult(ok, phase, error)
    await agent.run_forever(stop)     # until the asyncio.Event is set

An install is a transaction recorded step by step in the journal (``state.py``); after a
crash ``recover`` finishes a transaction whose bundles were all switched, and undoes any
other, so ``current`` never points at a half-installed slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kernex_agent import AGENT_VERSION
from kernex_agent.client import DeviceClient
from kernex_agent.config import AgentConfig, Layout
from kernex_agent.errors import AgentError, AgentStateError, HookFailedError
from kernex_agent.hooks import HookRunner, SubprocessHookRunner
from kernex_agent.state import (
    TXN_BEGUN,
    TXN_COMMITTED,
    TXN_CONFIG_WRITTEN,
    TXN_REMOVED,
    TXN_ROLLED_BACK,
    AgentState,
    BundleStep,
    FailedSerial,
    InstalledBundle,
    Journal,
    dump_json,
    read_json,
)
from kernex_agent.storage import DeviceFS, read_link
from kernex_agent.trust import TrustAnchors, accept_manifest
from kernex_core import keys
from kernex_core.bundle import (
    METADATA_NAME,
    BundleMeta,
    ExtractLimits,
    Hook,
    file_sha256,
    parse_metadata,
)
from kernex_core.canonical import canonical_json
from kernex_core.errors import BundleError, KernexError, ManifestRejectedError
from kernex_core.manifest import MAX_MANIFEST_BYTES, Manifest
from kernex_core.protocol import MAX_ERROR_CHARS, MAX_LOG_TAIL_BYTES, Phase, StatusReport
from kernex_core.timefmt import format_time, parse_time

log = logging.getLogger("kernex.agent")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class CycleResult:
    ok: bool
    phase: Phase | None = None  # the phase this cycle ended in; None when nothing changed
    error: str | None = None


class Agent:
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
        self.extract_limits = extract_limits or ExtractLimits()
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
        self._status: dict[str, Any] | None = None  # status.json's content, once read

    # ----------------------------------------------------------------- the loop

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run cycles until ``stop`` is set; back off with full jitter after failures."""
        failures = 0
        while not stop.is_set():
            started = self.clock()
            result = await self.run_once()
            if result.ok:
                failures = 0
                delay = max(0.0, self.config.min_cycle_interval - (self.clock() - started))
            else:
                failures += 1
                delay = self.backoff_delay(failures)
            await self._pause(delay, stop)

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
        except (KernexError, OSError) as exc:
            error = _describe(exc)
            log.warning("cycle failed: %s", error)
            self._note_error(error)
            return CycleResult(False, error=error)

    async def _cycle(self) -> CycleResult:
        now = self.clock()  # one clock reading per cycle (manifest expiry, retry times)
        state = self.load_state()
        if not self._started:
            self._reports_made = 0
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
            self._note_error(_describe(exc))
            return CycleResult(False, error=_describe(exc))
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
        return await self.apply(manifest, state, now)

    def _etag_to_send(self, state: AgentState, now: float) -> str | None:
        if _expired_at(state, now) is not None:
            return None  # the last manifest expired: only a freshly signed one will do
        last = state.last_manifest or {}
        converged = state.applied_digest is not None and last.get("digest") == state.applied_digest
        waiting = state.failed is not None and state.failed.serial == last.get("serial")
        if converged or (waiting and state.failed is not None and now < state.failed.retry_at):
            return state.etag
        return None  # fetch the manifest again: it still has to be applied

    # ------------------------------------------------------------ transaction

    def plan(self, manifest: Manifest, state: AgentState) -> Journal:
        steps: list[BundleStep] = []
        for b in manifest.bundles:
            have = state.installed.get(b.name)
            if have is not None and have.sha256 == b.sha256:
                continue
            if b.size > self.config.max_bundle_bytes:
                raise BundleError(
                    f"bundle {b.name}@{b.version} declares {b.size} bytes, over the "
                    f"{self.config.max_bundle_bytes} byte limit of this device"
                )
            steps.append(
                BundleStep(
                    name=b.name,
                    version=b.version,
                    sha256=b.sha256,
                    size=b.size,
                    url=b.url,
                    slot=f"{b.version}-{b.sha256[:12]}-s{manifest.serial}",
                    prev_slot=have.slot if have else None,
                    prev_version=have.version if have else None,
                )
            )
        wanted = {b.name for b in manifest.bundles}
        return Journal(
            serial=manifest.serial,
            revision=manifest.revision,
            digest=manifest.desired_digest(),
            config_hash=manifest.config_hash(),
            bundles=steps,
            removals=sorted(n for n in state.installed if n not in wanted),
            config_changed=manifest.config_hash() != state.config_hash,
        )

    async def apply(self, manifest: Manifest, state: AgentState, now: float) -> CycleResult:
        try:
            journal = self.plan(manifest, state)
        except BundleError as exc:
            return await self._fail_before_journal(manifest, state, exc, now)
        try:
            self.fs.mkdir(self.layout.staging)
            self._write_journal(journal, TXN_BEGUN)
        except OSError as exc:
            return await self._fail_before_journal(manifest, state, exc, now)
        try:
            if journal.bundles:
                await self.report(Phase.DOWNLOADING, state, serial=manifest.serial)
                for step in journal.bundles:
                    await self._download(step, journal)
                await self.report(Phase.INSTALLING, state, serial=manifest.serial)
            self.fs.write_atomic(self.layout.staged_config(), canonical_json(manifest.config))
            for step in journal.bundles:
                await self._install(step, journal)
            if journal.config_changed:
                self._write_config(manifest.config)
            self._write_journal(journal, TXN_CONFIG_WRITTEN)
            await self._complete(journal, state)
        except (KernexError, OSError) as exc:
            return await self._roll_back(journal, state, exc, now)
        return await self._after_commit(journal, state)

    async def _complete(self, journal: Journal, state: AgentState) -> None:
        """Everything is switched and the config written: reload, remove, commit."""
        if journal.config_changed:
            await self._run_reload_hooks(journal, state)
        for name in journal.removals:
            self.fs.remove_link(self.layout.current(name))
        self._write_journal(journal, TXN_REMOVED)
        self._commit(journal, state)

    async def _after_commit(self, journal: Journal, state: AgentState) -> CycleResult:
        try:
            self._prune(journal)
        except OSError as exc:  # old slots stay until the next install; nothing is lost
            log.warning("cannot prune old slots: %s", exc)
        await self.report(Phase.HEALTHY, state)
        return CycleResult(True, Phase.HEALTHY)

    def _commit(self, journal: Journal, state: AgentState) -> None:
        for step in journal.bundles:
            state.installed[step.name] = InstalledBundle(
                step.name, step.version, step.sha256, step.slot
            )
        for name in journal.removals:
            state.installed.pop(name, None)
        state.applied_serial = journal.serial
        state.applied_revision = journal.revision
        state.applied_digest = journal.digest
        state.config_hash = journal.config_hash
        state.failed = None
        self.save_state(state)
        self._write_journal(journal, TXN_COMMITTED)

    async def _download(self, step: BundleStep, journal: Journal) -> None:
        final = self.layout.staging / f"{step.sha256}.bundle"
        if final.exists() and not _has_sha256(final, step.sha256):
            self.fs.unlink(final)  # a leftover that is not these bytes: fetch them again
        if not final.exists():
            part = self.layout.staging / f"{step.sha256}.part"
            await self.client.download(
                step.url,
                part,
                size=step.size,
                sha256=step.sha256,
                fs=self.fs,
                read_timeout=self.config.read_timeout,
                min_rate=self.config.download_min_rate,
            )
            self.fs.rename(part, final)
        step.step = "downloaded"
        self._write_journal(journal, "downloaded")

    async def _install(self, step: BundleStep, journal: Journal) -> None:
        slots = self.layout.slots(step.name)
        self.fs.mkdir(slots)
        slot_dir = slots / step.slot
        scratch = slots / f".unpack-{step.slot}"
        self.fs.remove_tree(scratch)
        self.fs.remove_tree(slot_dir)
        staged = self.layout.staging / f"{step.sha256}.bundle"
        try:
            meta = self.fs.extract(staged, scratch, self.extract_limits, sha256=step.sha256)
        except BundleError:
            self.fs.unlink(staged)  # never unpack these bytes again without a new download
            raise
        if meta.name != step.name:
            raise BundleError(
                f"bundle {step.name}@{step.version} calls itself {meta.name!r} in {METADATA_NAME}",
                hint="The catalog entry and the archive disagree; rebuild or re-push it.",
            )
        self.fs.rename(scratch, slot_dir)
        step.step = "unpacked"
        journal.hooks_started = True  # durable before any hook runs
        self._write_journal(journal, "unpacked")
        config = self.layout.staged_config()
        await self._run_hook("install", meta.install, meta, slot_dir, config)
        step.step = "installed"
        self._write_journal(journal, "installed")
        await self._run_hook("health", meta.health, meta, slot_dir, config)
        step.step = "health_ok"
        self._write_journal(journal, "health_ok")
        self.fs.switch_link(self.layout.current(step.name), f"slots/{step.slot}")
        step.step = "switched"
        self._write_journal(journal, "switched")

    def _write_config(self, config: Mapping[str, Any]) -> None:
        current = self.layout.resolved_config
        if current.exists():
            self.fs.write_atomic(self.layout.previous_config, current.read_bytes())
        else:
            self.fs.unlink(self.layout.previous_config)
        self.fs.write_atomic(current, canonical_json(dict(config)))

    async def _run_reload_hooks(self, journal: Journal, state: AgentState) -> None:
        slots = {name: b.slot for name, b in state.installed.items()}
        slots.update({s.name: s.slot for s in journal.bundles})
        for name in journal.removals:
            slots.pop(name, None)
        for name, slot in sorted(slots.items()):
            slot_dir = self.layout.slot(name, slot)
            meta = load_slot_meta(slot_dir)
            if meta.reload is not None:
                await self._run_hook(
                    "reload", meta.reload, meta, slot_dir, self.layout.resolved_config
                )

    async def _run_hook(
        self, kind: str, hook: Hook, meta: BundleMeta, slot_dir: Path, config_path: Path
    ) -> None:
        env = {
            "KERNEX_SLOT": str(slot_dir),
            "KERNEX_CONFIG": str(config_path),
            "KERNEX_DEVICE_ID": self.config.device_id,
            "KERNEX_DATA_DIR": str(self.layout.root),
            "KERNEX_BUNDLE": meta.name,
            "KERNEX_VERSION": meta.version,
            "KERNEX_HOOK": kind,
        }
        argv = [str(slot_dir / hook.argv[0]), *hook.argv[1:]]
        result = await self.hooks.run(argv, cwd=slot_dir, env=env, timeout=hook.timeout)
        if result.ok:
            return
        what = f"{kind} hook of {meta.name}@{meta.version}"
        if result.timed_out:
            message = f"{what} timed out after {hook.timeout:g} s"
        elif result.error:
            message = f"{what} could not run: {result.error}"
        else:
            message = f"{what} exited with status {result.exit_code}"
        raise HookFailedError(
            message,
            log_tail=result.log_tail,
            hint="See the log tail; hooks must exit 0 (docs/bundles.md).",
        )

    # -------------------------------------------------------------- rollback

    async def _fail_before_journal(
        self, manifest: Manifest, state: AgentState, exc: BaseException, now: float
    ) -> CycleResult:
        error = _describe(exc)
        self._remember_failure(state, manifest.serial, manifest.desired_digest(), now)
        await self.report(Phase.FAILED, state, error=error, serial=manifest.serial)
        return CycleResult(False, Phase.FAILED, error)

    async def _roll_back(
        self, journal: Journal, state: AgentState, exc: BaseException, now: float
    ) -> CycleResult:
        error = _describe(exc)
        log_tail = exc.log_tail if isinstance(exc, HookFailedError) else None
        log.warning("install of serial %s failed: %s", journal.serial, error)
        try:
            restore_log = await self.undo(journal, state)
        except (KernexError, OSError) as undo_exc:
            error += f"; restoring the previous state also failed: {_describe(undo_exc)}"
            restore_log = ""
        if restore_log:
            log_tail = ((log_tail or "") + "\n--- previous version ---\n" + restore_log)[
                -MAX_LOG_TAIL_BYTES:
            ]
        phase = Phase.ROLLED_BACK if journal.hooks_started else Phase.FAILED
        journal.error = error
        try:
            self._write_journal(journal, TXN_ROLLED_BACK)
        except OSError as write_exc:  # the next start undoes it again (idempotent)
            log.warning("cannot record the rollback: %s", write_exc)
        self._remember_failure(state, journal.serial, journal.digest, now)
        await self.report(phase, state, error=error, log_tail=log_tail, serial=journal.serial)
        return CycleResult(False, phase, error)

    def _remember_failure(self, state: AgentState, serial: int, digest: str, now: float) -> None:
        prior = state.failed
        attempts = prior.attempts + 1 if prior is not None and prior.serial == serial else 1
        wait = min(
            self.config.retry_failed_cap, self.config.retry_failed_base * 2 ** (attempts - 1)
        )
        state.failed = FailedSerial(serial, digest, attempts, now + wait)
        try:
            self.save_state(state)
        except OSError as exc:
            log.warning("cannot record the failed serial: %s", exc)

    async def undo(self, journal: Journal, state: AgentState) -> str:
        """Put every bundle of ``journal`` back as it was; return the restore hooks' log."""
        for name in journal.removals:
            have = state.installed.get(name)
            link = self.layout.current(name)
            if have is not None and read_link(link) != have.slot:
                self.fs.switch_link(link, f"slots/{have.slot}")
        for step in reversed(journal.bundles):
            link = self.layout.current(step.name)
            if read_link(link) != step.prev_slot:
                if step.prev_slot is None:
                    self.fs.remove_link(link)
                else:
                    self.fs.switch_link(link, f"slots/{step.prev_slot}")
            slots = self.layout.slots(step.name)
            self.fs.remove_tree(slots / f".unpack-{step.slot}")
            if step.slot != step.prev_slot:
                self.fs.remove_tree(slots / step.slot)
        if journal.config_changed and self.layout.previous_config.exists():
            self.fs.rename(self.layout.previous_config, self.layout.resolved_config)
        if not journal.hooks_started:
            return ""
        logs: list[str] = []
        for step in reversed(journal.bundles):
            if step.prev_slot is None or not step.reached("unpacked"):
                continue
            slot_dir = self.layout.slot(step.name, step.prev_slot)
            meta = load_slot_meta(slot_dir)
            config = self.layout.resolved_config
            for kind, hook in (("install", meta.install), ("health", meta.health)):
                try:
                    await self._run_hook(kind, hook, meta, slot_dir, config)
                except HookFailedError as exc:
                    logs.append(exc.log_tail)
                    raise
        return "\n".join(logs)

    async def recover(self, state: AgentState) -> AgentState:
        """After a crash: finish a transaction whose bundles were all switched, else undo it."""
        journal = self.load_journal()
        if journal is None or journal.done:
            return state
        if journal.step in (TXN_CONFIG_WRITTEN, TXN_REMOVED):
            log.warning("finishing the install of serial %s after a restart", journal.serial)
            try:
                await self._complete(journal, state)
            except (KernexError, OSError) as exc:
                await self._roll_back(journal, state, exc, self.clock())
            else:
                await self._after_commit(journal, state)
            return self.load_state()
        log.warning("undoing the unfinished install of serial %s after a restart", journal.serial)
        try:
            restore_log = await self.undo(journal, state)
            error = f"agent stopped during the install of serial {journal.serial} ({journal.step})"
            journal.error = error + "; previous state restored"
        except HookFailedError as exc:
            restore_log = exc.log_tail
            journal.error = f"previous state restored but its hooks failed: {exc}"
        self._write_journal(journal, TXN_ROLLED_BACK)
        phase = Phase.ROLLED_BACK if journal.hooks_started else Phase.FAILED
        await self.report(
            phase, state, error=journal.error, log_tail=restore_log or None, serial=journal.serial
        )
        return state

    def _prune(self, journal: Journal) -> None:
        """Keep the current slot and the one before it; drop older slots and staging files."""
        for step in journal.bundles:
            keep = {step.slot, step.prev_slot}
            slots = self.layout.slots(step.name)
            for entry in sorted(slots.iterdir()) if slots.exists() else []:
                if entry.name not in keep:
                    self.fs.remove_tree(entry)
            self.fs.unlink(self.layout.staging / f"{step.sha256}.bundle")
        for name in journal.removals:
            self.fs.remove_tree(self.layout.bundle_dir(name))
        self.fs.unlink(self.layout.previous_config)

    # ----------------------------------------------------------- persistence

    def load_state(self) -> AgentState:
        data = read_json(self.layout.state)
        if data is None:
            raise AgentStateError(
                f"{self.layout.state} is missing: this device is not enrolled",
                hint="Run `kernex agent enroll` first.",
            )
        return AgentState.from_dict(data)

    def save_state(self, state: AgentState) -> None:
        self.fs.write_atomic(self.layout.state, dump_json(state.to_dict()), mode=0o600)

    def anchors(self, state: AgentState) -> TrustAnchors:
        return TrustAnchors.from_dict(self.config.device_id, state.trust)

    def load_journal(self) -> Journal | None:
        data = read_json(self.layout.journal)
        return Journal.from_dict(data) if data is not None else None

    def _write_journal(self, journal: Journal, step: str) -> None:
        if step in (TXN_BEGUN, TXN_CONFIG_WRITTEN, TXN_REMOVED, TXN_COMMITTED, TXN_ROLLED_BACK):
            journal.step = step
        self.fs.write_atomic(self.layout.journal, dump_json(journal.to_dict()))
        if self.crash_at == step:  # test hook: die like a power cut right after this step
            os.kill(os.getpid(), signal.SIGKILL)

    # --------------------------------------------------------------- reports

    async def report(
        self,
        phase: Phase,
        state: AgentState,
        *,
        error: str | None = None,
        log_tail: str | None = None,
        serial: int | None = None,
    ) -> None:
        """Send a status report; keep it in the on-disk queue only when it cannot go now.

        Reports arrive oldest first: while older ones wait in the queue, a new one joins the
        end of it and the queue is sent in order; with the queue empty (the usual case) it is
        sent at once and touches no queue file.
        """
        report = StatusReport(
            phase=phase,
            serial=serial if serial is not None else state.applied_serial,
            revision=state.applied_revision,
            bundles=state.bundle_versions(),
            config_hash=state.config_hash,
            error=error[:MAX_ERROR_CHARS] if error else None,
            log_tail=log_tail[-MAX_LOG_TAIL_BYTES:] if log_tail else None,
            agent_version=AGENT_VERSION,
            reported_at=format_time(self.clock()),
        )
        self._reports_made += 1
        try:
            self._write_status(report, error)
        except OSError as exc:
            log.warning("cannot record the status report: %s", exc)
        if not self._queued() and await self._deliver(report):
            return
        try:
            self._enqueue(report)
        except OSError as exc:
            log.warning("cannot queue a status report: %s", exc)
            return
        await self.flush_reports()

    def _queued(self) -> list[str]:
        """Names of the queued reports, oldest first (only our own numbered files count)."""
        try:
            names = os.listdir(self.layout.reports)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _enqueue(self, report: StatusReport) -> None:
        queue = self.layout.reports
        self.fs.mkdir(queue)
        names = self._queued()
        seq = int(names[-1].split(".")[0]) + 1 if names else 1
        self.fs.write_atomic(queue / f"{seq:012d}.json", dump_json(report.to_dict()))
        for old in names[: max(0, len(names) + 1 - self.config.max_queued_reports)]:
            self.fs.unlink(queue / old)  # bounded: the oldest reports go first

    async def _deliver(self, report: StatusReport) -> bool:
        """Send one report: True when it is done with (delivered, or refused for good)."""
        try:
            status = await self.client.send_status(report)
        except AgentError as exc:
            log.info("status report kept for later: %s", exc)
            return False
        return status < 300 or (400 <= status < 500 and status not in (401, 403, 408, 429))

    async def flush_reports(self) -> bool:
        """Send queued reports oldest first; stop at the first that cannot be delivered."""
        queue = self.layout.reports
        for path in sorted(queue.glob("*.json")) if queue.exists() else []:
            try:
                data = read_json(path)
            except AgentStateError:
                data = None
            if data is None:
                self.fs.unlink(path)
                continue
            try:
                report = StatusReport.from_dict(data)
            except ValueError:
                self.fs.unlink(path)
                continue
            if not await self._deliver(report):
                return False
            self.fs.unlink(path)  # delivered, or refused for good
        return True

    def _status_summary(self) -> dict[str, Any]:
        """status.json as last written (read once; this agent is its only writer)."""
        if self._status is None:
            try:
                self._status = read_json(self.layout.status) or {}
            except AgentStateError:
                self._status = {}  # damaged: the next write replaces it
        return self._status

    def _write_status(self, report: StatusReport, error: str | None) -> None:
        previous = self._status_summary()
        data = {
            "last_report": report.to_dict(),
            "last_error": error or previous.get("last_error"),
            "last_error_at": report.reported_at if error else previous.get("last_error_at"),
        }
        self.fs.write_atomic(self.layout.status, dump_json(data))
        self._status = data

    def _note_error(self, error: str) -> None:
        try:
            data = {
                **self._status_summary(),
                "last_error": error,
                "last_error_at": format_time(self.clock()),
            }
            self.fs.write_atomic(self.layout.status, dump_json(data))
            self._status = data
        except OSError as exc:
            log.warning("cannot record the error: %s", exc)


def load_slot_meta(slot_dir: Path) -> BundleMeta:
    try:
        return parse_metadata((slot_dir / METADATA_NAME).read_bytes())
    except OSError as exc:
        raise BundleError(f"slot {slot_dir} has no readable {METADATA_NAME}: {exc}") from exc


def _has_sha256(path: Path, sha256: str) -> bool:
    with open(path, "rb") as fh:
        return file_sha256(fh) == sha256


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, KernexError):
        return f"file system error: {exc}"
    return str(exc)
