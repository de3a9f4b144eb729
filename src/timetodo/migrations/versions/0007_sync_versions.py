"""sync versions: users.sync_version and a sync_version on projects, tasks and time entries

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRACKED = ("projects", "tasks", "time_entries")


def upgrade() -> None:
    op.add_column("users", sa.Column("sync_version", sa.BigInteger(), server_default="0", nullable=False))
    for table in TRACKED:
        op.add_column(table, sa.Column("sync_version", sa.BigInteger(), server_default="0", nullable=False))
        op.create_index(f"ix_{table}_owner_id_sync_version", table, ["owner_id", "sync_version"], unique=False)
        # rows from before change tracking: version 1, so that a first sync (versions > 0) includes them
        op.execute(f"UPDATE {table} SET sync_version = 1")  # noqa: S608 - constant table names
    op.execute("UPDATE users SET sync_version = 1")


def downgrade() -> None:
    for table in TRACKED:
        op.drop_index(f"ix_{table}_owner_id_sync_version", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("sync_version")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sync_version")
