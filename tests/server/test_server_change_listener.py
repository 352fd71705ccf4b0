"""The change listener (kernex_server.changes) on a real PostgreSQL schema: another
process's notification reaches the handler, the process's own does not, and a change
no notification announced (one lost with a dropped connection) is found by the periodic
check and handed on as "everything"."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from kernex_server.changes import NOTIFY_SQL, Change, ChangeListener, everything
from kernex_server.database import make_engine, migrate

pytestmark = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def test_notifications_and_the_periodic_check(database: dict[str, str]) -> None:
    schema = database["database_schema"]
    engine = make_engine(database["database_url"], schema=schema)
    migrate(engine, schema=schema)
    got: list[Change] = []

    async def handler(change: Change) -> None:
        got.append(change)

    def notify(origin: str) -> None:
        payload = Change(origin, {"edge-1"}, set()).payload()
        with engine.begin() as conn:
            conn.execute(sa.text(NOTIFY_SQL), {"payload": payload})

    async def until(what: str, probe: Any, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while not probe():
                await anyio.sleep(0.02)

    async def scenario() -> None:
        listener = ChangeListener(engine, schema, "me", handler, check_interval=0.3)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.run)
            await listener.connected.wait()
            await anyio.to_thread.run_sync(notify, "me")  # its own: applied already
            await anyio.to_thread.run_sync(notify, "other")
            started = time.monotonic()
            await until("the other process's change", lambda: got)
            assert time.monotonic() - started < 1.0
            assert [(c.origin, c.devices) for c in got] == [("other", {"edge-1"})]

            got.clear()  # a deployed revision no notification announced
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO revisions (commit, branch, state, errors, forced, "
                        "devices_changed, created_at) VALUES ('c1', 'main', 'deployed', "
                        "'[]', false, 0, 0)"
                    )
                )
            await until("the periodic check", lambda: got)
            assert got == [everything()]
            tg.cancel_scope.cancel()

    try:
        anyio.run(scenario)
    finally:
        engine.dispose()
