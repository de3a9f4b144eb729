"""indexes on the foreign keys that cascades follow (tasks.parent_id, *.task_id)

Without them every deleted task scans subtasks, time entries, attachments and reminders in full (found by the
migration rollback, which replays deletes: 1 000 deletes on a 200 k-task table took 17 s, 0.5 s with these).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_tasks_parent_id", "tasks", "parent_id"),
    ("ix_time_entries_task_id", "time_entries", "task_id"),
    ("ix_attachments_task_id", "attachments", "task_id"),
    ("ix_reminders_task_id", "reminders", "task_id"),
)


def upgrade() -> None:
    for name, table, column in INDEXES:
        op.create_index(name, table, [column], unique=False)


def downgrade() -> None:
    for name, table, _column in reversed(INDEXES):
        op.drop_index(name, table_name=table)
