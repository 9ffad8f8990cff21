"""The activator's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from wakegate.activator.coldstart import ColdStarts
from wakegate.activator.revisions import Revisions

_LABELS = ("namespace", "revision")


class _RevisionGauges(Collector):
    """Per-revision gauges read from the live state at scrape time."""

    def __init__(self, revisions: Revisions, connected: Callable[[], bool]) -> None:
        self._revisions = revisions
        self._connected = connected

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "wakegate_activator_queued_requests", "Requests held waiting for a pod.", labels=_LABELS
        )
        in_flight = GaugeMetricFamily(
            "wakegate_activator_in_flight_requests",
            "Requests inside the activator, held or forwarded.",
            labels=_LABELS,
        )
        pods = GaugeMetricFamily(
            "wakegate_activator_ready_pods",
            "Ready pods the control plane announced.",
            labels=_LABELS,
        )
        for queue in self._revisions:
            labels = [queue.namespace, queue.revision]
            queued.add_metric(labels, queue.queued)
            in_flight.add_metric(labels, queue.in_flight)
            pods.add_metric(labels, len(queue.pods))
        yield queued
        yield in_flight
        yield pods
        yield GaugeMetricFamily(
            "wakegate_activator_control_plane_connected",
            "1 while both streams to the control plane are up.",
            value=1.0 if self._connected() else 0.0,
        )


class _Histogram(Collector):
    """A histogram without labels kept as plain counts: an observation is a bisection
    and two additions, where prometheus_client's takes two locks. The activator observes
    and is scraped on one thread."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative = list(accumulate(self._counts))
        pairs = zip(self._bounds, cumulative, strict=False)
        buckets = [(floatToGoString(bound), float(n)) for bound, n in pairs]
        yield HistogramMetricFamily(
            self._name,
            self._documentation,
            buckets=[*buckets, ("+Inf", float(cumulative[-1]))],
            sum_value=self._sum,
        )


class ActivatorMetrics:
    def __init__(self, revisions: Revisions, connected: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter(
            "wakegate_activator_responses",
            "Responses by revision and status code (the activator's own or a pod's).",
            ("namespace", "revision", "code"),
            registry=self.registry,
        )
        self.hold_seconds = _Histogram(
            "wakegate_activator_hold_seconds",
            "How long requests waited for a pod slot.",
            (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.registry.register(self.hold_seconds)
        self.retries = Counter(
            "wakegate_activator_retries",
            "Requests sent again to another pod after a pod could not be reached.",
            registry=self.registry,
        )
        self.cold_starts = ColdStarts(self.registry)
        self.registry.register(_RevisionGauges(revisions, connected))
        self._responses: dict[tuple[str, str, int], Any] = {}
        self._uncounted: dict[tuple[str, str, int], int] = {}

    def response(self, namespace: str, revision: str, code: int) -> None:
        """Count one response; the counts reach `responses` at the next `render` (a
        lock per response would cost more than the rest of the counting)."""
        key = (namespace, revision, code)
        self._uncounted[key] = self._uncounted.get(key, 0) + 1

    def _count_responses(self) -> None:
        for (namespace, revision, code), n in self._uncounted.items():
            key = (namespace, revision, code)
            child = self._responses.get(key)
            if child is None:
                child = self._responses[key] = self.responses.labels(namespace, revision, str(code))
            child.inc(n)
        self._uncounted.clear()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self._count_responses()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
