"""The database edge: engine, sessions and Alembic migrations.

SQLite (a file in the data directory) by default; PostgreSQL by URL. With a
``database_schema`` setting every connection's ``search_path`` is set to that schema,
so a role that owns only its schema needs no other right. Foreign exceptions from the
driver are turned into ``DatabaseError``; a missing right into ``DatabasePermissionError``
whose hint names the GRANT to run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from kernex_server.errors import DatabaseError, DatabasePermissionError

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")


def make_engine(url: str, *, schema: str = "") -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if schema:
        if not _SCHEMA_RE.match(schema):
            raise DatabaseError(
                f"database_schema {schema!r} is not a plain lower-case identifier",
                hint="Use letters, digits and underscores, e.g. kernex.",
            )

        def _search_path(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET search_path TO {schema}")
            dbapi_conn.commit()

        event.listen(engine, "connect", _search_path)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def migrations_dir() -> Path:
    """Where the Alembic environment is: inside the package when installed from a wheel,
    the repository's ``migrations/`` folder in an editable checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError(
        "the Alembic migrations are missing from this installation",
        hint="Reinstall kernex; the wheel ships kernex_server/migrations.",
    )


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, *, schema: str = "") -> None:
    """Bring the schema to the newest revision; safe to run on every start."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except sa.exc.DBAPIError as exc:
        raise _map_error(exc, engine, schema) from exc


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        raise _map_error(exc, engine, "") from exc


def _map_error(exc: sa.exc.DBAPIError, engine: Engine, schema: str) -> DatabaseError:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "permission denied" in text.lower():
        role = engine.url.username or "<role>"
        target = schema or _schema_in(text) or "public"
        return DatabasePermissionError(
            f"database role {role!r} may not create the Kernex tables: {first}",
            hint=(
                f"As a superuser, either give the role its own schema: "
                f"`CREATE SCHEMA {role} AUTHORIZATION {role};` (it is found through the "
                f"default search_path), or grant the right: "
                f"`GRANT USAGE, CREATE ON SCHEMA {target} TO {role};`. See docs/server.md."
            ),
        )
    if isinstance(exc, sa.exc.OperationalError):
        return DatabaseError(
            f"cannot reach the database {engine.url.render_as_string(hide_password=True)}: {first}",
            hint="Check KERNEX_DATABASE_URL and that the database server is running.",
        )
    return DatabaseError(f"database error: {first}", hint="See the server log for details.")


def _schema_in(text: str) -> str | None:
    m = re.search(r"permission denied for schema (\w+)", text)
    return m.group(1) if m else None
