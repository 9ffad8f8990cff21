"""Cold starts as the activator sees them: requests that arrived while their revision
had no ready pod.

Such a request waits for a pod to come up; its cold start runs from its arrival to
the first byte of its response, which is when the response's status line goes out to
the gateway (aiohttp's `on_response_prepare`). Knative has no such metric
(knative/serving#13459 asks for one); here it is

    wakegate_cold_start_seconds{namespace,revision}        histogram of those times
    wakegate_cold_start_requests_total{namespace,revision} requests that waited for a pod
    wakegate_cold_start_last_seconds{namespace,revision}   the latest cold start

A waiting request that never reaches a pod (its hold times out, the client goes away)
is counted as having waited but adds no time. `parse_cold_starts` reads the three back
from the exposition text, for `get revisions` and the live view.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from wakegate.activator.queue import RevisionQueue

SECONDS = "wakegate_cold_start_seconds"
REQUESTS = "wakegate_cold_start_requests"
LAST = "wakegate_cold_start_last_seconds"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LABELS = ("namespace", "revision")
_FAMILIES = (SECONDS, REQUESTS, LAST)
_COMMENTS = tuple(f"# {kind} {name}" for kind in ("HELP", "TYPE") for name in _FAMILIES)
_ARRIVED = "wakegate.cold_start.arrived"
_FORWARDED = "wakegate.cold_start.forwarded"


class ColdStarts:
    """The three metrics, and the two hooks the proxy calls for each request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            SECONDS,
            "From a request arriving while its revision had no ready pod to the first byte "
            "of its response.",
            _LABELS,
            buckets=BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            REQUESTS,
            "Requests that arrived while their revision had no ready pod and waited for one.",
            _LABELS,
            registry=registry,
        )
        self.last = Gauge(LAST, "The latest cold start, in seconds.", _LABELS, registry=registry)

    def arrived(self, request: MutableMapping[str, Any], queue: RevisionQueue) -> None:
        """A request for `queue`'s revision came in: a cold start if it has no ready pod."""
        if not queue.pods:
            request[_ARRIVED] = (queue.namespace, queue.revision, time.monotonic())
            self.requests.labels(queue.namespace, queue.revision).inc()

    @staticmethod
    def forwarding(request: MutableMapping[str, Any]) -> None:
        """The request goes to a pod: its response, when it starts, ends the cold start."""
        request[_FORWARDED] = True

    async def on_response_prepare(self, request: web.Request, _: web.StreamResponse) -> None:
        self.on_response(request)

    def on_response(self, request: MutableMapping[str, Any]) -> None:
        """The response to `request` starts."""
        arrived = request.get(_ARRIVED)
        if arrived is None or not request.get(_FORWARDED):
            return
        del request[_ARRIVED]
        namespace, revision, started = arrived
        seconds = time.monotonic() - started
        self.seconds.labels(namespace, revision).observe(seconds)
        self.last.labels(namespace, revision).set(seconds)


@dataclass(frozen=True, slots=True)
class ColdStartFigures:
    """One revision's cold starts, read back from the metrics."""

    waited: int
    """Requests that waited for a pod."""
    count: int
    """Those that got their first byte."""
    total_seconds: float
    latest_seconds: float | None
    buckets: tuple[tuple[float, int], ...]
    """(upper bound, cumulative count), the last bound +Inf."""

    def quantile(self, q: float) -> float | None:
        """Prometheus' `histogram_quantile`: linear within the bucket that holds rank q;
        the one observation itself while there is only one."""
        if self.count == 1 and self.latest_seconds is not None:
            return self.latest_seconds
        return histogram_quantile(q, self.buckets)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "waited": self.waited,
            "count": self.count,
            "latestSeconds": _rounded(self.latest_seconds),
            "meanSeconds": _rounded(self.total_seconds / self.count if self.count else None),
            "p50Seconds": _rounded(self.quantile(0.5)),
            "p95Seconds": _rounded(self.quantile(0.95)),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, int]]) -> float | None:
    """The q-quantile of a cumulative histogram, as Prometheus' `histogram_quantile`
    computes it: None without observations; within the highest finite bucket's bound
    when the rank falls into +Inf."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def parse_cold_starts(text: str) -> Mapping[tuple[str, str], ColdStartFigures]:
    """(namespace, revision) → its figures, from an activator's `/metrics` text."""
    waited: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], float] = {}
    buckets: dict[tuple[str, str], list[tuple[float, int]]] = {}
    # Only the cold-start families are parsed: the rest of an activator's metrics (a few
    # lines per revision it knows) can be thousands of lines.
    ours = "\n".join(
        line
        for line in text.splitlines()
        if line.startswith(_FAMILIES) or line.startswith(_COMMENTS)
    )
    for family in text_string_to_metric_families(ours + "\n"):
        if family.name not in (SECONDS, REQUESTS, LAST):
            continue
        for sample in family.samples:
            key = (sample.labels.get("namespace", ""), sample.labels.get("revision", ""))
            if sample.name == REQUESTS + "_total":
                waited[key] = sample.value
            elif sample.name == LAST:
                last[key] = sample.value
            elif sample.name == SECONDS + "_sum":
                sums[key] = sample.value
            elif sample.name == SECONDS + "_count":
                counts[key] = sample.value
            elif sample.name == SECONDS + "_bucket":
                bound = float(sample.labels["le"])
                buckets.setdefault(key, []).append((bound, int(sample.value)))
    return {
        key: ColdStartFigures(
            waited=int(waited.get(key, 0)),
            count=int(counts.get(key, 0)),
            total_seconds=sums.get(key, 0.0),
            latest_seconds=last.get(key),
            buckets=tuple(sorted(buckets.get(key, []))),
        )
        for key in sorted(set(waited) | set(counts))
    }
