"""Knative's own expected values for the KPA, case by case.

Each test names the Knative source case it holds (knative/serving
`pkg/autoscaler/scaling/autoscaler_test.go`, `pkg/reconciler/autoscaling/kpa/scaler_test.go`,
`kpa_test.go`, `pkg/autoscaler/aggregation/bucketing_test.go`, and
`pkg/reconciler/autoscaling/resources/target_test.go`), with Knative's inputs and
expected outputs. Where wakegate deliberately differs the case says so.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from wakegate.autoscaler.config import AutoscalerConfig, RevisionScaling
from wakegate.autoscaler.decider import (
    UNKNOWN,
    Activity,
    DeciderSpec,
    RecommenderState,
    ScaleResult,
    ScalerState,
    activators,
    kpa_scale,
    recommend,
)
from wakegate.autoscaler.metrics import ConcurrencyWindow, Observation, smoothing_coefficient
from wakegate.serving.validation import parse_service

# --- autoscaler_test.go ----------------------------------------------------------------

STABLE_WINDOW = 60.0
TARGET_UTILIZATION = 0.75
"""autoscaler_test.go presumes 75 % utilisation: TotalValue = TargetValue / 0.75."""


class Autoscaler:
    """Knative's newTestAutoscaler: a recommender with a fake pod counter."""

    def __init__(
        self,
        target: float,
        tbc: float,
        *,
        start_in_panic: bool = False,
        now: float = 0.0,
        **spec: float,
    ) -> None:
        self.spec = DeciderSpec(
            target_value=target,
            total_value=target / TARGET_UTILIZATION,
            target_burst_capacity=tbc,
            panic_threshold=2.0,
            max_scale_up_rate=10.0,
            max_scale_down_rate=10.0,
            stable_window_s=STABLE_WINDOW,
            reachable=True,
        )
        if spec:
            self.spec = replace(self.spec, **spec)  # type: ignore[arg-type]
        self.ready = 2 if start_in_panic else 1
        self.state = RecommenderState.start(self.spec, now, self.ready)

    def scale(self, stable: float, panic: float, now: float) -> ScaleResult:
        rec = recommend(Observation(stable, panic), self.spec, self.state, now, self.ready)
        self.state = rec.state
        return rec.result


def ebc(total: float, tbc: float, recorded: float, pods: float) -> int:
    """autoscaler_test.go expectedEBC."""
    return math.floor(total / TARGET_UTILIZATION * pods - tbc - recorded)


def expect(got: ScaleResult, desired: int, excess: int) -> None:
    """autoscaler_test.go expectScale: the excess burst capacity within ±1."""
    assert got.valid
    assert got.desired == desired
    assert abs(got.excess_burst_capacity - excess) <= 1


def delay_autoscaler(reachable: bool = True) -> Autoscaler:
    a = Autoscaler(10, 0, panic_threshold=100.0, scale_down_delay_s=300.0, reachable=reachable)
    a.spec = replace(a.spec, total_value=0.0)
    a.ready = 0
    return a


def test_scale_down_delay() -> None:
    """autoscaler_test.go: TestAutoscalerScaleDownDelay ("simple", then "gradual")."""
    a = delay_autoscaler()
    assert a.scale(40, 40, 2.0).desired == 4
    assert a.scale(0, 0, 300.0).desired == 4  # five minutes at 0: not yet
    assert a.scale(0, 0, 302.0).desired == 0  # five minutes and 2 s: down
    # gradual
    assert a.scale(40, 40, 540.0).desired == 4
    assert a.scale(30, 30, 600.0).desired == 4  # 4 still dominates
    assert a.scale(0, 0, 660.0).desired == 4
    assert a.scale(0, 0, 840.0).desired == 3  # 4 scrolls out
    assert a.scale(0, 0, 900.0).desired == 0  # everything scrolled out


def test_scale_down_delay_not_reachable() -> None:
    """autoscaler_test.go: TestAutoscalerScaleDownDelayNotReachable."""
    a = delay_autoscaler()
    assert a.scale(40, 40, 2.0).desired == 4
    assert a.scale(0, 0, 60.0).desired == 4
    a.spec = replace(a.spec, reachable=False)  # another revision took the traffic
    assert a.scale(0, 0, 2.0).desired == 0


def test_scale_down_delay_zero() -> None:
    """autoscaler_test.go: TestAutoscalerScaleDownDelayZero."""
    a = delay_autoscaler()
    a.spec = replace(a.spec, scale_down_delay_s=0.0)
    assert a.scale(40, 40, 0.0).desired == 4
    assert a.scale(20, 20, 0.5).desired == 2


def test_no_data_no_autoscale() -> None:
    """autoscaler_test.go: TestAutoscalerNoDataNoAutoscale."""
    a = Autoscaler(10, 100)
    rec = recommend(Observation(0.0, 0.0, has_data=False), a.spec, a.state, 1.0, 1)
    assert not rec.result.valid
    assert rec.state == a.state
    assert rec.result.desired == UNKNOWN


def test_metrics() -> None:
    """autoscaler_test.go: TestAutoscalerMetrics (the scale result)."""
    expect(Autoscaler(10, 100).scale(50, 50, 0.0), 5, ebc(10, 100, 50, 1))


def test_rps() -> None:
    """autoscaler_test.go: TestAutoscalerMetricsWithRPS (the scale result)."""
    expect(Autoscaler(10, 100).scale(100, 99, 61.0), 10, ebc(10, 100, 99, 1))


def test_stable_mode_increase_with_concurrency_default() -> None:
    """autoscaler_test.go: TestAutoscalerStableModeIncreaseWithConcurrencyDefault."""
    a = Autoscaler(10, 101)
    expect(a.scale(50, 10, 0.0), 5, ebc(10, 101, 10, 1))
    expect(a.scale(100, 10, 0.0), 10, ebc(10, 101, 10, 1))


def test_stable_mode_increase_with_rps() -> None:
    """autoscaler_test.go: TestAutoscalerStableModeIncreaseWithRPS."""
    a = Autoscaler(10, 101)
    expect(a.scale(50, 50, 0.0), 5, ebc(10, 101, 50, 1))
    expect(a.scale(100, 99, 0.0), 10, ebc(10, 101, 99, 1))


def test_unpanic_after_slow_increase() -> None:
    """autoscaler_test.go: TestAutoscalerUnpanicAfterSlowIncrease."""
    a = Autoscaler(1, 98)
    a.ready = 10
    start = 100.0
    expect(a.scale(11, 25, start), 25, ebc(1, 98, 25, 10))
    assert a.state.panic_time == start
    a.ready = 25 + 15
    expect(a.scale(30, 41, start + STABLE_WINDOW / 2), 41, ebc(1, 98, 41, 40))
    assert a.state.panic_time == start  # not moved
    a.ready = 25 + 30
    expect(a.scale(50, 56, start + STABLE_WINDOW + 2), 50, ebc(1, 98, 56, 55))
    assert a.state.panic_time is None


def test_extend_panic_window() -> None:
    """autoscaler_test.go: TestAutoscalerExtendPanicWindow."""
    a = Autoscaler(1, 98)
    a.ready = 10
    start = 100.0
    expect(a.scale(11, 25, start), 25, ebc(1, 98, 25, 10))
    a.ready = 25 + 15
    later = start + STABLE_WINDOW / 2
    expect(a.scale(30, 80, later), 80, ebc(1, 98, 80, 40))
    assert a.state.panic_time == later


def test_stable_mode_decrease() -> None:
    """autoscaler_test.go: TestAutoscalerStableModeDecrease."""
    a = Autoscaler(10, 98)
    a.ready = 8
    expect(a.scale(100, 100, 0.0), 10, ebc(10, 98, 100, 8))
    expect(a.scale(50, 50, 0.0), 5, ebc(10, 98, 50, 8))


def test_stable_mode_no_traffic_scale_to_zero() -> None:
    """autoscaler_test.go: TestAutoscalerStableModeNoTrafficScaleToZero."""
    a = Autoscaler(10, 75)
    expect(a.scale(1, 0, 0.0), 1, ebc(10, 75, 0, 1))
    expect(a.scale(0, 0, 0.0), 0, ebc(10, 75, 0, 1))


def test_activation_scale() -> None:
    """autoscaler_test.go: TestAutoscalerActivationScale."""
    a = Autoscaler(10, 75, activation_scale=2)
    expect(a.scale(0, 0, 0.0), 0, ebc(10, 75, 0, 1))
    expect(a.scale(1, 0, 0.0), 2, ebc(10, 75, 0, 1))


def test_panic_mode_exponential_track_and_stabilize() -> None:
    """autoscaler_test.go: TestAutoscalerPanicModeExponentialTrackAndStabilize."""
    a = Autoscaler(1, 101)
    tm = 10.0
    expect(a.scale(6, 6, tm), 6, ebc(1, 101, 6, 1))
    a.ready = 6
    expect(a.scale(36, 36, tm), 36, ebc(1, 101, 36, 6))
    assert a.state.panic_time == tm
    a.ready = 36
    tm += 1
    expect(a.scale(216, 216, tm), 216, ebc(1, 101, 216, 36))
    assert a.state.panic_time == tm
    a.ready = 216
    expect(a.scale(1296, 1296, tm), 1296, ebc(1, 101, 1296, 216))
    a.ready = 1296
    expect(a.scale(1296, 1296, tm + 1), 1296, ebc(1, 101, 1296, 1296))


SCALE_CASES = [
    # label, target, tbc, (stable, panic), ready, prep, want scale, want ebc
    ("AutoscalerNoDataAtZeroNoAutoscale", 10, 100, (0, 0), 1, {}, 0, ebc(10, 100, 0, 1)),
    (
        "AutoscalerNoDataAtZeroNoAutoscaleWithExplicitEPs",
        10,
        100,
        (0, 0),
        1,
        {},
        0,
        ebc(10, 100, 0, 1),
    ),
    ("AutoscalerStableModeUnlimitedTBC", 181, -1, (21, 26), 1, {}, 1, -1),
    ("Autoscaler0TBC", 10, 0, (50, 49), 1, {}, 5, 0),
    ("AutoscalerStableModeNoChange", 10, 100, (50, 50), 1, {}, 5, ebc(10, 100, 50, 1)),
    (
        "AutoscalerPanicStableLargerThanPanic",
        1,
        100,
        (50, 30),
        5,
        {"panicking": True},
        50,
        ebc(1, 100, 30, 5),
    ),
    (
        "AutoscalerPanicStableLessThanPanic",
        1,
        100,
        (20, 30),
        5,
        {"panicking": True},
        30,
        ebc(1, 100, 30, 5),
    ),
    (
        "AutoscalerStableModeNoChangeAlreadyScaled",
        10,
        100,
        (50, 50),
        5,
        {},
        5,
        ebc(10, 100, 50, 5),
    ),
    (
        "AutoscalerStableModeIncreaseWithSmallScaleUpRate",
        1,
        1982,
        (3, 3.1),
        2,
        {"max_scale_up_rate": 1.1},
        3,
        ebc(1, 1982, 3.1, 2),
    ),
    (
        "AutoscalerStableModeDecreaseWithSmallScaleDownRate",
        10,
        1982,
        (1, 1),
        100,
        {"max_scale_down_rate": 1.1},
        90,
        ebc(10, 1982, 1, 100),
    ),
    (
        "AutoscalerStableModeDecreaseNonReachable",
        10,
        1982,
        (1, 1),
        100,
        {"max_scale_down_rate": 1.1, "reachable": False},
        1,
        ebc(10, 1982, 1, 100),
    ),
    (
        "AutoscalerPanicModeDoublePodCount",
        10,
        84,
        (50, 100),
        1,
        {},
        10,
        ebc(10, 84, 100, 1),
    ),
]


@pytest.mark.parametrize(
    ("target", "tbc", "load", "ready", "prep", "want", "want_ebc"),
    [case[1:] for case in SCALE_CASES],
    ids=[f"autoscaler_test.go: TestAutoscalerScale/{case[0]}" for case in SCALE_CASES],
)
def test_autoscaler_scale(
    target: float,
    tbc: float,
    load: tuple[float, float],
    ready: int,
    prep: dict[str, object],
    want: int,
    want_ebc: int,
) -> None:
    """autoscaler_test.go: TestAutoscalerScale (each row named by its label)."""
    now = 100.0
    a = Autoscaler(target, tbc)
    a.ready = ready
    prep = dict(prep)
    if prep.pop("panicking", False):
        a.state = replace(a.state, panic_time=now - 5, max_panic_pods=5)
    if prep:
        a.spec = replace(a.spec, **prep)  # type: ignore[arg-type]
    expect(a.scale(*load, now), want, want_ebc)


def test_panic_then_unpanic_scale_down() -> None:
    """autoscaler_test.go: TestAutoscalerPanicThenUnPanicScaleDown."""
    a = Autoscaler(10, 93)
    expect(a.scale(100, 100, 0.0), 10, ebc(10, 93, 100, 1))
    a.ready = 10
    panic_time = 0.5
    expect(a.scale(100, 1000, panic_time), 100, ebc(10, 93, 1000, 10))
    expect(a.scale(1, 1, panic_time + 30), 100, ebc(10, 93, 1, 10))  # still panicking
    expect(a.scale(1, 1, panic_time + 61), 1, ebc(10, 93, 1, 10))  # after the window


def test_rate_limit_scale_up() -> None:
    """autoscaler_test.go: TestAutoscalerRateLimitScaleUp."""
    a = Autoscaler(10, 61)
    expect(a.scale(1000, 1001, 0.0), 10, ebc(10, 61, 1001, 1))
    a.ready = 10
    expect(a.scale(1000, 1001, 0.0), 100, ebc(10, 61, 1001, 10))


def test_rate_limit_scale_down() -> None:
    """autoscaler_test.go: TestAutoscalerRateLimitScaleDown."""
    a = Autoscaler(10, 61)
    a.ready = 100
    expect(a.scale(1, 1, 0.0), 10, ebc(10, 61, 1, 100))
    a.ready = 10
    expect(a.scale(1, 1, 0.0), 1, ebc(10, 61, 1, 10))


def test_one_pod_as_minimum_without_endpoints() -> None:
    """autoscaler_test.go: TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound."""
    a = Autoscaler(10, 81)
    a.ready = 0
    expect(a.scale(1000, 888, 0.0), 10, ebc(10, 81, 888, 0))


def test_update_target() -> None:
    """autoscaler_test.go: TestAutoscalerUpdateTarget."""
    a = Autoscaler(10, 77)
    expect(a.scale(100, 101, 0.0), 10, ebc(10, 77, 101, 1))
    a.ready = 10
    a.spec = replace(a.spec, target_value=1, total_value=1 / TARGET_UTILIZATION)
    a.spec = replace(a.spec, target_burst_capacity=71)
    expect(a.scale(100, 101, 0.0), 100, ebc(1, 71, 101, 10))


def test_start_in_panic_mode() -> None:
    """autoscaler_test.go: TestStartInPanicMode."""
    spec = Autoscaler(100, 11).spec
    for ready in range(2):
        state = RecommenderState.start(spec, 0.0, ready)
        assert state.panic_time is None
        assert state.max_panic_pods == ready
    state = RecommenderState.start(spec, 0.0, 2)
    assert state.panic_time == 0.0
    assert state.max_panic_pods == 2


# --- scaler_test.go --------------------------------------------------------------------

GRACE = 60.0
PA_WINDOW = 45.0
PROGRESS_DEADLINE = 121.0
KPA_WINDOW = 300.0
ACTIVATION_TIMEOUT = PROGRESS_DEADLINE + 30.0
NOW = 10_000.0

KPA = RevisionScaling(
    stable_window_s=KPA_WINDOW,
    scale_to_zero_grace_period_s=GRACE,
    activation_timeout_s=ACTIVATION_TIMEOUT,
    target_burst_capacity=200.0,
)
"""kpa_test.go defaultConfig: stable window 5 min, grace 60 s, progress deadline 121 s."""


def active(ago: float, initialized: bool = False) -> ScalerState:
    return ScalerState(Activity.ACTIVE, NOW - ago, initialized)


def inactive(ago: float) -> ScalerState:
    return ScalerState(Activity.INACTIVE, NOW - ago, False)


def activating(ago: float = 0.0) -> ScalerState:
    return ScalerState(Activity.ACTIVATING, NOW - ago, False)


SCALER_CASES: list[tuple[str, dict[str, object]]] = [
    ("waits to scale to zero (just before idle period)",
     {"start": 1, "to": 0, "status": active(KPA_WINDOW - 1), "want": 1, "scales": False}),
    ("waits to scale to zero (just before idle period), custom PA window",
     {"start": 1, "to": 0, "window": PA_WINDOW, "status": active(PA_WINDOW - 1),
      "want": 1, "scales": False}),
    ("custom PA window, check for standard window, no probe",
     {"start": 1, "to": 0, "window": PA_WINDOW, "status": active(KPA_WINDOW),
      "want": 0, "scales": False}),
    ("scale to 1 waiting for idle expires",
     {"start": 10, "to": 0, "status": active(KPA_WINDOW - 1), "want": 1, "scales": True}),
    ("waits to scale to zero after idle period",
     {"start": 1, "to": 0, "status": active(KPA_WINDOW), "want": 0, "scales": False}),
    ("waits to scale to zero after idle period; sks in proxy mode",
     {"start": 1, "to": 0, "status": active(KPA_WINDOW), "want": 0, "scales": False}),
    ("waits to scale to zero after idle period (custom PA window)",
     {"start": 1, "to": 0, "window": PA_WINDOW, "status": active(PA_WINDOW),
      "want": 0, "scales": False}),
    ("can scale to zero after grace period, but 0 PA retention",
     {"start": 1, "to": 0, "status": inactive(GRACE), "retention": 0.0,
      "want": 0, "scales": True}),
    ("can't scale to zero after grace period, but before last pod retention",
     {"start": 1, "to": 0, "status": inactive(GRACE), "retention": 2 * GRACE,
      "want": 0, "scales": False}),
    ("can't scale to zero after grace period, but before last pod retention, pa defined",
     {"start": 1, "to": 0, "status": inactive(GRACE), "retention": 2 * GRACE,
      "want": 0, "scales": False}),
    ("scale to zero after grace period, and after last pod retention",
     {"start": 1, "to": 0, "status": inactive(GRACE), "retention": GRACE,
      "want": 0, "scales": True}),
    ("scale to zero after grace period",
     {"start": 1, "to": 0, "status": inactive(GRACE), "want": 0, "scales": True}),
    ("waits to scale to zero (just before grace period)",
     {"start": 1, "to": 0, "status": inactive(GRACE - 1), "want": 0, "scales": False}),
    ("waits to scale to zero (just before grace period, sks short)",
     {"start": 1, "to": 0, "status": inactive(GRACE - 1), "want": 0, "scales": False}),
    # Knative scales to zero in the next two: the activator has been in the path for
    # the grace period already. wakegate deliberately lets the grace period run in full
    # after the revision turned inactive (the seed's ~90 s to zero), so it waits.
    ("waits to scale to zero (just before grace period, sks in proxy long) and last pod "
     "timeout positive",
     {"start": 1, "to": 0, "status": inactive(GRACE - 1), "retention": 42.0,
      "want": 0, "scales": False, "knative_scales": True}),
    ("waits to scale to zero (just before grace period, sks in proxy long)",
     {"start": 1, "to": 0, "status": inactive(GRACE - 1), "want": 0, "scales": False,
      "knative_scales": True}),
    ("scale to zero with TBC=-1",
     {"start": 1, "to": 0, "status": inactive(GRACE), "tbc": -1.0, "probe": False,
      "want": 0, "scales": True}),
    ("scale to zero after grace period, but fail prober",
     {"start": 1, "to": 0, "status": inactive(GRACE), "probe": False,
      "want": 0, "scales": False}),
    ("scale to zero after grace period, but wrong prober response",
     {"start": 1, "to": 0, "status": inactive(GRACE), "probe": False,
      "want": 0, "scales": False}),
    ("waits to scale to zero while activating until after deadline exceeded",
     {"start": 1, "to": 0, "status": activating(ACTIVATION_TIMEOUT / 2),
      "want": -1, "scales": False}),
    ("scale to zero while activating after deadline exceeded",
     {"start": 1, "to": 0, "status": activating(ACTIVATION_TIMEOUT + 1),
      "want": 0, "scales": True}),
    ("scale to zero while activating after revision deadline exceeded",
     {"start": 1, "to": 0, "status": activating(5 + 30 + 1), "timeout": 5 + 30.0,
      "want": 0, "scales": True}),
    ("scale down to minScale before grace period",
     {"start": 10, "to": 0, "min": 2, "status": inactive(GRACE - 1), "want": 2,
      "scales": True}),
    ("scale down to minScale after grace period",
     {"start": 10, "to": 0, "min": 2, "status": inactive(GRACE), "want": 2, "scales": True}),
    ("scale to zero ignore last pod retention if  revision is unreachable",
     {"start": 1, "to": 0, "status": inactive(GRACE), "retention": 10 * GRACE,
      "reachable": False, "want": 0, "scales": True}),
    ("can't scale to zero if revision is unreachable, but before deadline",
     {"start": 1, "to": 0, "status": inactive(GRACE - 1), "retention": 10 * GRACE,
      "reachable": False, "want": 0, "scales": False}),
    ("ignore minScale if unreachable",
     {"start": 10, "to": 0, "min": 2, "status": inactive(GRACE), "reachable": False,
      "want": 0, "scales": True}),
    ("observe minScale if reachability unknown",
     {"start": 10, "to": 0, "min": 2, "status": inactive(GRACE), "want": 2, "scales": True}),
    ("scales up", {"start": 1, "to": 10, "status": activating(), "want": 10, "scales": True}),
    ("scales up to maxScale",
     {"start": 1, "to": 10, "max": 8, "status": activating(), "want": 8, "scales": True}),
    ("scale up inactive revision",
     {"start": 1, "to": 10, "status": inactive(GRACE / 2), "want": 10, "scales": True}),
    ("does not scale up from zero with no metrics",
     {"start": 0, "to": -1, "status": inactive(0), "want": -1, "scales": False}),
    ("scales up from zero to desired one",
     {"start": 0, "to": 1, "status": activating(), "want": 1, "scales": True}),
    ("scales up from zero to desired high scale",
     {"start": 0, "to": 10, "status": activating(), "want": 10, "scales": True}),
    ("negative scale does not scale",
     {"start": 12, "to": -1, "status": active(0), "want": -1, "scales": False}),
    ("initial scale attained, but now time to scale down",
     {"start": 2, "to": 0, "status": active(120, initialized=True), "initial": 2,
      "want": 1, "scales": True}),
    ("haven't scaled to initial scale, override desired scale with initial scale",
     {"start": 0, "to": 1, "status": activating(), "initial": 2, "want": 2, "scales": True}),
    ("initial scale reached for the first time",
     {"start": 5, "to": 1, "status": activating(), "initial": 5, "want": 5, "scales": False}),
    ("reaching initial scale zero",
     {"start": 0, "to": 0, "status": inactive(0), "initial": 0, "want": 0, "scales": False}),
    ("unreachable revision with initialScale > 1 can scale to 0",
     {"start": 2, "to": 0, "status": active(120), "initial": 2, "reachable": False,
      "want": 1, "scales": True}),
]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [case for _, case in SCALER_CASES],
    ids=[f"scaler_test.go: TestScaler/{label}" for label, _ in SCALER_CASES],
)
def test_scaler(case: dict[str, object]) -> None:
    """scaler_test.go: TestScaler (each row named by its label)."""
    scaling = replace(
        KPA,
        stable_window_s=float(case.get("window", KPA_WINDOW)),  # type: ignore[arg-type]
        min_scale=int(case.get("min", 0)),  # type: ignore[call-overload]
        max_scale=int(case.get("max", 0)),  # type: ignore[call-overload]
        initial_scale=int(case.get("initial", 1)),  # type: ignore[call-overload]
        scale_to_zero_pod_retention_s=float(case.get("retention", 0.0)),  # type: ignore[arg-type]
        target_burst_capacity=float(case.get("tbc", 200.0)),  # type: ignore[arg-type]
        activation_timeout_s=float(case.get("timeout", ACTIVATION_TIMEOUT)),  # type: ignore[arg-type]
    )
    status = case["status"]
    assert isinstance(status, ScalerState)
    want, apply = kpa_scale(
        int(case["to"]),  # type: ignore[call-overload]
        scaling,
        status,
        NOW,
        reachable=bool(case.get("reachable", True)),
        activator_in_path=bool(case.get("probe", True)),
    )
    assert want == case["want"]
    assert (apply and want != case["start"]) is case["scales"]


DISABLE_CASES = [
    ("EnableScaleToZero == false and minScale == 0", 10, 0, 0, 1, True),
    ("EnableScaleToZero == false and minScale == 2", 10, 0, 2, 2, True),
    ("EnableScaleToZero == false and desire pod is -1(initial value)", 10, -1, 0, -1, False),
]


@pytest.mark.parametrize(
    ("start", "to", "min_scale", "want", "scales"),
    [case[1:] for case in DISABLE_CASES],
    ids=[f"scaler_test.go: TestDisableScaleToZero/{case[0]}" for case in DISABLE_CASES],
)
def test_disable_scale_to_zero(
    start: int, to: int, min_scale: int, want: int, scales: bool
) -> None:
    """scaler_test.go: TestDisableScaleToZero."""
    scaling = replace(KPA, enable_scale_to_zero=False, min_scale=min_scale)
    got, apply = kpa_scale(to, scaling, active(0), NOW)
    assert got == want
    assert (apply and got != start) is scales


# --- kpa_test.go -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pods", "tbc", "want"),
    [(0, 200, 2), (1, 200, 3), (100, 0, 2), (5, -1, 5), (15, 200, 17)],
    ids=[
        "kpa_test.go: TestComputeActivatorNum/default",
        "kpa_test.go: TestComputeActivatorNum/1 pod",
        "kpa_test.go: TestComputeActivatorNum/tbc = 0",
        "kpa_test.go: TestComputeActivatorNum/tbc = -1",
        "kpa_test.go: TestComputeActivatorNum/many pods",
    ],
)
def test_compute_activator_num(pods: int, tbc: float, want: int) -> None:
    """kpa_test.go: TestComputeActivatorNum."""
    scaling = RevisionScaling(target=100, target_burst_capacity=tbc, activator_capacity=100)
    assert activators(pods, scaling) == want


# --- target_test.go ----------------------------------------------------------------------


def revision(annotations: dict[str, str] | None = None, cc: int = 0) -> RevisionScaling:
    doc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "t"},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"containers": [{"command": ["true"]}], "containerConcurrency": cc},
            }
        },
    }
    return RevisionScaling.for_template(parse_service(doc).template, AUTOSCALER)


AUTOSCALER = AutoscalerConfig(container_concurrency_target_percentage=70)
"""Knative's shipped utilisation, which `TestResolveMetricTarget`'s RPS rows assume."""

TARGET_CASES = [
    ("with container concurrency 1", {}, 1, None, 1.0),
    ("with container concurrency 10", {}, 10, None, 10.0),
    ("with target annotation 1", {"target": "1"}, 0, None, 1.0),
    ("with container concurrency greater than target annotation (ok)",
     {"target": "1"}, 10, None, 1.0),
    ("with target annotation greater than default (ok)", {"target": "500"}, 0, None, 500.0),
    ("with target annotation greater than container concurrency (ignore annotation for "
     "safety)", {"target": "10"}, 1, None, 1.0),
    ("with container concurrency 12 and TU=80%, but TU annotation 75%",
     {"target-utilization-percentage": "75"}, 12, 9.0, 12.0),
    ("RPS: defaults", {"metric": "rps"}, 1, 140.0, 200.0),
    ("RPS: with target annotation 1", {"metric": "rps", "target": "1"}, 0, 0.7, 1.0),
    ("RPS: with TU annotation 75%",
     {"metric": "rps", "target-utilization-percentage": "75"}, 0, 150.0, 200.0),
    ("RPS: with target annotation greater than default",
     {"metric": "rps", "target": "300"}, 0, 210.0, 300.0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "cc", "want_target", "want_total"),
    [case[1:] for case in TARGET_CASES],
    ids=[f"target_test.go: TestResolveMetricTarget/{case[0]}" for case in TARGET_CASES],
)
def test_resolve_metric_target(
    annotations: dict[str, str], cc: int, want_target: float | None, want_total: float
) -> None:
    """target_test.go: TestResolveMetricTarget (rows whose inputs wakegate has). Concurrency
    rows without a utilisation of their own are checked at 100 % (Knative's test config)."""
    scaling = revision({f"autoscaling.knative.dev/{k}": v for k, v in annotations.items()}, cc)
    assert scaling.target == pytest.approx(want_total)
    if want_target is None:
        scaling = replace(scaling, target_utilization=1.0)
        want_target = want_total
    assert scaling.per_pod_target == pytest.approx(want_target)


# --- bucketing_test.go -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "want"),
    [(100, 0.2), (60, 0.2), (40, 0.20567), (6, 0.78456)],
    ids=[f"bucketing_test.go: TestComputeDecayMultiplier/nb={n}" for n in (100, 60, 40, 6)],
)
def test_compute_decay_multiplier(buckets: int, want: float) -> None:
    """bucketing_test.go: TestComputeDecayMultiplier."""
    assert smoothing_coefficient(buckets) == pytest.approx(want, abs=1e-5)


START = 1000.3
"""Knative's tests start at time.Now(), off the bucket grid."""


def test_window_average() -> None:
    """bucketing_test.go: TestTimedFloat64BucketsWindowAverage."""
    b = ConcurrencyWindow()
    now = START

    def avg(t: float) -> float:
        return b.average(t, 5.0)

    b.record(now, 1)
    assert avg(now) == 1  # firstWrite is honoured: not 0.2
    for i in range(1, 5):
        b.record(now + i, i + 1)
    assert avg(now + 4) == 15 / 5
    assert avg(now + 3.6) == 15 / 5  # `now` lags behind the last write
    assert avg(now + 6) == (15 - 1 - 2) / (5 - 2)  # short hole
    assert avg(now + 10) == 0  # long hole
    b.record(now + 6, 91)  # write after a hole
    assert avg(now + 6) == (15 - 1 - 2 + 91) / 5
    now += 60  # much farther
    b.record(now, 1984)
    assert avg(now) == 1984
    b.record(now - 3, 4)  # an earlier time
    assert avg(now) == (4 + 1984) / 4
    now += 1
    b.record(now, 5)
    assert avg(now) == (4 + 1984 + 5) / 5
    b.record(now - 3, 10)  # an earlier time again
    assert avg(now) == (4 + 10 + 1984 + 5) / 5
    b.record(now - 6, 10)  # too early for the window
    b.record(now - 5, 10)  # at its bound
    assert avg(now) == (4 + 10 + 1984 + 5) / 5
    b.record(now + 5, 10)  # exactly a window without data: a new series
    assert avg(now + 5) == 10


def test_weighted_average() -> None:
    """bucketing_test.go: TestTimedFloat64BucketsWeightedAverage."""
    b = ConcurrencyWindow()
    now = START
    m = smoothing_coefficient(5)

    def avg(t: float) -> float:
        return b.weighted(t, 5.0).average

    b.record(now, 2)
    want = 2 * m
    assert avg(now) == pytest.approx(want)
    want *= 1 - m  # a second later, no writes
    assert avg(now + 1) == pytest.approx(want)
    b.record(now + 1, 2)
    want += 2 * m
    assert avg(now + 1) == pytest.approx(want)
    for i in range(5):
        b.record(now + 2 + i, i + 2)
    want = sum(v * m * (1 - m) ** k for k, v in enumerate([6, 5, 4, 3, 2]))
    assert avg(now + 6) == pytest.approx(want)
    assert avg(now + 16) == 0  # an empty window


def test_descending_record() -> None:
    """bucketing_test.go: TestDescendingRecord."""
    b = ConcurrencyWindow()
    for i in range(8, -1, -1):
        b.record(START + i, 5)
    assert b.average(START + 5, 5.0) == 5


def test_holes() -> None:
    """bucketing_test.go: TestTimedFloat64BucketsHoles (the window sums, as averages)."""
    b = ConcurrencyWindow()
    for i in range(5):
        b.record(START + i, i + 1)
    assert b.average(START + 4, 5.0) == 15 / 5
    b.record(START + 8, 2)  # seconds 5, 6 and 7 become 0
    assert b.average(START + 8, 5.0) * 5 == pytest.approx(7)


def test_many_reps() -> None:
    """bucketing_test.go: TestTimedFloat64BucketsManyReps. Knative adds every record of a
    bucket (each is another pod's); in wakegate those are reports of different sources."""
    b = ConcurrencyWindow()
    t = START
    for p in range(5):
        t += 1
        for r in range(5):
            b.record(t, p + r, source=f"pod-{r}")
    assert b.average(t, 60.0) * 5 == pytest.approx(100)
