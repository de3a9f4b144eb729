"""Account management for admins (API and CLI): delete an account with everything it owns (creating one is
`auth.service.create_user`).

Deleting a user removes, in one transaction, the account and every row that belongs to it (projects, tasks,
reminders, time entries, attachments, sessions, the Telegram link — the foreign keys cascade), then the stored files
no other attachment still uses. Blobs are shared by content hash across users, so each is locked
(`files.repository.lock_blob`) from the check until the commit: an upload of the same bytes by someone else either
commits first (the blob stays) or waits and writes it again. Tokens of the deleted account stop working at once on
this instance and within the account cache's TTL on the others (`core.accounts`).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from timetodo.auth.models import User
from timetodo.core.accounts import AccountStates
from timetodo.core.errors import Conflict, NotFound
from timetodo.core.settings import Settings
from timetodo.files import repository as files_repository
from timetodo.files import storage
from timetodo.files.models import Attachment


async def delete_user(
    session: AsyncSession, settings: Settings, accounts: AccountStates | None, user_id: int, *, acting_admin: int | None
) -> int:
    """Delete the account `user_id` and everything it owns; the number of stored files removed. An admin cannot
    delete their own account this way (they would lock themselves out mid-request)."""
    if acting_admin is not None and user_id == acting_admin:
        raise Conflict("Admins cannot delete their own account here; use `timetodo user delete` on the server")
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"No user with id {user_id}")
    hashes = sorted(
        set((await session.execute(select(Attachment.sha256).where(Attachment.owner_id == user_id))).scalars())
    )
    for sha256 in hashes:
        await files_repository.lock_blob(session, sha256)
    await session.execute(delete(User).where(User.id == user_id))
    await session.flush()
    unused = [sha256 for sha256 in hashes if not await files_repository.hash_in_use(session, sha256)]
    for sha256 in unused:  # still under the blob locks, as files.service.delete_attachment does
        storage.remove_blob(settings.UPLOAD_DIR, sha256)
    await session.commit()
    if accounts is not None:
        accounts.forget(user_id)
    return len(unused)


async def user_id_by_email(session: AsyncSession, email: str) -> int:
    user_id = (await session.execute(select(User.id).where(User.email == email.strip().lower()))).scalar_one_or_none()
    if user_id is None:
        raise NotFound(f"No user with e-mail {email}")
    return int(user_id)
