"""Alembic environment for the Kernex server.

The engine comes from the caller (``kernex_server.database.migrate``) through
``config.attributes``; run by hand, ``sqlalchemy.url`` in the config is used.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from kernex_server.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
