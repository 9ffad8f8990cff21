"""Cluster mode: KIngress and the endpoints they name, from Kubernetes → ControlPlane.

Informers keep local copies of the KIngress of our class, the Services, EndpointSlices
and ServerlessServices (SKS) they lead to, and the TLS Secrets. Level-triggered: each
change re-derives only what depends on it (an index maps every object to the backends
whose endpoints were read from it) and sets the result in the ControlPlane, which
publishes whole snapshots. Nothing is pushed before every informer has listed once,
so a restarted controller never serves gateways a half-known state.

Endpoints of a split's backend (namespace/service:port):
- an SKS of that name in mode Serve → the ready addresses of its private Service
  (`status.privateServiceName`), on the private Service port matching the split's;
- an SKS in mode Proxy, or in Serve with no ready pod → the activator's ready
  addresses, port 8012 (HTTP/1) or 8013 (h2c), the ports Knative's activator serves;
- no SKS → the Service's own ready EndpointSlice addresses, on the slice port named
  like the Service port (so a named or numbered targetPort resolves per pod).
The upstream speaks h2c when the Service port is named `h2c`/`grpc`, has
appProtocol `kubernetes.io/h2c`, or the SKS's protocolType is `h2c`.

An invalid KIngress is not applied: the previous valid generation keeps serving and
the status says why. Status is written only while `may_write_status()` (the leader).

A generation with a split naming a Service that does not exist, or a port that Service
does not have, is held back whole until they exist, as net-kourier (its translator
skips an ingress whose Service is not found) and net-contour (its reconciler returns
the lookup error before programming anything) do. The generation served before, if
any, keeps serving all its rules; none of the held-back one's rules are served, not
even those whose Services exist: serving a generation in part would answer 503 for the
missing split's share of its traffic, which is also what a Services informer lagging
the KIngress one would otherwise cause. NetworkConfigured and Ready are False
(BackendNotFound) with one line per such split, LoadBalancerReady is Unknown. It is
level-triggered like the rest: the generation is applied as soon as the Services (or
ports) appear, with no change to the KIngress. Once applied, a generation stays applied
when a Service it names goes away (its rules stay in place), with the same False
condition. A generation the stored status reports LoadBalancerReady (a held-back one
never gets that) is applied whatever its Services, so that a restarted or added replica
serves what the others do.

A generation counts as served (LoadBalancerReady) once
- with a `gateway_service`: every ready pod behind that Service answers its readiness
  probe (`gateway_probe`), so gateways connected to other replicas count too;
- without one: every gateway connected to this replica ACKed a snapshot containing it.
Either way a gateway of this replica that rejected the config since keeps it
False (GatewayRejected) until it accepts a later snapshot. With probes, a generation
the stored status already reports LoadBalancerReady (written by an earlier leader) counts
as served, so a new leader or a restarted one does not flip Ready while it re-learns.

A deleted TLS Secret (or one without a usable pair) takes its certificate out of the
ControlPlane; the TLS entries naming it lose their chain and say so in the status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from wakegate.ingress.certificates import certificate_problem
from wakegate.ingress.kingress import API_VERSION, KIND, IngressError, parse_ingress
from wakegate.ingress.manifests import H2C_APP_PROTOCOLS, H2C_PORT_NAMES
from wakegate.ingress.model import Backend, BackendRef, Certificate, Endpoint, Ingress
from wakegate.reconciler.cluster.gateway_probe import GatewayProber, GatewayService
from wakegate.reconciler.cluster.kingress_status import (
    LOAD_BALANCER_READY,
    LoadBalancers,
    Observation,
    condition_of,
    desired_status,
    same_status,
)
from wakegate.reconciler.cluster.kubernetes import (
    ENDPOINT_SLICES,
    KINGRESSES,
    SECRETS,
    SERVERLESS_SERVICES,
    SERVICES,
    ApiError,
    Backoff,
    Handler,
    Informer,
    KubeApi,
    Obj,
    Resource,
    key_of,
)
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.resources import SHORT_NAMES
from wakegate.xds.status import NodeStatus

log = logging.getLogger(__name__)

INGRESS_CLASS_ANNOTATION = "networking.knative.dev/ingress.class"
DEFAULT_INGRESS_CLASS = "wakegate.ingress.networking.knative.dev"
ACTIVATOR_SERVICE = "knative-serving/activator-service"
ACTIVATOR_HTTP1_PORT = 8012
ACTIVATOR_H2C_PORT = 8013
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TLS_SECRET_TYPE = "kubernetes.io/tls"

INGRESSES = Gauge("wakegate_kingress", "KIngress objects of our class", ["state"])
STATUS_WRITES = Counter(
    "wakegate_kingress_status_writes_total", "KIngress status writes", ["result"]
)


# --- objects kept, trimmed to what routing reads ---------------------------------------


def _meta(obj: Mapping[str, Any], *, labels: bool = False) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out = {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}
    if labels and meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    return out


def _trim_ingress(obj: Obj) -> Obj:
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    return {**obj, "metadata": meta}


def _trim_service(obj: Obj) -> Obj:
    return {"metadata": _meta(obj), "spec": {"ports": (obj.get("spec") or {}).get("ports") or []}}


def _trim_slice(obj: Obj) -> Obj:
    return {
        "metadata": _meta(obj, labels=True),
        "addressType": obj.get("addressType", "IPv4"),
        "endpoints": [
            {"addresses": ep.get("addresses") or [], "conditions": ep.get("conditions") or {}}
            for ep in obj.get("endpoints") or []
        ],
        "ports": obj.get("ports") or [],
    }


def _trim_sks(obj: Obj) -> Obj:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata": _meta(obj),
        "spec": {"mode": spec.get("mode", ""), "protocolType": spec.get("protocolType", "")},
        "status": {"privateServiceName": status.get("privateServiceName", "")},
    }


def _trim_secret(obj: Obj) -> Obj:
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
        return None

    def resolve(self, ref: BackendRef) -> tuple[Backend | None, frozenset[str]]:
        """Where `ref`'s traffic goes now, and the object keys that decided it."""
        key = f"{ref.namespace}/{ref.name}"
        deps = {key}
        public = find_port(self.services.get(key), ref.port)
        sks = self.sks.get(key)
        http2 = (public is not None and public.http2) or (
            isinstance(ref.port, str) and ref.port in H2C_PORT_NAMES
        )
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
                    return Backend(endpoints, http2), frozenset(deps)
            deps.add(self.activator)
            endpoints = ready_endpoints(self._slices(self.activator), fixed_port=queue_port)
            return Backend(endpoints, http2), frozenset(deps)
        if public is None:
            return None, frozenset(deps)
        target = public.target if isinstance(public.target, int) else None
        endpoints = ready_endpoints(self._slices(key), port_name=public.name, fallback_port=target)
        return Backend(endpoints, http2), frozenset(deps)


def _refs(ingress: Ingress | None) -> set[BackendRef]:
    if ingress is None:
        return set()
    return {split.backend for rule in ingress.rules for p in rule.paths for split in p.splits}


def _secrets(ingress: Ingress | None) -> set[str]:
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


def _nack_message(node: NodeStatus) -> str:
    nack = node.last_nack
    assert nack is not None
    kind = SHORT_NAMES.get(nack.type_url, nack.type_url)
    detail = " | ".join(line.strip() for line in nack.message.strip().splitlines() if line.strip())
    return f"gateway {node.node_id} rejected {kind} version {nack.version}: {detail}"


# --- the reconciler -------------------------------------------------------------------


class ClusterReconciler:
    """Keeps a ControlPlane levelled to the cluster, and KIngress status to the gateways."""

    def __init__(
        self,
        api: KubeApi,
        control_plane: ControlPlane,
        *,
        load_balancers: LoadBalancers,
        ingress_class: str = DEFAULT_INGRESS_CLASS,
        activator: str = ACTIVATOR_SERVICE,
        may_write_status: Callable[[], bool] = lambda: True,
        backoff: Backoff | None = None,
        ack_poll_s: float = 0.5,
        watch_timeout_s: int = 300,
        status_concurrency: int = 8,
        gateway_service: GatewayService | None = None,
        prober: GatewayProber | None = None,
    ) -> None:
        """With `gateway_service`, status follows readiness probes of its pods (through
        `prober`, or a default one); the ControlPlane's gateways must then serve the
        status virtual host (`GatewayConfig.readiness_probes`)."""
        if gateway_service is not None and not control_plane.gateway.readiness_probes:
            raise ValueError("probing the gateway pods needs GatewayConfig(readiness_probes=True)")
        self.api = api
        self.cp = control_plane
        self.load_balancers = load_balancers
        self.ingress_class = ingress_class
        self.may_write_status = may_write_status
        self.backoff = backoff or Backoff()
        self.ack_poll_s = ack_poll_s
        self.objects = ClusterObjects(activator=activator)
        self.synced = asyncio.Event()
        """Set once every source listed and the state they make was pushed."""
        self._status_limit = asyncio.Semaphore(status_concurrency)
        self._kingresses: dict[str, Obj] = {}
        self._parsed: dict[str, tuple[Any, Any]] = {}
        self._latest: dict[str, Ingress] = {}
        """Key → the latest valid generation, applied once the Services it names exist."""
        self._held_back: set[str] = set()
        """Keys whose latest valid generation waits for the Services it names."""
        self._applied: dict[str, Ingress] = {}
        self._applied_at: dict[str, float] = {}
        self._invalid: dict[str, str] = {}
        self._served: dict[str, Ingress] = {}
        """Key → the applied Ingress every gateway accepted (compared by identity)."""
        self._ref_users: dict[str, set[str]] = {}
        """Backend key → the ingress keys whose applied or latest generation names it."""
        self._refs: dict[str, BackendRef] = {}
        self._ref_problems: dict[str, str] = {}
        """Backend key → why it names no Service port, as last resolved."""
        self._tracked: dict[str, tuple[frozenset[BackendRef], frozenset[str]]] = {}
        """Ingress key → the backends and secrets registered for it."""
        self._deps: dict[str, frozenset[str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._cert_users: dict[str, set[str]] = {}
        self._dirty_ingresses: set[str] = set()
        self._dirty_latest: set[str] = set()
        self._dirty_refs: set[str] = set()
        self._dirty_certs: set[str] = set()
        self._status_dirty: set[str] = set()
        self._status_wake = asyncio.Event()
        self._errors: dict[str, tuple[str, ...]] = {}
        self._live = False
        self.gateway_service = gateway_service
        self.prober: GatewayProber | None = None
        if gateway_service is not None:
            self.prober = prober or GatewayProber()
            self.prober.on_change = self._status_wake.set

        def informer(
            resource: Resource, handler: Handler, transform: Callable[[Obj], Obj], **kw: Any
        ) -> Informer:
            return Informer(
                api,
                resource,
                handler,
                transform=transform,
                backoff=self.backoff,
                watch_timeout_s=watch_timeout_s,
                **kw,
            )

        self.informers = [
            informer(KINGRESSES, self._on_ingress, _trim_ingress),
            informer(SERVERLESS_SERVICES, self._on_sks, _trim_sks),
            informer(SERVICES, self._on_service, _trim_service),
            informer(ENDPOINT_SLICES, self._on_slice, _trim_slice),
            informer(
                SECRETS, self._on_secret, _trim_secret, field_selector=f"type={TLS_SECRET_TYPE}"
            ),
        ]

    # --- running ------------------------------------------------------------------------

    async def run(self, on_synced: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run the sources and the status writer until cancelled.

        `on_synced` is awaited once the first full state is in the ControlPlane and
        before any status is written; it is where the ControlPlane gets started, if
        it is not running yet (statuses wait for its snapshots)."""
        tasks = [asyncio.create_task(i.run(), name=f"informer-{i.name}") for i in self.informers]
        listed = asyncio.gather(*(i.synced.wait() for i in self.informers))
        try:
            await asyncio.wait([*tasks, listed], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    task.result()
            self._go_live()
            if on_synced is not None:
                await on_synced()
            if self.prober is not None:
                tasks.append(asyncio.create_task(self.prober.run(), name="gateway-probe"))
            tasks.append(asyncio.create_task(self._status_loop(), name="kingress-status"))
            await asyncio.gather(*tasks)
        finally:
            listed.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(listed, *tasks, return_exceptions=True)

    def _go_live(self) -> None:
        self._live = True
        self._dirty_latest.update(self._latest)
        self._dirty_ingresses.update(self._applied)
        self._dirty_refs.update(self._refs)
        self._dirty_certs.update(self._cert_users)
        self._push()
        self._update_gateway_pods()
        self.synced.set()
        log.info(
            "listed %d KIngress of class %s (%d invalid); serving",
            len(self._kingresses),
            self.ingress_class,
            len(self._invalid),
        )

    def resync_status(self) -> None:
        """Re-check every status (on gaining leadership)."""
        self._status_dirty.update(self._kingresses)
        self._status_wake.set()

    def ingress_keys(self) -> list[str]:
        return sorted(self._kingresses)

    def invalid(self) -> dict[str, str]:
        return dict(self._invalid)

    # --- KIngress -----------------------------------------------------------------------

    def _on_ingress(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        if kind == "DELETED" or ingress_class(obj) != self.ingress_class:
            if key in self._kingresses:
                self._forget(key)
            return
        self._kingresses[key] = obj
        self._status_dirty.add(key)
        self._status_wake.set()
        meta = obj.get("metadata") or {}
        signature = (meta.get("generation"), obj.get("spec"))
        if self._parsed.get(key) == signature:
            return
        self._parsed[key] = signature
        try:
            ingress = parse_ingress(parse_input(obj))
        except IngressError as exc:
            self._invalid[key] = str(exc)
            log.warning("KIngress %s generation %s is invalid: %s", key, signature[0], exc)
            self._count()
            return
        self._invalid.pop(key, None)
        self._latest[key] = ingress
        self._dirty_latest.add(key)
        self._track(key)
        self._count()
        self._push()

    def _level(self, key: str) -> None:
        """Hand the latest valid generation to the gateways once every Service port it
        names exists, or at once if the stored status reports it served (it was applied
        before, by this replica or another one)."""
        latest = self._latest.get(key)
        if latest is None or latest == self._applied.get(key):
            self._held_back.discard(key)
            return
        if missing_backends(latest, self.objects) and not self._reported_served(key, latest):
            self._held_back.add(key)
            return
        self._held_back.discard(key)
        self._applied[key] = latest
        self._dirty_ingresses.add(key)
        self._track(key)

    def _track(self, key: str) -> None:
        """Register the backends of `key`'s applied and latest generations (so that
        their Services are watched for) and the TLS secrets of its applied one."""
        applied, latest = self._applied.get(key), self._latest.get(key)
        new_refs = frozenset(_refs(applied) | _refs(latest))
        new_secrets = frozenset(_secrets(applied))
        old_refs, old_secrets = self._tracked.pop(key, (frozenset(), frozenset()))
        if new_refs or new_secrets:
            self._tracked[key] = (new_refs, new_secrets)
        for ref in new_refs - old_refs:
            users = self._ref_users.setdefault(ref.key, set())
            if not users:
                self._refs[ref.key] = ref
                self._dirty_refs.add(ref.key)
            users.add(key)
        for ref in old_refs - new_refs:
            users = self._ref_users.get(ref.key, set())
            users.discard(key)
            if not users:
                self._ref_users.pop(ref.key, None)
                self._refs.pop(ref.key, None)
                self._dirty_refs.add(ref.key)
        for secret in new_secrets - old_secrets:
            self._cert_users.setdefault(secret, set()).add(key)
            self._dirty_certs.add(secret)
        for secret in old_secrets - new_secrets:
            users = self._cert_users.get(secret, set())
            users.discard(key)
            if not users:
                self._cert_users.pop(secret, None)
                self._dirty_certs.add(secret)

    def _forget(self, key: str) -> None:
        for table in (self._kingresses, self._parsed, self._invalid, self._served, self._latest):
            table.pop(key, None)
        self._applied_at.pop(key, None)
        self._status_dirty.discard(key)
        self._dirty_latest.discard(key)
        self._held_back.discard(key)
        if self._applied.pop(key, None) is not None:
            self._dirty_ingresses.add(key)
        self._track(key)
        self._count()
        self._push()

    def _count(self) -> None:
        INGRESSES.labels(state="applied").set(len(self._applied))
        INGRESSES.labels(state="invalid").set(len(self._invalid))
        INGRESSES.labels(state="held_back").set(len(self._held_back))

    # --- what the backends read ---------------------------------------------------------

    def _touch(self, key: str) -> None:
        dependents = self._dependents.get(key)
        if dependents:
            self._dirty_refs.update(dependents)
            self._push()

    def _on_service(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.objects.services.pop(key, None)
        else:
            self.objects.services[key] = obj
        self._touch(key)

    def _on_slice(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            return
        owner = f"{meta.get('namespace')}/{service}"
        slices = self.objects.slices.setdefault(owner, {})
        if kind == "DELETED":
            slices.pop(str(meta.get("name")), None)
            if not slices:
                del self.objects.slices[owner]
        else:
            slices[str(meta.get("name"))] = obj
        self._touch(owner)
        if self.gateway_service is not None and owner == self.gateway_service.key:
            self._update_gateway_pods()

    def _update_gateway_pods(self) -> None:
        """Probe the ready pods behind the gateway Service."""
        service = self.gateway_service
        if self.prober is None or service is None:
            return
        slices = self.objects.slices.get(service.key, {}).values()
        if isinstance(service.port, int):
            pods = ready_endpoints(slices, fixed_port=service.port)
        else:
            pods = ready_endpoints(slices, port_name=service.port)
        self.prober.set_pods(pods)

    def _on_sks(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.objects.sks.pop(key, None)
        else:
            self.objects.sks[key] = obj
        self._touch(key)

    def _on_secret(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        if kind == "DELETED":
            self.objects.certificates.pop(key, None)
        else:
            self.objects.certificates[key] = decode_certificate(obj)
        if key in self._cert_users:
            self._dirty_certs.add(key)
            self._push()

    # --- into the control plane ---------------------------------------------------------

    def _push(self) -> None:
        if not self._live:
            return
        changed = False
        while self._dirty_refs or self._dirty_latest or self._dirty_ingresses or self._dirty_certs:
            changed = self._push_once() or changed
        if changed:
            self._status_wake.set()

    def _push_once(self) -> bool:
        """Set what is dirty in the ControlPlane; True if an ingress, a certificate or
        whether a backend exists changed (which the status may report)."""
        refs, self._dirty_refs = self._dirty_refs, set()
        certs, self._dirty_certs = self._dirty_certs, set()
        recheck, self._dirty_latest = self._dirty_latest, set()
        for secret in certs:
            certificate = self.objects.certificates.get(secret)
            if secret in self._cert_users and certificate is not None:
                self.cp.set_certificate(secret, certificate)
            else:
                self.cp.delete_certificate(secret)
        for ref_key in refs:
            ref = self._refs.get(ref_key)
            if ref is None:
                continue
            backend, deps = self.objects.resolve(ref)
            self._depend(ref_key, deps)
            if backend is None:
                self.cp.delete_backend(ref_key)
            else:
                self.cp.set_backend(ref_key, backend)
            problem = self.objects.missing(ref)
            if problem != self._ref_problems.get(ref_key):
                if problem is None:
                    del self._ref_problems[ref_key]
                else:
                    self._ref_problems[ref_key] = problem
                recheck.update(self._ref_users.get(ref_key, ()))
        for key in recheck:
            self._level(key)
            if key in self._kingresses:
                self._status_dirty.add(key)
        if recheck:
            self._count()
        ingresses, self._dirty_ingresses = self._dirty_ingresses, set()
        now = time.time()
        for key in ingresses:
            ingress = self._applied.get(key)
            if ingress is None:
                self.cp.delete_ingress(key)
            else:
                self.cp.apply_ingress(ingress)
                self._applied_at[key] = now
        for ref_key in refs:
            if ref_key not in self._refs:
                self._depend(ref_key, frozenset())
                self._ref_problems.pop(ref_key, None)
                self.cp.delete_backend(ref_key)
        return bool(ingresses or certs or recheck)

    def _depend(self, ref_key: str, deps: frozenset[str]) -> None:
        old = self._deps.get(ref_key, frozenset())
        if old == deps:
            return
        for key in old - deps:
            dependents = self._dependents.get(key)
            if dependents is not None:
                dependents.discard(ref_key)
                if not dependents:
                    del self._dependents[key]
        for key in deps - old:
            self._dependents.setdefault(key, set()).add(ref_key)
        if deps:
            self._deps[ref_key] = deps
        else:
            self._deps.pop(ref_key, None)

    # --- status -------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await self._status_wake.wait()
            self._status_wake.clear()
            pushed = dict(self._applied)
            version = await self.cp.flush()
            errors = self.cp.translator.errors
            for key in set(errors) | set(self._errors):
                if errors.get(key) != self._errors.get(key):
                    self._status_dirty.add(key)
            self._errors = errors
            unserved = [
                key for key, ingress in pushed.items() if self._served.get(key) is not ingress
            ]
            if self.prober is not None:
                await self._probe(unserved, pushed, version)
            elif unserved:
                acked = await self.cp.server.wait_acked(self.cp.group, version, self.ack_poll_s)
                if acked:
                    for key in unserved:
                        if self._applied.get(key) is pushed[key]:
                            self._served[key] = pushed[key]
                else:
                    self._status_wake.set()
            self._status_dirty.update(unserved)
            await self._write_statuses()

    async def _probe(self, unserved: list[str], pushed: dict[str, Ingress], version: str) -> None:
        """Mark served what every gateway pod answers for; probe for the rest."""
        prober = self.prober
        assert prober is not None
        if not self.may_write_status():
            prober.set_wanted({})
            return
        wanted: dict[str, str] = {}
        acked: bool | None = None
        for key in unserved:
            if self._reported_served(key, pushed[key]):
                if self._applied.get(key) is pushed[key]:
                    self._served[key] = pushed[key]
                continue
            found = self.cp.translator.readiness(key)
            if found is None or found[0] != pushed[key]:
                continue
            digest = found[1]
            if not prober.served(key, digest):
                wanted[key] = digest
                continue
            if self._rejection(key) is not None:
                if acked is None:
                    acked = await self.cp.server.wait_acked(
                        self.cp.group, version, self.ack_poll_s, min_gateways=0
                    )
                if not acked:
                    wanted[key] = digest
                    self._status_wake.set()
                    continue
            if self._applied.get(key) is pushed[key]:
                self._served[key] = pushed[key]
        prober.set_wanted(wanted)

    def _reported_served(self, key: str, ingress: Ingress) -> bool:
        """The stored status already says this generation is served."""
        status = (self._kingresses.get(key) or {}).get("status") or {}
        balancer = condition_of(status, LOAD_BALANCER_READY) or {}
        return (
            status.get("observedGeneration") == ingress.generation
            and balancer.get("status") == "True"
        )

    def observe(self, key: str) -> Observation:
        """What is known about one KIngress, for its status."""
        obj = self._kingresses[key]
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        applied = self._applied.get(key)
        served = applied is not None and self._served.get(key) is applied
        rejected, waiting = None, ""
        if applied is not None and not served:
            rejected = self._rejection(key)
            if self.prober is not None:
                waiting = self._probe_waiting(key)
            elif not self.cp.server.connected(self.cp.group):
                waiting = "no gateway is connected"
        latest = self._latest.get(key)
        missing = missing_backends(latest, self.objects) if latest is not None else ()
        return Observation(
            generation=generation,
            invalid=self._invalid.get(key),
            applied_generation=applied.generation if applied is not None else None,
            served=served,
            problems=self._errors.get(key, ()) if applied is not None else (),
            rejected=rejected,
            waiting=waiting,
            missing=missing,
            held_back=key in self._held_back,
        )

    def _rejection(self, key: str) -> str | None:
        """A NACK from a gateway of this replica since `key`'s generation was applied."""
        since = self._applied_at.get(key, 0.0)
        for node in self.cp.server.nodes():
            nack = node.last_nack
            if node.group == self.cp.group and node.connected and nack and nack.time >= since:
                return _nack_message(node)
        return None

    def _probe_waiting(self, key: str) -> str:
        assert self.prober is not None and self.gateway_service is not None
        pods = self.prober.pods
        if pods is not None and not pods:
            return f"no ready gateway pod behind Service {self.gateway_service.key}"
        found = self.cp.translator.readiness(key)
        if found is None:
            return "the gateway configuration is being built"
        return self.prober.waiting(key, found[1])

    async def _write_statuses(self) -> None:
        if not self.may_write_status():
            self._status_dirty.clear()
            return
        keys, self._status_dirty = self._status_dirty, set()
        await asyncio.gather(*(self._write_status(key) for key in sorted(keys)))

    async def _write_status(self, key: str) -> None:
        obj = self._kingresses.get(key)
        if obj is None:
            return
        status = desired_status(self.observe(key), self.load_balancers, obj.get("status"))
        if same_status(status, obj.get("status")):
            return
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        writes = Backoff(self.backoff.initial_s, self.backoff.max_s, attempts=3)
        async with self._status_limit:
            if not self.may_write_status():
                return
            try:
                updated = await writes.call(
                    f"status of KIngress {key}",
                    lambda: self.api.patch_status(KINGRESSES, namespace, name, status),
                )
            except ApiError as exc:
                STATUS_WRITES.labels(result="error").inc()
                if exc.status == 404:
                    return
                log.warning("cannot write the status of KIngress %s: %s", key, exc)
                self._status_dirty.add(key)
                loop = asyncio.get_running_loop()
                loop.call_later(self.backoff.max_s / 4, self._status_wake.set)
                return
        STATUS_WRITES.labels(result="ok").inc()
        current = self._kingresses.get(key)
        if current is not None:
            current["status"] = updated.get("status", status)
