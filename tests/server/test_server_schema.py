"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from kernex_server.database import make_engine, migrate
from kernex_server.models import Base


def test_migrations_match_the_models(database: dict[str, str]) -> None:
    schema = database.get("database_schema", "")
    engine = make_engine(database["database_url"], schema=schema)  # sets search_path
    try:
        migrate(engine, schema=schema)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_schemas": False, "compare_type": True}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
