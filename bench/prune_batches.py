"""The pruner never blocks writers for long: batched deletes against one big DELETE.

Fills a SQLite database with old status history and audit rows, then removes them while a
writer thread appends an audit row every 10 ms, and prints the writer's latencies. With
``--one-shot`` the rows go in one DELETE per table instead, for comparison. Ends with the
time of an online backup of the database.

    python bench/prune_batches.py [--status-rows N] [--audit-rows N] [--one-shot]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from kernex_core import keys
from kernex_server.backup import create_backup
from kernex_server.database import make_engine, migrate, session_factory
from kernex_server.retention import DAY, Pruner, RetentionPolicy
from kernex_server.settings import Settings
from kernex_server.store import Store

DEVICE = (
    "INSERT INTO devices (id, public_key, fingerprint, algorithm, labels, state, "
    "agent_version, enrolled_at, updated_at) "
    "VALUES ('d', 'k', 'f', 'ed25519', '{}', 'accepted', '', 0, 0)"
)
STATUS = (
    "INSERT INTO status_reports (device_id, phase, bundles, agent_version, received_at) "
    "VALUES ('d', 'healthy', '{}', '', :t)"
)
AUDIT = (
    "INSERT INTO audit_log (at, actor, action, target, address, result, detail) "
    "VALUES (:t, 'a', 'x', 't', '', 'ok', '{}')"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status-rows", type=int, default=300_000)
    parser.add_argument("--audit-rows", type=int, default=100_000)
    parser.add_argument("--one-shot", action="store_true", help="one DELETE per table")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="kernex-prune-bench.")) / "data"
    (data / "keys").mkdir(parents=True)
    (data / "server.toml").write_text('repo = ""\n')
    key = keys.private_key_to_pem(keys.generate_ed25519())
    (data / "keys" / "manifest.key").write_bytes(key)
    settings = Settings.load(data)
    engine = make_engine(settings.effective_database_url())
    migrate(engine)
    old = time.time() - 400 * DAY
    with engine.begin() as conn:
        conn.execute(sa.text(DEVICE))
        conn.execute(sa.text(STATUS), [{"t": old}] * args.status_rows)
        conn.execute(sa.text(AUDIT), [{"t": old}] * args.audit_rows)
    sessions = session_factory(engine)
    store = Store(sessions)
    latencies: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            store.audit(at=time.time(), actor="w", action="y", target="t", address="", result="ok")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.perf_counter()
    if args.one_shot:
        cutoff = {"t": old + 1}
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM status_reports WHERE received_at < :t"), cutoff)
            conn.execute(sa.text("DELETE FROM audit_log WHERE at < :t"), cutoff)
    else:
        Pruner(sessions, RetentionPolicy.of(settings)).prune()
    took = time.perf_counter() - started
    stop.set()
    thread.join()
    latencies.sort()
    ms = [round(x * 1000) for x in latencies]
    print(f"{'one DELETE' if args.one_shot else 'pruner'}: {args.status_rows + args.audit_rows} "
          f"rows in {took:.1f} s; writer: {len(ms)} inserts, p50 {ms[len(ms) // 2]} ms, "
          f"max {ms[-1]} ms")  # fmt: skip
    started = time.perf_counter()
    create_backup(settings, data.parent / "backup.tar.gz")
    size = (data / "kernex.db").stat().st_size / 1e6
    print(f"backup of the {size:.0f} MB database: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
