"""The KPA's global settings (Knative's `config-autoscaler`) and their per-revision result.

`AutoscalerConfig` holds the process-wide values under Knative's key names (in
snake case, durations in seconds). `RevisionScaling` is what one revision's decider
works with: the global values overridden by the revision's `autoscaling.knative.dev/*`
annotations and `containerConcurrency`, as resolved by
`wakegate.serving.autoscaling.autoscaling_spec`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn

from wakegate.ingress.configmap import DataReader
from wakegate.serving.autoscaling import (
    CONCURRENCY,
    KPA_CLASS,
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
    max_scale_limit: int = 0
    """Largest `max-scale` a revision may ask for; 0 is no limit (then max-scale may be
    unlimited too)."""
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
        if self.scale_down_delay_s < 0 or self.scale_down_delay_s != round(self.scale_down_delay_s):
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


NAME = "config-autoscaler"
DEPLOYMENT_NAME = "config-deployment"
_INT32_MAX = 2**31 - 1


def autoscaler_config(
    data: Mapping[str, str], base: AutoscalerConfig = DEFAULT_CONFIG
) -> tuple[AutoscalerConfig, list[str]]:
    """`config-autoscaler` data over `base` → (config, unknown keys).

    Keys, value forms and checks are Knative's `NewConfigFromMap` (pkg/autoscaler/config):
    a `container-concurrency-target-percentage` of at most 1 is a fraction (0.7 is 70 %),
    durations are Go durations, and a failed check names its key.
    """
    r = DataReader(NAME, data)
    cls = r.string(KPA_CLASS, "pod-autoscaler-class")
    if cls != KPA_CLASS:
        raise r.fail("pod-autoscaler-class", cls, f"{KPA_CLASS} (the autoscaler wakegate runs)")
    percentage = r.number(
        base.container_concurrency_target_percentage, "container-concurrency-target-percentage"
    )
    if "container-concurrency-target-percentage" in data and percentage <= 1.0:
        percentage *= 100.0
    if not 0 < percentage <= 100:
        raise r.fail(
            "container-concurrency-target-percentage",
            data["container-concurrency-target-percentage"],
            "a percentage in (0, 100] (or a fraction in (0, 1])",
        )
    target = r.number(
        base.container_concurrency_target_default, "container-concurrency-target-default"
    )
    if target * percentage / 100.0 < TARGET_MIN:
        key = "container-concurrency-target-default"
        raise r.fail(
            key,
            data.get(key, f"{target:g}"),
            f"a target of at least {TARGET_MIN} once the target percentage is applied",
        )
    allow_zero = r.boolean(base.allow_zero_initial_scale, "allow-zero-initial-scale")
    initial = r.integer(base.initial_scale, "initial-scale", low=0, high=_INT32_MAX)
    if initial == 0 and not allow_zero:
        raise r.fail("initial-scale", "0", "at least 1 (0 needs allow-zero-initial-scale: true)")
    limit = r.integer(base.max_scale_limit, "max-scale-limit", low=0, high=_INT32_MAX)
    min_scale = r.integer(base.min_scale, "min-scale", low=0, high=_INT32_MAX)
    max_scale = r.integer(base.max_scale, "max-scale", low=0, high=_INT32_MAX)
    if limit and not 1 <= max_scale <= limit:
        raise r.fail("max-scale", str(max_scale), f"in 1..max-scale-limit ({limit})")
    if max_scale and min_scale > max_scale:
        raise r.fail("min-scale", str(min_scale), f"at most max-scale ({max_scale})")
    grace = r.duration(base.scale_to_zero_grace_period_s, "scale-to-zero-grace-period")
    if grace <= 0:
        raise r.fail(
            "scale-to-zero-grace-period", data["scale-to-zero-grace-period"], "a positive duration"
        )
    config = replace(
        base,
        enable_scale_to_zero=r.boolean(base.enable_scale_to_zero, "enable-scale-to-zero"),
        allow_zero_initial_scale=allow_zero,
        max_scale_up_rate=_rate(r, base.max_scale_up_rate, "max-scale-up-rate"),
        max_scale_down_rate=_rate(r, base.max_scale_down_rate, "max-scale-down-rate"),
        container_concurrency_target_percentage=percentage,
        container_concurrency_target_default=target,
        requests_per_second_target_default=r.number(
            base.requests_per_second_target_default,
            "requests-per-second-target-default",
            low=TARGET_MIN,
        ),
        target_burst_capacity=_burst(r, base.target_burst_capacity),
        panic_window_percentage=r.number(
            base.panic_window_percentage, "panic-window-percentage", low=1, high=100
        ),
        activator_capacity=r.number(base.activator_capacity, "activator-capacity", low=1),
        panic_threshold_percentage=r.number(
            base.panic_threshold_percentage, "panic-threshold-percentage", low=110, high=1000
        ),
        initial_scale=initial,
        min_scale=min_scale,
        max_scale=max_scale,
        max_scale_limit=limit,
        stable_window_s=_whole_seconds(
            r, base.stable_window_s, "stable-window", WINDOW_MIN_S, WINDOW_MAX_S
        ),
        scale_down_delay_s=_whole_seconds(r, base.scale_down_delay_s, "scale-down-delay", 0.0),
        scale_to_zero_grace_period_s=grace,
        scale_to_zero_pod_retention_period_s=r.duration(
            base.scale_to_zero_pod_retention_period_s, "scale-to-zero-pod-retention-period", low=0
        ),
    )
    return config.validate(), r.unread()


def deployment_config(
    data: Mapping[str, str], base: AutoscalerConfig = DEFAULT_CONFIG
) -> tuple[AutoscalerConfig, list[str], list[str]]:
    """`config-deployment` → (config, unknown keys, keys without effect here): of it, the
    KPA reads `progress-deadline` (the activation timeout is it plus 30 s)."""
    r = DataReader(DEPLOYMENT_NAME, data)
    deadline = r.duration(base.progress_deadline_s, "progress-deadline", low=1)
    if deadline != round(deadline):
        raise r.fail("progress-deadline", data["progress-deadline"], "whole seconds, such as 10m")
    no_effect = sorted(key for key in data if key in _DEPLOYMENT_NO_EFFECT)
    for key in _DEPLOYMENT_NO_EFFECT:
        r.raw(key)
    return replace(base, progress_deadline_s=deadline).validate(), r.unread(), no_effect


_DEPLOYMENT_NO_EFFECT = (
    "queue-sidecar-image",
    "queue-sidecar-cpu-request",
    "queue-sidecar-cpu-limit",
    "queue-sidecar-memory-request",
    "queue-sidecar-memory-limit",
    "queue-sidecar-ephemeral-storage-request",
    "queue-sidecar-ephemeral-storage-limit",
    "queue-sidecar-token-audiences",
    "queue-sidecar-rootca",
    "concurrency-state-endpoint",
    "registries-skipping-tag-resolving",
    "digest-resolution-timeout",
    "default-affinity-type",
    "pod-is-always-schedulable",
    "runtime-class-name",
)


def _rate(r: DataReader, default: float, key: str) -> float:
    value = r.number(default, key)
    if value <= 1.0:
        raise r.fail(key, r.data[key], "a number greater than 1")
    return value


def _burst(r: DataReader, default: float) -> float:
    value = r.number(default, "target-burst-capacity")
    if value < 0 and value != -1:
        raise r.fail(
            "target-burst-capacity", r.data["target-burst-capacity"], ">= 0, or -1 for unlimited"
        )
    return value


def _whole_seconds(
    r: DataReader, default: float, key: str, low: float, high: float | None = None
) -> float:
    seconds = r.duration(default, key, low=low, high=high)
    if seconds != round(seconds):
        raise r.fail(key, r.data[key], "a duration in whole seconds, such as 60s")
    return seconds
