"""forwarding mode: app_state.forward_to / forward_until (the old host proxies to the new one after a migration)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("app_state") as batch:
        batch.add_column(sa.Column("forward_to", sa.String(500), nullable=True))
        batch.add_column(sa.Column("forward_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_state") as batch:
        batch.drop_column("forward_until")
        batch.drop_column("forward_to")
