"""`compare_http`: the same authenticated GETs answered identically by both hosts, and p50/p95 latency of each measured
in the same run by interleaving requests.

The target should stay within 10 % of the source. Over that budget is a **warning** with the figures; it is an
error only when the target is far outside the noise of a busy host: its median above twice the source's plus
`FAR_SLACK_MS`. (After the switch the target carries the clients' traffic while the frozen source is idle, and a
p95 of a few dozen samples swings with background load: a strict budget failed correct migrations.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from timetodo.core.logging import mask_secrets
from timetodo.ops.migrate.validate.common import DEFAULT_SLACK_MS, LATENCY_FACTOR

FAR_FACTOR = 2.0
FAR_SLACK_MS = 10.0


@dataclass
class PathResult:
    path: str
    source_status: int | None = None
    target_status: int | None = None
    identical: bool = False
    difference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "source_status": self.source_status,
            "target_status": self.target_status,
            "identical": self.identical,
            "difference": self.difference,
        }


@dataclass
class HttpComparison:
    source: str
    target: str
    rounds: int
    slack_ms: float = DEFAULT_SLACK_MS
    paths: list[PathResult] = field(default_factory=list)
    source_p50_ms: float | None = None
    source_p95_ms: float | None = None
    target_p50_ms: float | None = None
    target_p95_ms: float | None = None
    samples: int = 0
    """Timed requests per host."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def budget_ms(self, source_ms: float | None) -> float | None:
        """What the target may take: the source's time × 1.1, but never less than the source's + slack_ms."""
        if source_ms is None:
            return None
        return max(source_ms * LATENCY_FACTOR, source_ms + self.slack_ms)

    @property
    def budget_p50_ms(self) -> float | None:
        return self.budget_ms(self.source_p50_ms)

    @property
    def budget_p95_ms(self) -> float | None:
        return self.budget_ms(self.source_p95_ms)

    @property
    def target_within_budget(self) -> bool | None:
        """target p50/p95 ≤ source p50/p95 × 1.1 (with an absolute slack of `slack_ms` for loopback noise);
        None when either host could not be timed."""
        if None in (self.target_p50_ms, self.target_p95_ms, self.budget_p50_ms, self.budget_p95_ms):
            return None
        assert self.target_p50_ms is not None and self.target_p95_ms is not None
        assert self.budget_p50_ms is not None and self.budget_p95_ms is not None
        return self.target_p50_ms <= self.budget_p50_ms and self.target_p95_ms <= self.budget_p95_ms

    @property
    def far_outside_noise(self) -> bool | None:
        """The target's median is above twice the source's + FAR_SLACK_MS: slower beyond what load explains."""
        if self.target_p50_ms is None or self.source_p50_ms is None:
            return None
        return self.target_p50_ms > self.source_p50_ms * FAR_FACTOR + FAR_SLACK_MS

    @property
    def budget_rule(self) -> str:
        return (
            f"target p50 and p95 should be ≤ the source's × {LATENCY_FACTOR} "
            f"(or ≤ the source's + {self.slack_ms:g} ms when that is larger: sub-millisecond loopback noise); "
            f"an error only when the target's p50 > the source's × {FAR_FACTOR:g} + {FAR_SLACK_MS:g} ms"
        )

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "ok": self.ok,
            "source": self.source,
            "target": self.target,
            "rounds": self.rounds,
            "samples": self.samples,
            "paths": [path.to_dict() for path in self.paths],
            "source_p50_ms": rounded(self.source_p50_ms),
            "source_p95_ms": rounded(self.source_p95_ms),
            "target_p50_ms": rounded(self.target_p50_ms),
            "target_p95_ms": rounded(self.target_p95_ms),
            "budget_p50_ms": rounded(self.budget_p50_ms),
            "budget_p95_ms": rounded(self.budget_p95_ms),
            "slack_ms": self.slack_ms,
            "budget_rule": self.budget_rule,
            "target_within_budget": self.target_within_budget,
            "far_outside_noise": self.far_outside_noise,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _strip(value: Any, ignore: Collection[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_strip(item, ignore) for item in value]
    return value


def _first_difference(a: Any, b: Any, where: str = "$") -> str | None:
    """JSON path of the first place where two decoded JSON documents differ (None when equal)."""
    if type(a) is not type(b):
        return where
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{where}.{key}"
            found = _first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None if len(a) == len(b) else f"{where} (length {len(a)} vs {len(b)})"
    return None if a == b else where


def _body_difference(source: httpx.Response, target: httpx.Response, ignore: Collection[str]) -> str | None:
    try:
        a, b = source.json(), target.json()
    except ValueError:
        return None if source.content == target.content else "bodies differ (not JSON)"
    where = _first_difference(_strip(a, ignore), _strip(b, ignore))
    return None if where is None else f"JSON bodies differ at {where}"


def _record(
    entry: PathResult, source: httpx.Response | None, target: httpx.Response | None, ignore: Collection[str]
) -> None:
    """One round's answers for a path: the first difference (status, then JSON body) is kept."""
    if source is None or target is None:
        return
    if entry.source_status is None:
        entry.source_status, entry.target_status = source.status_code, target.status_code
        entry.identical = True
    if not entry.identical:
        return
    if source.status_code != target.status_code:
        entry.identical = False
        entry.source_status, entry.target_status = source.status_code, target.status_code
        entry.difference = f"status {source.status_code} on source, {target.status_code} on target"
    else:
        difference = _body_difference(source, target, ignore)
        if difference is not None:
            entry.identical, entry.difference = False, difference


def _conclude(
    result: HttpComparison,
    failures: dict[tuple[str, int], str],
    times: tuple[list[float], list[float]],
    paths: list[str],
) -> None:
    """Errors and warnings from the failures, the differences and the latency budget."""
    for (path, side), reason in sorted(failures.items()):
        result.errors.append(f"GET {path}: no answer from the {('source', 'target')[side]}: {reason}")
    for entry in result.paths:
        if entry.source_status is not None and not entry.identical:
            result.errors.append(f"GET {entry.path}: answered differently ({entry.difference})")
        elif entry.source_status is not None and entry.source_status >= 400:
            result.warnings.append(f"GET {entry.path}: both hosts answered {entry.source_status}")
    result.samples = min(len(times[0]), len(times[1]))
    if times[0]:
        result.source_p50_ms, result.source_p95_ms = percentile(times[0], 50), percentile(times[0], 95)
    if times[1]:
        result.target_p50_ms, result.target_p95_ms = percentile(times[1], 50), percentile(times[1], 95)
    within = result.target_within_budget
    if within is False:
        message = (
            f"latency: target p50 {result.target_p50_ms:.1f} ms / p95 {result.target_p95_ms:.1f} ms exceeds the "
            f"budget p50 {result.budget_p50_ms:.1f} ms / p95 {result.budget_p95_ms:.1f} ms "
            f"(source p50 {result.source_p50_ms:.1f} ms / p95 {result.source_p95_ms:.1f} ms; {result.budget_rule})"
        )
        (result.errors if result.far_outside_noise else result.warnings).append(message)
    elif within is None and paths:
        result.errors.append("latency: could not be measured on both hosts")
    if not paths:
        result.warnings.append("no paths to compare")


async def compare_http(
    source_api: str,
    target_api: str,
    token: str,
    paths: list[str],
    *,
    rounds: int = 20,
    request_timeout: float = 10.0,
    slack_ms: float = DEFAULT_SLACK_MS,
    ignore_json_keys: Collection[str] = (),
) -> HttpComparison:
    """GET every path on both hosts with `Authorization: Bearer <token>`: status and JSON body must be identical
    (headers are not compared; `ignore_json_keys` drops volatile fields), and the target's latency must be within
    budget (`HttpComparison.budget_rule`).

    One untimed warm-up request per host and path opens the connections; then `rounds` rounds, each requesting
    every path from both hosts back to back (source first on even rounds, target first on odd ones), so both are
    measured under the same conditions. Responses of every round are compared.
    """
    result = HttpComparison(mask_secrets(source_api), mask_secrets(target_api), rounds, slack_ms)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    bases = (source_api.rstrip("/"), target_api.rstrip("/"))
    times: tuple[list[float], list[float]] = ([], [])
    by_path = {path: PathResult(path) for path in paths}
    result.paths = list(by_path.values())
    failures: dict[tuple[str, int], str] = {}

    def mask(text: str) -> str:
        return mask_secrets(text.replace(token, "***")) if token else mask_secrets(text)

    async def fetch(client: httpx.AsyncClient, side: int, path: str, timed: bool) -> httpx.Response | None:
        url = bases[side] + (path if path.startswith("/") else "/" + path)
        started = time.perf_counter()
        try:
            response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            failures.setdefault((path, side), mask(str(exc) or type(exc).__name__))
            return None
        if timed:
            times[side].append((time.perf_counter() - started) * 1000)
        return response

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with (
        httpx.AsyncClient(timeout=request_timeout, limits=limits, follow_redirects=False) as src,
        httpx.AsyncClient(timeout=request_timeout, limits=limits, follow_redirects=False) as tgt,
    ):
        clients = (src, tgt)
        for round_ in range(rounds + 1):
            timed = round_ > 0
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for path in paths:
                answers: dict[int, httpx.Response | None] = {}
                for side in order:
                    answers[side] = await fetch(clients[side], side, path, timed)
                _record(by_path[path], answers[0], answers[1], ignore_json_keys)

    _conclude(result, failures, times, paths)
    return result
