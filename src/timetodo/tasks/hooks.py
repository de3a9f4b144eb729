"""What other domains do when a task changes, without `tasks` importing them.

Domains above `tasks` keep state derived from tasks (reminders fire relative to the due date and must not fire
for a deleted task). They implement `TaskObserver` and are registered once by the app factory
(`timetodo.main.create_app`). The task service calls every observer inside its own transaction, before it
commits, so the derived state commits (or rolls back) together with the change that caused it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from timetodo.tasks.models import Task


class TaskObserver(Protocol):
    async def due_changed(self, session: AsyncSession, task: Task) -> None:
        """The task's due moment changed (edited, or moved to the next occurrence of its recurrence)."""

    async def deleted(self, session: AsyncSession, owner_id: int) -> None:
        """Some of the owner's tasks were soft-deleted in this transaction (directly, as subtasks or with a project)."""


_observers: list[TaskObserver] = []


def observe(observer: TaskObserver) -> None:
    """Register `observer` (idempotent: registering the same one twice keeps one)."""
    if observer not in _observers:
        _observers.append(observer)


async def due_changed(session: AsyncSession, task: Task) -> None:
    for observer in _observers:
        await observer.due_changed(session, task)


async def deleted(session: AsyncSession, owner_id: int) -> None:
    for observer in _observers:
        await observer.deleted(session, owner_id)
