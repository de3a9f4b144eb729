"""Every ORM model, imported in one place so that Alembic and metadata.create_all see all tables."""

from timetodo.auth.models import RefreshToken, User
from timetodo.core.database import Base
from timetodo.core.idempotency import IdempotencyRecord
from timetodo.core.maintenance import AppState
from timetodo.files.models import Attachment
from timetodo.reminders.models import Reminder
from timetodo.tasks.models import Project, Task, TaskCompletion
from timetodo.telegram.models import TelegramLink, TelegramLinkToken, TelegramOutbox, TelegramUpdate
from timetodo.timer.models import TimeEntry

__all__ = [
    "AppState",
    "Attachment",
    "Base",
    "IdempotencyRecord",
    "Project",
    "RefreshToken",
    "Reminder",
    "Task",
    "TaskCompletion",
    "TelegramLink",
    "TelegramLinkToken",
    "TelegramOutbox",
    "TelegramUpdate",
    "TimeEntry",
    "User",
]
