"""Stopping the bot's runtime: its background loops end by themselves when told to stop, none has to be cancelled
after `stop`'s grace period (each stop used to wait that period out: 5 s per app instance at every shutdown)."""

from __future__ import annotations

from tests.conftest import running_app
from timetodo.core.settings import Settings


async def test_every_loop_ends_by_itself_when_the_runtime_stops(bot_settings: Settings) -> None:
    async with running_app(bot_settings) as app:
        runtime = app.state.telegram
        assert runtime is not None
        loops = list(runtime._loops)
        assert {loop.get_name() for loop in loops} >= {"telegram-outbox", "telegram-digest", "telegram-deferred"}
    assert all(loop.done() for loop in loops)
    cancelled = sorted(loop.get_name() for loop in loops if loop.cancelled())
    assert cancelled == [], f"loops that had to be cancelled instead of ending: {cancelled}"
