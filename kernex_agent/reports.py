"""The agent's status reports: send each at once, or keep it in the on-disk queue.

Reports go out oldest first: while older ones wait in ``reports/`` (bounded by
``max_queued_reports``), a new one joins the end of the queue and the queue is sent in
order. ``status.json`` keeps the last report and the last error for ``kernex agent status``.
``Reporter`` is the base of the ``Agent`` (kernex_agent.agent), which sets its attributes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from kernex_agent import AGENT_VERSION
from kernex_agent.client import DeviceClient
from kernex_agent.config import AgentConfig, Layout
from kernex_agent.errors import AgentError, AgentStateError
from kernex_agent.state import AgentState, dump_json, read_json
from kernex_agent.storage import DeviceFS
from kernex_core.protocol import MAX_ERROR_CHARS, MAX_LOG_TAIL_BYTES, Phase, StatusReport
from kernex_core.timefmt import format_time

log = logging.getLogger("kernex.agent")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Reporter:
    """Status reports and ``status.json`` of one device."""

    config: AgentConfig
    layout: Layout
    fs: DeviceFS
    client: DeviceClient
    clock: Clock
    _reports_made: int  # reports made since the agent (re)started
    _status: dict[str, Any] | None  # status.json's content, once read

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
