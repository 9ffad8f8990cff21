"""Exact time-averaged request concurrency, as the activator reports it to the autoscaler.

Every request start and finish moves a revision's in-flight count, and the tracker
integrates that count over time. `snapshot(now)` returns the integral since the previous
snapshot divided by the interval's length, which is the exact time-average concurrency
of the interval (50 requests always in flight give exactly 50, however short the
requests), plus the number of requests that arrived in it. This is Knative's request
statistics (`knative.dev/networking/pkg/http/stats`), kept by its queue-proxy and
activator alike.
"""

from __future__ import annotations

from typing import NamedTuple


class ConcurrencySnapshot(NamedTuple):
    concurrency: float
    """Time-average in-flight requests over the interval."""
    requests: int
    """Requests started during the interval."""
    interval_s: float
    """Length of the interval, from the previous snapshot (or creation) to now."""


class ConcurrencyTracker:
    """Exact integrated concurrency of one revision, from request start/finish events.

    `now` must not go backwards; an earlier `now` is treated as the latest one seen.
    """

    __slots__ = ("_area", "_in_flight", "_last", "_requests", "_since")

    def __init__(self, now: float) -> None:
        self._in_flight = 0
        self._area = 0.0
        self._requests = 0
        self._last = now
        self._since = now

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _advance(self, now: float) -> None:
        if now > self._last:
            self._area += self._in_flight * (now - self._last)
            self._last = now

    def start(self, now: float) -> None:
        self._advance(now)
        self._in_flight += 1
        self._requests += 1

    def finish(self, now: float) -> None:
        if self._in_flight == 0:
            raise ValueError("finish() without a request in flight")
        self._advance(now)
        self._in_flight -= 1

    def snapshot(self, now: float) -> ConcurrencySnapshot:
        """The average concurrency and request count since the last snapshot; resets both."""
        self._advance(now)
        interval = self._last - self._since
        average = self._area / interval if interval > 0 else float(self._in_flight)
        snap = ConcurrencySnapshot(average, self._requests, interval)
        self._area = 0.0
        self._requests = 0
        self._since = self._last
        return snap
