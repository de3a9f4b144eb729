"""Who should build a list page's JSON: PostgreSQL (`json_build_object` per row + `json_agg`, the second pass of
issue 14) or the app from plain rows (`timetodo.tasks.service.page_json`, today's path)? CPU per page of 50 tasks
for both, on one connection without HTTP: the app's CPU by `time.process_time`, PostgreSQL's from its backend's
/proc entry (utime + stime), pages rotating over `--users` users with 2 000 tasks each; two passes each.

    uv run python bench/page_json.py [--pages 3000] [--users 100]

Starts its own PostgreSQL and Redis (tests.support.Services), a one-worker `timetodo serve` for the schema and the
first account; stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from tests.e2e.server import ServerProcess, server_env  # noqa: E402
from tests.support import Services, create_database  # noqa: E402

from bench.api import load_tasks, make_users  # noqa: E402
from timetodo.core.pagination import encode_cursor  # noqa: E402
from timetodo.tasks import repository  # noqa: E402
from timetodo.tasks.service import page_json  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
LIMIT = 50
# the second pass's statement: the page's JSON built by PostgreSQL (one row: JSON array, last id, row count)
PG_BUILT = (
    f"SELECT coalesce(json_agg(page.j ORDER BY page.id) FILTER (WHERE page.n <= $2), '[]')::text, "
    "max(page.id) FILTER (WHERE page.n <= $2), count(*) "
    f"FROM (SELECT tasks.id, row_number() OVER (ORDER BY tasks.id) AS n, {repository.TASK_JSON} AS j FROM tasks "
    "WHERE tasks.owner_id = $1 AND tasks.deleted_at IS NULL ORDER BY tasks.id LIMIT $2::int + 1) AS page"
)


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def measure(db_url: str, ids: list[int], pages: int) -> None:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    plain_sql, _ = repository.pg_task_list(1, after=None, limit=LIMIT)

    async def pg_built(owner: int) -> bytes:
        page, last, count = await conn.fetchrow(PG_BUILT, owner, LIMIT)
        cursor = encode_cursor(last) if count > LIMIT else None
        return (
            b'{"results":' + page.encode() + b',"next_cursor":' + (f'"{cursor}"' if cursor else "null").encode() + b"}"
        )

    async def plain(owner: int) -> bytes:
        return page_json(await conn.fetch(plain_sql, owner, LIMIT), LIMIT)

    import orjson

    assert orjson.loads(await pg_built(ids[0])) == orjson.loads(await plain(ids[0])), "not the same documents"
    print(f"{'page of 50':<22}{'app ms':>8}{'pg ms':>8}{'sum ms':>8}{'wall ms':>9}{'bytes':>8}")
    for name, fn in (("PostgreSQL builds", pg_built), ("plain rows + orjson", plain)) * 2:
        for owner in ids[:20]:
            await fn(owner)
        c0, s0, w0 = time.process_time(), backend_cpu(pid), time.perf_counter()
        for i in range(pages):
            body = await fn(ids[i % len(ids)])
        app, pg = (time.process_time() - c0) / pages * 1000, (backend_cpu(pid) - s0) / pages * 1000
        wall = (time.perf_counter() - w0) / pages * 1000
        print(f"{name:<22}{app:>8.3f}{pg:>8.3f}{app + pg:>8.3f}{wall:>9.3f}{len(body):>8}", flush=True)
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args()
    print(f"load average: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    services = Services.start()
    work = Path(tempfile.mkdtemp(prefix="ttd-bench-page-"))
    try:
        db_url = asyncio.run(create_database(services.postgres_url))
        env = server_env(db_url, services.redis_url, work / "data") | {"ACCESS_TOKEN_TTL_MINUTES": "240"}
        server = ServerProcess(env, work, workers=1)
        try:
            server.wait_ready(timeout=300)
            _tokens, ids = make_users(server.url, db_url, env["SECRET_KEY"], args.users)
        finally:
            server.stop()
        asyncio.run(load_tasks(db_url, ids, 2000))
        asyncio.run(measure(db_url, ids, args.pages))
    finally:
        services.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
