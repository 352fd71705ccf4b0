"""Alerts: find what needs a person, put it in the outbox, deliver it.

Each pass of the alert loop (every ``alert_interval`` seconds) does two things:

1. **Find**, in one transaction with the outbox writes (kernex_server.alert_outbox):
   - a rollout in state ``halted`` (key: rollout id and halt time), read from the
     ``rollouts`` table, so a halt is found even if it happened while the server was down;
   - a commit the reconciler refused (``invalid``, ``unsigned``): new ``revisions`` rows
     past a cursor kept in ``server_state``;
   - devices reporting ``failed`` or ``rolled_back`` (a report whose previous one said the
     same for the same serial is not news): new ``status_reports`` rows past a cursor,
     grouped per window;
   - the fleet offline above ``alert_offline_fraction`` of accepted devices (once per
     episode; the episode lives in ``server_state``, so a restart does not repeat it);
   - the reconcile loop failing (Git or the database unreachable), once per failure run.
2. **Deliver** every due row: POST, signed (kernex_server.alert_delivery); 2xx settles
   it, anything else retries with exponential backoff until ``alert_give_up_hours``.

The cursors start at the newest rows on the first pass, so history is not replayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kernex_core.protocol import Phase
from kernex_core.rollout import HALTED
from kernex_server import alert_delivery, alert_outbox
from kernex_server.alert_config import (
    COMMIT_REFUSED,
    FLEET_OFFLINE,
    RECONCILE_FAILED,
    ROLLOUT_HALTED,
    TEST,
    AlertReceiver,
)
from kernex_server.alert_outbox import Alert, Claimed
from kernex_server.metrics import AlertMetrics
from kernex_server.models import Revision, Rollout, ServerState, StatusReportRow
from kernex_server.outage import DatabaseHealth, background_failed
from kernex_server.settings import Settings

log = logging.getLogger("kernex.server.alerts")

STATUS_CURSOR = "alerts.status_cursor"
REVISION_CURSOR = "alerts.revision_cursor"
HALT_CURSOR = "alerts.halt_cursor"  # ms: halts before the first pass are history
OFFLINE_EPISODE = "alerts.offline_episode"  # > 0 while the fleet is offline: that episode
KEEP_SETTLED = 30 * 86400.0  # seconds delivered and failed rows stay in the outbox
SEND_TIMEOUT = 10.0
FAILED_PHASES = (Phase.FAILED.value, Phase.ROLLED_BACK.value)


@dataclass(frozen=True)
class Outcome:
    receiver: str
    key: str
    state: str  # delivered | pending (will retry) | failed
    status: int | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "receiver": self.receiver,
            "key": self.key,
            "state": self.state,
            "status": self.status,
            "error": self.error,
        }


class Alerter:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        metrics: AlertMetrics,
        *,
        clock: Callable[[], float] = time.time,
        offline: Callable[[], tuple[int, int]] | None = None,  # (offline, accepted)
        reconcile_error: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.receivers = {r.name: r for r in settings.alerts}
        self.sessions = sessions
        self.metrics = metrics
        self.clock = clock
        self.offline = offline
        self.reconcile_error = reconcile_error
        self.started = clock()
        self._failing_since: float | None = None  # the reconcile failure run alerted on
        self._pruned_at = 0.0
        self.passes = 0  # completed passes of the loop (tests wait on it)

    # -- finding -------------------------------------------------------------------------

    def find(self) -> None:
        """One transaction: find new alerts, store them, move the cursors."""
        if not self.receivers:
            return
        now = self.clock()
        receivers = list(self.receivers.values())
        try:
            with self.sessions.begin() as s:
                self._halts(s, receivers, now)
                self._refused(s, receivers, now)
                self._device_failures(s, receivers, now)
                self._fleet_offline(s, receivers, now)
                self._reconcile_failing(s, receivers, now)
                if now - self._pruned_at > 3600:
                    alert_outbox.prune(s, now - KEEP_SETTLED)
                    self._pruned_at = now
        except IntegrityError:  # another server stored the same alert first: next pass
            log.info("an alert was stored concurrently; finding again next pass")

    def _halts(self, s: Session, receivers: list[AlertReceiver], now: float) -> None:
        since = _cursor(s, HALT_CURSOR, int(now * 1000)) / 1000
        halted = select(Rollout).where(Rollout.state == HALTED, Rollout.updated_at >= since)
        for row in s.scalars(halted).all():
            group = row.group or "(default)"
            alert = Alert(
                ROLLOUT_HALTED,
                f"{ROLLOUT_HALTED}:{row.id}:{int(row.updated_at * 1000)}",
                f"rollout {row.id} of group {group} halted: {row.reason}",
                row.updated_at,
                {
                    "rollout": row.id,
                    "group": row.group,
                    "revision": row.revision,
                    "reason": row.reason,
                },
            )
            alert_outbox.enqueue(s, receivers, alert)

    def _refused(self, s: Session, receivers: list[AlertReceiver], now: float) -> None:
        newest = s.scalar(select(func.max(Revision.id))) or 0
        cursor = _cursor(s, REVISION_CURSOR, newest)
        rows = s.scalars(
            select(Revision)
            .where(Revision.id > cursor, Revision.id <= newest)
            .where(Revision.state.in_(("invalid", "unsigned")))
            .order_by(Revision.id)
        ).all()
        for row in rows:
            errors = list(row.errors or [])
            first = errors[0].get("message", "") if errors and isinstance(errors[0], dict) else ""
            alert = Alert(
                COMMIT_REFUSED,
                f"{COMMIT_REFUSED}:{row.id}",
                f"commit {row.commit[:12]} on {row.branch} refused ({row.state}): {first}; "
                f"devices keep {(row.previous or 'nothing')[:12]}",
                row.created_at,
                {
                    "commit": row.commit,
                    "branch": row.branch,
                    "state": row.state,
                    "errors": errors[:20],
                    "error_count": len(errors),
                    "serving": row.previous,
                },
            )
            alert_outbox.enqueue(s, receivers, alert)
        _set(s, REVISION_CURSOR, max(cursor, newest))

    def _device_failures(self, s: Session, receivers: list[AlertReceiver], now: float) -> None:
        newest = s.scalar(select(func.max(StatusReportRow.id))) or 0
        cursor = _cursor(s, STATUS_CURSOR, newest)
        rows = s.scalars(
            select(StatusReportRow)
            .where(StatusReportRow.id > cursor, StatusReportRow.id <= newest)
            .where(StatusReportRow.phase.in_(FAILED_PHASES))
            .order_by(StatusReportRow.id)
            .limit(5000)
        ).all()
        failures = []
        for row in rows:
            before = s.scalar(
                select(StatusReportRow)
                .where(StatusReportRow.device_id == row.device_id, StatusReportRow.id < row.id)
                .order_by(StatusReportRow.id.desc())
                .limit(1)
            )
            if before is not None and (before.phase, before.serial) == (row.phase, row.serial):
                continue  # the same failure again, already alerted
            failures.append(
                {
                    "device": row.device_id,
                    "phase": row.phase,
                    "serial": row.serial,
                    "error": (row.error or "")[:300] or None,
                }
            )
        if failures:
            alert_outbox.add_device_failures(
                s,
                receivers,
                failures,
                first_id=rows[0].id,
                now=now,
                window=self.settings.alert_group_seconds,
            )
        _set(s, STATUS_CURSOR, rows[-1].id if len(rows) == 5000 else max(cursor, newest))

    def _fleet_offline(self, s: Session, receivers: list[AlertReceiver], now: float) -> None:
        threshold = self.settings.alert_offline_fraction
        if self.offline is None or threshold <= 0:
            return
        if now - self.started < self.settings.offline_after:
            return  # devices have not had the time to check in since the start
        offline, accepted = self.offline()
        episode = _cursor(s, OFFLINE_EPISODE, 0)
        above = accepted > 0 and offline / accepted > threshold
        if above and episode <= 0:
            episode = -episode + 1
            _set(s, OFFLINE_EPISODE, episode)
            alert = Alert(
                FLEET_OFFLINE,
                f"{FLEET_OFFLINE}:{episode}",
                f"{offline} of {accepted} accepted devices are offline (threshold {threshold:.0%})",
                now,
                {"offline": offline, "accepted": accepted, "threshold": threshold},
            )
            alert_outbox.enqueue(s, receivers, alert)
        elif not above and episode > 0:
            _set(s, OFFLINE_EPISODE, -episode)  # over; the next episode alerts again

    def _reconcile_failing(self, s: Session, receivers: list[AlertReceiver], now: float) -> None:
        error = self.reconcile_error() if self.reconcile_error is not None else None
        if error is None:
            self._failing_since = None
            return
        if self._failing_since is not None:
            return
        self._failing_since = now
        alert = Alert(
            RECONCILE_FAILED,
            f"{RECONCILE_FAILED}:{int(now * 1000)}",
            f"the server cannot reconcile the fleet repository: {error}",
            now,
            {"error": error},
        )
        alert_outbox.enqueue(s, receivers, alert)

    # -- delivering ------------------------------------------------------------------------

    async def deliver_due(self, ids: Sequence[int] = (), *, retry: bool = True) -> list[Outcome]:
        now = self.clock()

        def claim() -> list[Claimed]:
            with self.sessions.begin() as s:
                return alert_outbox.claim_due(s, now, ids=ids)

        claimed = await anyio.to_thread.run_sync(claim)
        outcomes = []
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT, follow_redirects=False) as client:
            for row in claimed:
                outcomes.append(await self._send(client, row, retry=retry))
        if claimed:
            await self.observe()
        return outcomes

    async def _send(self, client: httpx.AsyncClient, row: Claimed, *, retry: bool) -> Outcome:
        receiver = self.receivers.get(row.receiver)
        status: int | None = None
        if receiver is None:
            ok, error = False, f"no receiver named {row.receiver!r} in server.toml"
        else:
            body = alert_delivery.render(receiver.format, row.key, row.alert)
            headers = alert_delivery.headers(
                receiver.secret, row.key, row.kind, body, now=self.clock()
            )
            try:
                response = await client.post(receiver.url, content=body, headers=headers)
                status = response.status_code
                ok, error = 200 <= status < 300, f"HTTP {status}"
            except httpx.HTTPError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"[:300]
        now = self.clock()
        retry_at = None
        if not ok and retry and row.kind != TEST:
            given_up = now - row.created_at > self.settings.alert_give_up_hours * 3600
            delay = alert_delivery.backoff(
                row.attempts + 1,
                base=self.settings.alert_retry_seconds,
                cap=self.settings.alert_retry_max_seconds,
            )
            retry_at = None if given_up else now + delay

        def settle() -> str:
            with self.sessions.begin() as s:
                return alert_outbox.settle(
                    s, row.id, ok=ok, error=None if ok else error, now=now, retry_at=retry_at
                )

        state = await anyio.to_thread.run_sync(settle)
        self.metrics.attempted({"delivered": "delivered", "pending": "retry"}.get(state, state))
        if not ok:
            log.warning("alert %s to %s: %s (%s)", row.key, row.receiver, error, state)
        return Outcome(row.receiver, row.key, state, status, None if ok else error)

    async def observe(self) -> None:
        def read() -> tuple[dict[str, int], float | None]:
            with self.sessions() as s:
                return alert_outbox.counts(s), alert_outbox.oldest_pending(s)

        counts, oldest = await anyio.to_thread.run_sync(read)
        self.metrics.observe(counts, None if oldest is None else self.clock() - oldest)

    async def run_pass(self) -> None:
        await anyio.to_thread.run_sync(self.find)
        await self.deliver_due()
        await self.observe()
        self.passes += 1

    # -- `kernex alerts test` --------------------------------------------------------------

    async def send_test(self, receiver: str | None, actor: str) -> list[Outcome]:
        """Store a sample alert for one receiver (or all) and deliver it now, once."""
        chosen = [r for r in self.receivers.values() if receiver in (None, r.name)]
        now = self.clock()
        alert = Alert(
            TEST,
            f"{TEST}:{int(now * 1000)}",
            f"test alert sent by {actor}: this receiver gets Kernex alerts",
            now,
            {"sent_by": actor},
        )

        def store() -> list[int]:
            with self.sessions.begin() as s:
                rows = alert_outbox.enqueue(s, chosen, alert)
                s.flush()
                return [r.id for r in rows]

        ids = await anyio.to_thread.run_sync(store)
        return await self.deliver_due(ids, retry=False)

    async def overview(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            with self.sessions() as s:
                return {"outbox": alert_outbox.counts(s), "recent": alert_outbox.recent(s)}

        shown = await anyio.to_thread.run_sync(read)
        receivers = [
            {"name": r.name, "format": r.format, "url": _origin(r.url), "events": list(r.events)}
            for r in self.receivers.values()
        ]
        return {"receivers": receivers, **shown}


async def alert_loop(
    alerter: Alerter, interval: float, health: DatabaseHealth | None = None
) -> None:
    """The background loop: one pass every ``interval`` seconds; errors never stop it (a
    database outage is logged once through ``health``)."""
    while True:
        try:
            await alerter.run_pass()
        except Exception as exc:  # a database outage must not stop the loop; the outbox keeps all
            if health is not None:
                background_failed(health, exc, "alert pass")
            else:
                log.exception("alert pass failed")
        await anyio.sleep(interval)


def _origin(url: str) -> str:
    """``scheme://host[:port]`` only: a Slack URL's path is its secret."""
    parts = httpx.URL(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.host}{port}"


def _cursor(s: Session, name: str, start: int) -> int:
    row = s.get(ServerState, name)
    if row is None:
        s.add(ServerState(name=name, value=start))
        s.flush()
        return start
    return int(row.value)


def _set(s: Session, name: str, value: int) -> None:
    row = s.get(ServerState, name)
    if row is None:
        s.add(ServerState(name=name, value=value))
    elif row.value != value:  # no write when nothing moved
        row.value = value
