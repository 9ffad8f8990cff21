"""The live view's timeline: which events two successive samples of a revision mark."""

from __future__ import annotations

from wakegate.reconciler.local.timeline import Point, Timeline


def point(t: float, *, desired: int | None, ready: int, panicking: bool = False) -> Point:
    return Point(t=t, concurrency=0.0, rps=0.0, desired=desired, ready=ready, panicking=panicking)


def test_scale_to_zero_wake_and_panic_are_marked_once_each() -> None:
    timeline = Timeline(keep_s=100)
    key = "default/hello-00001"
    story = [
        (point(1, desired=1, ready=1), []),
        (point(2, desired=0, ready=1), []),
        (point(3, desired=0, ready=0), ["scale-to-zero"]),
        (point(4, desired=0, ready=0), []),
        (point(5, desired=1, ready=0), ["wake"]),
        (point(6, desired=1, ready=1), []),
        (point(7, desired=5, ready=1, panicking=True), ["panic"]),
        (point(8, desired=5, ready=5, panicking=True), []),
        (point(9, desired=5, ready=5), ["panic-end"]),
    ]
    for sample, expected in story:
        assert [e.kind for e in timeline.record(key, sample)] == expected
    assert [e.kind for e in timeline.events(key)] == ["scale-to-zero", "wake", "panic", "panic-end"]
    assert [e.kind for e in timeline.events(key, since=6)] == ["panic", "panic-end"]
    assert [p.t for p in timeline.points(key, since=7)] == [8, 9]


def test_a_cold_start_between_two_samples_marks_zero_and_wake() -> None:
    timeline = Timeline()
    timeline.record("a", Point(1, 0.0, 0.0, desired=1, ready=1, waited=0))
    events = timeline.record("a", Point(2, 1.0, 1.0, desired=1, ready=1, waited=3))
    assert [(e.kind, e.text) for e in events] == [
        ("scale-to-zero", "scaled to zero"),
        ("wake", "woken: 3 request(s) waited for a pod"),
    ]


def test_old_points_and_events_fall_out_and_gone_revisions_are_forgotten() -> None:
    timeline = Timeline(keep_s=10)
    timeline.record("a", point(0, desired=1, ready=1))
    timeline.record("a", point(1, desired=1, ready=0))
    timeline.record("a", point(20, desired=1, ready=1))
    assert [p.t for p in timeline.points("a")] == [20]
    assert timeline.events("a") == []
    timeline.record("b", point(20, desired=1, ready=1))
    timeline.forget({"b"})
    assert timeline.keys() == ["b"]
    assert timeline.points("a") == []
