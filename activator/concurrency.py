"""Exact average concurrency: the integral of the in-flight count over time.

A sampled in-flight count misses short requests between samples; integrating it at
every change does not, so `average = ∫ in_flight dt / interval` holds for any mix of
request durations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Interval:
    """What one reporting interval saw."""

    seconds: float
    average_concurrency: float
    requests: int
    """Requests that started during the interval."""
    in_flight: int
    """In flight at the end of the interval."""


class ConcurrencyMeter:
    """Counts requests in and out and integrates how many were in flight."""

    __slots__ = ("_area", "_clock", "_in_flight", "_last", "_requests", "_start")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._start = now
        self._last = now
        self._area = 0.0
        self._in_flight = 0
        self._requests = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _advance(self) -> float:
        now = self._clock()
        self._area += self._in_flight * (now - self._last)
        self._last = now
        return now

    def started(self) -> None:
        self._advance()
        self._in_flight += 1
        self._requests += 1

    def finished(self) -> None:
        self._advance()
        self._in_flight -= 1

    def take(self) -> Interval:
        """Close the current interval, return what it saw and start the next one."""
        now = self._advance()
        seconds = now - self._start
        average = self._area / seconds if seconds > 0 else float(self._in_flight)
        interval = Interval(seconds, average, self._requests, self._in_flight)
        self._start = now
        self._area = 0.0
        self._requests = 0
        return interval
