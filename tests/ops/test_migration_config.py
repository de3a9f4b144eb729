"""migration.toml: the example loads; every mistake names its key; secrets only through the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from timetodo.ops.migrate.config import ConfigError, load_config, load_secrets

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "migration.example.toml"
ENV = {
    "SOURCE_ADMIN_PASSWORD": "admin-password-value",
    "SOURCE_DATABASE_URL": "postgresql://app:s3cret-pw@db.example.com:5432/app?sslmode=require",
    "SOURCE_REDIS_URL": "rediss://:redis-pw@redis.example.com:6380/0",
    "TARGET_DATABASE_URL": "postgresql://timetodo:target-pw@127.0.0.1:5432/timetodo",
    "TARGET_REDIS_URL": "redis://:target-redis-pw@127.0.0.1:6379/0",
    "TELEGRAM_BOT_TOKEN": "123:abc",
    "TELEGRAM_WEBHOOK_SECRET": "hook-secret",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "migration.toml"
    path.write_text(text)
    return path


def edited(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def test_the_example_loads_with_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.app_dir == "/opt/timetodo"
    assert config.downtime_budget_minutes == 30
    assert config.target.key_file == Path("~/.ssh/id_ed25519").expanduser()
    assert config.source.api_url == "https://timetodo.onrender.com"
    secrets = load_secrets(config, ENV)
    assert secrets.source_redis_url and secrets.source_redis_url.startswith("rediss://")
    masked = secrets.all()
    assert "s3cret-pw" in masked and "admin-password-value" in masked and "123:abc" in masked


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("port = 22\n", 'port = "twenty-two"\n', "target.port"),
        ("port = 22\n", "port = 70000\n", "target.port"),
        ('public_url = "https://api.example.com"', 'public_url = "api.example.com"', "target.public_url"),
        ("downtime_budget_minutes = 30", "downtime_budget_minutes = -1", "downtime_budget_minutes"),
        ('strategy = "delta"', 'strategy = "teleport"', "strategy"),
        (
            'admin_password_env = "SOURCE_ADMIN_PASSWORD"',
            'admin_password_env = "not an env name"',
            "source.admin_password_env",
        ),
        ('app_name = "timetodo"', 'app_name = "../etc"', "app_name"),
        ('runtime = "compose"', 'runtime = "k8s"', "target.runtime"),
        ('# forward_url = "http://203.0.113.7"', 'forward_url = "ftp://203.0.113.7"', "target.forward_url"),
        ("# load_seconds = 10", "load_seconds = 900", "validate.load_seconds"),
        ('host = "203.0.113.10"\n', "", "target.host"),
        (
            'api_url = "https://timetodo.onrender.com"',
            'api_url = "https://timetodo.onrender.com"\napi_urll = "x"',
            "source.api_urll",
        ),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, edited(old, new)))
    assert caught.value.key == key, str(caught.value)


def test_inline_secrets_are_refused(tmp_path: Path) -> None:
    text = edited('admin_email = "admin@example.com"', 'admin_email = "admin@example.com"\npassword = "hunter2"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == "source.password" and "inline" in caught.value.message
    assert "hunter2" not in str(caught.value)
    text = edited(
        'api_url = "https://timetodo.onrender.com"', 'api_url = "https://admin:hunter2@timetodo.onrender.com"'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key == "source.api_url" and "hunter2" not in str(caught.value)


def test_missing_or_wrong_environment_names_the_key() -> None:
    config = load_config(EXAMPLE)
    env = dict(ENV)
    del env["SOURCE_DATABASE_URL"]
    with pytest.raises(ConfigError) as caught:
        load_secrets(config, env)
    assert caught.value.key == "source.database_url_env" and "SOURCE_DATABASE_URL" in caught.value.message
    with pytest.raises(ConfigError) as caught:
        load_secrets(config, ENV | {"SOURCE_REDIS_URL": "http://nope"})
    assert caught.value.key == "source.redis_url_env"
    with pytest.raises(ConfigError) as caught:
        load_secrets(config, {k: v for k, v in ENV.items() if k != "TARGET_REDIS_URL"})
    assert caught.value.key == "target.redis_url_env"


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "source = [unclosed"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_relative_paths_are_resolved_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ops" / "move"
    folder.mkdir(parents=True)
    text = edited('env_file = "deploy/.env"', 'env_file = "secrets/target.env"')
    text = text.replace('key_file = "~/.ssh/id_ed25519"\nknown_hosts', 'key_file = "keys/deploy"\nknown_hosts', 1)
    text = text.replace('# bundle_dir = "deploy"', 'bundle_dir = "bundle"', 1).replace('# hook = "', 'hook = "', 1)
    (folder / "migration.toml").write_text(text)
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory plays no part
    config = load_config(folder / "migration.toml")
    assert config.target.env_file == folder / "secrets" / "target.env"
    assert config.target.bundle_dir == folder / "bundle"
    assert config.target.key_file == folder / "keys" / "deploy"
    assert config.dns.hook == folder / "scripts" / "update-dns.sh"
    assert config.work_dir == folder / "migration"
    assert config.target.known_hosts == Path("~/.ssh/known_hosts").expanduser()  # absolute paths stay as they are
