"""The KPA decision for one revision: pods to run, and whether the activator is in path.

`decide` is pure: it takes the observed concurrency, the revision's settings, the
previous `DeciderState`, the time and the ready pod count, and returns a `Decision`
that carries the next state. The caller ticks it (every `tick_interval_s`, and at once
when the activator pokes a revision at zero) and applies `desired` and `mode`.

One tick combines Knative's autoscaler (`scaling/autoscaler.go` Scale) with the KPA
reconciler's scale bounds, scale-to-zero handling and SKS mode (`kpa/scaler.go`,
`kpa/kpa.go`):

1. Stable and panic pod counts are `ceil(average / per_pod_target)` over the stable and
   panic windows, each held within `[floor(ready / max_scale_down_rate),
   ceil(ready * max_scale_up_rate)]` (ready counts as at least 1; an unreachable
   revision may drop to 0 at once).
2. Panic starts when the panic count divided by the ready pods reaches the panic
   threshold, and ends once a full stable window has passed since the load was last
   over it. While panicking the larger of the two counts is used and the decision never
   goes down.
3. min-scale (only while routed), max-scale (0 is unlimited), and an initial scale above
   1 until the revision has first reached it.
4. A decision of 0 is held at one pod until the revision has been active for a stable
   window; then the revision turns inactive and the activator is put in the path, and
   the last pod goes only after `max(grace period, pod retention)` has passed since.
   (Knative can skip the wait when the activator was already in the path; here the
   grace period always runs, so an idle revision reaches zero about window + grace
   after its last request, as the seed observes.)
5. Mode: `proxy` while the decision is 0, while no pod is ready, or while the excess
   burst capacity (ready pods * target - panic concurrency - target burst capacity) is
   negative; `serve` otherwise. Target burst capacity 0 never proxies for capacity
   and -1 always does.

With no report in the stable window the observed load is taken as 0, where Knative
skips the tick: wakegate's sources may report only revisions with traffic, and the
hold in step 4 keeps a pod for the window anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from wakegate.autoscaler.config import RevisionScaling
from wakegate.autoscaler.metrics import Observation

MIN_ACTIVATORS = 2
"""Knative's minimum number of activators backing a revision."""

_UNKNOWN = -1


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


@dataclass(frozen=True, slots=True)
class DeciderState:
    activity: Activity
    activity_since: float
    """When `activity` last changed."""
    scale: int
    """Pods the decider last asked for."""
    initialized: bool
    """The revision has reached its initial scale once; the initial scale no longer applies."""
    panic_time: float | None = None
    """Last time the panic-window load was over the threshold; None when not panicking."""
    max_panic_pods: int = 0

    @classmethod
    def start(cls, scaling: RevisionScaling, now: float, ready_pods: int = 0) -> DeciderState:
        """State for a new revision, or for one found running (`ready_pods` > 0).

        A decider that finds more than one pod running starts in panic mode, so that
        its empty history cannot scale the revision down before a stable window of
        data is in (Knative does the same after an autoscaler restart).
        """
        if ready_pods > 0:
            return cls(
                activity=Activity.ACTIVE,
                activity_since=now,
                scale=ready_pods,
                initialized=True,
                panic_time=now if ready_pods > 1 else None,
                max_panic_pods=ready_pods if ready_pods > 1 else 0,
            )
        if scaling.initial_pods == 0:
            return cls(Activity.INACTIVE, now, scale=0, initialized=True)
        return cls(Activity.ACTIVATING, now, scale=scaling.initial_pods, initialized=False)


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    """Pods to run now."""
    recommended: int
    """What the load asks for after rates, panic and bounds; 0 while `desired` may
    still hold the last pod for the stable window or the grace period."""
    mode: Mode
    excess_burst_capacity: int
    panicking: bool
    stable_concurrency: float
    panic_concurrency: float
    activators: int
    """Activators to back the revision (Knative's subsetting figure, at least 2)."""
    scale_to_zero_at: float | None
    """While inactive: when the last pod may go (put the activator in path first)."""
    reason: str
    """One line for humans, e.g. "stable avg 49.8 over 60s / target 10 → 5"."""
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
) -> Decision:
    """One KPA tick; see the module docstring.

    `reachable` is False for a revision no route sends traffic to. `activator_in_path`
    is the caller's confirmation that the gateways route the revision through the
    activator (Knative probes for it); the last pod is kept until it is True.
    """
    ready = max(0, ready_pods)
    stable = max(0.0, observed.stable)
    panic = max(0.0, observed.panic)
    target = scaling.per_pod_target
    notes: list[str] = []

    # 1. Stable and panic pod counts within the rate bounds.
    basis = max(1, ready)
    max_up = math.ceil(scaling.max_scale_up_rate * basis)
    max_down = math.floor(basis / scaling.max_scale_down_rate) if reachable else 0
    stable_pods = math.ceil(stable / target)
    panic_pods = math.ceil(panic / target)
    stable_bounded = min(max(stable_pods, max_down), max_up)
    panic_bounded = min(max(panic_pods, max_down), max_up)
    if observed.has_data:
        head = (
            f"stable avg {stable:.1f} over {scaling.stable_window_s:g}s "
            f"/ target {target:g} → {stable_pods}"
        )
    else:
        head = f"no traffic reported in {scaling.stable_window_s:g}s → 0"
    if stable_pods > max_up:
        notes.append(f"scale-up rate caps at {max_up}")
    elif stable_pods < max_down:
        notes.append(f"scale-down rate holds {max_down}")

    # 2. Panic mode.
    over_threshold = panic_pods / basis >= scaling.panic_threshold
    panic_time = state.panic_time
    max_panic = state.max_panic_pods
    if over_threshold:
        panic_time = now
    elif panic_time is not None and panic_time + scaling.stable_window_s < now:
        panic_time = None
        max_panic = 0
    recommended = stable_bounded
    if panic_time is not None:
        recommended = max(recommended, panic_bounded)
        max_panic = max(max_panic, recommended)
        notes.append(
            f"panicking: panic avg {panic:.1f} over {scaling.panic_window_s:g}s "
            f"→ {panic_pods}, holding {max_panic}"
        )
        recommended = max_panic

    # 3. Scale bounds.
    low = scaling.min_scale if reachable else 0
    low_note = f"min-scale {low}"
    # An initial scale of 1 needs no bound: the activating revision keeps its pod.
    if not state.initialized and scaling.initial_scale > max(low, 1):
        low = scaling.initial_scale
        low_note = f"initial scale {low}"
    bounded = recommended
    if bounded < low:
        bounded = low
        notes.append(low_note)
    if scaling.max_scale > 0 and bounded > scaling.max_scale:
        bounded = scaling.max_scale
        notes.append(f"max-scale {scaling.max_scale}")

    # 4. Scale to zero.
    want, apply = _scale_to_zero(bounded, scaling, state, now, activator_in_path, notes)
    scale = want if apply else state.scale

    # Excess burst capacity, from the panic-window load (Knative's choice, to avoid
    # knee-jerk switches of the activator path).
    tbc = scaling.target_burst_capacity
    if tbc == 0:
        ebc = 0
    elif tbc > 0:
        ebc = math.floor(ready * scaling.target - tbc - panic)
    else:
        ebc = -1
    activators = _activators(ready, scaling)

    # 5. Mode, and the Active condition.
    activity, since, initialized = _activity(want, ready, scaling, state, now, reachable)
    mode = Mode.PROXY if want == 0 or ebc < 0 or ready == 0 else Mode.SERVE
    zero_at = None
    if activity is Activity.INACTIVE:
        zero_at = since + _last_pod_wait(scaling)

    new_state = replace(
        state,
        activity=activity,
        activity_since=since,
        scale=scale,
        initialized=initialized,
        panic_time=panic_time,
        max_panic_pods=max_panic,
    )
    reason = "; ".join([head, *notes, f"run {scale}, {mode.value}"])
    return Decision(
        desired=scale,
        recommended=bounded,
        mode=mode,
        excess_burst_capacity=ebc,
        panicking=panic_time is not None,
        stable_concurrency=stable,
        panic_concurrency=panic,
        activators=activators,
        scale_to_zero_at=zero_at,
        reason=reason,
        state=new_state,
    )


def _last_pod_wait(scaling: RevisionScaling) -> float:
    return max(scaling.scale_to_zero_grace_period_s, scaling.scale_to_zero_pod_retention_s)


def _scale_to_zero(
    bounded: int,
    scaling: RevisionScaling,
    state: DeciderState,
    now: float,
    activator_in_path: bool,
    notes: list[str],
) -> tuple[int, bool]:
    """(want, apply): Knative's handleScaleToZero. Not applying keeps the current scale."""
    if bounded != 0:
        return bounded, True
    if not scaling.enable_scale_to_zero:
        notes.append("scale to zero disabled")
        return 1, True
    elapsed = now - state.activity_since
    if state.activity is Activity.ACTIVATING:
        if elapsed >= scaling.activation_timeout_s:
            notes.append(f"no ready pod after {scaling.activation_timeout_s:g}s")
            return 0, True
        notes.append("activating")
        return _UNKNOWN, False
    if state.activity is Activity.ACTIVE:
        if elapsed >= scaling.stable_window_s:
            notes.append("idle: activator back in path")
            return 0, False
        notes.append(f"idle: keeping a pod until active for {scaling.stable_window_s:g}s")
        return 1, True
    if not activator_in_path:
        notes.append("idle: waiting for the activator to be in path")
        return 0, False
    remaining = _last_pod_wait(scaling) - elapsed
    if remaining <= 0:
        return 0, True
    notes.append(f"idle: last pod goes in {remaining:.0f}s")
    return 0, False


def _activity(
    want: int,
    ready: int,
    scaling: RevisionScaling,
    state: DeciderState,
    now: float,
    reachable: bool,
) -> tuple[Activity, float, bool]:
    """Knative's computeActiveCondition: the new Active condition, its time, initialized."""
    floor = scaling.min_scale if reachable else 0
    min_ready = max(floor, scaling.initial_scale) if not state.initialized else max(floor, 1)
    initialized = state.initialized or ready >= min_ready
    current = state.activity
    if want == 0 or min_ready == 0:
        new = Activity.INACTIVE
    elif ready < min_ready:
        new = Activity.ACTIVATING if want > 0 or current is not Activity.INACTIVE else current
    else:
        new = Activity.ACTIVE if want > 0 or current is not Activity.INACTIVE else current
    since = state.activity_since if new is current else now
    return new, since, initialized


def _activators(ready: int, scaling: RevisionScaling) -> int:
    tbc = scaling.target_burst_capacity
    if tbc == 0:
        return MIN_ACTIVATORS
    capacity = ready * scaling.target + (tbc if tbc > 0 else 0)
    return max(MIN_ACTIVATORS, math.ceil(capacity / scaling.activator_capacity))
