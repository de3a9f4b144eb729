from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from starlette.responses import FileResponse

from timetodo.core.deps import (
    API_PREFIX,
    EventsDep,
    IdPath,
    SessionDep,
    SettingsDep,
    UserIdDep,
    WriteSessionDep,
    begin_write,
)
from timetodo.core.errors import ErrorCode, error_response
from timetodo.files import service
from timetodo.files.schemas import AttachmentOut

router = APIRouter(prefix=API_PREFIX, tags=["attachments"])


@router.post(
    "/tasks/{task_id}/attachments",
    status_code=status.HTTP_201_CREATED,
    response_model=AttachmentOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload(
    task_id: IdPath,
    request: Request,
    user_id: UserIdDep,
    settings: SettingsDep,
    session: SessionDep,
    events: EventsDep,
) -> AttachmentOut:
    """Upload one file (multipart field `file`), streamed to disk. 413 `payload_too_large` over MAX_UPLOAD_MB,
    413 `quota_exceeded` over the per-user quota, 422 for an empty file. The type is sniffed from the content.

    The body is received completely (into a temporary file) before the write transaction opens: a client that
    sends slowly holds no database lock or connection."""
    length = request.headers.get("content-length")
    incoming, filename = await service.receive_upload(
        request.stream(),
        request.headers.get("content-type", ""),
        int(length) if length and length.isdigit() else None,
        settings,
    )
    try:
        await begin_write(request, session)
    except BaseException:
        incoming.path.unlink(missing_ok=True)
        raise
    attachment = await service.store_upload(session, settings, user_id, task_id, incoming, filename)
    out = AttachmentOut.model_validate(attachment)
    await events.publish(user_id, "attachment.created", out.model_dump(mode="json"))
    return out


@router.get("/tasks/{task_id}/attachments", response_model=list[AttachmentOut])
async def list_attachments(task_id: IdPath, user_id: UserIdDep, session: SessionDep) -> list[AttachmentOut]:
    return [AttachmentOut.model_validate(a) for a in await service.list_attachments(session, user_id, task_id)]


@router.head("/attachments/{attachment_id}", response_class=FileResponse, operation_id="download_head")
@router.get("/attachments/{attachment_id}", response_class=FileResponse)
async def download(
    attachment_id: IdPath, request: Request, user_id: UserIdDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The file, with its sniffed Content-Type and `Content-Disposition: attachment`. Supports Range requests
    (an unsatisfiable or malformed range: 416 `range_not_satisfiable` with `Content-Range: bytes */SIZE`) and HEAD."""
    attachment = await service.get_attachment(session, user_id, attachment_id)
    requested = request.headers.get("range")
    if requested is not None and not service.range_ok(requested, attachment.size):
        return error_response(
            416,
            ErrorCode.range_not_satisfiable,
            f"the requested range is not within the file's {attachment.size} bytes",
            {"Content-Range": f"bytes */{attachment.size}"},
        )
    return FileResponse(
        service.blob_for(settings, attachment),
        media_type=attachment.content_type,
        filename=attachment.filename,
        content_disposition_type="attachment",
        headers={"Cache-Control": "private, max-age=0"},
    )


@router.delete("/attachments/{attachment_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(
    attachment_id: IdPath, user_id: UserIdDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    await service.delete_attachment(session, settings, user_id, attachment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
