"""An ingress of the routing model as a KIngress object (`kubectl get -o yaml` shape)."""

from __future__ import annotations

from typing import Any

from wakegate.ingress.model import Headers, Ingress, Path

API_VERSION = "networking.internal.knative.dev/v1alpha1"


def _headers(headers: Headers) -> dict[str, str]:
    return dict(headers)


def _path(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if path.path:
        out["path"] = path.path
    if path.headers:
        out["headers"] = {name: {"exact": value} for name, value in path.headers}
    if path.rewrite_host:
        out["rewriteHost"] = path.rewrite_host
    if path.append_headers:
        out["appendHeaders"] = _headers(path.append_headers)
    splits = []
    for split in path.splits:
        item: dict[str, Any] = {
            "serviceNamespace": split.backend.namespace,
            "serviceName": split.backend.name,
            "servicePort": split.backend.port,
            "percent": split.percent,
        }
        if split.append_headers:
            item["appendHeaders"] = _headers(split.append_headers)
        splits.append(item)
    out["splits"] = splits
    return out


def ingress_object(ingress: Ingress) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "httpOption": str(ingress.http_option),
        "rules": [
            {
                "hosts": list(rule.hosts),
                "visibility": str(rule.visibility),
                "http": {"paths": [_path(p) for p in rule.paths]},
            }
            for rule in ingress.rules
        ],
    }
    if ingress.tls:
        spec["tls"] = [
            {
                "hosts": list(t.hosts),
                "secretNamespace": t.secret_namespace,
                "secretName": t.secret_name,
            }
            for t in ingress.tls
        ]
    metadata: dict[str, Any] = {"name": ingress.name, "namespace": ingress.namespace}
    if ingress.generation:
        metadata["generation"] = ingress.generation
    return {"apiVersion": API_VERSION, "kind": "Ingress", "metadata": metadata, "spec": spec}
