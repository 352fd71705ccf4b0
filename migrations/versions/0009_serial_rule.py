"""serial rule: on PostgreSQL the database refuses a serial from an older revision

A new deployment row (a new serial for a device) must carry the deployed revision, unless
a rollout serves it (its waves and rollbacks carry the revisions it moves between) or it
re-signs the device's current content under a higher serial (the serial floor). Serials
of a device only go up. Enforced by a trigger in the inserting transaction, so no code
path of any server process sharing the database can write a serial from a revision older
than the deployed one. A logical restore loads history with ``kernex.restoring`` set.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 15:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RULE = """
CREATE OR REPLACE FUNCTION kernex_serial_rule() RETURNS trigger AS $$
DECLARE
    deployed text;
    last_row record;
    has_last boolean;
BEGIN
    IF current_setting('kernex.restoring', true) = 'on' THEN
        RETURN NEW;
    END IF;
    SELECT serial, revision, desired_digest INTO last_row FROM deployments
        WHERE device_id = NEW.device_id ORDER BY serial DESC LIMIT 1;
    has_last := FOUND;
    IF has_last AND NEW.serial <= last_row.serial THEN
        RAISE EXCEPTION 'kernex: serial % for device % is not above its serial %',
            NEW.serial, NEW.device_id, last_row.serial USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.rollout_id IS NOT NULL THEN
        RETURN NEW;
    END IF;
    SELECT commit INTO deployed FROM revisions WHERE state = 'deployed'
        ORDER BY id DESC LIMIT 1;
    IF deployed IS NULL OR NEW.revision = deployed THEN
        RETURN NEW;
    END IF;
    IF has_last AND last_row.revision = NEW.revision
            AND last_row.desired_digest = NEW.desired_digest THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'kernex: serial % for device % carries revision %, not the deployed %',
        NEW.serial, NEW.device_id, NEW.revision, deployed USING ERRCODE = 'check_violation';
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.add_column("deployments", sa.Column("rollout_id", sa.Integer(), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite serves one process, whose reconciler lock orders every write
    op.execute(RULE)
    op.execute(
        "CREATE TRIGGER deployments_serial_rule BEFORE INSERT ON deployments "
        "FOR EACH ROW EXECUTE FUNCTION kernex_serial_rule()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS deployments_serial_rule ON deployments")
        op.execute("DROP FUNCTION IF EXISTS kernex_serial_rule()")
    op.drop_column("deployments", "rollout_id")
