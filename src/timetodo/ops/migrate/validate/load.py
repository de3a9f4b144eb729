"""`mixed_load` and `compare_load`: the same bounded concurrent read/write mix against the source (just before the
freeze) and the target (after the switch), p50/p95/p99 and throughput side by side.

Each host is measured while it carries the clients' traffic — the source before the freeze, the target after the
switch (before the switch the public address still leads to the source, and after it the frozen source forwards
everything to the target, so neither can be measured alone at the other moment). The mix is the one clients make:
mostly one page of the canary account's tasks, some creates, and completions of what it created; N connections,
each a client sending its next request when the last one answered, for a bounded time. Thousands of samples make
p95/p99 stable; "slower" is judged with a margin for the run-to-run noise of a busy host:

* target p95 within max(1.1 × source, source + slack) → ok;
* beyond that → a **warning** with the figures;
* an **error** only when the target is far outside the noise (its p50 above 2 × the source's + 10 ms, or its
  throughput under half the source's), or when any request of the mix failed on the target (non-2xx, timeout).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from timetodo.ops.migrate.validate.common import DEFAULT_SLACK_MS, LATENCY_FACTOR
from timetodo.ops.migrate.validate.http import FAR_FACTOR, FAR_SLACK_MS, percentile

READ_SHARE = 0.7
"""Share of reads in the mix; the rest alternates creating a task and completing one created before."""
LIST_PATH = "/api/v1/tasks?limit=50"
TASK_TITLE = "canary load"


@dataclass
class LoadFigures:
    """One host under the mix."""

    url: str
    connections: int
    seconds: float
    requests: int = 0
    failures: int = 0
    reads: int = 0
    writes: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    first_failure: str | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "connections": self.connections,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "failures": self.failures,
            "reads": self.reads,
            "writes": self.writes,
            "throughput_per_s": round(self.throughput, 1),
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "first_failure": self.first_failure,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadFigures:
        known = {k: data[k] for k in ("url", "connections", "seconds", "requests", "failures", "reads", "writes")}
        return cls(
            **known,
            p50_ms=data.get("p50_ms"),
            p95_ms=data.get("p95_ms"),
            p99_ms=data.get("p99_ms"),
            first_failure=data.get("first_failure"),
        )


async def mixed_load(
    base_url: str, token: str, *, seconds: float, connections: int, seed: int | None = None
) -> LoadFigures:
    """Run the mix against `base_url` as the account of `token` for `seconds` over `connections` connections.
    Bounded: it stops by itself after `seconds` (each request has a 10 s timeout)."""
    figures = LoadFigures(base_url.rstrip("/"), connections, seconds)
    latencies: list[float] = []
    rng = random.Random(seed)
    created: list[int] = []
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=figures.url, headers=headers, timeout=10, limits=limits) as client:
        deadline = time.monotonic() + seconds

        async def one() -> None:
            read = rng.random() < READ_SHARE
            if read:
                method, path, body = "GET", LIST_PATH, None
            elif created and rng.random() < 0.5:
                method, path, body = "POST", f"/api/v1/tasks/{created.pop()}/complete", None
            else:
                method, path, body = "POST", "/api/v1/tasks", {"title": TASK_TITLE}
            started = time.perf_counter()
            try:
                resp = await client.request(method, path, json=body)
                failed = resp.status_code >= 300
                detail = f"{method} {path}: HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                failed, resp, detail = True, None, f"{method} {path}: {type(exc).__name__}"
            latencies.append((time.perf_counter() - started) * 1000)
            figures.requests += 1
            if read:
                figures.reads += 1
            else:
                figures.writes += 1
            if failed:
                figures.failures += 1
                figures.first_failure = figures.first_failure or detail
            elif resp is not None and path == "/api/v1/tasks":
                created.append(int(resp.json()["id"]))

        async def connection() -> None:
            while time.monotonic() < deadline:
                await one()

        began = time.monotonic()
        await asyncio.gather(*(connection() for _ in range(connections)))
        figures.seconds = time.monotonic() - began
    if latencies:
        figures.p50_ms, figures.p95_ms, figures.p99_ms = (round(percentile(latencies, q), 2) for q in (50, 95, 99))
    return figures


@dataclass
class LoadComparison:
    """The mix on the source (before the freeze) and on the target (after the switch)."""

    source: LoadFigures | None
    target: LoadFigures
    slack_ms: float = DEFAULT_SLACK_MS
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def judge(self) -> LoadComparison:
        target, source = self.target, self.source
        if target.failures:
            self.errors.append(
                f"load: {target.failures} of {target.requests} requests failed on the target "
                f"(first: {target.first_failure})"
            )
        if source is None or source.p95_ms is None or target.p95_ms is None:
            if source is None:
                self.warnings.append("load: no figures of the source under the same mix (measured before the freeze)")
            return self
        budget = max(source.p95_ms * LATENCY_FACTOR, source.p95_ms + self.slack_ms)
        figures = (
            f"p50 {target.p50_ms} ms vs {source.p50_ms} ms, p95 {target.p95_ms} ms vs {source.p95_ms} ms, "
            f"{target.throughput:.0f} vs {source.throughput:.0f} requests/s"
        )
        far_latency = (
            target.p50_ms is not None
            and source.p50_ms is not None
            and target.p50_ms > source.p50_ms * FAR_FACTOR + FAR_SLACK_MS
        )
        far_throughput = target.throughput < source.throughput / FAR_FACTOR
        if far_latency or far_throughput:
            self.errors.append(f"load: the target is far slower than the source under the same mix: {figures}")
        elif target.p95_ms > budget:
            self.warnings.append(f"load: the target's p95 is over the source's budget ({budget:.1f} ms): {figures}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict() if self.source else None,
            "target": self.target.to_dict(),
            "errors": self.errors,
            "warnings": self.warnings,
            "ok": self.ok,
        }

    def to_lines(self) -> list[str]:
        rows = [("source (before the freeze)", self.source), ("target (after the switch)", self.target)]
        lines = ["load (the same mix on both hosts):"]
        for label, fig in rows:
            if fig is None:
                lines.append(f"  {label}: not measured")
                continue
            lines.append(
                f"  {label}: {fig.requests} requests in {fig.seconds:.1f} s over {fig.connections} connections "
                f"({fig.throughput:.0f}/s), p50 {fig.p50_ms} ms, p95 {fig.p95_ms} ms, p99 {fig.p99_ms} ms, "
                f"{fig.failures} failed"
            )
        return lines


def compare_load(source: LoadFigures | None, target: LoadFigures, slack_ms: float = DEFAULT_SLACK_MS) -> LoadComparison:
    return LoadComparison(source, target, slack_ms).judge()
