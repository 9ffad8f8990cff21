"""The KPA's global settings (Knative's `config-autoscaler`) and their per-revision result.

`AutoscalerConfig` holds the process-wide values under Knative's key names (in
snake case, durations in seconds). `RevisionScaling` is what one revision's decider
works with: the global values overridden by the revision's `autoscaling.knative.dev/*`
annotations and `containerConcurrency`, as resolved by
`wakegate.serving.autoscaling.autoscaling_spec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from wakegate.serving.autoscaling import AutoscalingSpec, autoscaling_spec
from wakegate.serving.model import RevisionTemplate
from wakegate.serving.revision import Revision

TARGET_MIN = 0.01
"""Knative's smallest per-pod target (`autoscaling.TargetMin`)."""
WINDOW_MIN_S = 6.0
WINDOW_MAX_S = 3600.0


class AutoscalerConfigError(ValueError):
    """An invalid autoscaler setting; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """Knative's `config-autoscaler`, with the defaults of DESIGN.md §4.

    `target_utilization` is a fraction (Knative's `container-concurrency-target-percentage`
    / 100); 1.0 reproduces the seed (target 10, 50 concurrent → 5 pods) where current
    Knative ships 0.7.
    """

    container_concurrency_target_default: float = 100.0
    target_utilization: float = 1.0
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_s: float = 0.0
    """Keep the last pod at least this long after the revision went idle."""
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    target_burst_capacity: float = 200.0
    """Spare concurrency to keep before the activator leaves the path; -1 keeps it in."""
    tick_interval_s: float = 2.0
    enable_scale_to_zero: bool = True
    activator_capacity: float = 100.0
    """Concurrency one activator is sized for; sets how many activators back a revision."""
    initial_scale: int = 1
    allow_zero_initial_scale: bool = False
    activation_timeout_s: float = 610.0
    """A revision that cannot get a ready pod for this long may scale to zero
    (Knative: the deployment progress deadline, 600 s, plus 10 s)."""

    def validate(self) -> AutoscalerConfig:
        """Return self, or raise `AutoscalerConfigError` for the first invalid field."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLAGS:
                if not isinstance(value, bool):
                    _fail(f.name, value, "true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                _fail(f.name, value, "a number")
            elif not math.isfinite(value):
                _fail(f.name, value, "a finite number")

        if not 0 < self.target_utilization <= 1:
            _fail("target_utilization", self.target_utilization, "a fraction in (0, 1]")
        if self.container_concurrency_target_default * self.target_utilization < TARGET_MIN:
            _fail(
                "container_concurrency_target_default",
                self.container_concurrency_target_default,
                f"at least {TARGET_MIN} once multiplied by target_utilization",
            )
        if not WINDOW_MIN_S <= self.stable_window_s <= WINDOW_MAX_S or (
            self.stable_window_s != round(self.stable_window_s)
        ):
            _fail("stable_window_s", self.stable_window_s, "whole seconds in 6..3600")
        if not 1 <= self.panic_window_percentage <= 100:
            _fail("panic_window_percentage", self.panic_window_percentage, "a number in 1..100")
        if not 110 <= self.panic_threshold_percentage <= 1000:
            _fail(
                "panic_threshold_percentage",
                self.panic_threshold_percentage,
                "a number in 110..1000",
            )
        if self.scale_to_zero_grace_period_s <= 0:
            _fail(
                "scale_to_zero_grace_period_s",
                self.scale_to_zero_grace_period_s,
                "a positive number of seconds",
            )
        if self.scale_to_zero_pod_retention_s < 0:
            _fail(
                "scale_to_zero_pod_retention_s",
                self.scale_to_zero_pod_retention_s,
                "a number of seconds >= 0",
            )
        if self.max_scale_up_rate <= 1:
            _fail("max_scale_up_rate", self.max_scale_up_rate, "a number greater than 1")
        if self.max_scale_down_rate <= 1:
            _fail("max_scale_down_rate", self.max_scale_down_rate, "a number greater than 1")
        if self.target_burst_capacity < 0 and self.target_burst_capacity != -1:
            _fail(
                "target_burst_capacity",
                self.target_burst_capacity,
                "a number >= 0, or -1 for unlimited",
            )
        if self.tick_interval_s <= 0:
            _fail("tick_interval_s", self.tick_interval_s, "a positive number of seconds")
        if self.activator_capacity < 1:
            _fail("activator_capacity", self.activator_capacity, "a number >= 1")
        if self.initial_scale != int(self.initial_scale) or self.initial_scale < 0:
            _fail("initial_scale", self.initial_scale, "a whole number >= 0")
        if self.initial_scale == 0 and not self.allow_zero_initial_scale:
            _fail(
                "initial_scale",
                self.initial_scale,
                "at least 1 (0 needs allow_zero_initial_scale)",
            )
        if self.activation_timeout_s <= 0:
            _fail("activation_timeout_s", self.activation_timeout_s, "a positive number of seconds")
        return self

    def spec_defaults(self) -> AutoscalingSpec:
        """The per-revision defaults this config implies, for `autoscaling_spec(defaults=…)`."""
        return AutoscalingSpec(
            target=float(self.container_concurrency_target_default),
            utilization=self.target_utilization * 100.0,
            window_s=float(self.stable_window_s),
            panic_window_pct=float(self.panic_window_percentage),
            panic_threshold_pct=float(self.panic_threshold_percentage),
            initial_scale=int(self.initial_scale),
            target_burst_capacity=float(self.target_burst_capacity),
        )


DEFAULT_CONFIG = AutoscalerConfig()

_FLAGS = frozenset({"enable_scale_to_zero", "allow_zero_initial_scale"})


def _fail(name: str, value: Any, expected: str) -> NoReturn:
    raise AutoscalerConfigError(f"{name}: got {value!r}, expected {expected}")


@dataclass(frozen=True, slots=True)
class RevisionScaling:
    """One revision's effective autoscaling settings.

    `target` is Knative's *total* value: the concurrency one pod is sized for
    (`containerConcurrency`, the `target` annotation, or the config default). The
    decider divides observed concurrency by `per_pod_target`, which applies
    utilisation; excess burst capacity counts pods at the full `target`.
    """

    target: float = 100.0
    target_utilization: float = 1.0
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    min_scale: int = 0
    max_scale: int = 0
    """0 is unlimited."""
    initial_scale: int = 1
    target_burst_capacity: float = 200.0
    container_concurrency: int = 0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_s: float = 0.0
    enable_scale_to_zero: bool = True
    activator_capacity: float = 100.0
    activation_timeout_s: float = 610.0

    @property
    def per_pod_target(self) -> float:
        """Knative's TargetValue: `target * utilisation`, at least 0.01."""
        return max(TARGET_MIN, self.target * self.target_utilization)

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0

    @property
    def initial_pods(self) -> int:
        """Ready pods a new revision needs before it is Ready, and the pods it starts
        with: Knative's active threshold before the scale target is initialised,
        max(min-scale, initial scale). 0 (a zero initial scale without min-scale)
        makes the revision Ready without a pod, its traffic through the activator."""
        return max(self.min_scale, self.initial_scale)

    @property
    def panic_threshold(self) -> float:
        """How many times the ready pods' capacity the panic-window load must need."""
        return self.panic_threshold_percentage / 100.0

    @classmethod
    def from_spec(
        cls, spec: AutoscalingSpec, config: AutoscalerConfig = DEFAULT_CONFIG
    ) -> RevisionScaling:
        """Combine a resolved `AutoscalingSpec` with the config's global-only settings.

        Per-revision values are taken from `spec` as they are; resolve it against
        `config.spec_defaults()` (or use `for_template`) so unannotated settings
        follow the config.
        """
        initial = spec.initial_scale
        if initial == 0 and not config.allow_zero_initial_scale:
            initial = config.initial_scale
        return cls(
            target=float(spec.target),
            target_utilization=spec.utilization / 100.0,
            stable_window_s=float(spec.window_s),
            panic_window_percentage=float(spec.panic_window_pct),
            panic_threshold_percentage=float(spec.panic_threshold_pct),
            min_scale=int(spec.min_scale),
            max_scale=int(spec.max_scale),
            initial_scale=int(initial),
            target_burst_capacity=float(spec.target_burst_capacity),
            container_concurrency=int(spec.container_concurrency),
            max_scale_up_rate=config.max_scale_up_rate,
            max_scale_down_rate=config.max_scale_down_rate,
            scale_to_zero_grace_period_s=config.scale_to_zero_grace_period_s,
            scale_to_zero_pod_retention_s=config.scale_to_zero_pod_retention_s,
            enable_scale_to_zero=config.enable_scale_to_zero,
            activator_capacity=config.activator_capacity,
            activation_timeout_s=config.activation_timeout_s,
        )

    @classmethod
    def for_template(
        cls, template: RevisionTemplate, config: AutoscalerConfig = DEFAULT_CONFIG
    ) -> RevisionScaling:
        """The template's annotations and `containerConcurrency` over `config`.

        With `containerConcurrency` > 0 and no `target` annotation the target is the
        limit; an annotated target above the limit is capped at it (Knative's KPA).
        """
        return cls.from_spec(autoscaling_spec(template, config.spec_defaults()), config)

    @classmethod
    def for_revision(
        cls, revision: Revision, config: AutoscalerConfig = DEFAULT_CONFIG
    ) -> RevisionScaling:
        return cls.for_template(revision.template, config)
