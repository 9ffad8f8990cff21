"""Revisions: immutable snapshots of a Service's template.

Every change to `spec.template` creates a new Revision named `<service>-00001`,
`-00002`, … (Knative's Configuration reconciler), unless the template names itself with
`metadata.name`. Templates are compared as defaulted values, so applying the same
manifest twice creates nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wakegate.serving.autoscaling import AutoscalingSpec, autoscaling_spec
from wakegate.serving.config import ServingConfig, admitted
from wakegate.serving.fields import ServiceError
from wakegate.serving.manifests import template_to_dict
from wakegate.serving.model import RevisionTemplate, Service, child_name
from wakegate.serving.validation import parse_template


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
