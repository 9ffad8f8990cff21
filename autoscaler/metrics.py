"""Request concurrency and request rate per revision, in Knative's bucketed windows.

How the metric is derived
-------------------------
Concurrency is the number of requests in flight for a revision. A source (the
activator's `wakegate.activator.stats.ConcurrencyTracker`, the gateway's
`upstream_rq_active`) reports the time-average concurrency of each interval and the
number of requests that arrived in it, about once a second, for every revision it
tracks, zeros included, as Knative's queue-proxy does.

`RevisionMetrics.record` files each report into one-second buckets. A report with
`interval_s` covers `[now - interval_s, now]` and is spread over the buckets that
interval overlaps, weighted by the overlap; a report without one is a point sample
for the bucket holding `now`. Within a bucket, the reports of one source are averaged
(weighted by the time they cover) and different sources are added, so two activators
each seeing 10 make 20. Every request must be counted by one source only: Knative
subtracts the activator-proxied share from pod reports for the same reason.

`average(now, window_s)` follows Knative's `TimedFloat64Buckets.WindowAverage`: the
sum of the bucket values in the window divided by the number of buckets from the
first write to the last one. Buckets with no report between two writes count as 0.
Before data spans the window (just after start, or after a full window without data)
the average is over the data present; buckets after the last write (the bucket still
being filled, or a source that went quiet) are left out rather than counted as 0, and
a window asked for before the last write ends at the last write. A window with no data
averages 0 and says so (`has_data`): the decider takes no decision on it. Averages are
floored to 6 decimal places, as Knative does, so float noise cannot push
`ceil(average / target)` up by a pod.

The `weighted-exponential` aggregation (Knative's `WeightedFloat64Buckets`) weighs the
newest bucket by a smoothing coefficient m and each older one by (1 - m) more, with m
chosen so the weights of the window's buckets sum to 0.9999 (at least 0.2); buckets
since the last write count as 0.

Requests per second are the requests filed in the same buckets, aggregated the same
way: the `rps` metric reads them where the `concurrency` metric reads concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from wakegate.serving.autoscaling import CONCURRENCY, LINEAR, RPS, WEIGHTED_EXPONENTIAL

BUCKET_S = 1.0
"""Width of one aggregation bucket (Knative's `BucketSize`)."""

_DIGITS = 1e6
_MIN_EXPONENT = 0.2
"""Smallest smoothing coefficient of the weighted-exponential average (Knative's)."""
_WEIGHT_PRECISION = 0.9999
"""The window's weights sum to at least this much (Knative's)."""
_DEFAULT_KEEP_S = 120.0
"""History kept before a wider window is asked for: twice the default stable window."""


def _floor6(value: float) -> float:
    return math.floor(value * _DIGITS) / _DIGITS


def smoothing_coefficient(buckets: float) -> float:
    """The weighted-exponential decay for a window of `buckets` buckets (Knative's
    `computeSmoothingCoeff`)."""
    return max(1 - math.pow(1 - _WEIGHT_PRECISION, 1 / buckets), _MIN_EXPONENT)


class _Bucket:
    __slots__ = ("requests", "sources")

    def __init__(self) -> None:
        self.sources: dict[str, list[float]] = {}
        """source → [concurrency * seconds, seconds covered]"""
        self.requests = 0.0

    def add(self, source: str, area: float, covered: float, requests: float) -> None:
        acc = self.sources.get(source)
        if acc is None:
            self.sources[source] = [area, covered]
        else:
            acc[0] += area
            acc[1] += covered
        self.requests += requests

    def value(self) -> float:
        return sum(area / covered for area, covered in self.sources.values() if covered > 0)


@dataclass(frozen=True, slots=True)
class WindowStats:
    average: float
    """Average concurrency over the window (0 without data)."""
    request_rate: float
    """Requests per second over the same buckets."""
    has_data: bool


class ConcurrencyWindow:
    """One revision's reports in fixed-width buckets; answers windows of any width.

    Keeps twice the widest window asked for so far (at least `keep_s`), which is what
    deciding "has data spanned the window?" needs.
    """

    def __init__(self, bucket_s: float = BUCKET_S, keep_s: float = _DEFAULT_KEEP_S) -> None:
        if bucket_s <= 0:
            raise ValueError(f"bucket_s: got {bucket_s!r}, expected a positive number")
        self.bucket_s = bucket_s
        self._buckets: dict[int, _Bucket] = {}
        self._keep = max(2, math.ceil(keep_s / bucket_s))
        self._newest: int | None = None

    def _index(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    def _span(self, window_s: float) -> int:
        return max(1, math.ceil(window_s / self.bucket_s - 1e-9))

    def record(
        self,
        now: float,
        concurrency: float,
        requests: float = 0,
        *,
        interval_s: float = 0.0,
        source: str = "",
    ) -> None:
        """File one report; see the module docstring for `interval_s` and `source`."""
        if not (math.isfinite(concurrency) and concurrency >= 0):
            raise ValueError(f"concurrency: got {concurrency!r}, expected a number >= 0")
        if not (math.isfinite(requests) and requests >= 0):
            raise ValueError(f"requests: got {requests!r}, expected a number >= 0")
        if not (math.isfinite(interval_s) and interval_s >= 0):
            raise ValueError(f"interval_s: got {interval_s!r}, expected a number >= 0")
        width = self.bucket_s
        if interval_s == 0:
            self._add(self._index(now), source, concurrency * width, width, requests)
        else:
            start = now - interval_s
            last = self._index(now)
            first = max(self._index(start), last - self._keep)
            for b in range(first, last + 1):
                covered = min(now, (b + 1) * width) - max(start, b * width)
                if covered > 0:
                    share = requests * covered / interval_s
                    self._add(b, source, concurrency * covered, covered, share)
        self._prune()

    def _add(self, index: int, source: str, area: float, covered: float, requests: float) -> None:
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        bucket.add(source, area, covered, requests)
        if self._newest is None or index > self._newest:
            self._newest = index

    def _prune(self) -> None:
        if self._newest is None or len(self._buckets) <= self._keep + self._keep // 2 + 8:
            return
        cutoff = self._newest - self._keep
        self._buckets = {b: v for b, v in self._buckets.items() if b >= cutoff}

    def stats(self, now: float, window_s: float) -> WindowStats:
        """Average concurrency and request rate over the `window_s` ending at `now`."""
        n = self._span(window_s)
        self._keep = max(self._keep, 2 * n)
        current = self._index(now)
        if self._newest is not None and self._newest > current:
            current = self._newest
        start = current - n + 1
        total = requests = 0.0
        first = last = None
        for b in range(start, current + 1):
            bucket = self._buckets.get(b)
            if bucket is None:
                continue
            if first is None:
                first = b
            last = b
            total += bucket.value()
            requests += bucket.requests
        if first is None or last is None:
            return WindowStats(0.0, 0.0, has_data=False)
        # Knative's first write: data less than a window before the earliest bucket in
        # this window means the series already spans the window.
        spans = any(b in self._buckets for b in range(first - n + 1, start))
        count = last - (start if spans else first) + 1
        return WindowStats(
            average=_floor6(total / count),
            request_rate=_floor6(requests / (count * self.bucket_s)),
            has_data=True,
        )

    def weighted(self, now: float, window_s: float) -> WindowStats:
        """Weighted-exponential averages of concurrency and request rate over the
        `window_s` ending at `now` (Knative's `WeightedFloat64Buckets.WindowAverage`)."""
        n = self._span(window_s)
        self._keep = max(self._keep, 2 * n)
        newest = self._newest
        quiet = 0 if newest is None else max(0, self._index(now) - newest)
        if newest is None or quiet >= n:
            return WindowStats(0.0, 0.0, has_data=False)
        m = smoothing_coefficient(n)
        weight = m * math.pow(1 - m, quiet)
        average = rate = 0.0
        for b in range(newest, newest - (n - quiet), -1):
            bucket = self._buckets.get(b)
            if bucket is not None:
                average += bucket.value() * weight
                rate += bucket.requests / self.bucket_s * weight
            weight *= 1 - m
        return WindowStats(average, rate, has_data=True)

    def aggregate(self, now: float, window_s: float, algorithm: str = LINEAR) -> WindowStats:
        """`stats` or `weighted`, by `metric-aggregation-algorithm`."""
        if algorithm == WEIGHTED_EXPONENTIAL:
            return self.weighted(now, window_s)
        return self.stats(now, window_s)

    def average(self, now: float, window_s: float) -> float:
        return self.stats(now, window_s).average

    def has_data(self, now: float, window_s: float) -> bool:
        return self.stats(now, window_s).has_data


@dataclass(frozen=True, slots=True)
class Observation:
    """What the decider reads: the metric's average over the stable and panic windows
    (concurrency, or requests per second for the `rps` metric)."""

    stable: float
    panic: float
    has_data: bool = True
    """False when the stable window holds no report: Knative's ErrNoData, on which the
    autoscaler takes no decision. A report of 0 is data (no traffic)."""


_VALUE: dict[str, Callable[[WindowStats], float]] = {
    CONCURRENCY: lambda stats: stats.average,
    RPS: lambda stats: stats.request_rate,
}


class RevisionMetrics:
    """A `ConcurrencyWindow` per revision key (e.g. `Revision.key`, "namespace/name")."""

    def __init__(self, bucket_s: float = BUCKET_S) -> None:
        self.bucket_s = bucket_s
        self._windows: dict[str, ConcurrencyWindow] = {}

    def record(
        self,
        now: float,
        revision: str,
        concurrency: float,
        requests: float = 0,
        *,
        interval_s: float = 0.0,
        source: str = "",
    ) -> None:
        window = self._windows.get(revision)
        if window is None:
            window = self._windows[revision] = ConcurrencyWindow(self.bucket_s)
        window.record(now, concurrency, requests, interval_s=interval_s, source=source)

    def window(self, revision: str) -> ConcurrencyWindow | None:
        return self._windows.get(revision)

    def average(self, now: float, revision: str, window_s: float) -> float:
        window = self._windows.get(revision)
        return window.average(now, window_s) if window else 0.0

    def observe(
        self,
        now: float,
        revision: str,
        stable_window_s: float,
        panic_window_s: float,
        *,
        metric: str = CONCURRENCY,
        algorithm: str = LINEAR,
    ) -> Observation:
        window = self._windows.get(revision)
        if window is None:
            return Observation(0.0, 0.0, has_data=False)
        value = _VALUE[metric]
        stable = window.aggregate(now, stable_window_s, algorithm)
        panic = window.aggregate(now, panic_window_s, algorithm)
        return Observation(stable=value(stable), panic=value(panic), has_data=stable.has_data)

    def revisions(self) -> list[str]:
        return sorted(self._windows)

    def forget(self, revision: str) -> None:
        self._windows.pop(revision, None)
