"""Migration logs: `migration.log` (human) and `migration.jsonl` (one JSON object per line), secrets masked."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from timetodo.core.logging import mask_secrets

LOGGER = "timetodo.ops"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _Mask(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return mask_secrets(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = ()
        if record.exc_info:  # the traceback, masked like everything else, as a field of its own
            record.traceback = self.scrub("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info, record.exc_text = None, None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        return True


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        return json.dumps(data, default=str)


class _Human(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        tail = " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{stamp} {record.levelname:<7} {record.getMessage()}" + (f"  [{tail}]" if tail else "")


class Journal:
    """Attach the two log files to the `timetodo.ops` loggers for the duration of a command."""

    def __init__(self, work_dir: Path, secrets: list[str]) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.mask = _Mask(secrets)
        self.handlers: list[logging.Handler] = []
        for name, formatter in (("migration.log", _Human()), ("migration.jsonl", _JsonLines())):
            handler = logging.FileHandler(work_dir / name, encoding="utf-8")
            handler.setFormatter(formatter)
            handler.addFilter(self.mask)
            self.handlers.append(handler)
        self.logger = logging.getLogger(LOGGER)

    def __enter__(self) -> Journal:
        for handler in self.handlers:
            self.logger.addHandler(handler)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *_exc: object) -> None:
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
