"""The bot survives a migration: Telegram keeps delivering updates while `timetodo migrate run` moves the
deployment, and every update is handled exactly once — on the source before the freeze, held by Telegram (503)
during it, on the target after the switch; an update the source accepted just as the freeze began is relayed to
the target. `validate` then requires the bot's own answer on the target (a /ping probe through its webhook).

The world of tests/e2e/migrate_world.py with `bot=True`: both hosts run the bot against the fake Bot API (a real
HTTP server on 127.0.0.1) which delivers updates to the current webhook like Telegram does — one at a time, in
order, retrying the head on any non-2xx answer — and records every message the bot sends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.migrate_world import ADMIN, PROBE_CHAT, World, make_world, stop_world, titles
from tests.fakes.telegram import FakeTelegram
from tests.support import PASSWORD, Services

pytestmark = pytest.mark.slow

CHAT = 4_000_100


@pytest.fixture(scope="module")
def world(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = make_world(
        tmp_path_factory.mktemp("migrate-bot"),
        services,
        seed=False,
        bot=True,
        target_env={"AUTH_STATE_CACHE_SECONDS": "1"},  # what the cutover waits for before opening the target
    )
    yield world
    stop_world(world)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Talker:
    """A user typing a new task into the chat every 0.2 s (plain text = /add), as Telegram queues it for the bot."""

    def __init__(self, telegram: FakeTelegram, chat_id: int) -> None:
        self.telegram, self.chat_id = telegram, chat_id
        self.titles: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Talker:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            title = f"tgmig-{len(self.titles)}"
            self.telegram.enqueue_update(self.telegram.message_update(self.chat_id, title))
            self.titles.append(title)
            self._stop.wait(0.2)


def answers(telegram: FakeTelegram, chat_id: int) -> Counter[str]:
    return Counter(m["text"].split("\n")[0] for m in telegram.sent_messages(chat_id))


def test_updates_during_the_migration_are_answered_once_and_validate_probes_the_bot(world: World) -> None:
    telegram = world.telegram
    with httpx.Client(base_url=world.source.url, timeout=30) as c:
        token = c.post("/api/v1/auth/login", data={"username": ADMIN, "password": PASSWORD}).json()["access_token"]
        link = c.post("/api/v1/telegram/link", headers={"Authorization": f"Bearer {token}"})
        assert link.status_code == 201, link.text
    telegram.enqueue_update(telegram.message_update(CHAT, f"/start {link.json()['token']}"))
    wait_for(lambda: any(text.startswith("Linked to") for text in answers(telegram, CHAT)), "the link")

    with Talker(telegram, CHAT) as talker:
        time.sleep(1)
        result = world.migrate("run", "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(1.5)  # more updates, now delivered to the target
    assert world.current.read_text() == world.target_url
    assert telegram.webhook_url == world.target_url + "/api/v1/telegram/webhook"
    facts = world.state()["facts"]
    wait_for(lambda: not telegram.pending_updates, "Telegram's queue to drain")
    expected = {f"Added: {title}" for title in talker.titles}
    wait_for(lambda: expected <= set(answers(telegram, CHAT)), "an answer to every update")
    time.sleep(1.5)  # a second answer would arrive now

    said = answers(telegram, CHAT)
    wrong = {text: said[text] for text in expected if said[text] != 1}
    assert wrong == {}, f"{len(wrong)} of {len(expected)} updates answered other than once: {list(wrong.items())[:5]}"
    assert not [text for text in said if text.startswith("Time to DO is in maintenance")], said  # none told to retry
    on_target = asyncio.run(titles(world.target_db, "tgmig"))
    assert {title: on_target.get(title) for title in talker.titles} == dict.fromkeys(talker.titles, 1)
    # Telegram held updates during the freeze: a delivery failed (503) and was retried on the target
    freeze = (facts["freeze_started_at"], facts["switched_at"])
    assert "503" in str(telegram.webhook_info().get("last_error_message")), telegram.webhook_info()
    assert len(talker.titles) >= 20 and freeze[0] < freeze[1]

    validation = json.loads((world.base / "work" / "migration_validation_report.json").read_text())
    webhook = validation["sections"]["webhook"]
    assert validation["ok"] is True and webhook["ok"] is True, webhook
    pongs = [m for m in telegram.sent_messages(PROBE_CHAT) if m["text"].startswith("🏓")]
    assert [m["message_id"] for m in pongs] == [webhook["probe_message_id"]]
    report = (world.base / "work" / "migration_validation_report.txt").read_text()
    assert f"answered /ping in chat {PROBE_CHAT}" in report
