"""one device per key: devices.fingerprint is unique

A key enrolled under several device ids before this rule stays with the device that
enrolled it first; the later ones are revoked (an admin enrolls that hardware again under
a new key) and their fingerprint is marked ``<fingerprint>#dup-<id>`` so the index holds
while the record keeps which key they shared.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 14:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_devices = sa.table(
    "devices",
    sa.column("id", sa.String),
    sa.column("fingerprint", sa.String),
    sa.column("state", sa.String),
    sa.column("admitted_by", sa.String),
    sa.column("enrolled_at", sa.Float),
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_devices.c.id, _devices.c.fingerprint).order_by(
            _devices.c.fingerprint, _devices.c.enrolled_at, _devices.c.id
        )
    ).all()
    seen: set[str] = set()
    for device_id, fingerprint in rows:
        if fingerprint not in seen:
            seen.add(fingerprint)
            continue
        conn.execute(
            sa.update(_devices)
            .where(_devices.c.id == device_id)
            .values(
                fingerprint=f"{fingerprint}#dup-{device_id}",
                state="revoked",
                admitted_by="migration:duplicate-key",
            )
        )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column(
            "fingerprint",
            existing_type=sa.String(length=80),
            type_=sa.String(length=128),
            existing_nullable=False,
        )
        batch_op.drop_index(batch_op.f("ix_devices_fingerprint"))
        batch_op.create_index(batch_op.f("ix_devices_fingerprint"), ["fingerprint"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_fingerprint"))
        batch_op.create_index(batch_op.f("ix_devices_fingerprint"), ["fingerprint"], unique=False)
        batch_op.alter_column(
            "fingerprint",
            existing_type=sa.String(length=128),
            type_=sa.String(length=80),
            existing_nullable=False,
        )
