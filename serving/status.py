"""A Knative Service's `status` and its Route's, computed from revisions and route.

The shape follows `serving.knative.dev/v1` ServiceStatus: `url`, `address.url`,
`latestCreatedRevisionName`, `latestReadyRevisionName`, `traffic[]` and the living
condition set `ConfigurationsReady`, `RoutesReady` → `Ready`, with Knative's reasons and
messages. The clock is passed in; a condition keeps its `lastTransitionTime` from the
previous status while its status, reason and message are unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wakegate.serving.conditions import (
    CONFIGURATIONS_READY,
    ROUTES_READY,
    Condition,
    ConditionStatus,
    ready_condition,
    rfc3339,
)
from wakegate.serving.model import Service
from wakegate.serving.revision import Revision, latest_created, latest_ready, service_revisions


@dataclass(frozen=True, slots=True)
class TrafficStatus:
    """One entry of `status.traffic`: a spec target resolved to its revision."""

    revision_name: str
    percent: int
    latest_revision: bool
    tag: str = ""
    url: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "revisionName": self.revision_name,
            "percent": self.percent,
            "latestRevision": self.latest_revision,
        }
        if self.tag:
            out["tag"] = self.tag
        if self.url:
            out["url"] = self.url
        return out


@dataclass(frozen=True, slots=True)
class RouteStatus:
    url: str
    """The main URL: external unless the service is cluster-local."""
    address_url: str
    """The cluster-local URL (`http://{name}.{namespace}.svc.{cluster domain}`)."""
    traffic: tuple[TrafficStatus, ...]
    """Empty when the targets cannot all be resolved."""
    condition: Condition
    """RoutesReady as far as traffic assignment goes (the gateways' ACK is the caller's)."""

    @property
    def traffic_assigned(self) -> bool:
        """False means: keep the ingress applied before, the returned one has no rules."""
        return self.condition.is_true


def configurations_ready(
    latest: Revision | None,
    ready: Collection[str] | None,
    failed: Mapping[str, str],
) -> Condition:
    """ConfigurationsReady from the newest revision: ready, failed, or still coming up."""
    if latest is None:
        return Condition(
            CONFIGURATIONS_READY, ConditionStatus.UNKNOWN, "RevisionMissing", "No Revision yet."
        )
    if latest.name in failed:
        return Condition(
            CONFIGURATIONS_READY,
            ConditionStatus.FALSE,
            "RevisionFailed",
            f'Revision "{latest.name}" failed with message: {failed[latest.name]}.',
        )
    if ready is None or latest.name in ready:
        return Condition(CONFIGURATIONS_READY, ConditionStatus.TRUE)
    return Condition(
        CONFIGURATIONS_READY,
        ConditionStatus.UNKNOWN,
        "Deploying",
        f'Revision "{latest.name}" is not yet ready.',
    )


def routes_ready(
    service: Service,
    route: RouteStatus,
    latest_ready_name: str,
    ingress_ready: bool,
) -> Condition:
    """RoutesReady: traffic assigned, the gateways programmed, and traffic on the latest."""
    if not route.condition.is_true:
        return Condition(
            ROUTES_READY, route.condition.status, route.condition.reason, route.condition.message
        )
    if not ingress_ready:
        return Condition(
            ROUTES_READY,
            ConditionStatus.UNKNOWN,
            "IngressNotConfigured",
            "Ingress has not yet been reconciled.",
        )
    floating = any(t.latest_revision for t in service.traffic)
    served = {t.revision_name for t in route.traffic if t.latest_revision}
    if floating and latest_ready_name and served != {latest_ready_name}:
        return Condition(
            ROUTES_READY,
            ConditionStatus.UNKNOWN,
            "TrafficNotMigrated",
            "Traffic is not yet migrated to the latest revision.",
        )
    return Condition(ROUTES_READY, ConditionStatus.TRUE)


def _transition_times(previous: Mapping[str, Any] | None) -> dict[str, tuple[tuple[str, ...], str]]:
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for item in (previous or {}).get("conditions") or []:
        if isinstance(item, Mapping) and "type" in item and "lastTransitionTime" in item:
            identity = tuple(str(item.get(k, "")) for k in ("status", "reason", "message"))
            out[str(item["type"])] = (identity, str(item["lastTransitionTime"]))
    return out


def service_status(
    service: Service,
    revisions: Sequence[Revision],
    route: RouteStatus,
    *,
    now: datetime,
    ready: Collection[str] | None = None,
    failed: Mapping[str, str] | None = None,
    ingress_ready: bool = True,
    previous: Mapping[str, Any] | None = None,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The Service's `status` object.

    `ready` names the revisions that have become ready (a revision scaled to zero stays
    ready; None means all), `failed` maps revision names to why they failed,
    `ingress_ready` says whether the gateways have accepted the route's rules, and
    `previous` is the last status written, for transition times and for the route
    fields while the route cannot be programmed (Knative keeps them then).
    """
    failed = failed or {}
    own = service_revisions(service, revisions)
    created = latest_created(own)
    newest_ready = latest_ready([r for r in own if r.name not in failed], ready)
    ready_name = newest_ready.name if newest_ready else ""

    config_cond = configurations_ready(created, ready, failed)
    route_cond = routes_ready(service, route, ready_name, ingress_ready)
    conditions = [config_cond, route_cond, ready_condition([config_cond, route_cond])]

    times = _transition_times(previous)
    stamp = rfc3339(now)
    rendered = []
    for condition in sorted(conditions, key=lambda c: c.type):
        identity = (condition.status.value, condition.reason, condition.message)
        kept = times.get(condition.type)
        rendered.append(condition.to_dict(kept[1] if kept and kept[0] == identity else stamp))

    status: dict[str, Any] = {}
    if observed_generation is not None:
        status["observedGeneration"] = observed_generation
    status["url"] = route.url
    status["address"] = {"url": route.address_url}
    if created is not None:
        status["latestCreatedRevisionName"] = created.name
    if ready_name:
        status["latestReadyRevisionName"] = ready_name
    if route.traffic:
        status["traffic"] = [t.to_dict() for t in route.traffic]
    elif previous and previous.get("traffic"):
        status["traffic"] = list(previous["traffic"])
    status["conditions"] = rendered
    return status
