"""Migrations work for a PostgreSQL role that owns only its schema, and a missing right
gives a message naming the GRANT to run."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from kit.server import migration_head
from sqlalchemy.engine import make_url

from kernex_server.database import current_revision, make_engine, migrate
from kernex_server.errors import DatabasePermissionError

pytestmark = pytest.mark.postgres


@pytest.fixture
def make_role(postgres_url: str) -> Iterator[Any]:
    admin = sa.create_engine(postgres_url)
    made: list[str] = []

    def make(*, own_schema: bool) -> str:
        role = f"kx_role_{secrets.token_hex(5)}"
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
            if own_schema:
                conn.execute(sa.text(f"CREATE SCHEMA {role} AUTHORIZATION {role}"))
        made.append(role)
        return (
            make_url(postgres_url)
            .set(username=role, password=None)
            .render_as_string(hide_password=False)
        )

    yield make
    with admin.begin() as conn:
        for role in made:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {role} CASCADE"))
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
    admin.dispose()


def test_role_owning_only_its_schema_migrates(make_role: Any) -> None:
    url = make_role(own_schema=True)
    role = make_url(url).username
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT has_schema_privilege('public', 'CREATE')")) is False
        migrate(engine)
        migrate(engine)  # again: a no-op
        assert current_revision(engine) == migration_head()
        with engine.connect() as conn:
            schemas = set(
                conn.scalars(
                    sa.text(
                        "SELECT DISTINCT table_schema FROM information_schema.tables "
                        "WHERE table_name IN ('devices', 'alembic_version')"
                    )
                )
            )
        assert schemas == {role}
    finally:
        engine.dispose()


def test_explicit_schema_setting(make_role: Any) -> None:
    url = make_role(own_schema=True)
    schema = make_url(url).username
    engine = make_engine(url, schema=schema)
    try:
        migrate(engine, schema=schema)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM devices")) == 0
    finally:
        engine.dispose()


def test_missing_right_names_the_grant(make_role: Any) -> None:
    url = make_role(own_schema=False)
    role = make_url(url).username
    engine = make_engine(url)
    try:
        with pytest.raises(DatabasePermissionError) as caught:
            migrate(engine)
    finally:
        engine.dispose()
    assert "permission denied for schema public" in caught.value.message
    assert caught.value.hint is not None
    assert f"GRANT USAGE, CREATE ON SCHEMA public TO {role};" in caught.value.hint
    assert f"CREATE SCHEMA {role} AUTHORIZATION {role};" in caught.value.hint


def _hold_reconcile_lock(conn: sa.Connection, schema: str) -> None:
    conn.execute(sa.text(f"SET LOCAL search_path TO {schema}"))
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended('kernex-reconcile:' || :s, 0))"),
        {"s": schema},
    )


def test_one_reconciler_at_a_time_across_servers(start_server: Any, postgres_url: str) -> None:
    server = start_server()
    if server.kx.engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are a PostgreSQL feature")
    schema = server.kx.settings.database_schema
    other = sa.create_engine(postgres_url)
    try:
        with other.begin() as conn:  # another server of this deployment holds the lock
            _hold_reconcile_lock(conn, schema)
            assert server.kx.reconciler.reconcile(force=True).state == "skipped"
        assert server.kx.reconciler.reconcile(force=True).state == "deployed"
        with other.begin() as conn:  # another deployment (its own schema) reconciling
            _hold_reconcile_lock(conn, "public")
            assert server.kx.reconciler.reconcile(force=True).state == "deployed"
    finally:
        other.dispose()
