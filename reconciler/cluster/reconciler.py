"""Cluster mode: KIngress and the endpoints they name, from Kubernetes → ControlPlane.

Informers keep local copies of the KIngress of our class, the Services, EndpointSlices
and ServerlessServices (SKS) they lead to, and the TLS Secrets (`objects`). Level-triggered:
each change re-derives only what depends on it (an index maps every object to the backends
whose endpoints were read from it) and sets the result in the ControlPlane, which
publishes whole snapshots. Nothing is pushed, and no status written, unless every
informer's store is current (listed, and its watch running since): not before every
informer has listed once, so a restarted controller never serves gateways a half-known
state, and not after an API server restart until every resource has re-listed or
resumed its watch, each on its own schedule. Changes seen meanwhile wait, and go out
together once all are current.

A split is Ready only once the endpoints behind it are known: an EndpointSlice of the
Service whose addresses it takes was seen (or the Service is an ExternalName, which
the gateways resolve by DNS). Until then its generation is held back as for a missing
Service, with LoadBalancerReady Unknown, as net-kourier skips an ingress whose
EndpointSlices are not there yet.

An invalid KIngress is not applied: the previous valid generation keeps serving and
the status says why. Status is written by `status.StatusWriter`, only while
`may_write_status()` (the leader).

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

A deleted TLS Secret (or one without a usable pair) takes its certificate out of the
ControlPlane; the TLS entries naming it lose their chain and say so in the status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Gauge

from wakegate.ingress.kingress import IngressError, parse_ingress
from wakegate.ingress.model import BackendRef
from wakegate.reconciler.cluster.gateway_probe import GatewayProber, GatewayService
from wakegate.reconciler.cluster.kingress_status import LoadBalancers, reported_served
from wakegate.reconciler.cluster.kubernetes import (
    ENDPOINT_SLICES,
    KINGRESSES,
    SECRETS,
    SERVERLESS_SERVICES,
    SERVICES,
    Backoff,
    Handler,
    Informer,
    KubeApi,
    Obj,
    Resource,
    key_of,
)
from wakegate.reconciler.cluster.objects import (
    ACTIVATOR_SERVICE,
    DEFAULT_INGRESS_CLASS,
    SERVICE_NAME_LABEL,
    TLS_SECRET_TYPE,
    ClusterObjects,
    IngressBook,
    backend_refs,
    decode_certificate,
    ingress_class,
    missing_backends,
    parse_input,
    ready_endpoints,
    secret_keys,
    trim_ingress,
    trim_secret,
    trim_service,
    trim_sks,
    trim_slice,
    unknown_backends,
)
from wakegate.reconciler.cluster.status import StatusWriter
from wakegate.xds.controlplane import ControlPlane

log = logging.getLogger(__name__)

INGRESSES = Gauge("wakegate_kingress", "KIngress objects of our class", ["state"])


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
        self.ingress_class = ingress_class
        self.backoff = backoff or Backoff()
        self.objects = ClusterObjects(activator=activator)
        self.book = IngressBook()
        self.synced = asyncio.Event()
        """Set once every source listed and the state they make was pushed."""
        self._parsed: dict[str, tuple[Any, Any]] = {}
        self._ref_users: dict[str, set[str]] = {}
        """Backend key → the ingress keys whose applied or latest generation names it."""
        self._refs: dict[str, BackendRef] = {}
        self._ref_problems: dict[str, tuple[str | None, str | None]] = {}
        """Backend key → why it names no Service port, and why its endpoints are not
        known, as last resolved (None, None when neither)."""
        self._tracked: dict[str, tuple[frozenset[BackendRef], frozenset[str]]] = {}
        """Ingress key → the backends and secrets registered for it."""
        self._deps: dict[str, frozenset[str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._cert_users: dict[str, set[str]] = {}
        self._dirty_ingresses: set[str] = set()
        self._dirty_latest: set[str] = set()
        self._dirty_refs: set[str] = set()
        self._dirty_certs: set[str] = set()
        self._live = False
        self.gateway_service = gateway_service
        self.prober: GatewayProber | None = None
        if gateway_service is not None:
            self.prober = prober or GatewayProber()
        self.status = StatusWriter(
            api,
            control_plane,
            self.book,
            self.objects,
            load_balancers=load_balancers,
            may_write_status=may_write_status,
            current=self.current,
            backoff=self.backoff,
            ack_poll_s=ack_poll_s,
            concurrency=status_concurrency,
            gateway_service=gateway_service,
            prober=self.prober,
        )
        if self.prober is not None:
            self.prober.on_change = self.status.wake

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
                on_sync=self._on_sync,
                **kw,
            )

        self.informers = [
            informer(KINGRESSES, self._on_ingress, trim_ingress),
            informer(SERVERLESS_SERVICES, self._on_sks, trim_sks),
            informer(SERVICES, self._on_service, trim_service),
            informer(ENDPOINT_SLICES, self._on_slice, trim_slice),
            informer(
                SECRETS, self._on_secret, trim_secret, field_selector=f"type={TLS_SECRET_TYPE}"
            ),
        ]

    # --- running ------------------------------------------------------------------------

    async def run(self, on_synced: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run the sources and the status writer until cancelled.

        `on_synced` is awaited once the first full state is in the ControlPlane and
        before any status is written; it is where the ControlPlane gets started, if
        it is not running yet (statuses wait for its snapshots)."""
        tasks = [asyncio.create_task(i.run(), name=f"informer-{i.name}") for i in self.informers]
        listed = asyncio.ensure_future(self._all_current())
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
            tasks.append(asyncio.create_task(self.status.run(), name="kingress-status"))
            await asyncio.gather(*tasks)
        finally:
            listed.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(listed, *tasks, return_exceptions=True)

    def _go_live(self) -> None:
        self._live = True
        self._dirty_latest.update(self.book.latest)
        self._dirty_ingresses.update(self.book.applied)
        self._dirty_refs.update(self._refs)
        self._dirty_certs.update(self._cert_users)
        self._push()
        self._update_gateway_pods()
        self.synced.set()
        log.info(
            "listed %d KIngress of class %s (%d invalid); serving",
            len(self.book.stored),
            self.ingress_class,
            len(self.book.invalid),
        )

    async def _all_current(self) -> None:
        """Until every informer has listed and none is stale."""
        while not self.current():
            await asyncio.gather(*(i.synced.wait() for i in self.informers))

    def current(self) -> bool:
        """Whether every informer's store is current (see the module docstring)."""
        return all(informer.synced.is_set() for informer in self.informers)

    def _on_sync(self, current: bool) -> None:
        if not self._live:
            return
        if not current:
            stale = [i.name for i in self.informers if not i.synced.is_set()]
            log.info("%s not current: changes wait", ", ".join(stale))
        elif self.current():
            log.info("every source is current again")
            self._push()
            self.status.wake()

    def resync_status(self) -> None:
        """Re-check every status (on gaining leadership)."""
        self.status.resync()

    def ingress_keys(self) -> list[str]:
        return sorted(self.book.stored)

    def invalid(self) -> dict[str, str]:
        return dict(self.book.invalid)

    # --- KIngress -----------------------------------------------------------------------

    def _on_ingress(self, kind: str, obj: Obj) -> None:
        key = key_of(obj)
        if kind == "DELETED" or ingress_class(obj) != self.ingress_class:
            if key in self.book.stored:
                self._forget(key)
            return
        self.book.stored[key] = obj
        self.status.mark(key)
        meta = obj.get("metadata") or {}
        signature = (meta.get("generation"), obj.get("spec"))
        if self._parsed.get(key) == signature:
            return
        self._parsed[key] = signature
        try:
            ingress = parse_ingress(parse_input(obj))
        except IngressError as exc:
            self.book.invalid[key] = str(exc)
            log.warning("KIngress %s generation %s is invalid: %s", key, signature[0], exc)
            self._count()
            return
        self.book.invalid.pop(key, None)
        self.book.latest[key] = ingress
        if self.book.seen_at.get(key, (None, 0.0))[0] != ingress.generation:
            self.book.seen_at[key] = (ingress.generation, time.monotonic())
        self._dirty_latest.add(key)
        self._track(key)
        self._count()
        self._push()

    def _level(self, key: str) -> None:
        """Hand the latest valid generation to the gateways once every Service port it
        names exists, or at once if the stored status reports it served (it was applied
        before, by this replica or another one)."""
        latest = self.book.latest.get(key)
        if latest is None or latest == self.book.applied.get(key):
            self.book.held_back.discard(key)
            return
        if (
            missing_backends(latest, self.objects) or unknown_backends(latest, self.objects)
        ) and not reported_served(self.book.stored.get(key), latest.generation):
            self.book.held_back.add(key)
            return
        self.book.held_back.discard(key)
        self.book.applied[key] = latest
        self._dirty_ingresses.add(key)
        self._track(key)

    def _track(self, key: str) -> None:
        """Register the backends of `key`'s applied and latest generations (so that
        their Services are watched for) and the TLS secrets of its applied one."""
        applied, latest = self.book.applied.get(key), self.book.latest.get(key)
        new_refs = frozenset(backend_refs(applied) | backend_refs(latest))
        new_secrets = frozenset(secret_keys(applied))
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
        for table in (self.book.stored, self._parsed, self.book.invalid, self.book.latest):
            table.pop(key, None)
        self.book.applied_at.pop(key, None)
        self.book.seen_at.pop(key, None)
        self.status.forget(key)
        self._dirty_latest.discard(key)
        self.book.held_back.discard(key)
        if self.book.applied.pop(key, None) is not None:
            self._dirty_ingresses.add(key)
        self._track(key)
        self._count()
        self._push()

    def _count(self) -> None:
        INGRESSES.labels(state="applied").set(len(self.book.applied))
        INGRESSES.labels(state="invalid").set(len(self.book.invalid))
        INGRESSES.labels(state="held_back").set(len(self.book.held_back))

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
        if not self._live or not self.current():
            return
        changed = False
        while self._dirty_refs or self._dirty_latest or self._dirty_ingresses or self._dirty_certs:
            changed = self._push_once() or changed
        if changed:
            self.status.wake()

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
            resolved = self.objects.resolve(ref)
            self._depend(ref_key, resolved.deps)
            if resolved.backend is None:
                self.cp.delete_backend(ref_key)
            else:
                self.cp.set_backend(ref_key, resolved.backend)
            problem = (self.objects.missing(ref), resolved.unknown)
            if problem != self._ref_problems.get(ref_key, (None, None)):
                if problem == (None, None):
                    del self._ref_problems[ref_key]
                else:
                    self._ref_problems[ref_key] = problem
                recheck.update(self._ref_users.get(ref_key, ()))
        for key in recheck:
            self._level(key)
            if key in self.book.stored:
                self.status.mark(key)
        if recheck:
            self._count()
        ingresses, self._dirty_ingresses = self._dirty_ingresses, set()
        now = time.time()
        for key in ingresses:
            ingress = self.book.applied.get(key)
            if ingress is None:
                self.cp.delete_ingress(key)
            else:
                self.cp.apply_ingress(ingress)
                self.book.applied_at[key] = now
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
