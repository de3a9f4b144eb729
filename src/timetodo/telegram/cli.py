"""`timetodo telegram …`: point the bot's webhook at this deployment, inspect or remove it, or long-poll for
development without a public URL.

`set-webhook` changes nothing when the webhook already points at the URL with the same `allowed_updates`
(several instances or repeated deploys do not fight; `--force` re-sends it, e.g. after rotating the secret).
A missing setting is named and the command exits 2 before talking to Telegram; the token is never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from timetodo.core.settings import Settings, describe_settings_error

if TYPE_CHECKING:  # aiogram is imported by the commands that talk to Telegram: every `timetodo` start loads this
    from aiogram import Bot

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
WEBHOOK_PATH = "/api/v1/telegram/webhook"
T = TypeVar("T")

app = typer.Typer(help="The Telegram bot: webhook and long polling.", no_args_is_help=True)
err_console = Console(stderr=True)
out_console = Console()


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _settings(*, need_secret: bool = False) -> Settings:
    try:
        settings = Settings()
    except Exception as exc:
        _fail(f"invalid configuration: {describe_settings_error(exc)}")
    if settings.TELEGRAM_BOT_TOKEN is None or not settings.TELEGRAM_BOT_TOKEN.get_secret_value():
        _fail("TELEGRAM_BOT_TOKEN is not set (the token @BotFather gave you)")
    if need_secret and settings.TELEGRAM_WEBHOOK_SECRET is None:
        _fail("TELEGRAM_WEBHOOK_SECRET is not set (1-256 characters A-Z a-z 0-9 _ -)")
    return settings


def webhook_url(settings: Settings) -> str:
    return settings.PUBLIC_BASE_URL.rstrip("/") + WEBHOOK_PATH


def _with_bot(settings: Settings, work: Callable[[Bot], Awaitable[T]]) -> T:
    from aiogram.exceptions import TelegramAPIError, TelegramNetworkError

    from timetodo.telegram.bot import create_bot
    from timetodo.telegram.limiter import MemoryLimiter

    async def run() -> T:
        assert settings.TELEGRAM_BOT_TOKEN is not None
        limiter = MemoryLimiter(settings.TELEGRAM_CHAT_RATE, settings.TELEGRAM_GLOBAL_RATE)
        bot = create_bot(settings.TELEGRAM_BOT_TOKEN.get_secret_value(), settings.TELEGRAM_API_BASE, limiter)
        try:
            return await work(bot)
        finally:
            await bot.session.close()

    try:
        return asyncio.run(run())
    except TelegramNetworkError as exc:
        _fail(f"Telegram Bot API unreachable at {settings.TELEGRAM_API_BASE}: {exc.message}", EXIT_UNREACHABLE)
    except TelegramAPIError as exc:
        _fail(f"Telegram answered: {exc.message}", EXIT_UNREACHABLE)


async def ensure_webhook(bot: Bot, url: str, secret: str, *, force: bool = False, drop_pending: bool = False) -> bool:
    """Set the webhook unless it already points at `url` with our allowed_updates; True when it was set."""
    from timetodo.telegram.bot import ALLOWED_UPDATES

    info = await bot.get_webhook_info()
    if (
        not force
        and not drop_pending
        and info.url == url
        and sorted(info.allowed_updates or []) == sorted(ALLOWED_UPDATES)
    ):
        return False
    await bot.set_webhook(url, secret_token=secret, allowed_updates=ALLOWED_UPDATES, drop_pending_updates=drop_pending)
    return True


@app.command("set-webhook")
def set_webhook(
    url: Annotated[str | None, typer.Option(help="Default: PUBLIC_BASE_URL + /api/v1/telegram/webhook.")] = None,
    force: Annotated[bool, typer.Option(help="Set it even when it already matches (e.g. a new secret).")] = False,
    drop_pending: Annotated[bool, typer.Option(help="Drop updates Telegram still holds (they are lost).")] = False,
) -> None:
    """Point Telegram at this deployment (`secret_token`, `allowed_updates` = what the bot handles)."""
    settings = _settings(need_secret=True)
    assert settings.TELEGRAM_WEBHOOK_SECRET is not None
    target = url or webhook_url(settings)
    if not target.startswith(("https://", "http://127.", "http://localhost")):
        _fail(f"the webhook URL must be https (got {target}); set PUBLIC_BASE_URL")
    secret = settings.TELEGRAM_WEBHOOK_SECRET.get_secret_value()
    changed = _with_bot(
        settings, lambda bot: ensure_webhook(bot, target, secret, force=force, drop_pending=drop_pending)
    )
    out_console.print(f"webhook {'set to' if changed else 'already points at'} {target}", highlight=False)


@app.command("webhook-info")
def webhook_info() -> None:
    """What Telegram knows about the webhook: URL, pending updates, the last delivery error."""
    settings = _settings()

    async def get(bot: Bot) -> dict[str, Any]:
        return (await bot.get_webhook_info()).model_dump(exclude_none=True, mode="json")

    info = _with_bot(settings, get)
    for key in ("url", "pending_update_count", "allowed_updates", "last_error_date", "last_error_message"):
        if key in info:
            out_console.print(f"{key}: {info[key]}", highlight=False)


@app.command("delete-webhook")
def delete_webhook(
    drop_pending: Annotated[bool, typer.Option(help="Drop updates Telegram still holds (they are lost).")] = False,
) -> None:
    """Remove the webhook (pending updates are kept unless --drop-pending)."""
    settings = _settings()
    _with_bot(settings, lambda bot: bot.delete_webhook(drop_pending_updates=drop_pending))
    out_console.print("webhook deleted", highlight=False)


@app.command("poll")
def poll(
    once: Annotated[bool, typer.Option(help="Handle what is pending, then exit.")] = False,
) -> None:
    """Long polling for development without a public URL (the webhook must be deleted first)."""
    from aiogram.exceptions import TelegramAPIError

    from timetodo.main import create_app
    from timetodo.telegram.bot import ALLOWED_UPDATES

    settings = _settings()
    application = create_app(settings)

    async def run() -> None:
        async with application.router.lifespan_context(application):
            runtime = application.state.telegram
            if once:
                updates = await runtime.bot.get_updates(timeout=0, allowed_updates=ALLOWED_UPDATES)
                for update in updates:
                    if await runtime.claim(update.update_id):
                        await runtime.process(update)
                if updates:  # confirm them
                    await runtime.bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
                return
            out_console.print("polling Telegram; Ctrl-C stops", highlight=False)
            await runtime.poll()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except TelegramAPIError as exc:
        _fail(f"Telegram answered: {exc.message}", EXIT_UNREACHABLE)
