"""Database snapshots for backups, taken while the server runs.

Three methods, one file (or folder) each under the archive's ``database/``:

- ``sqlite``: SQLite's online backup API (``sqlite3.Connection.backup``) copies the
  database file page by page in one read transaction; in WAL mode writers go on meanwhile.
- ``pg_dump``: ``pg_dump --format=custom`` of the server's schema (one consistent
  snapshot), restored with ``pg_restore``; used on PostgreSQL when ``pg_dump`` is on PATH.
- ``logical``: every table's rows as JSON lines, read in one REPEATABLE READ transaction;
  restored by migrating an empty database to the backup's Alembic revision, inserting the
  rows in foreign-key order, then migrating to the newest revision. Works on any
  database, and moves a server between SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL, Connection, Engine

from kernex_server.database import alembic_config, is_postgres, migrate
from kernex_server.errors import ServerSetupError

SQLITE = "sqlite"
PG_DUMP = "pg_dump"
LOGICAL = "logical"
METHODS = ("auto", SQLITE, PG_DUMP, LOGICAL)
_BATCH = 500  # rows per INSERT of a logical restore


class BackupError(ServerSetupError):
    """A backup or restore cannot go on; the message says why, the hint what to do."""


def choose_method(engine: Engine, requested: str) -> str:
    if requested not in METHODS:
        raise BackupError(
            f"unknown backup method {requested!r}", hint=f"Use one of: {', '.join(METHODS)}."
        )
    if requested == LOGICAL:
        return LOGICAL
    kind = engine.dialect.name
    if requested == "auto":
        if kind == "sqlite":
            return SQLITE
        return PG_DUMP if shutil.which("pg_dump") else LOGICAL
    if (requested == SQLITE) != (kind == "sqlite"):
        raise BackupError(
            f"the {requested} method does not fit a {kind} database",
            hint="Leave --method at auto, or use --method logical.",
        )
    if requested == PG_DUMP and not shutil.which("pg_dump"):
        raise BackupError(
            "pg_dump is not installed",
            hint="Install the PostgreSQL client tools, or use --method logical.",
        )
    return requested


def current_schema(engine: Engine, configured: str) -> str:
    if configured or not is_postgres(engine):
        return configured
    with engine.connect() as conn:
        return str(conn.scalar(sa.text("SELECT current_schema()")))


# -- taking a snapshot -------------------------------------------------------------------


def sqlite_snapshot(engine: Engine, dest: Path) -> None:
    source = engine.url.database
    if not source or source == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            with dst:
                src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dst.close()
    finally:
        src.close()


def _libpq(engine: Engine) -> tuple[str, dict[str, str]]:
    """The database as a libpq URL (no password) and the environment that carries it."""
    url = engine.url
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = URL.create(
        "postgresql", url.username, None, url.host, url.port, url.database, url.query
    )
    return plain.render_as_string(hide_password=False), env


def _run(args: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(
            f"{what} failed: {detail[-1] if detail else f'exit {done.returncode}'}",
            hint="Check that the database is reachable with the server's settings.",
        )
    return done.stdout


def pg_dump(engine: Engine, schema: str, dest: Path) -> None:
    url, env = _libpq(engine)
    _run(
        ["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
         f"--schema={schema}", f"--file={dest}", f"--dbname={url}"],
        env,
        "pg_dump",
    )  # fmt: skip


def logical_export(engine: Engine, dest: Path) -> dict[str, int]:
    """Write ``<table>.jsonl`` for every table into ``dest``; return the row counts."""
    dest.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        if is_postgres(engine):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            meta = sa.MetaData()
            meta.reflect(conn)
            for table in meta.sorted_tables:
                n = 0
                with (dest / f"{table.name}.jsonl").open("w", encoding="utf-8") as fh:
                    rows = conn.execution_options(yield_per=_BATCH).execute(sa.select(table))
                    for row in rows.mappings():
                        fh.write(json.dumps(dict(row), separators=(",", ":")) + "\n")
                        n += 1
                counts[table.name] = n
    return counts


# -- restoring ---------------------------------------------------------------------------


def ensure_schema(engine: Engine, schema: str) -> None:
    """Create the PostgreSQL schema the server works in, when it names one."""
    if not schema or not is_postgres(engine):
        return
    quoted = engine.dialect.identifier_preparer.quote_identifier(schema)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))


def has_tables(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(sa.inspect(conn).get_table_names())


def drop_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        meta = sa.MetaData()
        meta.reflect(conn)
        meta.drop_all(conn)


def restore_sqlite(snapshot: Path, engine: Engine) -> None:
    target = engine.url.database
    if not target or target == ":memory:":
        raise BackupError("cannot restore into an in-memory SQLite database")
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    tmp = path.with_name(path.name + ".restoring")
    shutil.copyfile(snapshot, tmp)
    os.replace(tmp, path)


def pg_restore(dump: Path, engine: Engine, schema: str) -> None:
    """Restore a custom-format dump into ``schema`` (which it must have been taken from)."""
    url, env = _libpq(engine)
    toc = _run(["pg_restore", "--list", str(dump)], env, "pg_restore --list")
    # The schema itself is made here (it may exist already, e.g. public), not by the dump.
    entries = [line for line in toc.splitlines() if " SCHEMA " not in line]
    listing = dump.with_suffix(".list")
    listing.write_text("\n".join(entries) + "\n", encoding="utf-8")
    ensure_schema(engine, schema)
    args = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
            "--single-transaction", f"--use-list={listing}", f"--dbname={url}"]  # fmt: skip
    _run([*args, str(dump)], env, "pg_restore")


def logical_import(source: Path, engine: Engine, revision: str | None) -> dict[str, int]:
    """Load a logical export into an empty database; the caller migrates it to head."""
    config = alembic_config(engine)
    if revision:
        command.upgrade(config, revision)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        if is_postgres(engine):  # history rows: the serial rule (migration 0009) is for new ones
            conn.execute(sa.text("SET LOCAL kernex.restoring = 'on'"))
        meta = sa.MetaData()
        meta.reflect(conn)
        for table in meta.sorted_tables:
            if table.name == "alembic_version":
                continue
            counts[table.name] = _load_table(conn, table, source / f"{table.name}.jsonl")
        if is_postgres(engine):
            _reset_sequences(conn, meta)
    return counts


def _load_table(conn: Connection, table: sa.Table, path: Path) -> int:
    if not path.is_file():
        return 0
    n = 0
    batch: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            batch.append(json.loads(line))
            if len(batch) >= _BATCH:
                conn.execute(table.insert(), batch)
                n, batch = n + len(batch), []
    if batch:
        conn.execute(table.insert(), batch)
        n += len(batch)
    return n


def _reset_sequences(conn: Connection, meta: sa.MetaData) -> None:
    for table in meta.sorted_tables:
        if "id" not in table.c or not isinstance(table.c.id.type, sa.Integer):
            continue
        highest = conn.scalar(sa.select(sa.func.max(table.c.id)))
        conn.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence(:t, 'id'), :next, false) "
                "WHERE pg_get_serial_sequence(:t, 'id') IS NOT NULL"
            ),
            {"t": table.name, "next": int(highest or 0) + 1},
        )


def migrate_to_head(engine: Engine, schema: str) -> None:
    migrate(engine, schema=schema)
