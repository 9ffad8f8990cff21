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

from wakegate.serving.autoscaling import (
    CONCURRENCY,
    LINEAR,
    TARGET_MIN,
    WINDOW_MAX_S,
    WINDOW_MIN_S,
    AutoscalingSpec,
    autoscaling_spec,
)
from wakegate.serving.model import RevisionTemplate
from wakegate.serving.revision import Revision

ACTIVATION_TIMEOUT_BUFFER_S = 30.0
"""Added to the progress deadline to give the activation timeout (Knative's KPA)."""


class AutoscalerConfigError(ValueError):
    """An invalid autoscaler setting; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """Knative's `config-autoscaler`: one field per ConfigMap key, in snake case, with
    durations in seconds (`stable-window` is `stable_window_s`), and the defaults of
    DESIGN.md §4, which are Knative's current ones except one.

    The deliberate difference: `container_concurrency_target_percentage` (which also
    applies to the rps target) defaults to 100, where Knative ships 70, so that the
    seed's target 10 with 50 concurrent requests runs 5 pods. Together with the
    scale-to-zero grace period always running in full (see `decider`), it keeps the
    seed walkthrough's figures.

    Two fields are not `config-autoscaler` keys: `tick_interval_s` (a constant of 2 s
    in Knative) and `progress_deadline_s` (`config-deployment`'s `progress-deadline`;
    the activation timeout is it plus 30 s, as in Knative's KPA).
    """

    container_concurrency_target_default: float = 100.0
    container_concurrency_target_percentage: float = 100.0
    requests_per_second_target_default: float = 200.0
    target_burst_capacity: float = 211.0
    """Spare capacity to keep before the activator leaves the path; -1 keeps it in."""
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_period_s: float = 0.0
    """Keep the last pod at least this long after the revision went idle."""
    scale_down_delay_s: float = 0.0
    activator_capacity: float = 100.0
    """Concurrency one activator is sized for; sets how many activators back a revision."""
    initial_scale: int = 1
    allow_zero_initial_scale: bool = False
    min_scale: int = 0
    max_scale: int = 0
    """0 is unlimited."""
    tick_interval_s: float = 2.0
    progress_deadline_s: float = 600.0

    @property
    def target_utilization(self) -> float:
        """`container_concurrency_target_percentage` as a fraction."""
        return self.container_concurrency_target_percentage / 100.0

    def validate(self) -> AutoscalerConfig:
        """Return self, or raise `AutoscalerConfigError` for the first invalid field
        (Knative's `config-autoscaler` validation)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLAGS:
                if not isinstance(value, bool):
                    _fail(f.name, value, "true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                _fail(f.name, value, "a number")
            elif not math.isfinite(value):
                _fail(f.name, value, "a finite number")

        if not 0 < self.container_concurrency_target_percentage <= 100:
            _fail(
                "container_concurrency_target_percentage",
                self.container_concurrency_target_percentage,
                "a percentage in (0, 100]",
            )
        if self.container_concurrency_target_default * self.target_utilization < TARGET_MIN:
            _fail(
                "container_concurrency_target_default",
                self.container_concurrency_target_default,
                f"at least {TARGET_MIN} once multiplied by the target percentage",
            )
        if self.requests_per_second_target_default < TARGET_MIN:
            _fail(
                "requests_per_second_target_default",
                self.requests_per_second_target_default,
                f"at least {TARGET_MIN}",
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
        if self.scale_to_zero_pod_retention_period_s < 0:
            _fail(
                "scale_to_zero_pod_retention_period_s",
                self.scale_to_zero_pod_retention_period_s,
                "a number of seconds >= 0",
            )
        if self.scale_down_delay_s < 0 or self.scale_down_delay_s != round(
            self.scale_down_delay_s
        ):
            _fail("scale_down_delay_s", self.scale_down_delay_s, "whole seconds >= 0")
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
        for name in ("min_scale", "max_scale"):
            value = getattr(self, name)
            if value != int(value) or value < 0:
                _fail(name, value, "a whole number >= 0")
        if self.max_scale and self.min_scale > self.max_scale:
            _fail("min_scale", self.min_scale, f"at most max_scale ({self.max_scale})")
        if self.progress_deadline_s <= 0:
            _fail("progress_deadline_s", self.progress_deadline_s, "a positive number of seconds")
        return self

    def spec_defaults(self) -> AutoscalingSpec:
        """The per-revision defaults this config implies, for `autoscaling_spec(defaults=…)`."""
        return AutoscalingSpec(
            target=float(self.container_concurrency_target_default),
            rps_target=float(self.requests_per_second_target_default),
            utilization=float(self.container_concurrency_target_percentage),
            window_s=float(self.stable_window_s),
            panic_window_pct=float(self.panic_window_percentage),
            panic_threshold_pct=float(self.panic_threshold_percentage),
            min_scale=int(self.min_scale),
            max_scale=int(self.max_scale),
            initial_scale=int(self.initial_scale),
            target_burst_capacity=float(self.target_burst_capacity),
            scale_down_delay_s=float(self.scale_down_delay_s),
            pod_retention_s=float(self.scale_to_zero_pod_retention_period_s),
            progress_deadline_s=float(self.progress_deadline_s),
        )


DEFAULT_CONFIG = AutoscalerConfig()

_FLAGS = frozenset({"enable_scale_to_zero", "allow_zero_initial_scale"})


def _fail(name: str, value: Any, expected: str) -> NoReturn:
    raise AutoscalerConfigError(f"{name}: got {value!r}, expected {expected}")


@dataclass(frozen=True, slots=True)
class RevisionScaling:
    """One revision's effective autoscaling settings.

    `target` is Knative's TotalValue for the revision's `metric`: the concurrency (or
    requests per second) one pod is sized for (`containerConcurrency`, the `target`
    annotation, or the config default). The decider divides the observed load by
    `per_pod_target` (Knative's TargetValue), which applies utilisation; excess burst
    capacity counts pods at the full `target`.
    """

    metric: str = CONCURRENCY
    target: float = 100.0
    target_utilization: float = 1.0
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    aggregation: str = LINEAR
    min_scale: int = 0
    max_scale: int = 0
    """0 is unlimited."""
    initial_scale: int = 1
    activation_scale: int = 1
    target_burst_capacity: float = 211.0
    container_concurrency: int = 0
    scale_down_delay_s: float = 0.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_s: float = 0.0
    enable_scale_to_zero: bool = True
    activator_capacity: float = 100.0
    activation_timeout_s: float = 630.0
    """A revision that cannot get a ready pod for this long may scale to zero: the
    progress deadline plus 30 s (Knative's `activationTimeoutBuffer`)."""

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
            metric=spec.metric,
            target=float(spec.target),
            target_utilization=spec.utilization / 100.0,
            stable_window_s=float(spec.window_s),
            panic_window_percentage=float(spec.panic_window_pct),
            panic_threshold_percentage=float(spec.panic_threshold_pct),
            aggregation=spec.aggregation,
            min_scale=int(spec.min_scale),
            max_scale=int(spec.max_scale),
            initial_scale=int(initial),
            activation_scale=int(spec.activation_scale),
            target_burst_capacity=float(spec.target_burst_capacity),
            container_concurrency=int(spec.container_concurrency),
            scale_down_delay_s=float(spec.scale_down_delay_s),
            max_scale_up_rate=config.max_scale_up_rate,
            max_scale_down_rate=config.max_scale_down_rate,
            scale_to_zero_grace_period_s=config.scale_to_zero_grace_period_s,
            scale_to_zero_pod_retention_s=float(spec.pod_retention_s),
            enable_scale_to_zero=config.enable_scale_to_zero,
            activator_capacity=config.activator_capacity,
            activation_timeout_s=float(spec.progress_deadline_s) + ACTIVATION_TIMEOUT_BUFFER_S,
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
