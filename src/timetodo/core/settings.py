"""Settings from environment variables and `.env` (SPEC 2.1)."""

from __future__ import annotations

import ipaddress
import json
import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SECRET_KEY = "dev-insecure-secret-key-change-me"
MIN_PRODUCTION_SECRET_LENGTH = 32


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


def _split_list(value: Any) -> Any:
    """Accept a JSON list (`["a","b"]`) or a comma-separated string (`a,b`)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def normalize_database_url(url: str) -> str:
    """Turn the URLs users paste (Render's `postgres://`, plain `sqlite:///`) into async driver URLs.

    libpq's `sslmode` is kept as a query parameter; `database.connect_args` translates it for asyncpg.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        scheme = "postgresql+asyncpg"
    elif scheme == "sqlite":
        scheme = "sqlite+aiosqlite"
    return f"{scheme}://{rest}"


def _is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    ENVIRONMENT: Environment = Environment.development
    DATA_DIR: Path = Path("data")
    DATABASE_URL: str = ""
    DATABASE_POOL_SIZE: int = Field(20, ge=1, le=1000)
    DATABASE_MAX_OVERFLOW: int = Field(30, ge=0, le=1000)
    REDIS_URL: str | None = None
    REDIS_POOL_SIZE: int = Field(50, ge=1, le=10000)
    SECRET_KEY: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    ALLOWED_HOSTS: Annotated[list[str], NoDecode] = ["*"]
    CORS_ORIGINS: Annotated[list[str], NoDecode] = []
    FORCE_HTTPS: bool = False
    FORWARDED_ALLOW_IPS: str = "127.0.0.1"
    GRACEFUL_SHUTDOWN_SECONDS: int = Field(20, ge=1, le=600)
    UPLOAD_DIR: Path = Path("")
    MAX_UPLOAD_MB: int = Field(25, ge=1, le=10240)
    USER_QUOTA_MB: int = Field(1024, ge=1, le=10_000_000)
    TELEGRAM_BOT_TOKEN: SecretStr | None = None
    TELEGRAM_API_BASE: str = "https://api.telegram.org"
    TELEGRAM_WEBHOOK_SECRET: SecretStr | None = None
    TELEGRAM_CHAT_RATE: float = Field(1.0, gt=0, le=100)  # messages per second to one chat
    TELEGRAM_GLOBAL_RATE: float = Field(30.0, gt=0, le=1000)  # messages per second for the bot
    PUBLIC_BASE_URL: str = "http://127.0.0.1:8000"
    LOG_LEVEL: str = "INFO"
    LOG_FILE: Path | None = None
    ACCESS_TOKEN_TTL_MINUTES: int = Field(15, ge=1, le=1440)
    REFRESH_TOKEN_TTL_DAYS: int = Field(30, ge=1, le=365)
    LOGIN_ATTEMPTS_PER_MINUTE: int = Field(5, ge=1, le=1000)
    WS_AUTH_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=300)
    WS_PING_SECONDS: float = Field(20.0, gt=0, le=600)
    REMINDER_POLL_SECONDS: float = Field(1.0, gt=0, le=300)
    MAINTENANCE_CACHE_SECONDS: float = Field(1.0, ge=0, le=60)
    MAINTENANCE_RETRY_AFTER: int = Field(30, ge=1, le=3600)
    AUTH_STATE_CACHE_SECONDS: float = Field(5.0, ge=0, le=300)
    REGISTRATIONS_PER_HOUR: int = Field(20, ge=1, le=100_000)
    MAX_JSON_BODY_KB: int = Field(1024, ge=1, le=1024 * 1024)
    METRICS_TOKEN: SecretStr | None = None

    @field_validator("ALLOWED_HOSTS", "CORS_ORIGINS", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET", mode="before")
    @classmethod
    def _telegram_unset(cls, value: Any) -> Any:
        """An empty value (as in .env.example) means unset: no bot."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if text is None or (isinstance(text, str) and not text.strip()) else value

    @field_validator("TELEGRAM_BOT_TOKEN")
    @classmethod
    def _telegram_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", value.get_secret_value()):
            raise ValueError("must look like 123456789:AA… (the token @BotFather gave you)")
        return value

    @field_validator("TELEGRAM_WEBHOOK_SECRET")
    @classmethod
    def _telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's secret_token rule)")
        return value

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:
            return value
        url = normalize_database_url(value)
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must be a postgresql:// or sqlite:/// URL")
        return url

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _defaults_and_production(self) -> Settings:
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite+aiosqlite:///{(self.DATA_DIR / 'timetodo.db').resolve()}"
        if Path("") == self.UPLOAD_DIR:
            self.UPLOAD_DIR = self.DATA_DIR / "uploads"
        if self.ENVIRONMENT is Environment.production:
            secret = self.SECRET_KEY.get_secret_value()
            if secret == DEFAULT_SECRET_KEY or secret.lower().startswith(("change", "your-")):
                raise ValueError("SECRET_KEY is missing or left at its default/example value; set a random one")
            if len(secret) < MIN_PRODUCTION_SECRET_LENGTH:
                raise ValueError(f"SECRET_KEY must be at least {MIN_PRODUCTION_SECRET_LENGTH} characters")
        return self

    def serving_problem(self, host: str) -> str | None:
        """Why serving on `host` with these settings is refused, or None. With the built-in development SECRET_KEY
        anyone can forge a token for any user, so it is accepted only on a loopback address, in any ENVIRONMENT."""
        if self.SECRET_KEY.get_secret_value() != DEFAULT_SECRET_KEY or _is_loopback_host(host):
            return None
        return (
            f"SECRET_KEY is the built-in development key, which lets anyone forge tokens: refusing to listen on "
            f"{host}. Set SECRET_KEY to a random value of {MIN_PRODUCTION_SECRET_LENGTH}+ characters, "
            f"or serve on 127.0.0.1"
        )

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")

    @property
    def max_upload_bytes(self) -> int:
        return self.MAX_UPLOAD_MB * 1024 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()


def describe_settings_error(exc: Exception) -> str:
    """One line naming the setting that is wrong, for the CLI and startup."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}")
        return "; ".join(parts)
    return str(exc)
