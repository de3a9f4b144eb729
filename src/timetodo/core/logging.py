"""JSON-lines logging with a request id, to stdout and optionally a rotating file. Secrets are masked."""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_SECRET_PATTERNS = [
    # key=value / "key": "value" pairs whose key names a secret
    re.compile(
        r"""(?i)(["']?(?:password|passwd|secret|token|access_token|refresh_token|api_key|authorization)["']?"""
        r"""\s*[:=]\s*["']?)([^"'\s,&}]+)"""
    ),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
    # credentials inside URLs: scheme://user:password@host
    re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)"),
    # Telegram bot tokens: 123456789:AA...
    re.compile(r"()(\b\d{6,12}:[A-Za-z0-9_-]{30,}\b)"),
]

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


# every pattern above needs a ':' or '=' or the word bearer: text without them is returned as is (one search
# instead of four substitutions — most log fields, e.g. the access line's route and method, have none)
_MAYBE_SECRET = re.compile(r"[:=]|(?i:bearer)")


def mask_secrets(text: str) -> str:
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern in _SECRET_PATTERNS:
        if pattern.groups == 3:
            text = pattern.sub(lambda m: f"{m.group(1)}***{m.group(3)}", text)
        else:
            text = pattern.sub(lambda m: f"{m.group(1)}***", text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        rid = request_id_var.get()
        if rid:
            payload["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key != "color_message":
                payload[key] = mask_secrets(value) if isinstance(value, str) else value
        if record.exc_info:
            payload["exc"] = mask_secrets(self.formatException(record.exc_info))
        return orjson.dumps(payload, default=str).decode()


def configure_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    # records carry no process/thread names (the JSON line never had them): looking them up cost ~2 % of a worker's
    # CPU under load, once per access-log line (`multiprocessing.current_process().name`)
    logging.logMultiprocessing = False
    logging.logThreads = False
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = []
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter)
    handlers.append(stream)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=20 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        rotating.setFormatter(formatter)
        handlers.append(rotating)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    # Our middleware writes one access line per request, with the route template and request id.
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
