"""The install transaction: plan, download, unpack, hooks, switch, commit, roll back.

An install is a transaction recorded step by step in the journal (``state.py``); after a
crash ``recover`` finishes a transaction whose bundles were all switched, and undoes any
other, so ``current`` never points at a half-installed slot. ``Installer`` is the base of
the ``Agent`` (kernex_agent.agent), which sets its attributes and runs the loop.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernex_agent.errors import AgentStateError, HookFailedError
from kernex_agent.hooks import HookRunner
from kernex_agent.reports import Reporter
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
from kernex_agent.storage import read_link
from kernex_core.bundle import (
    METADATA_NAME,
    BundleMeta,
    ExtractLimits,
    Hook,
    file_sha256,
    parse_metadata,
)
from kernex_core.canonical import canonical_json
from kernex_core.errors import BundleError, KernexError
from kernex_core.manifest import Manifest
from kernex_core.protocol import MAX_LOG_TAIL_BYTES, Phase

log = logging.getLogger("kernex.agent")


@dataclass(frozen=True)
class CycleResult:
    ok: bool
    phase: Phase | None = None  # the phase this cycle ended in; None when nothing changed
    error: str | None = None


class Installer(Reporter):
    """Applies a verified manifest to the device as one transaction."""

    hooks: HookRunner
    crash_at: str | None  # test hook: the journal step after which to die
    extract_limits: ExtractLimits

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
            self.fs.mkdir(self.layout.staging)
            self._write_journal(journal, TXN_BEGUN)
        except Exception as exc:  # unexpected errors fail the serial too
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
        except Exception as exc:  # whatever went wrong, undo and report it
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
        error = describe(exc)
        log.warning("serial %s failed: %s", manifest.serial, error, exc_info=_trace(exc))
        self._remember_failure(state, manifest.serial, manifest.desired_digest(), now)
        await self.report(Phase.FAILED, state, error=error, serial=manifest.serial)
        return CycleResult(False, Phase.FAILED, error)

    async def _roll_back(
        self, journal: Journal, state: AgentState, exc: BaseException, now: float
    ) -> CycleResult:
        error = describe(exc)
        log_tail = exc.log_tail if isinstance(exc, HookFailedError) else None
        log.warning("install of serial %s failed: %s", journal.serial, error, exc_info=_trace(exc))
        try:
            restore_log = await self.undo(journal, state)
        except Exception as undo_exc:  # reported with the first error
            error += f"; restoring the previous state also failed: {describe(undo_exc)}"
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
            except Exception as exc:  # an unexpected error is undone too
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

    def load_journal(self) -> Journal | None:
        data = read_json(self.layout.journal)
        return Journal.from_dict(data) if data is not None else None

    def _write_journal(self, journal: Journal, step: str) -> None:
        if step in (TXN_BEGUN, TXN_CONFIG_WRITTEN, TXN_REMOVED, TXN_COMMITTED, TXN_ROLLED_BACK):
            journal.step = step
        self.fs.write_atomic(self.layout.journal, dump_json(journal.to_dict()))
        if self.crash_at == step:  # test hook: die like a power cut right after this step
            os.kill(os.getpid(), signal.SIGKILL)


def load_slot_meta(slot_dir: Path) -> BundleMeta:
    try:
        return parse_metadata((slot_dir / METADATA_NAME).read_bytes(), numeric_version=True)
    except OSError as exc:
        raise BundleError(f"slot {slot_dir} has no readable {METADATA_NAME}: {exc}") from exc


def _has_sha256(path: Path, sha256: str) -> bool:
    with open(path, "rb") as fh:
        return file_sha256(fh) == sha256


def describe(exc: BaseException) -> str:
    if isinstance(exc, KernexError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"file system error: {exc}"
    return f"unexpected error ({type(exc).__name__}): {exc}"


def _trace(exc: BaseException) -> BaseException | None:
    """The exception, for a traceback in the log, when it is not one Kernex expects."""
    return None if isinstance(exc, (KernexError, OSError)) else exc
