"""Knative's `autoscaling.knative.dev/*` annotations: names, ranges, and their resolution.

`autoscaling_settings` validates a template's annotations as Knative's webhook does
(`pkg/apis/autoscaling/annotation_validation.go`), with Knative's messages after the
field path; `autoscaling_spec` resolves them, with `containerConcurrency` and the
`serving.knative.dev/progress-deadline` annotation, over process-wide defaults into an
`AutoscalingSpec` (Knative's `MakeDecider` and `ResolveMetricTarget`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from wakegate.ingress.kube_values import parse_go_duration
from wakegate.serving.config import SERVING_CONFIG, ServingConfig, admitted
from wakegate.serving.fields import fail
from wakegate.serving.model import RevisionTemplate

AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
"""Per-revision deployment progress deadline; the activation timeout is it plus 30 s."""

CONCURRENCY = "concurrency"
RPS = "rps"
METRICS = (CONCURRENCY, RPS)
LINEAR = "linear"
WEIGHTED_EXPONENTIAL = "weighted-exponential"
_ALGORITHMS = {
    LINEAR: LINEAR,
    WEIGHTED_EXPONENTIAL: WEIGHTED_EXPONENTIAL,
    "weightedExponential": WEIGHTED_EXPONENTIAL,
}
"""Accepted spellings of `metric-aggregation-algorithm` → the normalised name."""

TARGET_MIN = 0.01
"""Knative's smallest target (`autoscaling.TargetMin`)."""
WINDOW_MIN_S = 6.0
WINDOW_MAX_S = 3600.0
_INT32_MAX = 2**31 - 1
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


AUTOSCALING_ANNOTATIONS: dict[str, tuple[str, ...]] = {
    "class": ("class",),
    "metric": ("metric",),
    "target": ("target",),
    "target-utilization-percentage": (
        "target-utilization-percentage",
        "targetUtilizationPercentage",
    ),
    "window": ("window",),
    "panic-window-percentage": ("panic-window-percentage", "panicWindowPercentage"),
    "panic-threshold-percentage": ("panic-threshold-percentage", "panicThresholdPercentage"),
    "metric-aggregation-algorithm": (
        "metric-aggregation-algorithm",
        "metricAggregationAlgorithm",
    ),
    "min-scale": ("min-scale", "minScale"),
    "max-scale": ("max-scale", "maxScale"),
    "initial-scale": ("initial-scale", "initialScale"),
    "activation-scale": ("activation-scale",),
    "scale-down-delay": ("scale-down-delay", "scaleDownDelay"),
    "scale-to-zero-pod-retention-period": (
        "scale-to-zero-pod-retention-period",
        "scaleToZeroPodRetentionPeriod",
    ),
    "target-burst-capacity": ("target-burst-capacity", "targetBurstCapacity"),
}
"""Supported setting → its annotation names under `autoscaling.knative.dev/`, current first."""

_ALIASES = {alias: setting for setting, names in AUTOSCALING_ANNOTATIONS.items() for alias in names}


def _go_duration(seconds: float) -> str:
    """A bound as Go prints a time.Duration in Knative's messages (6s, 1h0m0s)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _bounds(value: str, low: object, high: object) -> str:
    """Knative's `apis.ErrOutOfBoundsValue` message."""
    return f"expected {low} <= {value} <= {high}"


def _number(text: str) -> float | None:
    return float(text) if _DECIMAL.match(text) else None


def _int32(text: str, where: str) -> int:
    """Knative's getIntGE0: an int32 of at least 0."""
    if not _INTEGER.match(text):
        fail(where, f"invalid value: {text}, expected a whole number")
    value = int(text)
    if not 0 <= value <= _INT32_MAX:
        fail(where, _bounds(text, 0, _INT32_MAX))
    return value


def _duration(text: str, where: str, low_s: float, *, whole_seconds: bool = True) -> float:
    """A Go duration in [low_s, 1h], at second precision (Knative's window checks)."""
    seconds = parse_go_duration(text)
    if seconds is None:
        fail(where, f"invalid value: {text}, expected a duration such as 30s or 2m")
    if not low_s <= seconds <= WINDOW_MAX_S:
        fail(where, _bounds(text, _go_duration(low_s), _go_duration(WINDOW_MAX_S)))
    if whole_seconds and not math.isclose(seconds, round(seconds), abs_tol=1e-9):
        fail(where, "must be specified with at most second precision")
    return float(round(seconds)) if whole_seconds else seconds


def _percentage(text: str, where: str, low: float, high: float) -> float:
    value = _number(text)
    if value is None:
        fail(where, f"invalid value: {text}, expected a number in {low:g}..{high:g}")
    if not low <= value <= high:
        fail(where, _bounds(text, f"{low:g}", f"{high:g}"))
    return value


def autoscaling_settings(
    annotations: Mapping[str, str],
    path: str = "spec.template.metadata.annotations",
    config: ServingConfig | None = None,
) -> dict[str, float | int | str]:
    """Validate the `autoscaling.knative.dev/*` annotations; return the values set.

    Keys of the result are the setting names of `AUTOSCALING_ANNOTATIONS`; durations
    are in seconds. Unknown keys under the autoscaling prefix are rejected, since a
    setting that is silently ignored is worse than an error.
    """
    config = config or SERVING_CONFIG
    found: dict[str, tuple[str, str]] = {}
    for key, text in annotations.items():
        if not key.startswith(AUTOSCALING_PREFIX):
            continue
        where = f"{path}[{key}]"
        setting = _ALIASES.get(key.removeprefix(AUTOSCALING_PREFIX))
        if setting is None:
            supported = ", ".join(AUTOSCALING_ANNOTATIONS)
            fail(where, f"unknown autoscaling annotation, expected one of {supported}")
        if setting in found:
            fail(where, f"conflicts with {found[setting][0]}, set only one of them")
        found[setting] = (key, text)

    out: dict[str, float | int | str] = {}
    for setting, (key, text) in found.items():
        out[setting] = _setting(setting, text, f"{path}[{key}]", config)

    low, high = int(out.get("min-scale", 0)), int(out.get("max-scale", 0))
    if high and high < low:
        fail(
            f"{path}[{found['max-scale'][0]}]",
            f"max-scale={high} is less than min-scale={low}",
        )
    limit = config.max_scale_limit
    if limit and "max-scale" in out and not 1 <= high <= limit:
        where = f"{path}[{found['max-scale'][0]}]"
        if high == 0:
            fail(where, f"max-scale=0 (unlimited), must be less than {limit}")
        fail(where, f"expected 1 <= {high} <= {limit}")
    if "activation-scale" in out:
        activation = int(out["activation-scale"])
        where = f"{path}[{found['activation-scale'][0]}]"
        if low > activation:
            fail(where, f"min-scale={low} is greater than activation-scale={activation}")
        if high and high < activation:
            fail(where, f"max-scale={high} is less than activation-scale={activation}")
        if activation < 2:
            fail(where, f"activation-scale={activation} must be greater than 1")
    return out


def _setting(setting: str, text: str, where: str, config: ServingConfig) -> float | int | str:
    """One annotation's value, checked as Knative's webhook checks it."""
    if setting == "class":
        if text != KPA_CLASS:
            fail(where, f"invalid value: {text}, expected {KPA_CLASS}")
        return text
    if setting == "metric":
        if text not in METRICS:
            fail(where, f"invalid value: {text}, expected {CONCURRENCY} or {RPS}")
        return text
    if setting == "metric-aggregation-algorithm":
        if not text:
            return LINEAR
        if text not in _ALGORITHMS:
            fail(where, f"invalid value: {text}, expected {LINEAR} or {WEIGHTED_EXPONENTIAL}")
        return _ALGORITHMS[text]
    if setting == "target":
        value = _number(text)
        if value is None:
            fail(where, f"invalid value: {text}, expected a number >= {TARGET_MIN}")
        if value < TARGET_MIN:
            fail(where, f"target {text} should be at least {TARGET_MIN}")
        return value
    if setting in ("target-utilization-percentage", "panic-window-percentage"):
        return _percentage(text, where, 1, 100)
    if setting == "panic-threshold-percentage":
        return _percentage(text, where, 110, 1000)
    if setting == "target-burst-capacity":
        value = _number(text)
        if value is None or (value < 0 and value != -1):
            fail(where, f"invalid value: {text}, expected a number >= 0, or -1 for unlimited")
        return value
    if setting == "window":
        return _duration(text, where, WINDOW_MIN_S)
    if setting == "scale-down-delay":
        return _duration(text, where, 0.0)
    if setting == "scale-to-zero-pod-retention-period":
        return _duration(text, where, 0.0, whole_seconds=False)
    if setting == "activation-scale":
        if not _INTEGER.match(text) or not -(2**31) <= int(text) <= _INT32_MAX:
            fail(where, f"invalid value: {text}, expected a whole number of at least 2")
        return int(text)
    if setting == "initial-scale":
        if not _INTEGER.match(text):
            fail(where, f"invalid value: {text}, expected a whole number")
        value = int(text)
        if value < 0:
            fail(where, f"invalid value: {text}, initial-scale must be greater than 0")
        if value == 0 and not config.allow_zero_initial_scale:
            fail(
                where,
                f"invalid value: {text}, initial-scale=0 not allowed by cluster "
                "(config-autoscaler allow-zero-initial-scale; "
                "wakegate up --allow-zero-initial-scale)",
            )
        return value
    return _int32(text, where)  # min-scale, max-scale


def progress_deadline(annotations: Mapping[str, str], path: str) -> float | None:
    """Seconds of `serving.knative.dev/progress-deadline`, checked as Knative's
    revision webhook checks it; None when it is not set."""
    text = annotations.get(PROGRESS_DEADLINE)
    if not text:
        return None
    where = f"{path}[{PROGRESS_DEADLINE}]"
    seconds = parse_go_duration(text)
    if seconds is None:
        fail(where, f"invalid value: {text}, expected a duration such as 10m")
    if not math.isclose(seconds, round(seconds), abs_tol=1e-9):
        fail(where, f"progress-deadline={text} is not at second precision")
    if seconds < 0:
        fail(where, f"progress-deadline={text} must be positive")
    return float(round(seconds))


@dataclass(frozen=True, slots=True)
class AutoscalingSpec:
    """A revision's KPA settings; the field defaults are the process-wide defaults.

    `target` is Knative's TotalValue for the revision's metric: the concurrency (or
    requests per second) one pod is sized for, before utilisation is applied;
    `per_pod_target` is what the autoscaler divides the observed load by.
    """

    metric: str = CONCURRENCY
    target: float = 100.0
    rps_target: float = 200.0
    """The rps target when none is annotated (`requests-per-second-target-default`)."""
    utilization: float = 100.0
    """Percent of `target` to aim for."""
    window_s: float = 60.0
    panic_window_pct: float = 10.0
    panic_threshold_pct: float = 200.0
    aggregation: str = LINEAR
    min_scale: int = 0
    max_scale: int = 0
    """0 is unlimited."""
    initial_scale: int = 1
    activation_scale: int = 1
    """The fewest pods a revision wakes to from zero; 1 is Knative's unset."""
    target_burst_capacity: float = 211.0
    """-1 is unlimited: the activator stays in the path."""
    scale_down_delay_s: float = 0.0
    pod_retention_s: float = 0.0
    """`scale-to-zero-pod-retention-period`: keep the last pod this long once idle."""
    progress_deadline_s: float = 600.0
    container_concurrency: int = 0
    """Hard per-pod limit from `containerConcurrency`; 0 is unlimited."""

    @property
    def per_pod_target(self) -> float:
        return max(TARGET_MIN, self.target * self.utilization / 100.0)

    @property
    def panic_window_s(self) -> float:
        return self.window_s * self.panic_window_pct / 100.0


AUTOSCALING_DEFAULTS = AutoscalingSpec()
"""Defaults for settings a revision does not annotate; replace it (e.g. with
`dataclasses.replace(AUTOSCALING_DEFAULTS, window_s=6.0)`) or pass `defaults=`."""

_FIELDS = {
    "metric": "metric",
    "target-utilization-percentage": "utilization",
    "window": "window_s",
    "panic-window-percentage": "panic_window_pct",
    "panic-threshold-percentage": "panic_threshold_pct",
    "metric-aggregation-algorithm": "aggregation",
    "min-scale": "min_scale",
    "max-scale": "max_scale",
    "initial-scale": "initial_scale",
    "activation-scale": "activation_scale",
    "target-burst-capacity": "target_burst_capacity",
    "scale-down-delay": "scale_down_delay_s",
    "scale-to-zero-pod-retention-period": "pod_retention_s",
}


def autoscaling_spec(
    template: RevisionTemplate, defaults: AutoscalingSpec | None = None
) -> AutoscalingSpec:
    """The template's autoscaling annotations over `defaults` (default `AUTOSCALING_DEFAULTS`).

    The template was validated when it was applied, so an initial scale of 0 is read as
    it is; whether it is honoured is the autoscaler config's `allow_zero_initial_scale`.

    The target follows Knative's ResolveMetricTarget: for `rps` the annotation or the
    rps default; for concurrency the annotation, else `containerConcurrency` when set,
    else the default, and an annotated target above `containerConcurrency` is capped.
    """
    base = AUTOSCALING_DEFAULTS if defaults is None else defaults
    settings = autoscaling_settings(template.annotations, config=admitted())
    limit = template.container_concurrency
    changes: dict[str, Any] = {
        attr: settings[key] for key, attr in _FIELDS.items() if key in settings
    }
    metric = str(settings.get("metric", base.metric))
    if metric == RPS:
        changes["target"] = float(settings.get("target", base.rps_target))
    elif "target" in settings:
        target = float(settings["target"])
        changes["target"] = min(target, limit) if limit > 0 else target
    elif limit > 0:
        changes["target"] = float(limit)
    deadline = progress_deadline(template.annotations, "annotations")
    if deadline is not None:
        changes["progress_deadline_s"] = deadline
    changes["container_concurrency"] = limit
    return replace(base, **changes)
