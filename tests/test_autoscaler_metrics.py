"""Concurrency metrics: exact integration of request events and Knative's window averages."""

from __future__ import annotations

import heapq
import math

import pytest

from wakegate.activator.stats import ConcurrencySnapshot, ConcurrencyTracker
from wakegate.autoscaler.config import AutoscalerConfig, RevisionScaling
from wakegate.autoscaler.gateway_stats import RevisionLoad, parse_revision_load
from wakegate.autoscaler.metrics import ConcurrencyWindow, RevisionMetrics
from wakegate.autoscaler.scaler import Autoscaler


def closed_loop(
    tracker: ConcurrencyTracker,
    durations: list[float],
    start: float,
    until: float,
    report_every: float,
    window: ConcurrencyWindow,
    *,
    first_report: float | None = None,
) -> int:
    """Run len(durations) closed-loop workers (each request followed at once by the next).

    The tracker is snapshotted every `report_every` seconds and each snapshot recorded
    as an interval report. Returns the number of requests completed.
    """
    events: list[tuple[float, int]] = []
    for worker, duration in enumerate(durations):
        tracker.start(start)
        heapq.heappush(events, (start + duration, worker))
    done = 0
    report = first_report if first_report is not None else start + report_every
    while report <= until:
        while events and events[0][0] <= report:
            t, worker = heapq.heappop(events)
            tracker.finish(t)
            done += 1
            tracker.start(t)
            heapq.heappush(events, (t + durations[worker], worker))
        snap = tracker.snapshot(report)
        window.record(report, snap.concurrency, snap.requests, interval_s=snap.interval_s)
        report += report_every
    return done


def worker_durations(n: int) -> list[float]:
    """Different, non-commensurate request durations so requests end at scattered times."""
    return [0.05 + 0.0173 * (i % 17) + 0.0031 * i for i in range(n)]


# --- ConcurrencyTracker ------------------------------------------------------------


def test_tracker_integrates_in_flight_over_time() -> None:
    tracker = ConcurrencyTracker(now=0.0)
    tracker.start(0.0)
    tracker.start(0.25)
    tracker.finish(0.75)
    assert tracker.in_flight == 1
    # 1 request for 0.25 s, 2 for 0.5 s, 1 for 0.25 s: 1.5 request-seconds over 1 s.
    snap = tracker.snapshot(1.0)
    assert snap == ConcurrencySnapshot(1.5, 2, 1.0)
    # The open request carries over; no new request started.
    assert tracker.snapshot(3.0) == ConcurrencySnapshot(1.0, 0, 2.0)


def test_tracker_snapshot_without_elapsed_time_reports_in_flight() -> None:
    tracker = ConcurrencyTracker(now=5.0)
    tracker.start(5.0)
    tracker.start(5.0)
    assert tracker.snapshot(5.0) == ConcurrencySnapshot(2.0, 2, 0.0)


def test_tracker_rejects_unmatched_finish() -> None:
    tracker = ConcurrencyTracker(now=0.0)
    with pytest.raises(ValueError, match="without a request in flight"):
        tracker.finish(1.0)


def test_tracker_ignores_time_going_backwards() -> None:
    tracker = ConcurrencyTracker(now=10.0)
    tracker.start(10.0)
    tracker.finish(9.0)  # treated as 10.0
    assert tracker.snapshot(11.0) == ConcurrencySnapshot(0.0, 1, 1.0)


@pytest.mark.parametrize("n", [1, 7, 50, 200])
def test_closed_loop_load_measures_n_concurrent(n: int) -> None:
    window = ConcurrencyWindow()
    tracker = ConcurrencyTracker(now=0.0)
    done = closed_loop(tracker, worker_durations(n), 0.0, 120.0, 1.0, window)
    assert done > n * 100  # many requests of varying length, not one long one each
    average = window.average(120.0, 60.0)
    assert average == pytest.approx(n, rel=0.01)
    # Integration is exact, so it is far better than the 1 % asked for.
    assert abs(average - n) < 1e-5
    assert window.average(120.0, 6.0) == pytest.approx(n, abs=1e-5)


def test_closed_loop_with_reports_off_the_bucket_grid() -> None:
    window = ConcurrencyWindow()
    tracker = ConcurrencyTracker(now=0.0)
    closed_loop(tracker, worker_durations(50), 0.0, 100.0, 0.7, window, first_report=0.35)
    assert window.average(100.0, 60.0) == pytest.approx(50, rel=0.01)
    assert window.average(100.0, 6.0) == pytest.approx(50, rel=0.01)


def test_request_rate_matches_completed_requests() -> None:
    window = ConcurrencyWindow()
    tracker = ConcurrencyTracker(now=0.0)
    done = closed_loop(tracker, [0.1] * 10, 0.0, 60.0, 1.0, window)
    # 10 workers at 10 requests/s each.
    assert done == pytest.approx(6000, abs=10)
    assert window.stats(60.0, 60.0).request_rate == pytest.approx(100, rel=0.01)


# --- Ramps ---------------------------------------------------------------------------


def ramp_window(levels: list[int]) -> ConcurrencyWindow:
    """Second k (bucket k) holds `levels[k]` concurrent workers, driven through a tracker."""
    window = ConcurrencyWindow()
    tracker = ConcurrencyTracker(now=0.0)
    for k, level in enumerate(levels):
        while tracker.in_flight < level:
            tracker.start(float(k))
        while tracker.in_flight > level:
            tracker.finish(float(k))
        snap = tracker.snapshot(k + 1.0)
        window.record(k + 1.0, snap.concurrency, snap.requests, interval_s=snap.interval_s)
    return window


def test_ramp_up_then_steady() -> None:
    levels = [min(k + 1, 50) for k in range(120)]  # +1 worker a second, 50 from second 49
    # At t=30 the data spans seconds 0..29 only: the average is over the data present.
    assert ramp_window(levels[:30]).average(30.0, 60.0) == pytest.approx(
        sum(levels[:30]) / 30, abs=1e-5
    )
    # At t=60.5 the window is buckets 1..60, and bucket 60 has no report yet.
    window = ramp_window(levels[:60])
    assert window.average(60.5, 60.0) == pytest.approx(sum(levels[1:60]) / 59, abs=1e-5)
    assert window.average(60.5, 6.0) == pytest.approx(50, abs=1e-5)
    # Once the ramp has left the window, the steady level.
    assert ramp_window(levels).average(120.0, 60.0) == pytest.approx(50, abs=1e-5)


def test_ramp_down_to_idle() -> None:
    levels = [50] * 60 + [max(50 - 2 * k, 0) for k in range(1, 61)]
    window = ramp_window(levels)
    partial = ramp_window(levels[:91])
    assert partial.average(91.0, 60.0) == pytest.approx(sum(levels[32:91]) / 59, abs=1e-5)
    assert window.average(120.0, 6.0) == pytest.approx(sum(levels[114:120]) / 6, abs=1e-5)
    # Zeros are reports too: a minute of them brings the average to 0 with data present.
    idle = ramp_window([*levels, *([0] * 60)])
    assert idle.stats(180.0, 60.0).average == 0.0
    assert idle.stats(180.0, 60.0).has_data


# --- Window boundaries (Knative's WindowAverage) -------------------------------------


def fill(window: ConcurrencyWindow, seconds: range, value: float) -> None:
    for s in seconds:
        window.record(s + 0.5, value)


def test_partial_window_averages_the_data_present() -> None:
    window = ConcurrencyWindow()
    fill(window, range(5), 10.0)
    assert window.average(4.5, 60.0) == 10.0


def test_gap_between_reports_counts_as_zero() -> None:
    window = ConcurrencyWindow()
    fill(window, range(10), 10.0)
    fill(window, range(20, 30), 10.0)
    # Buckets 0..29 count, 10..19 as zero.
    assert window.average(29.5, 60.0) == pytest.approx(200 / 30, abs=1e-6)


def test_buckets_after_the_last_report_are_left_out() -> None:
    window = ConcurrencyWindow()
    fill(window, range(10), 10.0)
    assert window.average(15.5, 60.0) == 10.0
    assert window.average(15.5, 10.0) == 10.0  # buckets 6..9 of window 6..15
    stats = window.stats(75.5, 60.0)  # window 16..75: nothing
    assert (stats.average, stats.has_data) == (0.0, False)


def test_full_window_spans_and_old_data_leaves() -> None:
    window = ConcurrencyWindow()
    fill(window, range(100), 10.0)
    assert window.average(99.5, 60.0) == 10.0
    fill(window, range(100, 120), 0.0)
    assert window.average(119.5, 60.0) == pytest.approx(400 / 60, abs=1e-6)
    # Asked for a time before the last write, the window ends at the last write
    # (bucketing_test.go: TestTimedFloat64BucketsWindowAverage, "now lags behind").
    assert window.average(99.5, 60.0) == pytest.approx(400 / 60, abs=1e-6)


def test_series_restarts_after_a_full_window_without_data() -> None:
    window = ConcurrencyWindow()
    fill(window, range(10), 10.0)
    fill(window, range(80, 85), 4.0)  # 70 s gap ≥ 60 s window: a new series
    assert window.average(84.5, 60.0) == 4.0
    other = ConcurrencyWindow()
    fill(other, range(30), 10.0)
    fill(other, range(60, 65), 4.0)  # 30 s gap: the series goes on, the gap is zeros
    assert other.average(64.5, 60.0) == pytest.approx((25 * 10 + 5 * 4) / 60, abs=1e-6)


def test_window_narrower_than_a_bucket_is_one_bucket() -> None:
    window = ConcurrencyWindow()
    fill(window, range(3), 2.0)
    window.record(3.5, 8.0)
    assert window.average(3.9, 0.6) == 8.0


def test_sources_add_and_one_source_averages_within_a_bucket() -> None:
    window = ConcurrencyWindow()
    window.record(0.2, 10.0, source="activator-a")
    window.record(0.4, 10.0, source="activator-b")
    window.record(0.6, 20.0, source="activator-b")
    assert window.average(0.9, 60.0) == 10.0 + 15.0


def test_interval_reports_are_spread_by_overlap() -> None:
    window = ConcurrencyWindow()
    window.record(10.5, 8.0, 4, interval_s=1.0)  # half in bucket 9, half in bucket 10
    assert window.average(10.9, 1.0) == 8.0
    assert window.average(9.9, 1.0) == 8.0
    assert window.stats(10.9, 2.0).request_rate == 2.0  # 4 requests over 2 buckets
    halves = ConcurrencyWindow()
    halves.record(9.5, 4.0, interval_s=0.5)
    halves.record(10.0, 8.0, interval_s=0.5)
    assert halves.average(9.99, 1.0) == 6.0  # the time-weighted mean of bucket 9


def test_averages_are_floored_to_six_digits() -> None:
    window = ConcurrencyWindow()
    window.record(0.5, 50.0000004)
    assert window.average(0.5, 60.0) == 50.0
    window.record(1.5, 49.99999999)
    assert window.average(1.5, 1.0) == 49.999999
    assert math.ceil(window.average(1.5, 1.0) / 10) == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"concurrency": -1.0}, "concurrency"),
        ({"concurrency": math.nan}, "concurrency"),
        ({"requests": -2}, "requests"),
        ({"interval_s": -1.0}, "interval_s"),
    ],
)
def test_record_rejects_bad_reports(kwargs: dict[str, float], field: str) -> None:
    args: dict[str, float] = {"concurrency": 1.0, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}: got"):
        ConcurrencyWindow().record(1.0, **args)  # type: ignore[arg-type]


def test_history_is_bounded_by_the_widest_window() -> None:
    window = ConcurrencyWindow()
    for s in range(5000):
        window.record(s + 0.5, 1.0, interval_s=0.0)
        if s % 100 == 0:
            window.average(s + 0.5, 60.0)
    assert len(window._buckets) <= 2 * 120 + 8
    # A wider window keeps more history from then on.
    window.average(5000.0, 300.0)
    for s in range(5000, 6000):
        window.record(s + 0.5, 1.0)
    assert window.average(5999.5, 300.0) == 1.0
    assert 600 <= len(window._buckets) <= 2 * 600 + 8


# --- RevisionMetrics -----------------------------------------------------------------


def test_revision_metrics_observe_stable_and_panic() -> None:
    metrics = RevisionMetrics()
    for s in range(60):
        metrics.record(s + 1.0, "default/hello-00001", 10.0 if s < 54 else 40.0, interval_s=1.0)
    # At t=60 the window is buckets 1..60; bucket 60 has no report yet.
    observed = metrics.observe(60.0, "default/hello-00001", 60.0, 6.0)
    assert observed.stable == pytest.approx((53 * 10 + 6 * 40) / 59, abs=1e-6)
    assert observed.panic == 40.0
    assert observed.has_data
    assert metrics.average(60.0, "default/hello-00001", 6.0) == 40.0
    assert metrics.revisions() == ["default/hello-00001"]

    unknown = metrics.observe(60.0, "default/other-00001", 60.0, 6.0)
    assert (unknown.stable, unknown.panic, unknown.has_data) == (0.0, 0.0, False)
    metrics.forget("default/hello-00001")
    assert metrics.window("default/hello-00001") is None
    assert metrics.average(60.0, "default/hello-00001", 60.0) == 0.0


# --- The gateway as the metric source ------------------------------------------------


def test_gateway_stats_give_each_revisions_concurrency_and_request_count() -> None:
    text = "\n".join(
        [
            "cluster.default/hello-00001_80.upstream_rq_active: 3",
            "cluster.default/hello-00001_80.upstream_rq_total: 120",
            # The gate's cluster carries requests the revision's cluster already counted.
            "cluster.default/hello-00001_gate.upstream_rq_active: 3",
            "cluster.default/hello-00001_gate.upstream_rq_total: 118",
            "cluster.default/other-00002_80.upstream_rq_total: 7",
            "cluster.xds_cluster.upstream_rq_active: 1",
        ]
    )
    assert parse_revision_load(text) == {
        "default/hello-00001": RevisionLoad(3.0, 120.0),
        "default/other-00002": RevisionLoad(0.0, 7.0),
    }


async def test_autoscaler_files_request_deltas_and_no_data_on_a_failed_sample() -> None:
    now = [100.0]
    samples: list[dict[str, RevisionLoad] | Exception] = [
        {"default/a-00001": RevisionLoad(2.0, 1000.0)},
        {"default/a-00001": RevisionLoad(2.0, 1050.0)},
        {"default/a-00001": RevisionLoad(1.0, 20.0)},  # the cluster was re-created
        ConnectionRefusedError("admin down"),
        {"default/a-00001": RevisionLoad(1.0, 90.0)},
    ]

    async def sample() -> dict[str, RevisionLoad]:
        item = samples.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    autoscaler = Autoscaler(
        AutoscalerConfig(), sample, lambda key, decision: None, clock=lambda: now[0]
    )
    autoscaler.track("default/a-00001", RevisionScaling(), routed=True, ready_pods=1)
    window = autoscaler.metrics
    requests: list[float] = []
    for step in range(5):
        filed = await autoscaler.sample_once()
        assert filed is (step != 3)
        stats = window.window("default/a-00001")
        assert stats is not None
        bucket = stats._buckets.get(math.floor(now[0] - 0.5))
        requests.append(bucket.requests if bucket is not None else -1)
        now[0] += 1.0
    # The first sample is the counter's baseline; then 50 requests; a re-created cluster
    # counts from 0; a failed sample files nothing (no data), and the next one is a
    # baseline again rather than a burst of everything counted meanwhile.
    assert requests == [0.0, 50.0, 20.0, -1, 0.0]
