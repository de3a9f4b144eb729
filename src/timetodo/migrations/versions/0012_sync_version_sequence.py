"""sync versions from one sequence (PostgreSQL): a user's writes no longer serialise on `users.sync_version`

`ttd_sync_next_version(owner)` hands out a version to a write transaction of `owner`: it takes a *shared*
transaction-level advisory lock keyed by the owner, then `nextval`. `ttd_sync_watermark(owner)` takes the same lock
*exclusively* — so it waits until every write transaction of that owner that already holds a version has ended —
then reads the sequence's last handed-out value. Every version of the owner at or below the watermark therefore
belongs to a finished transaction: a reader that only returns changes up to the watermark never skips one. Writers
only share the lock, so one user's concurrent writes do not wait for each other. See timetodo.core.tracking.

The sequence (owned by `users.sync_version`, see below) starts above every `users.sync_version`, so tokens handed out before this migration stay below every
new version. SQLite keeps the per-user counter (SQLite serialises writers anyway): nothing to do there.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# first key of the two-int advisory locks (the other one is the owner id); the bigint form used elsewhere
# (migrations, attachments) is a separate key space
LOCK_NAMESPACE = 7101


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # owned by users.sync_version: tools that carry a table's sequences with it (pg_dump, the migration toolkit's
    # rollback, which moves every owned sequence up to the other side's value) carry this one with `users`
    op.execute("CREATE SEQUENCE sync_version_seq AS bigint OWNED BY users.sync_version")
    op.execute("SELECT setval('sync_version_seq', coalesce((SELECT max(sync_version) FROM users), 0) + 1, false)")
    op.execute(
        f"""
        CREATE FUNCTION ttd_sync_next_version(owner bigint) RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared({LOCK_NAMESPACE}, (owner % 2147483647)::int4);
            RETURN nextval('sync_version_seq');
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION ttd_sync_watermark(owner bigint) RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            last bigint;
            called boolean;
        BEGIN
            PERFORM pg_advisory_xact_lock({LOCK_NAMESPACE}, (owner % 2147483647)::int4);
            SELECT last_value, is_called INTO last, called FROM sync_version_seq;
            RETURN CASE WHEN called THEN last ELSE last - 1 END;
        END
        $$
        """  # noqa: S608 (constants only)
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # the per-user counters continue above every version handed out by the sequence
    op.execute("UPDATE users SET sync_version = greatest(sync_version, (SELECT last_value FROM sync_version_seq))")
    op.execute("DROP FUNCTION ttd_sync_watermark(bigint)")
    op.execute("DROP FUNCTION ttd_sync_next_version(bigint)")
    op.execute("DROP SEQUENCE sync_version_seq")
