"""The KPA decision for one revision: pods to run, and whether the activator is in path.

Everything here is pure: the caller owns the state and the clock. `decide` is one tick
(every `tick_interval_s`, and at once when the activator pokes a revision at zero); it
takes the observed load, the revision's settings, the previous `DeciderState`, the time
and the ready pod count, and returns a `Decision` that carries the next state. It is two
stages, as in Knative, each usable (and tested) on its own:

1. `recommend` is Knative's autoscaler (`pkg/autoscaler/scaling/autoscaler.go` Scale).
   Stable and panic pod counts are `ceil(load / per-pod target)` over the stable and
   panic windows, each held within `[floor(ready / max-scale-down-rate),
   ceil(ready * max-scale-up-rate)]` (ready counts as at least 1; an unreachable
   revision may drop to 0 at once), and raised to `activation-scale` when there is
   load. Panic starts when the panic count divided by the ready pods reaches the panic
   threshold and ends once a full stable window has passed since the load was last
   over it; while panicking the larger count is used and the recommendation never goes
   down. A reachable revision with a `scale-down-delay` takes the highest
   recommendation of that last delay. The excess burst capacity is `ready * target -
   target burst capacity - panic load` (0 when the burst capacity is 0, -1 when it is
   -1). Without data in the stable window the result is not valid and the previous
   recommendation stands (Knative's ErrNoData): no data is not zero load.

2. `kpa_scale` is Knative's KPA scaler (`pkg/reconciler/autoscaling/kpa/scaler.go`):
   an unknown recommendation (-1, no valid one yet) changes nothing unless the revision
   is activating; min-scale (only while reachable) and max-scale bound it, and until the
   revision first reached its initial scale that is a lower bound too (only while
   reachable: a superseded revision does not grow to it). A recommendation of 0 is then
   held at one pod until the revision has been active for a stable window; it then turns
   inactive, and the last pod goes once the activator is in the path and
   `max(grace period, pod retention)` has passed (the retention only while reachable).
   An activating revision that gets no ready pod within the activation timeout
   (progress deadline + 30 s) goes to 0.

   One deliberate difference: Knative lets the last pod go before the grace period is
   over when the activator has already been in the path that long; here the grace
   period always runs in full after the revision turned inactive, so an idle revision
   reaches zero about stable window + grace period after its last request, as the seed
   walkthrough observes (60 s + 30 s).

The mode (Knative's SKS mode, `kpa.go`): `serve` when the KPA wants pods (> 0), the
excess burst capacity is not negative and a pod is ready; `proxy` otherwise, which
includes every moment before the first valid recommendation (scale unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum

from wakegate.autoscaler.config import RevisionScaling
from wakegate.autoscaler.metrics import Observation

MIN_ACTIVATORS = 2
"""Knative's minimum number of activators backing a revision."""

UNKNOWN = -1
"""A scale nobody has decided yet (Knative's `scaleUnknown`)."""


class Mode(StrEnum):
    """The ServerlessService mode: where the gateway sends the revision's traffic."""

    SERVE = "serve"
    """Straight to the revision's ready pods."""
    PROXY = "proxy"
    """Through the activator."""


class Activity(StrEnum):
    """The PodAutoscaler's Active condition."""

    ACTIVATING = "activating"
    ACTIVE = "active"
    INACTIVE = "inactive"


# --- Stage 1: Knative's autoscaler ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeciderSpec:
    """Knative's `scaling.DeciderSpec`: what `recommend` works with."""

    target_value: float
    """Load one pod should carry (after utilisation)."""
    total_value: float
    """Load one pod can carry (before utilisation); excess burst capacity counts it."""
    target_burst_capacity: float
    panic_threshold: float
    """A ratio: 2.0 panics when the panic window needs twice the ready pods."""
    max_scale_up_rate: float
    max_scale_down_rate: float
    stable_window_s: float
    scale_down_delay_s: float = 0.0
    activation_scale: int = 1
    reachable: bool = True

    @classmethod
    def of(cls, scaling: RevisionScaling, *, reachable: bool = True) -> DeciderSpec:
        return cls(
            target_value=scaling.per_pod_target,
            total_value=scaling.target,
            target_burst_capacity=scaling.target_burst_capacity,
            panic_threshold=scaling.panic_threshold,
            max_scale_up_rate=scaling.max_scale_up_rate,
            max_scale_down_rate=scaling.max_scale_down_rate,
            stable_window_s=scaling.stable_window_s,
            scale_down_delay_s=scaling.scale_down_delay_s,
            activation_scale=scaling.activation_scale,
            reachable=reachable,
        )


@dataclass(frozen=True, slots=True)
class ScaleResult:
    """Knative's `ScaleResult`."""

    desired: int
    excess_burst_capacity: int
    valid: bool


@dataclass(frozen=True, slots=True)
class RecommenderState:
    """What Knative's autoscaler keeps between ticks, and its last valid result."""

    panic_time: float | None = None
    """Last time the panic-window load was over the threshold; None when not panicking."""
    max_panic_pods: int = 0
    delayed: tuple[tuple[int, int], ...] = ()
    """The scale-down delay window: (tick index, recommendation), descending maxima."""
    desired: int = UNKNOWN
    """The last valid recommendation; UNKNOWN before the first."""
    excess_burst_capacity: int = -1

    @classmethod
    def start(
        cls, spec: DeciderSpec, now: float, ready_pods: int, initial_scale: int = 1
    ) -> RecommenderState:
        """A new autoscaler. Found with more than one pod ready it starts panicking, so
        that its empty history cannot scale the revision down before a stable window of
        data is in (Knative does the same after an autoscaler restart)."""
        tbc = spec.target_burst_capacity
        if tbc in (-1, 0):
            ebc = int(tbc)
        else:
            # Knative's MultiScaler: the initial scale's capacity minus the burst capacity.
            ebc = int(initial_scale * spec.total_value - tbc)
        panicking = ready_pods > 1
        return cls(
            panic_time=now if panicking else None,
            max_panic_pods=max(0, ready_pods),
            excess_burst_capacity=ebc,
        )


@dataclass(frozen=True, slots=True)
class Recommendation:
    result: ScaleResult
    state: RecommenderState
    stable_pods: int
    """ceil(stable load / target), before rates and panic."""
    panic_pods: int
    notes: tuple[str, ...]


def recommend(
    observed: Observation,
    spec: DeciderSpec,
    state: RecommenderState,
    now: float,
    ready_pods: int,
    *,
    tick_s: float = 2.0,
) -> Recommendation:
    """Knative's autoscaler Scale; see the module docstring. `tick_s` is the width of a
    scale-down-delay bucket (Knative's tick interval)."""
    if not observed.has_data:
        invalid = ScaleResult(state.desired, state.excess_burst_capacity, valid=False)
        return Recommendation(invalid, state, 0, 0, ("no data, no decision",))
    notes: list[str] = []
    ready = max(0, ready_pods)
    basis = max(1, ready)
    stable, panic = max(0.0, observed.stable), max(0.0, observed.panic)

    max_up = math.ceil(spec.max_scale_up_rate * basis)
    max_down = math.floor(basis / spec.max_scale_down_rate) if spec.reachable else 0
    stable_pods = math.ceil(stable / spec.target_value)
    panic_pods = math.ceil(panic / spec.target_value)
    desired_stable = min(max(stable_pods, max_down), max_up)
    desired_panic = min(max(panic_pods, max_down), max_up)
    if stable_pods > max_up:
        notes.append(f"scale-up rate caps at {max_up}")
    elif stable_pods < max_down:
        notes.append(f"scale-down rate holds {max_down}")

    activation = spec.activation_scale
    if activation > 1:
        if stable_pods > 0 and activation > desired_stable:
            desired_stable = activation
            notes.append(f"activation-scale {activation}")
        if panic_pods > 0 and activation > desired_panic:
            desired_panic = activation

    over_threshold = panic_pods / basis >= spec.panic_threshold
    panic_time, max_panic = state.panic_time, state.max_panic_pods
    if over_threshold:
        panic_time = now
    elif panic_time is not None and panic_time + spec.stable_window_s < now:
        panic_time, max_panic = None, 0

    desired = desired_stable
    if panic_time is not None:
        desired = max(desired, desired_panic)
        max_panic = max(max_panic, desired)
        notes.append(f"panicking: panic load → {panic_pods}, holding {max_panic}")
        desired = max_panic

    delayed = state.delayed
    if spec.reachable and spec.scale_down_delay_s > 0:
        delayed = _record_max(delayed, now, desired, spec.scale_down_delay_s, tick_s)
        held = delayed[0][1]
        if held != desired:
            notes.append(f"scale-down delay {spec.scale_down_delay_s:g}s holds {held}")
            desired = held

    tbc = spec.target_burst_capacity
    if tbc == 0:
        ebc = 0
    elif tbc > 0:
        ebc = math.floor(ready * spec.total_value - tbc - panic)
    else:
        ebc = -1

    new_state = replace(
        state,
        panic_time=panic_time,
        max_panic_pods=max_panic,
        delayed=delayed,
        desired=desired,
        excess_burst_capacity=ebc,
    )
    result = ScaleResult(desired, ebc, valid=True)
    return Recommendation(result, new_state, stable_pods, panic_pods, tuple(notes))


def _record_max(
    entries: tuple[tuple[int, int], ...], now: float, value: int, delay_s: float, tick_s: float
) -> tuple[tuple[int, int], ...]:
    """Knative's `max.TimeWindow.Record`: keep the maxima of the last `delay_s`, in
    buckets of `tick_s`; the first entry is the current maximum."""
    size = math.ceil(delay_s / tick_s)
    index = math.floor(math.floor(now) / tick_s)
    kept = [e for e in entries if e[1] > value]  # a larger, older value may still matter
    kept = [e for e in kept if index - e[0] < size]
    if kept and kept[-1][0] == index:
        value = max(value, kept.pop()[1])
    kept.append((index, value))
    return tuple(kept)


# --- Stage 2: Knative's KPA scaler ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScalerState:
    """The PodAutoscaler's status as the KPA scaler reads it."""

    activity: Activity
    activity_since: float
    """When `activity` last changed (the Active condition's transition time)."""
    initialized: bool
    """The revision has reached its initial scale once; the initial scale no longer applies."""


def kpa_scale(
    desired: int,
    scaling: RevisionScaling,
    status: ScalerState,
    now: float,
    *,
    reachable: bool = True,
    activator_in_path: bool = True,
    notes: list[str] | None = None,
) -> tuple[int, bool]:
    """Knative's KPA scaler `scale`: (the scale the KPA wants, whether to apply it).

    Not applying keeps the current scale; the wanted scale (0 while the last pod waits,
    UNKNOWN while activating) still sets the Active condition and the mode.
    """
    notes = notes if notes is not None else []
    if desired < 0 and status.activity is not Activity.ACTIVATING:
        notes.append("scale unknown")
        return desired, False
    bounded = scale_bounds(desired, scaling, status, reachable, notes)
    return _scale_to_zero(bounded, scaling, status, now, reachable, activator_in_path, notes)


def scale_bounds(
    desired: int,
    scaling: RevisionScaling,
    status: ScalerState,
    reachable: bool,
    notes: list[str] | None = None,
) -> int:
    """`desired` within min-scale (only while reachable), max-scale (0 is unlimited) and,
    until it was first reached, the initial scale (only while reachable)."""
    low = scaling.min_scale if reachable else 0
    low_note = f"min-scale {low}"
    if scaling.initial_scale > 1 and not status.initialized and reachable:
        if scaling.initial_scale > low:
            low, low_note = scaling.initial_scale, f"initial scale {scaling.initial_scale}"
    if desired < low:
        if desired >= 0 and notes is not None:
            notes.append(low_note)
        return low
    if scaling.max_scale and desired > scaling.max_scale:
        if notes is not None:
            notes.append(f"max-scale {scaling.max_scale}")
        return scaling.max_scale
    return desired


def last_pod_retention(scaling: RevisionScaling, reachable: bool) -> float:
    """Knative's lastPodRetention: none for a revision no route sends traffic to."""
    return scaling.scale_to_zero_pod_retention_s if reachable else 0.0


def _scale_to_zero(
    desired: int,
    scaling: RevisionScaling,
    status: ScalerState,
    now: float,
    reachable: bool,
    activator_in_path: bool,
    notes: list[str],
) -> tuple[int, bool]:
    """Knative's handleScaleToZero, without its fast path (see the module docstring)."""
    if desired != 0:
        return desired, True
    if not scaling.enable_scale_to_zero:
        notes.append("scale to zero disabled")
        return 1, True
    elapsed = now - status.activity_since
    if status.activity is Activity.ACTIVATING:
        if elapsed >= scaling.activation_timeout_s:
            notes.append(f"no ready pod after {scaling.activation_timeout_s:g}s")
            return 0, True
        notes.append("activating")
        return UNKNOWN, False
    if status.activity is Activity.ACTIVE:
        if elapsed >= scaling.stable_window_s:
            notes.append("idle: activator back in path")
            return 0, False
        notes.append(f"idle: keeping a pod until active for {scaling.stable_window_s:g}s")
        return 1, True
    if scaling.target_burst_capacity != -1 and not activator_in_path:
        notes.append("idle: waiting for the activator to be in path")
        return 0, False
    retention = last_pod_retention(scaling, reachable)
    wait = max(scaling.scale_to_zero_grace_period_s, retention)
    if elapsed >= wait:
        return 0, True
    notes.append(f"idle: last pod goes in {wait - elapsed:.0f}s")
    return 0, False


def active_condition(
    want: int,
    ready: int,
    scaling: RevisionScaling,
    status: ScalerState,
    now: float,
    reachable: bool,
) -> ScalerState:
    """Knative's computeActiveCondition: the PodAutoscaler's next Active condition."""
    floor = scaling.min_scale if reachable else 0
    if status.initialized:
        min_ready = max(floor, 1)
    else:
        min_ready = max(floor, scaling.initial_scale)
    initialized = status.initialized or ready >= min_ready
    current = status.activity
    if want == 0 or min_ready == 0:
        new = Activity.INACTIVE
    elif ready < min_ready:
        new = Activity.ACTIVATING if want > 0 or current is not Activity.INACTIVE else current
    else:
        new = Activity.ACTIVE if want > 0 or current is not Activity.INACTIVE else current
    since = status.activity_since if new is current else now
    return ScalerState(new, since, initialized)


def sks_mode(want: int, excess_burst_capacity: int, ready: int) -> Mode:
    """Knative's SKS mode: serve when pods are wanted and spare capacity covers the
    burst capacity; the activator also stays in while no pod is ready."""
    if want > 0 and excess_burst_capacity >= 0 and ready > 0:
        return Mode.SERVE
    return Mode.PROXY


def activators(ready: int, scaling: RevisionScaling) -> int:
    """Knative's computeNumActivators: activators to back the revision, at least 2."""
    tbc = scaling.target_burst_capacity
    if tbc == 0:
        return MIN_ACTIVATORS
    capacity = ready * scaling.target + (tbc if tbc > 0 else 0)
    return max(MIN_ACTIVATORS, math.ceil(capacity / scaling.activator_capacity))


# --- One tick --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeciderState:
    """Both stages' state, and the pods last asked for."""

    status: ScalerState
    scale: int
    """Pods the decider last asked for."""
    recommender: RecommenderState = field(default_factory=RecommenderState)

    @property
    def activity(self) -> Activity:
        return self.status.activity

    @property
    def initialized(self) -> bool:
        return self.status.initialized

    @property
    def panic_time(self) -> float | None:
        return self.recommender.panic_time

    @classmethod
    def start(cls, scaling: RevisionScaling, now: float, ready_pods: int = 0) -> DeciderState:
        """State for a new revision, or for one found running (`ready_pods` > 0)."""
        recommender = RecommenderState.start(
            DeciderSpec.of(scaling), now, ready_pods, scaling.initial_pods
        )
        if ready_pods > 0:
            return cls(ScalerState(Activity.ACTIVE, now, True), ready_pods, recommender)
        if scaling.initial_pods == 0:
            return cls(ScalerState(Activity.INACTIVE, now, True), 0, recommender)
        status = ScalerState(Activity.ACTIVATING, now, False)
        return cls(status, scaling.initial_pods, recommender)


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    """Pods to run now."""
    recommended: int
    """What the load asks for after rates, panic and bounds (UNKNOWN before the first
    valid recommendation); 0 while `desired` may still hold the last pod."""
    mode: Mode
    excess_burst_capacity: int
    panicking: bool
    stable_load: float
    panic_load: float
    has_data: bool
    activators: int
    """Activators to back the revision (Knative's subsetting figure, at least 2)."""
    scale_to_zero_at: float | None
    """While inactive: when the last pod may go (put the activator in path first)."""
    reason: str
    """One line for humans, e.g. "stable concurrency 49.8 over 60s / target 10 → 5"."""
    state: DeciderState


def decide(
    observed: Observation,
    scaling: RevisionScaling,
    state: DeciderState,
    now: float,
    ready_pods: int,
    *,
    reachable: bool = True,
    activator_in_path: bool = True,
    tick_s: float = 2.0,
) -> Decision:
    """One KPA tick; see the module docstring.

    `reachable` is False for a revision no route sends traffic to. `activator_in_path`
    is the caller's confirmation that the gateways route the revision through the
    activator (Knative probes for it); the last pod is kept until it is True.
    """
    ready = max(0, ready_pods)
    spec = DeciderSpec.of(scaling, reachable=reachable)
    rec = recommend(observed, spec, state.recommender, now, ready, tick_s=tick_s)
    notes = list(rec.notes)
    unit = "rps" if scaling.metric == "rps" else "concurrency"
    if observed.has_data:
        head = (
            f"stable {unit} {observed.stable:.1f} over {scaling.stable_window_s:g}s "
            f"/ target {scaling.per_pod_target:g} → {rec.stable_pods}"
        )
    else:
        last = rec.result.desired
        kept = "scale unknown" if last < 0 else f"{last}"
        head = f"no {unit} data in {scaling.stable_window_s:g}s, no decision: keeping {kept}"
        notes.clear()

    want, apply = kpa_scale(
        rec.result.desired,
        scaling,
        state.status,
        now,
        reachable=reachable,
        activator_in_path=activator_in_path,
        notes=notes,
    )
    scale = want if apply else state.scale
    status = active_condition(want, ready, scaling, state.status, now, reachable)
    ebc = rec.result.excess_burst_capacity
    mode = sks_mode(want, ebc, ready)
    zero_at = None
    if status.activity is Activity.INACTIVE:
        retention = last_pod_retention(scaling, reachable)
        zero_at = status.activity_since + max(scaling.scale_to_zero_grace_period_s, retention)
    new_state = DeciderState(status, scale, rec.state)
    reason = "; ".join([head, *notes, f"run {scale}, {mode.value}"])
    desired = rec.result.desired
    bounded = desired if desired < 0 else scale_bounds(desired, scaling, state.status, reachable)
    return Decision(
        desired=scale,
        recommended=bounded,
        mode=mode,
        excess_burst_capacity=ebc,
        panicking=rec.state.panic_time is not None,
        stable_load=max(0.0, observed.stable),
        panic_load=max(0.0, observed.panic),
        has_data=observed.has_data,
        activators=activators(ready, scaling),
        scale_to_zero_at=zero_at,
        reason=reason,
        state=new_state,
    )
