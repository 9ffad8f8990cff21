"""What each revision did over the last minutes: load, pods and the autoscaler's events.

The live view samples every revision about once a second into a `Point` (observed
concurrency, request rate, desired and ready pods, panic). `Timeline.record` keeps
the points of the last `keep_s` seconds and derives the events worth marking on a
chart from two successive points:

- `panic`: the autoscaler entered panic mode; `panic-end`: it left it;
- `scale-to-zero`: the last ready pod went;
- `wake`: the autoscaler asked for pods again for a revision it had at zero, or a
  request waited at the activator for a pod (a cold start). A revision can go to
  zero and wake between two samples; the cold start still marks both.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Point:
    t: float
    """Unix time."""
    concurrency: float | None
    """Observed concurrency (the autoscaler's panic-window average); None before its
    first decision."""
    rps: float | None
    """Requests per second at the gateway since the previous point; None when unknown."""
    desired: int | None
    ready: int
    panicking: bool = False
    waited: int = 0
    """Requests that have waited at the activator for a pod of the revision, so far."""

    def to_list(self) -> list[Any]:
        rounded = None if self.concurrency is None else round(self.concurrency, 2)
        rps = None if self.rps is None else round(self.rps, 1)
        return [round(self.t, 3), rounded, rps, self.desired, self.ready, self.panicking]


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str
    text: str

    def to_list(self) -> list[Any]:
        return [round(self.t, 3), self.kind, self.text]


def events_between(before: Point, after: Point) -> list[Event]:
    """The events that happened between two successive points of one revision."""
    out = []
    if after.panicking and not before.panicking:
        load = f" at concurrency {after.concurrency:.1f}" if after.concurrency is not None else ""
        out.append(Event(after.t, "panic", f"panic{load}"))
    elif before.panicking and not after.panicking:
        out.append(Event(after.t, "panic-end", "panic over"))
    cold = after.waited > before.waited
    if before.ready > 0 and (after.ready == 0 or cold):
        out.append(Event(after.t, "scale-to-zero", "scaled to zero"))
    if before.desired == 0 and (after.desired or 0) > 0:
        out.append(Event(after.t, "wake", f"woken: {after.desired} pod(s) asked for"))
    elif cold:
        waited = after.waited - before.waited
        out.append(Event(after.t, "wake", f"woken: {waited} request(s) waited for a pod"))
    return out


class _Series:
    __slots__ = ("events", "points")

    def __init__(self) -> None:
        self.points: deque[Point] = deque()
        self.events: deque[Event] = deque()


class Timeline:
    """Points and events per revision key, for the last `keep_s` seconds."""

    def __init__(self, keep_s: float = 600.0) -> None:
        self.keep_s = keep_s
        self._series: dict[str, _Series] = {}

    def record(self, key: str, point: Point) -> list[Event]:
        """Add a point (times must not go backwards); the events it completes."""
        series = self._series.setdefault(key, _Series())
        events = events_between(series.points[-1], point) if series.points else []
        series.points.append(point)
        series.events.extend(events)
        horizon = point.t - self.keep_s
        while series.points and series.points[0].t < horizon:
            series.points.popleft()
        while series.events and series.events[0].t < horizon:
            series.events.popleft()
        return events

    def keys(self) -> list[str]:
        return list(self._series)

    def points(self, key: str, since: float | None = None) -> list[Point]:
        series = self._series.get(key)
        if series is None:
            return []
        return [p for p in series.points if since is None or p.t > since]

    def events(self, key: str, since: float | None = None) -> list[Event]:
        series = self._series.get(key)
        if series is None:
            return []
        return [e for e in series.events if since is None or e.t > since]

    def forget(self, keep: set[str]) -> None:
        """Drop the series of every revision not in `keep`."""
        for key in list(self._series):
            if key not in keep:
                del self._series[key]
