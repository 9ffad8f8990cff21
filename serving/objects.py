"""Knative Serving objects as the Kubernetes API shows them (`kubectl get -o yaml`).

Service, Route and Revision (`serving.knative.dev/v1`) and the Pods behind a revision
(`v1`), each with `apiVersion`, `kind`, `metadata`, `spec` and `status`, so a script
written against Knative (`jq .status.url`, `-o jsonpath={.status.url}`) reads local
mode's objects unchanged. Lists are `kind: List` with `items`, as kubectl prints them.

One deliberate addition: a Route's `status.domain`, the host of its URL, which Knative's
v1alpha1 Route carried and the hello-world walkthrough still reads
(`kubectl get route helloworld-go --output jsonpath="{.status.domain}"`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from wakegate.serving.conditions import (
    READY,
    ROUTES_READY,
    Condition,
    ConditionStatus,
    condition_of,
    ready_condition,
    rfc3339,
)
from wakegate.serving.manifests import service_to_dict, template_to_dict
from wakegate.serving.model import API_VERSION, Service
from wakegate.serving.revision import Revision

GROUP = API_VERSION.partition("/")[0]
SERVICE_LABEL = f"{GROUP}/service"
CONFIGURATION_LABEL = f"{GROUP}/configuration"
CONFIGURATION_GENERATION_LABEL = f"{GROUP}/configurationGeneration"
REVISION_LABEL = f"{GROUP}/revision"
ROUTING_STATE_LABEL = f"{GROUP}/routingState"


def object_list(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """kubectl's list of mixed or same-kind objects."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": list(items),
    }


def _metadata(
    name: str,
    namespace: str,
    created: datetime | None,
    *,
    generation: int | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": namespace}
    if generation is not None:
        out["generation"] = generation
    if created is not None:
        out["creationTimestamp"] = rfc3339(created)
    if labels:
        out["labels"] = dict(labels)
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def service_object(
    service: Service,
    status: Mapping[str, Any],
    *,
    generation: int,
    created: datetime | None,
) -> dict[str, Any]:
    """A Service with its stored status (see `status.service_status`)."""
    manifest = service_to_dict(service)
    return {
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": _metadata(
            service.name,
            service.namespace,
            created,
            generation=generation,
            labels=service.labels,
            annotations=service.annotations,
        ),
        "spec": manifest["spec"],
        "status": dict(status),
    }


def route_object(
    service: Service,
    status: Mapping[str, Any],
    *,
    generation: int,
    created: datetime | None,
) -> dict[str, Any]:
    """The Service's Route: its traffic spec, URL, resolved traffic and readiness.

    The Route's own conditions follow from the Service's RoutesReady: traffic assigned
    unless RoutesReady names why it is not, the ingress ready once the gateways serve
    it. A Service waiting for traffic to move to its latest revision has a Ready Route.
    """
    routes = condition_of(status, ROUTES_READY)
    reason = routes.get("reason", "")
    stamp = routes.get("lastTransitionTime", "")
    true = {"status": "True", "lastTransitionTime": stamp}
    if routes.get("status") == "True" or reason == "TrafficNotMigrated":
        assigned = ingress = ready = true
    elif reason == "IngressNotConfigured":
        assigned = true
        ingress = ready = {k: v for k, v in routes.items() if k != "type"}
    else:
        assigned = ready = {k: v for k, v in routes.items() if k != "type"}
        ingress = {"status": "Unknown", "lastTransitionTime": stamp}
    conditions = [
        {"type": "AllTrafficAssigned", **assigned},
        {"type": "IngressReady", **ingress},
        {"type": READY, **ready},
    ]
    url = str(status.get("url", ""))
    route_status: dict[str, Any] = {"observedGeneration": generation, "url": url}
    if "address" in status:
        route_status["address"] = status["address"]
    route_status["domain"] = urlsplit(url).hostname or ""
    if status.get("traffic"):
        route_status["traffic"] = list(status["traffic"])
    route_status["conditions"] = conditions
    return {
        "apiVersion": API_VERSION,
        "kind": "Route",
        "metadata": _metadata(
            service.name,
            service.namespace,
            created,
            generation=generation,
            labels={SERVICE_LABEL: service.name},
        ),
        "spec": {"traffic": service_to_dict(service)["spec"]["traffic"]},
        "status": route_status,
    }


@dataclass(frozen=True, slots=True)
class RevisionState:
    """What the runtime knows of a revision."""

    ready: bool
    """It has become Ready (its initial pods were all ready once); it stays so at zero."""
    failed: str = ""
    """Why its pods keep failing, "" when they do not."""
    desired: int | None = None
    actual: int = 0
    """Ready pods."""
    routed: bool = False
    """A route sends it traffic."""


def revision_object(revision: Revision, state: RevisionState) -> dict[str, Any]:
    """A Revision with Knative's conditions: Ready from ResourcesAvailable and
    ContainerHealthy, and Active (severity Info) as the KPA reconciler marks it
    (`computeActiveCondition`): True with a ready pod, Unknown "Queued" while pods are
    asked for and none is ready, False "NoTraffic" at zero."""
    created = revision.created_at
    stamp = rfc3339(created) if created is not None else ""
    if state.failed:
        healthy = Condition(
            "ContainerHealthy", ConditionStatus.FALSE, "ContainerFailed", state.failed
        )
        resources = Condition(
            "ResourcesAvailable", ConditionStatus.FALSE, "ContainerFailed", state.failed
        )
    elif state.ready:
        healthy = Condition("ContainerHealthy", ConditionStatus.TRUE)
        resources = Condition("ResourcesAvailable", ConditionStatus.TRUE)
    else:
        healthy = Condition("ContainerHealthy", ConditionStatus.UNKNOWN, "Deploying")
        resources = Condition("ResourcesAvailable", ConditionStatus.UNKNOWN, "Deploying")
    if state.actual > 0:
        active = Condition("Active", ConditionStatus.TRUE)
    elif state.ready and not state.desired:
        active = Condition(
            "Active", ConditionStatus.FALSE, "NoTraffic", "The target is not receiving traffic."
        )
    else:
        active = Condition(
            "Active",
            ConditionStatus.UNKNOWN,
            "Queued",
            "Requests to the target are being buffered as resources are provisioned.",
        )
    ready = ready_condition([resources, healthy])
    conditions = sorted([active, healthy, ready, resources], key=lambda c: c.type)
    template = template_to_dict(revision.template)
    labels = {
        **revision.template.labels,
        CONFIGURATION_LABEL: revision.service,
        CONFIGURATION_GENERATION_LABEL: str(revision.generation),
        ROUTING_STATE_LABEL: "active" if state.routed else "reserve",
        SERVICE_LABEL: revision.service,
    }
    rendered = [c.to_dict(stamp) for c in conditions]
    for condition in rendered:
        if condition["type"] == "Active":
            condition["severity"] = "Info"
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "conditions": rendered,
        "actualReplicas": state.actual,
    }
    if state.desired is not None:
        status["desiredReplicas"] = state.desired
    return {
        "apiVersion": API_VERSION,
        "kind": "Revision",
        "metadata": _metadata(
            revision.name,
            revision.namespace,
            created,
            generation=1,
            labels=labels,
            annotations=revision.template.annotations,
        ),
        "spec": template["spec"],
        "status": status,
    }


_PHASES = {
    "Pending": "Pending",
    "Running": "Running",
    "Ready": "Running",
    "Terminating": "Running",
    "Terminated": "Succeeded",
    "Failed": "Failed",
}


def pod_object(pod: Mapping[str, Any], service: str, container: str) -> dict[str, Any]:
    """A pod as `v1` Pod, from the runtime's status dict (`runtime.pods.PodStatus`)."""
    started = pod.get("startedAt")
    created = datetime.fromisoformat(started) if started else None
    phase = str(pod.get("phase", ""))
    state: dict[str, Any]
    if phase in ("Ready", "Running"):
        state = {"running": {"startedAt": rfc3339(created)} if created else {}}
    elif phase == "Terminated":
        state = {"terminated": {"reason": "Completed"}}
    else:
        state = {"waiting": {"reason": pod.get("reason") or phase}}
    labels = {
        CONFIGURATION_LABEL: service,
        REVISION_LABEL: str(pod["revision"]),
        SERVICE_LABEL: service,
    }
    status: dict[str, Any] = {"phase": _PHASES.get(phase, "Unknown")}
    if pod.get("address"):
        status["podIP"] = pod["address"]
    if created is not None:
        status["startTime"] = rfc3339(created)
    status["conditions"] = [
        {"type": "Ready", "status": "True" if pod.get("ready") else "False"},
    ]
    status["containerStatuses"] = [
        {
            "name": container,
            "ready": bool(pod.get("ready")),
            "restartCount": int(pod.get("restarts", 0)),
            "started": phase in ("Ready", "Running"),
            "state": state,
        }
    ]
    if pod.get("reason"):
        status["message"] = pod["reason"]
    spec: dict[str, Any] = {"containers": [{"name": container}]}
    if pod.get("port"):
        spec["containers"][0]["ports"] = [{"containerPort": pod["port"]}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(str(pod["name"]), str(pod["namespace"]), created, labels=labels),
        "spec": spec,
        "status": status,
    }


def full_name(obj: Mapping[str, Any]) -> str:
    """`kubectl get -o name`: `service.serving.knative.dev/hello`, `pod/hello-00001-x`."""
    kind = str(obj.get("kind", "")).lower()
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.partition("/")[0] if "/" in api_version else ""
    prefix = f"{kind}.{group}" if group else kind
    return f"{prefix}/{obj.get('metadata', {}).get('name', '')}"


def items_of(obj: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    """The objects of a List, or the one object."""
    if obj.get("kind") == "List":
        return list(obj.get("items") or [])
    return [obj]
