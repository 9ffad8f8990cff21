"""Knative's `autoscaling.knative.dev/*` annotations: names, ranges, and their resolution.

`autoscaling_settings` validates a template's annotations as Knative's webhook does
(`pkg/apis/autoscaling/annotation_validation.go`); `autoscaling_spec` resolves them,
with `containerConcurrency`, over process-wide defaults into an `AutoscalingSpec`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from wakegate.ingress.kube_values import parse_go_duration
from wakegate.serving.config import SERVING_CONFIG, ServingConfig, admitted
from wakegate.serving.fields import fail, shown
from wakegate.serving.model import RevisionTemplate

AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
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
    "min-scale": ("min-scale", "minScale"),
    "max-scale": ("max-scale", "maxScale"),
    "initial-scale": ("initial-scale", "initialScale"),
    "target-burst-capacity": ("target-burst-capacity", "targetBurstCapacity"),
}
"""Supported setting → its annotation names under `autoscaling.knative.dev/`, current first."""

_ALIASES = {alias: setting for setting, names in AUTOSCALING_ANNOTATIONS.items() for alias in names}


def _float_setting(text: str, path: str, expected: str) -> float:
    if not _DECIMAL.match(text):
        fail(path, f"got {shown(text)}, expected {expected}")
    return float(text)


def _int_setting(text: str, path: str) -> int:
    if not _INTEGER.match(text) or not 0 <= int(text) <= 2**31 - 1:
        fail(path, f"got {shown(text)}, expected a non-negative integer")
    return int(text)


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
        where = f"{path}[{key}]"
        if setting == "class":
            if text != KPA_CLASS:
                fail(where, f"got {shown(text)}, expected {KPA_CLASS}")
            out[setting] = text
        elif setting == "metric":
            if text != "concurrency":
                fail(where, f'got {shown(text)}, expected "concurrency"')
            out[setting] = text
        elif setting == "target":
            value = _float_setting(text, where, "a number >= 0.01")
            if value < 0.01:
                fail(where, f"got {shown(text)}, expected a number >= 0.01")
            out[setting] = value
        elif setting in ("target-utilization-percentage", "panic-window-percentage"):
            value = _float_setting(text, where, "a number 1..100")
            if not 1 <= value <= 100:
                fail(where, f"got {shown(text)}, expected a number 1..100")
            out[setting] = value
        elif setting == "panic-threshold-percentage":
            value = _float_setting(text, where, "a number 110..1000")
            if not 110 <= value <= 1000:
                fail(where, f"got {shown(text)}, expected a number 110..1000")
            out[setting] = value
        elif setting == "target-burst-capacity":
            value = _float_setting(text, where, "a number >= 0, or -1 for unlimited")
            if value < 0 and value != -1:
                fail(where, f"got {shown(text)}, expected a number >= 0, or -1 for unlimited")
            out[setting] = value
        elif setting == "window":
            seconds = parse_go_duration(text)
            expected = "a duration 6s..1h in whole seconds, such as 60s or 2m"
            if (
                seconds is None
                or not 6 <= seconds <= 3600
                or not math.isclose(seconds, round(seconds), abs_tol=1e-9)
            ):
                fail(where, f"got {shown(text)}, expected {expected}")
            out[setting] = float(round(seconds))
        else:
            out[setting] = _int_setting(text, where)

    min_scale, max_scale = int(out.get("min-scale", 0)), int(out.get("max-scale", 0))
    if max_scale and max_scale < min_scale:
        key = found["max-scale"][0]
        fail(
            f"{path}[{key}]",
            f"got max-scale={max_scale} with min-scale={min_scale}, "
            "expected max-scale >= min-scale (or 0 for unlimited)",
        )
    if out.get("initial-scale") == 0 and not config.allow_zero_initial_scale:
        key, text = found["initial-scale"]
        fail(
            f"{path}[{key}]",
            f"got {shown(text)}, expected at least 1: zero initial scale is not allowed "
            "(config-autoscaler allow-zero-initial-scale; wakegate up --allow-zero-initial-scale)",
        )
    return out


@dataclass(frozen=True, slots=True)
class AutoscalingSpec:
    """A revision's KPA settings; the field defaults are the process-wide defaults.

    `target` is the per-pod concurrency the autoscaler aims for before utilisation is
    applied; `per_pod_target` is what it divides observed concurrency by.
    """

    target: float = 100.0
    utilization: float = 100.0
    """Percent of `target` to aim for."""
    window_s: float = 60.0
    panic_window_pct: float = 10.0
    panic_threshold_pct: float = 200.0
    min_scale: int = 0
    max_scale: int = 0
    """0 is unlimited."""
    initial_scale: int = 1
    target_burst_capacity: float = 200.0
    """-1 is unlimited: the activator stays in the path."""
    container_concurrency: int = 0
    """Hard per-pod limit from `containerConcurrency`; 0 is unlimited."""

    @property
    def per_pod_target(self) -> float:
        return max(0.01, self.target * self.utilization / 100.0)

    @property
    def panic_window_s(self) -> float:
        return self.window_s * self.panic_window_pct / 100.0


AUTOSCALING_DEFAULTS = AutoscalingSpec()
"""Defaults for settings a revision does not annotate; replace it (e.g. with
`dataclasses.replace(AUTOSCALING_DEFAULTS, window_s=6.0)`) or pass `defaults=`."""

_FIELDS = {
    "target-utilization-percentage": "utilization",
    "window": "window_s",
    "panic-window-percentage": "panic_window_pct",
    "panic-threshold-percentage": "panic_threshold_pct",
    "min-scale": "min_scale",
    "max-scale": "max_scale",
    "initial-scale": "initial_scale",
    "target-burst-capacity": "target_burst_capacity",
}


def autoscaling_spec(
    template: RevisionTemplate, defaults: AutoscalingSpec | None = None
) -> AutoscalingSpec:
    """The template's autoscaling annotations over `defaults` (default `AUTOSCALING_DEFAULTS`).

    The template was validated when it was applied, so an initial scale of 0 is read as
    it is; whether it is honoured is the autoscaler config's `allow_zero_initial_scale`.

    As in Knative's KPA, a template with `containerConcurrency` > 0 and no `target`
    annotation targets that limit, and an annotated target above the limit is capped.
    """
    base = AUTOSCALING_DEFAULTS if defaults is None else defaults
    settings = autoscaling_settings(template.annotations, config=admitted())
    limit = template.container_concurrency
    changes: dict[str, Any] = {
        attr: settings[key] for key, attr in _FIELDS.items() if key in settings
    }
    if "target" in settings:
        target = float(settings["target"])
        changes["target"] = min(target, limit) if limit > 0 else target
    elif limit > 0:
        changes["target"] = float(limit)
    changes["container_concurrency"] = limit
    return replace(base, **changes)
