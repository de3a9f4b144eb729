"""Prometheus metrics. With several Uvicorn workers, `timetodo serve` sets PROMETHEUS_MULTIPROC_DIR before any
worker imports this module, so every worker writes to shared files and `/metrics` sums them."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter("timetodo_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "timetodo_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DB_POOL = Gauge(
    "timetodo_db_pool_connections",
    "Database pool connections by state (summed over live workers)",
    ["state"],
    multiprocess_mode="livesum",
)
WS_CONNECTIONS = Gauge("timetodo_websocket_connections", "Open WebSocket connections", multiprocess_mode="livesum")
# Set on every scrape from the backup job's marker (core/health.py); -1 while no verified backup exists.
BACKUP_AGE = Gauge(
    "timetodo_backup_newest_verified_age_seconds",
    "Age of the newest verified backup archive in seconds (-1: none yet)",
    multiprocess_mode="livemostrecent",
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def render_latest() -> tuple[bytes, str]:
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def set_backup_age(age_seconds: float | None) -> None:
    BACKUP_AGE.set(-1 if age_seconds is None else age_seconds)


def mark_worker_dead(pid: int) -> None:
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
