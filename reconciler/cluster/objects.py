"""What cluster mode holds of the cluster, and how a split's endpoints are chosen.

Objects are kept trimmed to what routing reads. Endpoints of a split's backend
(namespace/service:port):
- an SKS of that name in mode Serve → the ready addresses of its private Service
  (`status.privateServiceName`), on the private Service port matching the split's;
- an SKS in mode Proxy, or in Serve with no ready pod → the activator's ready
  addresses, port 8012 (HTTP/1) or 8013 (h2c), the ports Knative's activator serves;
- no SKS → the Service's own ready EndpointSlice addresses, on the slice port named
  like the Service port (so a named or numbered targetPort resolves per pod);
- a Service of `type: ExternalName` → its `externalName` on the Service port, which
  the gateways resolve by DNS (net-kourier's LOGICAL_DNS cluster). Knative's
  DomainMapping and the host-rewrite conformance case send splits to such Services.
The upstream speaks h2c when the Service port is named `h2c`/`grpc`, has
appProtocol `kubernetes.io/h2c`, or the SKS's protocolType is `h2c`.

The endpoints are *unknown* while no EndpointSlice of the Service they come from
(the split's own, the SKS's private one, or the activator's) has been seen: an empty
endpoint set would then say "no pod" where the truth is "not read yet".
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wakegate.ingress.certificates import certificate_problem
from wakegate.ingress.kingress import API_VERSION, KIND
from wakegate.ingress.manifests import H2C_APP_PROTOCOLS, H2C_PORT_NAMES
from wakegate.ingress.model import Backend, BackendRef, Certificate, Endpoint, Ingress
from wakegate.reconciler.cluster.kubernetes import Obj

INGRESS_CLASS_ANNOTATION = "networking.knative.dev/ingress.class"
DEFAULT_INGRESS_CLASS = "wakegate.ingress.networking.knative.dev"
ACTIVATOR_SERVICE = "knative-serving/activator-service"
ACTIVATOR_HTTP1_PORT = 8012
ACTIVATOR_H2C_PORT = 8013
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
EXTERNAL_NAME = "ExternalName"
TLS_SECRET_TYPE = "kubernetes.io/tls"


# --- objects kept, trimmed to what routing reads ---------------------------------------


def _meta(obj: Mapping[str, Any], *, labels: bool = False) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out = {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}
    if labels and meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    return out


def trim_ingress(obj: Obj) -> Obj:
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    return {**obj, "metadata": meta}


def trim_service(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    trimmed: Obj = {"ports": spec.get("ports") or []}
    if spec.get("type") == EXTERNAL_NAME:
        trimmed["type"] = EXTERNAL_NAME
        trimmed["externalName"] = str(spec.get("externalName") or "")
    return {"metadata": _meta(obj), "spec": trimmed}


def trim_slice(obj: Obj) -> Obj:
    return {
        "metadata": _meta(obj, labels=True),
        "addressType": obj.get("addressType", "IPv4"),
        "endpoints": [
            {"addresses": ep.get("addresses") or [], "conditions": ep.get("conditions") or {}}
            for ep in obj.get("endpoints") or []
        ],
        "ports": obj.get("ports") or [],
    }


def trim_sks(obj: Obj) -> Obj:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata": _meta(obj),
        "spec": {"mode": spec.get("mode", ""), "protocolType": spec.get("protocolType", "")},
        "status": {"privateServiceName": status.get("privateServiceName", "")},
    }


def trim_secret(obj: Obj) -> Obj:
    data = obj.get("data") or {}
    return {
        "metadata": _meta(obj),
        "data": {k: data[k] for k in ("tls.crt", "tls.key") if k in data},
    }


def decode_certificate(secret: Mapping[str, Any]) -> Certificate | None:
    """The PEM pair of a kubernetes.io/tls Secret, or None if it has none."""
    data = secret.get("data") or {}
    try:
        cert = base64.b64decode(data["tls.crt"], validate=True).decode()
        key = base64.b64decode(data["tls.key"], validate=True).decode()
    except (KeyError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return Certificate(cert, key, certificate_problem(cert, key))


def ingress_class(obj: Mapping[str, Any]) -> str:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(INGRESS_CLASS_ANNOTATION, ""))


def parse_input(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a stored KIngress that `parse_ingress` validates."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "generation", "labels", "annotations")
            if k in meta
        },
        "spec": obj.get("spec"),
    }


# --- endpoint choice ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target: int | str | None
    http2: bool


def service_ports(service: Mapping[str, Any]) -> list[ServicePort]:
    ports = []
    for raw in (service.get("spec") or {}).get("ports") or []:
        name = str(raw.get("name") or "")
        protocol = str(raw.get("appProtocol") or "")
        ports.append(
            ServicePort(
                name=name,
                port=int(raw.get("port") or 0),
                target=raw.get("targetPort"),
                http2=name in H2C_PORT_NAMES or protocol in H2C_APP_PROTOCOLS,
            )
        )
    return ports


def find_port(service: Mapping[str, Any] | None, wanted: int | str) -> ServicePort | None:
    """The Service port a split's `servicePort` (number or name) means."""
    if service is None:
        return None
    ports = service_ports(service)
    for port in ports:
        if (port.port if isinstance(wanted, int) else port.name) == wanted:
            return port
    return None


def ready_endpoints(
    slices: Iterable[Mapping[str, Any]],
    *,
    port_name: str | None = None,
    fallback_port: int | None = None,
    fixed_port: int | None = None,
) -> tuple[Endpoint, ...]:
    """Ready addresses of EndpointSlices, on `fixed_port`, or on each slice's port
    named `port_name` (`fallback_port` when a slice has none of that name)."""
    found: set[Endpoint] = set()
    for eps in slices:
        if eps.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        port = fixed_port
        if port is None:
            named = [p for p in eps.get("ports") or [] if (p.get("name") or "") == port_name]
            port = int(named[0].get("port") or 0) if named else fallback_port
        if not port:
            continue
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            addresses = endpoint.get("addresses") or []
            if addresses:
                found.add(Endpoint(str(addresses[0]), port))
    return tuple(sorted(found, key=lambda e: (e.address, e.port)))


@dataclass
class ClusterObjects:
    """The Services, EndpointSlices (by owning Service), SKS and TLS Secrets seen."""

    activator: str = ACTIVATOR_SERVICE
    services: dict[str, Obj] = field(default_factory=dict)
    slices: dict[str, dict[str, Obj]] = field(default_factory=dict)
    sks: dict[str, Obj] = field(default_factory=dict)
    certificates: dict[str, Certificate | None] = field(default_factory=dict)

    def _slices(self, service: str) -> Iterable[Obj]:
        return self.slices.get(service, {}).values()

    def missing(self, ref: BackendRef) -> str | None:
        """Why `ref` names no Service port (no such Service, or no such port), if so."""
        service = self.services.get(f"{ref.namespace}/{ref.name}")
        if service is None:
            return f"service {ref.namespace}/{ref.name} not found"
        if find_port(service, ref.port) is None:
            port = ref.port if isinstance(ref.port, int) else f"named {ref.port!r}"
            return f"service {ref.namespace}/{ref.name} has no port {port}"
        spec = service.get("spec") or {}
        if spec.get("type") == EXTERNAL_NAME and not spec.get("externalName"):
            return f"service {ref.namespace}/{ref.name} is an ExternalName without externalName"
        return None

    def _unknown(self, service: str) -> str | None:
        if self.slices.get(service):
            return None
        return f"the endpoints of service {service} are not known yet (no EndpointSlice)"

    def resolve(self, ref: BackendRef) -> Resolution:
        """Where `ref`'s traffic goes now, the object keys that decided it, and whether
        its endpoints are known."""
        key = f"{ref.namespace}/{ref.name}"
        deps = {key}
        service = self.services.get(key)
        public = find_port(service, ref.port)
        http2 = (public is not None and public.http2) or (
            isinstance(ref.port, str) and ref.port in H2C_PORT_NAMES
        )
        spec = (service or {}).get("spec") or {}
        if spec.get("type") == EXTERNAL_NAME:
            if public is None or not spec.get("externalName"):
                return Resolution(None, frozenset(deps))
            target = Endpoint(str(spec["externalName"]), public.port)
            return Resolution(Backend((target,), http2, dns=True), frozenset(deps))
        sks = self.sks.get(key)
        if sks is not None:
            http2 = http2 or (sks.get("spec") or {}).get("protocolType") == "h2c"
            queue_port = ACTIVATOR_H2C_PORT if http2 else ACTIVATOR_HTTP1_PORT
            mode = (sks.get("spec") or {}).get("mode") or "Serve"
            private = (sks.get("status") or {}).get("privateServiceName") or ""
            if mode == "Serve" and private:
                private_key = f"{ref.namespace}/{private}"
                deps.add(private_key)
                private_service = self.services.get(private_key)
                port = find_port(private_service, ref.port)
                if port is None and public is not None:
                    port = find_port(private_service, public.name)
                endpoints = ready_endpoints(
                    self._slices(private_key),
                    port_name=port.name if port else None,
                    fallback_port=queue_port,
                )
                if endpoints:
                    return Resolution(Backend(endpoints, http2), frozenset(deps))
            deps.add(self.activator)
            endpoints = ready_endpoints(self._slices(self.activator), fixed_port=queue_port)
            return Resolution(
                Backend(endpoints, http2), frozenset(deps), self._unknown(self.activator)
            )
        if public is None:
            return Resolution(None, frozenset(deps))
        target = public.target if isinstance(public.target, int) else None
        endpoints = ready_endpoints(self._slices(key), port_name=public.name, fallback_port=target)
        return Resolution(Backend(endpoints, http2), frozenset(deps), self._unknown(key))


@dataclass(frozen=True, slots=True)
class Resolution:
    """A split's backend as resolved from the objects seen."""

    backend: Backend | None
    """None when its Service (or port) does not exist."""
    deps: frozenset[str]
    """The keys of the objects that decided it."""
    unknown: str | None = None
    """Why its endpoints are not known yet, if they are not."""


def backend_refs(ingress: Ingress | None) -> set[BackendRef]:
    if ingress is None:
        return set()
    return {split.backend for rule in ingress.rules for p in rule.paths for split in p.splits}


def secret_keys(ingress: Ingress | None) -> set[str]:
    if ingress is None:
        return set()
    return {f"{tls.secret_namespace}/{tls.secret_name}" for tls in ingress.tls}


def missing_backends(ingress: Ingress, objects: ClusterObjects) -> tuple[str, ...]:
    """One line per split of `ingress` whose Service or port does not exist, naming
    the split by its place in the KIngress spec."""
    found = []
    for i, rule in enumerate(ingress.rules):
        for j, path in enumerate(rule.paths):
            for k, split in enumerate(path.splits):
                problem = objects.missing(split.backend)
                if problem is not None:
                    found.append(f"spec.rules[{i}].http.paths[{j}].splits[{k}]: {problem}")
    return tuple(found)


def unknown_backends(ingress: Ingress, objects: ClusterObjects) -> tuple[str, ...]:
    """One line per split of `ingress` whose Service exists but whose endpoints are not
    known yet, naming the split by its place in the KIngress spec."""
    found = []
    for i, rule in enumerate(ingress.rules):
        for j, path in enumerate(rule.paths):
            for k, split in enumerate(path.splits):
                if objects.missing(split.backend) is not None:
                    continue
                unknown = objects.resolve(split.backend).unknown
                if unknown is not None:
                    found.append(f"spec.rules[{i}].http.paths[{j}].splits[{k}]: {unknown}")
    return tuple(found)


@dataclass
class IngressBook:
    """What the reconciler made of each KIngress of our class, keyed namespace/name;
    the status writer reads it."""

    stored: dict[str, Obj] = field(default_factory=dict)
    """The KIngress objects as last seen (status included)."""
    latest: dict[str, Ingress] = field(default_factory=dict)
    """The latest valid generation, applied once the Services it names exist."""
    held_back: set[str] = field(default_factory=set)
    """Keys whose latest valid generation waits for the Services it names, or for their
    endpoints to be known."""
    applied: dict[str, Ingress] = field(default_factory=dict)
    """The generation handed to the control plane."""
    applied_at: dict[str, float] = field(default_factory=dict)
    seen_at: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Key → (generation, `time.monotonic()`) when this replica first saw that valid
    generation; dropped once it is served (see `status.PROPAGATION`)."""
    invalid: dict[str, str] = field(default_factory=dict)
    """Keys whose latest generation does not validate → why."""
