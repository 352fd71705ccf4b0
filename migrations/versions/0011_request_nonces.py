"""request nonces: replay protection shared by every server process

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 15:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # UNLOGGED on PostgreSQL: no WAL per device request. A database crash empties the
    # table: requests of the last replay window (2 x max_skew) could be replayed once more
    unlogged = ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []
    op.create_table(
        "request_nonces",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
        prefixes=unlogged,
    )
    op.create_index(
        op.f("ix_request_nonces_expires_at"), "request_nonces", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_request_nonces_expires_at"), table_name="request_nonces")
    op.drop_table("request_nonces")
