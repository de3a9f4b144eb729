"""`migration.toml`: the one configuration file of `timetodo migrate`.

Secrets are never written in the file: every secret is the *name* of an environment variable (`*_env` keys) that
holds it. Loading fails before any host is touched, with the dotted key that is wrong (`target.port: ...`).

Every relative path in the file (`work_dir`, `target.bundle_dir`, `target.env_file`, `dns.hook`, the SSH
`key_file` / `known_hosts`) is resolved once, by `load_config`, against the folder migration.toml is in: the
steps see absolute paths only, whatever the current directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from timetodo.ops.errors import OpsError

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
APP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EnvName = Annotated[str, Field(pattern=ENV_NAME.pattern, description="name of an environment variable")]
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(OpsError):
    """A configuration problem: `key` is the dotted path in migration.toml (or the environment variable)."""

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{key}: {message}", hint)
        self.key, self.message = key, message


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _reject_inline_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        raise ValueError("contains a password; put the whole URL in an environment variable and name it in *_env")
    return url


class SSHHost(_Model):
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Port = 22
    user: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_-]*\$?$")] = "root"
    key_file: Path = Path("~/.ssh/id_ed25519")
    known_hosts: Path = Path("~/.ssh/known_hosts")

    @field_validator("key_file", "known_hosts")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


_SSH = TypeVar("_SSH", bound=SSHHost)


class Uploads(_Model):
    """Where the source's uploads live: a directory on an SSH host, or on this machine (`ssh` omitted)."""

    path: Annotated[str, Field(min_length=1)]
    ssh: SSHHost | None = None


class Source(_Model):
    api_url: Annotated[str, Field(pattern=r"^https?://")]
    # an admin account switches maintenance mode on the source: e-mail + password (the toolkit logs in, and again
    # when its access token expires during a long migration) or a ready access token
    admin_email: str | None = None
    admin_password_env: EnvName | None = None
    admin_token_env: EnvName | None = None
    database_url_env: EnvName
    # strategy "logical": the source database's URL as the *target's* PostgreSQL server reaches it (the subscription
    # runs there); default: the URL of database_url_env
    replication_url_env: EnvName | None = None
    redis_url_env: EnvName | None = None
    uploads: Uploads | None = None

    @field_validator("api_url")
    @classmethod
    def _no_inline_secret(cls, value: str) -> str:
        return _reject_inline_password(value).rstrip("/")

    @model_validator(mode="after")
    def _admin(self) -> Source:
        if self.admin_token_env is None and (self.admin_email is None or self.admin_password_env is None):
            raise ValueError("give admin_email + admin_password_env (or admin_token_env)")
        return self


class Target(SSHHost):
    public_url: Annotated[str, Field(pattern=r"^https?://")]
    # where the old host forwards its clients after the switch (default public_url): while public_url's name still
    # resolves to the old host, the new host's direct address, answering the API itself (e.g. http://203.0.113.7)
    forward_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    app_dir: str | None = None
    runtime: Literal["compose", "process"] = "compose"
    uploads_dir: str | None = Field(None, description="UPLOAD_DIR on the target (default <app_dir>/uploads)")
    # runtime "compose": the bundle shipped to the target (relative paths: from migration.toml's folder)
    bundle_dir: Path = Path("deploy")
    # runtime "compose": how the app's image gets there: built on the target from a shipped build context (the
    # folder with the Dockerfile, default: bundle_dir's parent), loaded from this machine's `docker save`, or pulled
    image_source: Literal["build", "load", "pull"] = "build"
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")] | None = None
    build_context: Path | None = None
    # runtime "compose" with an https:// public_url: deploy obtains the certificate by ACME HTTP-01 (certbot on the
    # host) when acme_email is set; acme_server / acme_ca_bundle only for another CA than Let's Encrypt
    acme_email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    acme_server: Annotated[str, Field(pattern=r"^https://")] = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: str | None = None
    # runtime "process": the timetodo executable on the target and where the app listens (behind nginx)
    timetodo_bin: str | None = None
    app_host: str = "127.0.0.1"
    app_port: Port = 8000
    # URLs as seen *on the target host* (e.g. postgresql://timetodo:...@127.0.0.1:5432/timetodo); the toolkit
    # reaches them through its SSH connection, so they never need a public port
    database_url_env: EnvName
    redis_url_env: EnvName | None = None
    env_file: Path | None = Field(None, description="the target's .env (secrets) uploaded by deploy, mode 0600")

    @field_validator("public_url", "forward_url")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return None if value is None else _reject_inline_password(value).rstrip("/")

    @model_validator(mode="after")
    def _image(self) -> Target:
        if self.image_source in ("load", "pull") and not self.image:
            raise ValueError(f'image_source = "{self.image_source}" needs target.image (the image\'s name)')
        return self


class Telegram(_Model):
    bot_token_env: EnvName
    api_base: Annotated[str, Field(pattern=r"^https?://")] = "https://api.telegram.org"
    webhook_path: Annotated[str, Field(pattern=r"^/")] = "/api/v1/telegram/webhook"
    webhook_secret_env: EnvName | None = None
    probe_chat_id: int | None = Field(
        None,
        description="a chat that has started the bot (the operator's own: its id is the user id); validate sends "
        "/ping from it to the target's webhook and requires the bot's answer",
    )


class Dns(_Model):
    record: str | None = None
    hook: Path | None = Field(None, description="a script called with: RECORD OLD_TARGET NEW_TARGET")


class Prepare(_Model):
    """`[prepare]`: how `timetodo migrate prepare` sets the target host up."""

    docker: Literal["docker-ce", "distro"] = Field(
        "docker-ce", description="Docker CE from download.docker.com, or the distribution's docker.io + compose"
    )
    deploy_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "deploy"
    swap_mb: Annotated[int, Field(ge=256, le=65536)] = 2048
    min_ram_mb: Annotated[int, Field(ge=0, le=16 * 1024 * 1024, description="a swap file below this much RAM")] = 2048

    @field_validator("deploy_user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if value == "root":
            raise ValueError("must be a user other than root")
        return value


class Validate(_Model):
    canary: bool = Field(
        True, description="plant a canary account on the source before the freeze, check it on the target"
    )
    load_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0
    load_connections: Annotated[int, Field(ge=1, le=128)] = 16


class MigrationConfig(_Model):
    app_name: Annotated[str, Field(pattern=APP_NAME.pattern)] = "timetodo"
    # "delta": full copy before the freeze, then only the differing chunks/keys/files inside it (the default);
    # "dump": the whole database and Redis dumped and restored again inside the freeze;
    # "logical": native logical replication (publication on the source, subscription on the target) where the
    # source allows it (preflight checks; otherwise "delta"), the freeze only waits for the stream to catch up
    strategy: Literal["delta", "dump", "logical"] = "delta"
    downtime_budget_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 30
    work_dir: Path = Path("migration")
    parallel_jobs: Annotated[int, Field(ge=1, le=64)] = 2
    source: Source
    target: Target
    telegram: Telegram | None = None
    dns: Dns = Dns()
    prepare: Prepare = Prepare()
    validate_: Validate = Field(Validate(), alias="validate")

    @model_validator(mode="after")
    def _defaults(self) -> MigrationConfig:
        if self.target.app_dir is None:
            object.__setattr__(self, "target", self.target.model_copy(update={"app_dir": f"/opt/{self.app_name}"}))
        return self

    def resolved(self, base: Path) -> MigrationConfig:
        """This configuration with every relative path made absolute against `base` (migration.toml's folder)."""

        def under(path: Path) -> Path:
            path = path.expanduser()
            return path if path.is_absolute() else (base / path).absolute()

        def host(ssh: _SSH) -> _SSH:
            return ssh.model_copy(update={"key_file": under(ssh.key_file), "known_hosts": under(ssh.known_hosts)})

        target = host(self.target).model_copy(
            update={
                "bundle_dir": under(self.target.bundle_dir),
                "build_context": None if self.target.build_context is None else under(self.target.build_context),
                "env_file": None if self.target.env_file is None else under(self.target.env_file),
            }
        )
        source = self.source
        if source.uploads is not None and source.uploads.ssh is not None:
            uploads = source.uploads.model_copy(update={"ssh": host(source.uploads.ssh)})
            source = source.model_copy(update={"uploads": uploads})
        dns = self.dns.model_copy(update={"hook": None if self.dns.hook is None else under(self.dns.hook)})
        return self.model_copy(
            update={"work_dir": under(self.work_dir), "target": target, "source": source, "dns": dns}
        )

    @property
    def app_dir(self) -> str:
        return self.target.app_dir or f"/opt/{self.app_name}"

    @property
    def target_uploads_dir(self) -> str:
        return self.target.uploads_dir or f"{self.app_dir}/uploads"


@dataclass(frozen=True)
class Secrets:
    """The values behind the `*_env` names, read from the environment once."""

    admin_token: str | None
    admin_password: str | None
    source_database_url: str
    source_redis_url: str | None
    target_database_url: str
    target_redis_url: str | None
    telegram_token: str | None
    webhook_secret: str | None
    source_replication_url: str | None = None

    def all(self) -> list[str]:
        """Every secret value, for masking logs and reports."""
        values = [
            self.admin_token,
            self.admin_password,
            self.source_database_url,
            self.source_redis_url,
            self.target_database_url,
        ]
        values += [self.target_redis_url, self.telegram_token, self.webhook_secret, self.source_replication_url]
        found: list[str] = []
        for value in values:
            if not value:
                continue
            found.append(value)
            password = urlsplit(value).password if "://" in value else None
            if password:
                found.append(password)
        return found


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_config(path: Path) -> MigrationConfig:
    """Parse and validate migration.toml; raise ConfigError naming the key."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found", "copy migration.example.toml and edit it") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    try:
        return MigrationConfig.model_validate(raw).resolved(path.parent)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
            if _dotted(first["loc"]).split(".")[-1] in ("password", "token", "database_url", "redis_url"):
                message = "secrets are not allowed inline; name an environment variable in the matching *_env key"
        elif first["type"] == "missing":
            message = "required key is missing"
        raise ConfigError(_dotted(first["loc"]), message, "see migration.example.toml") from None


def _need(name: str, key: str, environ: dict[str, str]) -> str:
    value = environ.get(name, "")
    if not value:
        raise ConfigError(key, f"environment variable {name} is not set", f"export {name}=...")
    return value


def _url(value: str, key: str, schemes: tuple[str, ...]) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise ConfigError(key, f"the URL scheme must be one of {', '.join(schemes)} (got {scheme or 'none'!r})")
    return value


def load_secrets(config: MigrationConfig, environ: dict[str, str] | None = None) -> Secrets:
    env = dict(os.environ if environ is None else environ)
    s = config.source
    db = _url(
        _need(s.database_url_env, "source.database_url_env", env),
        "source.database_url_env",
        ("postgres", "postgresql", "postgresql+asyncpg"),
    )
    redis = None
    if s.redis_url_env:
        redis = _url(_need(s.redis_url_env, "source.redis_url_env", env), "source.redis_url_env", ("redis", "rediss"))
    t = config.target
    pg_schemes = ("postgres", "postgresql", "postgresql+asyncpg")
    target_db = _url(_need(t.database_url_env, "target.database_url_env", env), "target.database_url_env", pg_schemes)
    target_redis = None
    if t.redis_url_env:
        target_redis = _url(
            _need(t.redis_url_env, "target.redis_url_env", env), "target.redis_url_env", ("redis", "rediss")
        )
    if bool(redis) != bool(target_redis):
        raise ConfigError("target.redis_url_env", "set a Redis URL on both sides or on neither")
    replication = None
    if s.replication_url_env:
        replication = _url(
            _need(s.replication_url_env, "source.replication_url_env", env), "source.replication_url_env", pg_schemes
        )
    token = webhook_secret = None
    if config.telegram:
        token = _need(config.telegram.bot_token_env, "telegram.bot_token_env", env)
        if config.telegram.webhook_secret_env:
            webhook_secret = _need(config.telegram.webhook_secret_env, "telegram.webhook_secret_env", env)
    return Secrets(
        admin_token=_need(s.admin_token_env, "source.admin_token_env", env) if s.admin_token_env else None,
        admin_password=(
            _need(s.admin_password_env, "source.admin_password_env", env) if s.admin_password_env else None
        ),
        source_database_url=db,
        source_redis_url=redis,
        target_database_url=target_db,
        target_redis_url=target_redis,
        telegram_token=token,
        webhook_secret=webhook_secret,
        source_replication_url=replication,
    )
