"""Kubernetes-style manifests → routing state, for running without a cluster.

Accepts multi-document YAML holding KIngress objects
(`networking.internal.knative.dev/v1alpha1` Ingress), core/v1 `Endpoints` giving
the addresses behind the services those ingresses name, and core/v1 TLS `Secret`s.
The whole file is validated before anything is returned, so a bad document changes
nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from wakegate.ingress.certificates import certificate_problem
from wakegate.ingress.documents import load_all
from wakegate.ingress.kingress import IngressError, parse_ingress
from wakegate.ingress.model import Backend, BackendRef, Certificate, Endpoint, Ingress

H2C_PORT_NAMES = frozenset({"h2c", "grpc"})
H2C_APP_PROTOCOLS = frozenset({"kubernetes.io/h2c", "h2c", "grpc"})


class ManifestError(ValueError):
    """A one-line error naming the document and field at fault."""


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    http2: bool


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """A core/v1 Endpoints object, reduced to what routing needs."""

    namespace: str
    name: str
    addresses: tuple[str, ...]
    ports: tuple[EndpointPort, ...]

    def backend_for(self, ref: BackendRef) -> Backend | None:
        """The addresses behind `ref`, matching its port by name or number."""
        if isinstance(ref.port, str):
            matches = [p for p in self.ports if p.name == ref.port]
        else:
            matches = [p for p in self.ports if p.port == ref.port]
        if not matches and len(self.ports) == 1:
            matches = list(self.ports)
        if not matches:
            return None
        port = matches[0]
        return Backend(
            endpoints=tuple(Endpoint(a, port.port) for a in self.addresses), http2=port.http2
        )


@dataclass
class Manifests:
    ingresses: list[Ingress] = field(default_factory=list)
    endpoints: dict[str, ServiceEndpoints] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)

    def backends(self, ingresses: Iterable[Ingress] | None = None) -> dict[str, Backend]:
        """BackendRef.key → Backend for every split of the given (default: own) ingresses."""
        found: dict[str, Backend] = {}
        for ingress in self.ingresses if ingresses is None else ingresses:
            for rule in ingress.rules:
                for path in rule.paths:
                    for split in path.splits:
                        ref = split.backend
                        eps = self.endpoints.get(f"{ref.namespace}/{ref.name}")
                        backend = eps.backend_for(ref) if eps else None
                        if backend is not None:
                            found[ref.key] = backend
        return found


def load_manifests(text: str, source: str = "<input>") -> Manifests:
    try:
        documents = [d for d in load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{source}:{where}: malformed YAML: {problem}") from exc
    out = Manifests()
    for index, doc in enumerate(documents):
        where = f"{source}: document {index}"
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: expected a mapping, got {type(doc).__name__}")
        kind, api = doc.get("kind"), doc.get("apiVersion")
        try:
            if kind == "Ingress" and api == "networking.internal.knative.dev/v1alpha1":
                out.ingresses.append(parse_ingress(doc))
            elif kind == "Endpoints" and api == "v1":
                eps = _parse_endpoints(doc)
                out.endpoints[f"{eps.namespace}/{eps.name}"] = eps
            elif kind == "Secret" and api == "v1":
                key, cert = _parse_tls_secret(doc)
                out.certificates[key] = cert
            else:
                raise ManifestError(
                    f"apiVersion/kind: got {api}/{kind}, expected "
                    "networking.internal.knative.dev/v1alpha1/Ingress, v1/Endpoints or v1/Secret"
                )
        except (IngressError, ManifestError) as exc:
            raise ManifestError(f"{where}: {exc}") from exc
    return out


def _metadata(doc: dict[str, Any]) -> tuple[str, str]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ManifestError("metadata.name: expected a non-empty string")
    namespace = meta.get("namespace", "default")
    if not isinstance(namespace, str) or not namespace:
        raise ManifestError("metadata.namespace: expected a non-empty string")
    return namespace, meta["name"]


def _parse_endpoints(doc: dict[str, Any]) -> ServiceEndpoints:
    namespace, name = _metadata(doc)
    subsets = doc.get("subsets") or []
    if not isinstance(subsets, list):
        raise ManifestError("subsets: expected a list")
    addresses: list[str] = []
    ports: dict[tuple[str, int], EndpointPort] = {}
    for i, subset in enumerate(subsets):
        if not isinstance(subset, dict):
            raise ManifestError(f"subsets[{i}]: expected a mapping")
        for j, addr in enumerate(subset.get("addresses") or []):
            ip = addr.get("ip") if isinstance(addr, dict) else None
            if not isinstance(ip, str) or not ip:
                raise ManifestError(f"subsets[{i}].addresses[{j}].ip: expected an IP address")
            addresses.append(ip)
        for j, port in enumerate(subset.get("ports") or []):
            number = port.get("port") if isinstance(port, dict) else None
            if not isinstance(number, int) or not 1 <= number <= 65535:
                raise ManifestError(f"subsets[{i}].ports[{j}].port: expected an integer 1..65535")
            pname = str(port.get("name", ""))
            proto = str(port.get("appProtocol", ""))
            http2 = pname in H2C_PORT_NAMES or proto in H2C_APP_PROTOCOLS
            ports[(pname, number)] = EndpointPort(pname, number, http2)
    return ServiceEndpoints(namespace, name, tuple(addresses), tuple(ports.values()))


def _parse_tls_secret(doc: dict[str, Any]) -> tuple[str, Certificate]:
    namespace, name = _metadata(doc)
    data = doc.get("data") or {}
    string_data = doc.get("stringData") or {}
    pems: dict[str, str] = {}
    for field_name in ("tls.crt", "tls.key"):
        if field_name in string_data:
            pems[field_name] = str(string_data[field_name])
        elif field_name in data:
            try:
                pems[field_name] = base64.b64decode(data[field_name], validate=True).decode()
            except (ValueError, UnicodeDecodeError) as exc:
                raise ManifestError(f"data.{field_name}: expected base64-encoded PEM") from exc
        else:
            raise ManifestError(f"data.{field_name}: required for a TLS secret")
    problem = certificate_problem(pems["tls.crt"], pems["tls.key"])
    if problem:
        raise ManifestError(f"data: {problem}")
    return f"{namespace}/{name}", Certificate(pems["tls.crt"], pems["tls.key"])
