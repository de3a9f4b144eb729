"""Cost of one access-log line (the JSON formatter with secret masking) against a bare `orjson.dumps` of the same
fields, in the same run.

    uv run python bench/access_log.py [--n 50000]

`mask_secrets` skips text that holds none of ':', '=' or 'bearer' (every secret pattern needs one); the third line
forces the four substitutions on every field (what each field cost before) to compare.
"""

from __future__ import annotations

import argparse
import logging
import time

import orjson

from timetodo.core import logging as tlog

FIELDS = {
    "method": "GET",
    "path": "/api/v1/tasks/123",
    "route": "/api/v1/tasks/{task_id}",
    "status": 200,
    "duration_ms": 1.23,
    "client": "127.0.0.1",
}


def per_call(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    formatter = tlog.JsonFormatter()
    record = logging.LogRecord("timetodo.access", logging.INFO, __file__, 1, "%s %s %s", ("GET", "/x", 200), None)
    record.__dict__.update(FIELDS)
    bare = per_call(lambda: orjson.dumps(FIELDS), args.n)
    fast = per_call(lambda: formatter.format(record), args.n)
    tlog._MAYBE_SECRET = tlog.re.compile("")  # every text "may" hold a secret: the four substitutions each time
    full = per_call(lambda: formatter.format(record), args.n)
    print(f"orjson.dumps of the fields: {bare:.2f} µs")
    print(f"access line, masking only what may hold a secret: {fast:.2f} µs ({fast / bare:.1f}× bare)")
    print(f"access line, every field through the four patterns: {full:.2f} µs ({full / bare:.1f}× bare)")


if __name__ == "__main__":
    main()
