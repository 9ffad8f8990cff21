"""Service manifests: YAML or JSON text → Services, and Services back to Knative's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from wakegate.ingress.documents import load_all
from wakegate.serving.config import ServingConfig
from wakegate.serving.fields import ServiceError, shown
from wakegate.serving.model import API_VERSION, KIND, Probe, RevisionTemplate, Service
from wakegate.serving.validation import parse_service


def _yaml_documents(text: str) -> list[tuple[int, object]]:
    """(index, document) for each non-empty YAML document; syntax errors name the index."""
    documents: list[tuple[int, object]] = []
    loader = load_all(text)
    index = 0
    while True:
        try:
            document = next(loader)
        except StopIteration:
            return documents
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ServiceError(f"document {index}: malformed YAML{where}: {problem}") from None
        if document is not None:
            documents.append((index, document))
        index += 1


def load_services(text: str, config: ServingConfig | None = None) -> list[Service]:
    """Parse every Service in a multi-document YAML (or JSON) text, all or nothing.

    Empty documents are skipped and a `kind: List` contributes its `items`. Errors
    name the zero-based document index; a Service given twice is an error.
    """
    services: list[Service] = []
    seen: dict[str, str] = {}

    def add(where: str, document: object) -> None:
        try:
            service = parse_service(document, config)  # type: ignore[arg-type]
        except ServiceError as err:
            raise ServiceError(f"{where}: {err}") from None
        if service.key in seen:
            raise ServiceError(
                f"{where}: metadata.name: Service {service.key} "
                f"is also defined in {seen[service.key]}"
            )
        seen[service.key] = where
        services.append(service)

    for index, document in _yaml_documents(text):
        where = f"document {index}"
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                raise ServiceError(f"{where}: items: got {shown(items)}, expected a list")
            for item_index, item in enumerate(items):
                add(f"{where}: items[{item_index}]", item)
        else:
            add(where, document)
    return services


def _probe_to_dict(probe: Probe) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if probe.http_get is not None:
        get: dict[str, Any] = {"path": probe.http_get.path}
        if probe.http_get.port is not None:
            get["port"] = probe.http_get.port
        if probe.http_get.http_headers:
            get["httpHeaders"] = [{"name": n, "value": v} for n, v in probe.http_get.http_headers]
        out["httpGet"] = get
    elif probe.tcp_socket is not None:
        port = probe.tcp_socket.port
        out["tcpSocket"] = {} if port is None else {"port": port}
    if probe.initial_delay_s:
        out["initialDelaySeconds"] = probe.initial_delay_s
    if probe.period_s:
        out["periodSeconds"] = probe.period_s
        out["timeoutSeconds"] = probe.timeout_s
        out["failureThreshold"] = probe.failure_threshold
    out["successThreshold"] = probe.success_threshold
    return out


def template_to_dict(template: RevisionTemplate) -> dict[str, Any]:
    """The defaulted template as a `spec.template` object; `parse_template` reads it back."""
    c = template.container
    container: dict[str, Any] = {"name": c.name}
    if c.image:
        container["image"] = c.image
    if c.command:
        container["command"] = list(c.command)
    if c.args:
        container["args"] = list(c.args)
    if c.env:
        container["env"] = [{"name": e.name, "value": e.value} for e in c.env]
    port: dict[str, Any] = {"containerPort": c.port.container_port}
    if c.port.name:
        port["name"] = c.port.name
    container["ports"] = [port]
    container["readinessProbe"] = _probe_to_dict(c.readiness_probe)
    if c.working_dir:
        container["workingDir"] = c.working_dir
    metadata: dict[str, Any] = {}
    if template.name:
        metadata["name"] = template.name
    if template.labels:
        metadata["labels"] = dict(template.labels)
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    return {
        "metadata": metadata,
        "spec": {
            "containers": [container],
            "containerConcurrency": template.container_concurrency,
            "timeoutSeconds": template.timeout_seconds,
        },
    }


def service_to_dict(service: Service) -> dict[str, Any]:
    """The defaulted Service as a manifest; `parse_service` reads it back unchanged."""
    metadata: dict[str, Any] = {"name": service.name, "namespace": service.namespace}
    if service.labels:
        metadata["labels"] = dict(service.labels)
    if service.annotations:
        metadata["annotations"] = dict(service.annotations)
    traffic = []
    for target in service.traffic:
        item: dict[str, Any] = {"latestRevision": target.latest_revision, "percent": target.percent}
        if target.revision_name:
            item["revisionName"] = target.revision_name
        if target.tag:
            item["tag"] = target.tag
        traffic.append(item)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {"template": template_to_dict(service.template), "traffic": traffic},
    }
