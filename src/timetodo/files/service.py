"""Attachments: streamed multipart uploads with size limit and per-user quota, owner-only downloads, verify."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

from timetodo.core.database import utcnow
from timetodo.core.errors import AppError, ErrorCode, InvalidInput, NotFound
from timetodo.core.settings import Settings
from timetodo.files import repository, storage
from timetodo.files.models import FILENAME_MAX, Attachment
from timetodo.tasks import repository as tasks_repository
from timetodo.timer.repository import lock_user

MULTIPART_OVERHEAD = 64 * 1024
FILE_FIELD = b"file"
MAX_BOUNDARY = 70  # RFC 2046
MAX_PART_HEADERS = 16 * 1024


class PayloadTooLarge(AppError):
    """The file is larger than the upload limit."""

    status_code = 413
    code = ErrorCode.payload_too_large


class QuotaExceeded(AppError):
    """The upload would exceed your storage quota."""

    status_code = 413
    code = ErrorCode.quota_exceeded


class UnsupportedMedia(AppError):
    """Send the file as multipart/form-data in a field named `file`."""

    status_code = 415
    code = ErrorCode.unsupported_media_type


def _field_error(message: str) -> InvalidInput:
    return InvalidInput([{"field": "file", "loc": ["body", "file"], "message": message, "type": "value_error"}])


@dataclass
class _PartState:
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    writer: storage.IncomingWriter | None = None
    filename: str | None = None
    done: bool = False


async def receive_upload(
    chunks: AsyncIterator[bytes], content_type: str, content_length: int | None, settings: Settings
) -> tuple[storage.IncomingFile, str]:
    """Stream the `file` part of a multipart body to UPLOAD_DIR/.incoming, hashing as it goes. Nothing is held in
    memory beyond one chunk; a body over the limit is cut off and its partial file removed."""
    limit = settings.max_upload_bytes
    if content_length is not None and content_length > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the file is larger than {settings.MAX_UPLOAD_MB} MB")
    mime, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UnsupportedMedia()
    if len(boundary) > MAX_BOUNDARY:
        raise _field_error(f"the multipart boundary is longer than {MAX_BOUNDARY} characters")

    state = _PartState()
    header_bytes = 0

    def count_header(size: int) -> None:
        nonlocal header_bytes
        header_bytes += size
        if header_bytes > MAX_PART_HEADERS:
            raise _field_error(f"the part headers are longer than {MAX_PART_HEADERS} bytes")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header_field.lower()] = state.header_value
        state.header_field = state.header_value = b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state.headers.get(b"content-disposition", b""))
        if disposition.get(b"name") == FILE_FIELD and state.writer is None and not state.done:
            raw_name = disposition.get(b"filename", b"file")
            state.filename = raw_name.decode("utf-8", errors="replace")
            state.writer = storage.IncomingWriter(settings.UPLOAD_DIR, limit)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.writer is not None and not state.done:
            state.writer.write(data[start:end])

    def on_part_end() -> None:
        nonlocal header_bytes
        if state.writer is not None:
            state.done = True
        state.headers = {}
        header_bytes = 0

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
        if state.writer is None or not state.done:
            raise _field_error("no complete `file` part in the multipart body")
        incoming = await asyncio.to_thread(state.writer.finish)
    except OverflowError as exc:
        if state.writer:
            state.writer.discard()
        raise PayloadTooLarge(f"the file is larger than {settings.MAX_UPLOAD_MB} MB") from exc
    except MultipartParseError as exc:
        if state.writer:
            state.writer.discard()
        raise _field_error(f"the multipart body is malformed: {exc}") from exc
    except BaseException:
        if state.writer:
            state.writer.discard()
        raise
    if incoming.size == 0:
        incoming.path.unlink(missing_ok=True)
        raise _field_error("the file is empty")
    return incoming, storage.sanitize_filename(state.filename or "file", FILENAME_MAX)


async def store_upload(
    session: AsyncSession,
    settings: Settings,
    owner_id: int,
    task_id: int,
    incoming: storage.IncomingFile,
    filename: str,
) -> Attachment:
    """Check the task and the quota, move the bytes to their content address and record the attachment — or
    leave nothing behind."""
    try:
        if await tasks_repository.get_task(session, owner_id, task_id) is None:
            raise NotFound("Task not found")
        await lock_user(session, owner_id)
        quota = settings.USER_QUOTA_MB * 1024 * 1024
        used = await repository.used_bytes(session, owner_id)
        if used + incoming.size > quota:
            raise QuotaExceeded(
                f"this file needs {incoming.size} bytes; {max(0, quota - used)} of your {settings.USER_QUOTA_MB} MB are left"
            )
        await repository.lock_blob(session, incoming.sha256)
        await asyncio.to_thread(storage.commit_blob, settings.UPLOAD_DIR, incoming)
        attachment = Attachment(
            owner_id=owner_id,
            task_id=task_id,
            filename=filename,
            content_type=storage.sniff_content_type(incoming.head),
            size=incoming.size,
            sha256=incoming.sha256,
        )
        session.add(attachment)
        try:
            await session.commit()
        except BaseException:
            await session.rollback()
            await _forget_blob_if_unused(session, settings.UPLOAD_DIR, incoming.sha256)
            raise
        return attachment
    finally:
        incoming.path.unlink(missing_ok=True)


async def _forget_blob_if_unused(session: AsyncSession, root: Path, sha256: str) -> None:
    await repository.lock_blob(session, sha256)
    if not await repository.hash_in_use(session, sha256):
        storage.remove_blob(root, sha256)
    await session.commit()


async def get_attachment(session: AsyncSession, owner_id: int, attachment_id: int) -> Attachment:
    attachment = await repository.get(session, owner_id, attachment_id)
    if attachment is None:
        raise NotFound("Attachment not found")
    return attachment


def range_ok(http_range: str, size: int) -> bool:
    """Whether Starlette's FileResponse will serve this Range header (else it answers a bare 400/416)."""
    try:
        FileResponse._parse_range_header(http_range, size)
    except (MalformedRangeHeader, RangeNotSatisfiable):
        return False
    return True


def blob_for(settings: Settings, attachment: Attachment) -> Path:
    path = storage.blob_path(settings.UPLOAD_DIR, attachment.sha256)
    if not path.is_file():
        raise NotFound("The attachment's file is missing on this server; run `timetodo files verify`")
    return path


async def list_attachments(session: AsyncSession, owner_id: int, task_id: int) -> list[Attachment]:
    if await tasks_repository.get_task(session, owner_id, task_id) is None:
        raise NotFound("Task not found")
    return list(await repository.list_for_task(session, owner_id, task_id))


async def delete_attachment(session: AsyncSession, settings: Settings, owner_id: int, attachment_id: int) -> None:
    attachment = await get_attachment(session, owner_id, attachment_id)
    await repository.lock_blob(session, attachment.sha256)
    attachment.deleted_at = utcnow()
    await session.flush()
    if not await repository.hash_in_use(session, attachment.sha256):
        storage.remove_blob(settings.UPLOAD_DIR, attachment.sha256)
    await session.commit()


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    stale_incoming: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not (self.missing or self.corrupt or self.orphaned)


async def verify_files(session: AsyncSession, root: Path, delete_orphans: bool = False) -> VerifyReport:
    """Re-hash every stored file: missing (in the DB, not on disk), corrupt (hash differs), orphaned (on disk, not
    referenced by any live attachment), stale partial uploads."""
    expected = await repository.live_hashes(session)
    report = VerifyReport()
    for sha256, _size in sorted(expected.items()):
        report.checked += 1
        path = storage.blob_path(root, sha256)
        if not path.is_file():
            report.missing.append(sha256)
        elif await asyncio.to_thread(storage.hash_file, path) != sha256:
            report.corrupt.append(sha256)
        else:
            report.ok += 1
    for sha256, path in storage.iter_blobs(root):
        if sha256 not in expected:
            report.orphaned.append(sha256)
            if delete_orphans:
                path.unlink(missing_ok=True)
                report.removed.append(sha256)
    incoming = root / storage.INCOMING
    if incoming.is_dir():
        for partial in incoming.iterdir():
            if partial.stat().st_mtime < time.time() - 3600:
                report.stale_incoming.append(partial.name)
                if delete_orphans:
                    partial.unlink(missing_ok=True)
    return report
