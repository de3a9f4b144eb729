"""Full garbage-collection pause of an app worker, before and after `gc.freeze()` (what `lifespan` does at start).

Builds the app as a worker does, then times `gc.collect()` (median of 7) with the start-up objects tracked, and
again after freezing them — the pause that stalls every in-flight request whenever a full collection runs.

    uv run python bench/gc_pause.py
"""

from __future__ import annotations

import gc
import logging
import statistics
import time

from timetodo.core.settings import Settings
from timetodo.main import create_app


def pause_ms() -> float:
    samples = []
    for _ in range(7):
        start = time.perf_counter()
        gc.collect()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    logging.disable(logging.WARNING)
    create_app(Settings(_env_file=None, ENVIRONMENT="test", SECRET_KEY="x" * 40), configure_logs=False)  # type: ignore[call-arg]
    gc.collect()
    tracked = len(gc.get_objects())
    before = pause_ms()
    gc.freeze()
    after = pause_ms()
    print(f"objects tracked after start-up: {tracked}")
    print(f"full collection: {before:.1f} ms before gc.freeze(), {after:.2f} ms after ({after / before:.1%})")


if __name__ == "__main__":
    main()
