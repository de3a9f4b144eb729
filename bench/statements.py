"""What PostgreSQL sees per request of the hot endpoints: every parse, bind and execute of the list and create
requests, counted from the server's own log (`log_min_duration_statement = 0` on a scratch database logs each
phase of the extended protocol; `log_statement = all` each simple-protocol statement).

`uv run python -u bench/statements.py [--requests 20]`: starts PostgreSQL and Redis (tests/support.py), migrates a
fresh database, runs the app in process (the same `create_app` as `timetodo serve`), warms it up, then sends
`--requests` list requests and as many creates, and prints per request: the statements executed, the statements
parsed (prepared), and the distinct SQL texts. Not a test: a measurement, as the other scripts of `bench/`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections import Counter
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import Services, create_database, new_user  # noqa: E402

from bench.inprocess import app_in_process  # noqa: E402

PHASE = re.compile(r"LOG:\s+(?:duration: [\d.]+ ms\s+)?(parse|bind|execute|statement)( [^:]*)?:\s?(.*)")


def phases(lines: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines:
        match = PHASE.search(line)
        if match:
            counts[match.group(1)] += 1
    return counts


def texts(lines: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in lines:
        match = PHASE.search(line)
        if match and match.group(1) in ("execute", "statement"):
            counts[match.group(3)[:110]] += 1
    return counts


async def run(requests: int) -> None:
    services = Services.start()
    try:
        assert services.base_dir is not None, "needs its own PostgreSQL (unset TIMETODO_TEST_POSTGRES_URL)"
        log = services.base_dir / "pg" / "postgres.log"
        db_url = await create_database(services.postgres_url)
        name = db_url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(services.postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
        await admin.execute(f'ALTER DATABASE "{name}" SET log_min_duration_statement = 0')
        await admin.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
        await admin.close()
        async with app_in_process(db_url, services.redis_url, log_level="WARNING", configure_logs=False) as (_, client):
            headers, _ = await new_user(client)
            body = {"title": "bench", "labels": ["a"], "priority": 2}
            for _ in range(60):  # warm-up: pools open, statements prepared, caches filled
                (await client.post("/api/v1/tasks", json=body, headers=headers)).raise_for_status()
                (await client.get("/api/v1/tasks?limit=50", headers=headers)).raise_for_status()
            for label, send in (
                ("list", lambda: client.get("/api/v1/tasks?limit=50", headers=headers)),
                ("create", lambda: client.post("/api/v1/tasks", json=body, headers=headers)),
            ):
                await asyncio.sleep(0.3)  # the log written so far is flushed
                start = log.stat().st_size
                for _ in range(requests):
                    (await send()).raise_for_status()
                await asyncio.sleep(0.3)
                with log.open("rb") as f:
                    f.seek(start)
                    lines = f.read().decode(errors="replace").splitlines()
                lines = [line for line in lines if name in line or "LOG:" in line]
                counts = phases(lines)
                per = {k: v / requests for k, v in sorted(counts.items())}
                print(f"{label}: per request {per}")
                for text, n in texts(lines).most_common(8):
                    print(f"  {n / requests:5.2f} × {text}")
    finally:
        services.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    asyncio.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
