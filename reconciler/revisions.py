"""Revisions: immutable snapshots of a Service's template, and their autoscaling settings.

Every change to `spec.template` creates a new Revision named `<service>-00001`,
`-00002`, … (Knative's Configuration reconciler), unless the template names itself with
`metadata.name`. Templates are compared as defaulted values, so applying the same
manifest twice creates nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from wakegate.reconciler.serving import (
    RevisionTemplate,
    Service,
    ServiceError,
    ServingConfig,
    admitted,
    autoscaling_settings,
    child_name,
    parse_template,
    template_to_dict,
)


@dataclass(frozen=True, slots=True)
class Revision:
    namespace: str
    service: str
    name: str
    generation: int
    """1 for the first Revision of a Service, then one more for each template change."""
    template: RevisionTemplate
    created_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def autoscaling(self) -> AutoscalingSpec:
        """Autoscaling settings with the process-wide `AUTOSCALING_DEFAULTS`."""
        return autoscaling_spec(self.template)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; `Revision.from_dict` reads it back."""
        return {
            "namespace": self.namespace,
            "service": self.service,
            "name": self.name,
            "generation": self.generation,
            "createdAt": self.created_at.isoformat() if self.created_at else None,
            "template": template_to_dict(self.template),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: ServingConfig | None = None) -> Revision:
        """Read a stored revision back; it was validated when applied (see `admitted`)."""
        created = data.get("createdAt")
        template = parse_template(data["template"], data["service"], "template", admitted(config))
        return cls(
            namespace=data["namespace"],
            service=data["service"],
            name=data["name"],
            generation=int(data["generation"]),
            template=template,
            created_at=datetime.fromisoformat(created) if created else None,
        )


def service_revisions(service: Service, revisions: Iterable[Revision]) -> list[Revision]:
    """The revisions of `service` among `revisions`, oldest first."""
    own = [r for r in revisions if r.namespace == service.namespace and r.service == service.name]
    return sorted(own, key=lambda r: r.generation)


def latest_created(revisions: Iterable[Revision]) -> Revision | None:
    return max(revisions, key=lambda r: r.generation, default=None)


def latest_ready(revisions: Iterable[Revision], ready: Collection[str] | None) -> Revision | None:
    """The newest revision whose name is in `ready` (None: every revision is ready)."""
    candidates = [r for r in revisions if ready is None or r.name in ready]
    return latest_created(candidates)


def generated_name(service_name: str, generation: int) -> str:
    return child_name(service_name, f"-{generation:05d}")


def next_revision(
    service: Service,
    existing: Iterable[Revision],
    *,
    created_at: datetime | None = None,
) -> Revision | None:
    """The Revision that applying `service` creates, or None if its template is current.

    `existing` may hold other services' revisions; only this service's count. A named
    template (`spec.template.metadata.name`) must be new, or identical to the revision
    already holding that name: Knative forbids changing a named revision's template.
    """
    own = service_revisions(service, existing)
    latest = latest_created(own)
    generation = (latest.generation if latest else 0) + 1
    by_name = {r.name: r for r in own}
    template = service.template
    if template.name:
        current = by_name.get(template.name)
        if current is not None:
            if current.template == template:
                return None
            raise ServiceError(
                f'spec.template.metadata.name: revision "{template.name}" already exists with a '
                "different template, expected a new name for a changed template"
            )
        name = template.name
    else:
        if latest is not None and latest.template == template:
            return None
        name = generated_name(service.name, generation)
        bump = generation
        while name in by_name:
            bump += 1
            name = generated_name(service.name, bump)
    return Revision(
        namespace=service.namespace,
        service=service.name,
        name=name,
        generation=generation,
        template=template,
        created_at=created_at,
    )


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
