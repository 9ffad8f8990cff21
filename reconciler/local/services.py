"""The local Knative Serving reconciler: Services in the store → revisions, pods, routes.

Level-triggered: a reconcile of one Service recomputes everything from the store
and the live pods (revisions to run, endpoints, the route's ingress rules, status),
so it can run any number of times. Applying validates every document before
anything is written, and writes each Service with its new Revision in one
transaction.

Reconciles run in batches: the Services queued when the worker gets to them are
reconciled together, their routes handed to the control plane at once and the
gateways waited for once; then each Service's post-ACK steps and status follow, the
statuses written in one transaction. One change costs its Service's work and one
wait for the gateways whatever else is stored: nothing on its path reads or parses
every Service or revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from wakegate.autoscaler.config import DEFAULT_CONFIG, AutoscalerConfig, RevisionScaling
from wakegate.autoscaler.decider import Decision, Mode
from wakegate.autoscaler.scaler import Autoscaler
from wakegate.autoscaler.service import AutoscalerService
from wakegate.ingress.configmap import ConfigError, ConfigMap
from wakegate.ingress.model import Backend, BackendRef, Endpoint, Gate, Ingress
from wakegate.reconciler.local.config import Baseline, Settings, resolve
from wakegate.reconciler.local.revision_index import RevisionIndex
from wakegate.reconciler.local.routes import RouteConfig, route_ingress
from wakegate.reconciler.local.store import Store
from wakegate.runtime.pods import PodEndpoint
from wakegate.runtime.revision_pods import RevisionPods
from wakegate.runtime.spec import PodError, PodSpec, resolve_command
from wakegate.serving.autoscaling import autoscaling_spec
from wakegate.serving.conditions import condition_of
from wakegate.serving.config import SERVING_CONFIG, ServingConfig, admitted
from wakegate.serving.domains import default_domains
from wakegate.serving.fields import ServiceError
from wakegate.serving.manifests import load_services, service_to_dict
from wakegate.serving.model import SERVICE_PORT, Service
from wakegate.serving.revision import Revision, latest_created, next_revision
from wakegate.serving.status import RouteStatus, service_status
from wakegate.serving.validation import parse_service, require_local_command

log = logging.getLogger(__name__)

READY_SETTING = "ready-revisions"
CONFIGMAPS_SETTING = "configmaps"
"""The applied ConfigMaps' data, by name."""
RESYNC_S = 10.0
"""Every Service with pods, or not served yet, is reconciled at least this often, so pod
failures and missed progress deadlines reach status."""
MAX_BATCH = 5000
"""Services reconciled together at most; the gateways are waited for once per batch."""
SLICE = 50
"""Services of a batch prepared (and finished) between two turns of the event loop, so
a large batch never holds up requests, xDS or pods for long."""
SERVED_TIMEOUT_S = 10.0
"""How long a reconcile (or a delete) waits for the gateways to ACK."""


class Routing(Protocol):
    """What the reconciler needs of the control plane."""

    def apply_ingress(self, ingress: Ingress) -> None: ...
    def delete_ingress(self, key: str) -> bool: ...
    def ingresses(self) -> list[Ingress]: ...
    def set_backend(self, key: str, backend: Backend) -> None: ...
    def delete_backend(self, key: str) -> None: ...
    def set_gate(self, gate: Gate) -> None: ...
    def delete_gate(self, key: str) -> None: ...
    async def wait_served(self, timeout: float = 10.0) -> bool: ...


ScalePolicy = Callable[[Revision, bool], int]
"""(revision, routed) → pods to run. The autoscaler replaces the default."""


def initial_scale_policy(revision: Revision, routed: bool) -> int:
    """Without an autoscaler: routed (or not yet ready) revisions run their initial scale,
    at least one pod, since without an activator nothing would wake a revision at zero."""
    spec = revision.autoscaling
    if not routed:
        return spec.min_scale
    return max(spec.min_scale, spec.initial_scale, 1)


SERVED, FAILED, WAITING = "served", "failed", "waiting"
OUTCOME_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Outcome:
    """How waiting for an applied Service ended: served, failed (with why), or still
    waiting when the time ran out (with its Ready condition's message)."""

    state: str
    reason: str = ""


@dataclass(frozen=True)
class Applied:
    service: Service
    revision: str
    """The revision the apply created, "" when the template was unchanged."""
    generation: int


@dataclass
class Activation:
    """Scale to zero and back: the autoscaler decides, the activator holds requests."""

    autoscaler: Autoscaler
    config: AutoscalerConfig
    activator: Endpoint
    """Where the gateway sends a revision's traffic in proxy mode."""
    pods_feed: AutoscalerService
    """Tells the activator each revision's ready pods."""
    activator_h2c: Endpoint | None = None
    """The activator's h2c listener, for revisions whose port speaks HTTP/2."""
    gate: Endpoint | None = None
    """The gateway's gate listener (see `wakegate.xds.gate`); None: no per-pod limits."""


@dataclass
class _Live:
    """Runtime state of one Service."""

    pods: dict[str, RevisionPods] = field(default_factory=dict)
    route: RouteStatus | None = None
    served_generation: int = 0
    """The Service generation whose routes and revisions the gateways serve."""
    served: asyncio.Condition = field(default_factory=asyncio.Condition)
    status: dict[str, Any] | None = None
    """The status last written."""
    settled: bool = False
    """At its last reconcile it was served, with no pods and nothing failed: until an
    event queues it (an apply, a decision, a pod, a configuration) nothing changes."""


@dataclass
class _Plan:
    """One Service's reconcile, between handing its route over and the gateways' ACK."""

    key: str
    service: Service
    generation: int
    live: _Live
    revisions: list[Revision]
    route: RouteStatus
    ready: set[str]
    failed: dict[str, str]
    keep: set[str]
    proxied: dict[str, bool]
    newest: Revision | None
    routed: bool
    """Its ingress went to the control plane in this reconcile."""
    cold: bool
    """A routed revision has no ready pod and no activator to hold its requests."""
    served: bool = False
    """The gateways serve this generation: route ACKed, newest revision ready and routed."""


class LocalServing:
    def __init__(
        self,
        store: Store,
        routing: Routing,
        *,
        data_dir: str | os.PathLike[str],
        domain: str = "example.com",
        scale_policy: ScalePolicy = initial_scale_policy,
        pod_options: dict[str, Any] | None = None,
        activation: Activation | None = None,
        config: ServingConfig | None = None,
    ) -> None:
        self.store = store
        self.routing = routing
        self.scale_policy = scale_policy
        self.activation = activation
        self.baseline = Baseline(
            serving=config or SERVING_CONFIG,
            autoscaler=activation.config if activation is not None else None,
            domain=domain,
        )
        """What applies where no ConfigMap says otherwise."""
        self.config = self.baseline.serving
        """Validates what is applied; stored objects are read with `admitted(config)`."""
        self._stored_config = admitted(self.config)
        self.route_config = RouteConfig(default_domains(domain))
        """Domains, host templates and features routes are built with."""
        self.settings = resolve(self.baseline, {})
        self._service_of: dict[str, str] = {}
        """Revision key → its Service's key."""
        self._revisions_by_key: dict[str, Revision] = {}
        self._gate_served: dict[str, set[Endpoint]] = {}
        """Revision key → the pods every gateway serves at the revision's gate."""
        self._gate_confirming: set[str] = set()
        self.log_dir = Path(data_dir) / "logs"
        self.pod_options = pod_options or {}
        self._live: dict[str, _Live] = {}
        self._ready: set[str] = set(store.get_setting(READY_SETTING, []))
        self._ready_saving: asyncio.Handle | None = None
        self._index = RevisionIndex(store, self.config)
        self._hosts: dict[str, frozenset[str]] = {}
        """Service key → the hosts its route claims."""
        self._host_owner: dict[str, str] = {}
        """Host → the Service whose route claims it."""
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._reconciled = asyncio.Event()
        """Set (and replaced) each time a batch of reconciles ends."""
        self._lock = asyncio.Lock()
        """Reconciles and deletes of Services never interleave."""
        stored = store.get_setting(CONFIGMAPS_SETTING, {})
        if stored:
            try:
                self._configure(resolve(self.baseline, stored))
            except ConfigError as exc:
                log.error("the stored ConfigMaps no longer apply, using the defaults: %s", exc)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name="wakegate-serving"),
            asyncio.create_task(self._resync(), name="wakegate-serving-resync"),
        ]
        for stored in self.store.list_services():
            self.enqueue(stored.key)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._stopping, return_exceptions=True)
        await asyncio.gather(
            *(pods.close() for live in self._live.values() for pods in live.pods.values())
        )
        self._live.clear()
        if self._ready_saving is not None:
            self._ready_saving.cancel()
            self._write_ready()

    # --- reads ---------------------------------------------------------------------

    def services(self) -> list[tuple[Service, dict[str, Any]]]:
        out = []
        for stored in self.store.list_services():
            service = parse_service(stored.manifest, self._stored_config)
            out.append((service, self.store.get_status(service.namespace, service.name) or {}))
        return out

    def revisions(self, namespace: str | None = None) -> list[Revision]:
        """Every revision (of `namespace`), by namespace, Service and generation."""
        return list(self._index.all(namespace))

    def service_revisions(self, namespace: str, name: str) -> list[Revision]:
        """One Service's revisions, oldest first."""
        return list(self._index.of(f"{namespace}/{name}"))

    def pods(self) -> list[dict[str, Any]]:
        return [
            status.to_dict()
            for live in self._live.values()
            for pods in live.pods.values()
            for status in pods.status()
        ]

    def is_ready(self, revision: Revision) -> bool:
        """Whether the revision has become Ready: its initial pods were all ready once,
        or it has none (zero initial scale). It stays ready at zero."""
        return revision.key in self._ready

    def pod_log(self, name: str) -> Path | None:
        for pod in self.pods():
            if pod["name"] == name:
                return Path(pod["logPath"])
        return None

    # --- apply / delete ----------------------------------------------------------------

    def _configure(self, settings: Settings) -> None:
        """Use `settings` from now on: for what is applied next, for the routes and the
        autoscaling of every revision; every Service is reconciled with them."""
        self.settings = settings
        self.config = settings.serving
        self._stored_config = admitted(settings.serving)
        self.route_config = settings.routes
        self._index.configure(self.config)
        self._hosts.clear()
        self._host_owner.clear()
        if self.activation is not None and settings.autoscaler is not None:
            self.activation.config = settings.autoscaler
            self.activation.autoscaler.config = settings.autoscaler
        for stored in self.store.list_services():
            self.enqueue(stored.key)

    def apply(
        self,
        text: str | None,
        base_dir: str | os.PathLike[str],
        configmaps: Sequence[ConfigMap] = (),
    ) -> list[Applied]:
        """Validate `configmaps` and every Service in `text` (against the configuration
        the ConfigMaps make), then store them, each Service with its new revision.

        Raises ServiceError or ConfigError (one line, naming the field or key) and
        changes nothing when any document is invalid. A ConfigMap replaces the one
        stored under its name and takes effect on running revisions at once.
        """
        settings = self.settings
        if configmaps:
            data = {**self.settings.data, **{c.name: dict(c.data) for c in configmaps}}
            settings = resolve(self.baseline, data)
        services = load_services(text, settings.serving) if text is not None else []
        now = datetime.now(UTC)
        planned: list[tuple[Service, Revision | None, list[Revision]]] = []
        for service in services:
            require_local_command(service)
            existing = self._index.of(service.key)
            revision = next_revision(service, existing, created_at=now)
            candidate = revision or latest_created(existing)
            assert candidate is not None
            try:
                resolve_command(PodSpec.from_revision(candidate, base_dir), os.environ)
            except PodError as exc:
                raise ServiceError(str(exc)) from None
            own = [*existing, *([revision] if revision else [])]
            self._check_traffic(service, own)
            planned.append((service, revision, own))
        hosts = self._check_hosts(planned, settings.routes)
        applied = []
        added = []
        with self.store.transaction():
            if configmaps:
                self.store.put_setting(CONFIGMAPS_SETTING, dict(settings.data))
            for service, revision, _ in planned:
                generation = self.store.put_service(service_to_dict(service))
                if revision is not None:
                    added.append(
                        self.store.add_revision({**revision.to_dict(), "baseDir": str(base_dir)})
                    )
                applied.append(Applied(service, revision.name if revision else "", generation))
        for stored in added:
            self._index.add(stored)
        if configmaps:
            self._configure(settings)
        else:
            for key, claimed in hosts.items():
                self._claim(key, claimed)
        for item in applied:
            self.enqueue(item.service.key)
        return applied

    @staticmethod
    def _check_traffic(service: Service, own: list[Revision]) -> None:
        names = {r.name for r in own}
        for i, target in enumerate(service.traffic):
            if target.revision_name and target.revision_name not in names:
                known = ", ".join(sorted(names)) or "none"
                raise ServiceError(
                    f"spec.traffic[{i}].revisionName: revision {target.revision_name!r} "
                    f"does not exist, expected one of: {known}"
                )

    def _check_hosts(
        self,
        planned: list[tuple[Service, Revision | None, list[Revision]]],
        routes: RouteConfig,
    ) -> dict[str, frozenset[str]]:
        """No two Services (or KIngresses) may claim one host; the hosts each planned
        Service's route claims."""
        applying = {service.key for service, _, _ in planned}
        current = routes == self.route_config
        known = self._hosts if current else {}
        claimed: dict[str, str] = {}
        for ingress in self.routing.ingresses():
            if ingress.key in applying or ingress.key in known:
                continue
            for rule in ingress.rules:
                for host in rule.hosts:
                    claimed[host] = ingress.key
        out = {}
        for service, _, own in planned:
            out[service.key] = hosts = _hosts(route_ingress(service, own, config=routes)[0])
            for host in sorted(hosts):
                owner = claimed.setdefault(host, service.key)
                if owner == service.key and current:
                    other = self._host_owner.get(host, service.key)
                    owner = service.key if other in applying else other
                if owner != service.key:
                    raise ServiceError(
                        f"metadata.name: host {host} of service {service.key} is already "
                        f"served by {owner}"
                    )
        return out

    def _claim(self, key: str, hosts: frozenset[str]) -> None:
        """The Service `key`'s route claims `hosts`, and no others."""
        for host in self._hosts.pop(key, frozenset()) - hosts:
            if self._host_owner.get(host) == key:
                del self._host_owner[host]
        if hosts:
            self._hosts[key] = hosts
            for host in hosts:
                self._host_owner.setdefault(host, key)

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete a Service: its route goes first, then its pods, then its backends."""
        key = f"{namespace}/{name}"
        async with self._lock:
            revisions = self._index.of(key)
            if not self.store.delete_service(namespace, name):
                return False
            self._index.drop(key)
            self._claim(key, frozenset())
            self.routing.delete_ingress(key)
            await self.routing.wait_served(timeout=SERVED_TIMEOUT_S)
            live = self._live.pop(key, None)
            if live is not None:
                await asyncio.gather(*(pods.close() for pods in live.pods.values()))
            for revision in revisions:
                self.routing.delete_backend(_backend_key(revision))
                self.routing.delete_gate(revision.key)
                self._gate_served.pop(revision.key, None)
                self._ready.discard(revision.key)
                self._service_of.pop(revision.key, None)
                self._revisions_by_key.pop(revision.key, None)
                if self.activation is not None:
                    self.activation.autoscaler.forget(revision.key)
                    self.activation.pods_feed.delete_revision(namespace, revision.name)
            self._save_ready()
        return True

    async def wait_served(self, key: str, generation: int, timeout: float) -> bool:
        """Wait until the gateways serve `generation` of the Service (or a later one):
        its latest revision ready, its route applied and ACKed, every routed revision up."""
        live = self._live.setdefault(key, _Live())
        try:
            async with asyncio.timeout(timeout), live.served:
                await live.served.wait_for(lambda: live.served_generation >= generation)
        except TimeoutError:
            return False
        return True

    async def wait_outcome(self, key: str, generation: int, timeout: float) -> Outcome:
        """Wait until the gateways serve `generation` of the Service, or its newest
        revision cannot become ready (its container exited, or it missed its progress
        deadline), or `timeout` runs out; whichever comes first."""
        [outcome] = await self.wait_outcomes([(key, generation)], timeout)
        return outcome

    async def wait_outcomes(
        self, wanted: Sequence[tuple[str, int]], timeout: float
    ) -> list[Outcome]:
        """`wait_outcome` for each (Service key, generation), all in one wait: it wakes
        when a batch of reconciles ends, and every `OUTCOME_POLL_S` to look for failures."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        outcomes: dict[int, Outcome] = {}
        while True:
            for i, (key, generation) in enumerate(wanted):
                if i in outcomes:
                    continue
                live = self._live.setdefault(key, _Live())
                if live.served_generation >= generation:
                    outcomes[i] = Outcome(SERVED)
                elif failure := self._newest_failure(key):
                    outcomes[i] = Outcome(FAILED, failure)
            remaining = deadline - loop.time()
            if len(outcomes) == len(wanted) or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, OUTCOME_POLL_S)):
                    await self._reconciled.wait()
        for i, (key, _) in enumerate(wanted):
            if i not in outcomes:
                namespace, _, name = key.partition("/")
                ready = condition_of(self.store.get_status(namespace, name) or {}, "Ready")
                outcomes[i] = Outcome(WAITING, ready.get("message") or ready.get("reason") or "")
        return [outcomes[i] for i in range(len(wanted))]

    def _newest_failure(self, key: str) -> str:
        """`revision NAME: why` when the Service's newest revision cannot become ready."""
        live = self._live.get(key)
        if live is None or not live.pods:
            return ""
        newest = latest_created(self._index.of(key))
        if newest is None:
            return ""
        reason = self._failed(live).get(newest.name, "")
        if not reason:
            return ""
        self.enqueue(key)  # so the Service's status says so too
        return f"revision {newest.name}: {reason}"

    def url(self, key: str) -> str:
        namespace, _, name = key.partition("/")
        live = self._live.get(key)
        status = live.status if live is not None and live.status is not None else None
        if status is None:
            status = self.store.get_status(namespace, name) or {}
        return str(status.get("url", ""))

    # --- reconciling -------------------------------------------------------------------

    def enqueue(self, key: str) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    async def _work(self) -> None:
        while True:
            keys = [await self._queue.get()]
            while not self._queue.empty() and len(keys) < MAX_BATCH:
                keys.append(self._queue.get_nowait())
            self._pending.difference_update(keys)
            try:
                async with self._lock:
                    await self.reconcile_batch(keys)
            except Exception:
                log.exception("reconciling services %s failed", ", ".join(keys[:5]))

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            for key, live in list(self._live.items()):
                if not live.settled:
                    self.enqueue(key)

    async def reconcile(self, key: str) -> None:
        """Reconcile one Service (a batch of one)."""
        await self.reconcile_batch([key])

    async def reconcile_batch(self, keys: Sequence[str]) -> None:
        """Reconcile `keys` together: hand every route and backend to the control plane,
        wait once for the gateways, then finish each Service."""
        plans: list[_Plan] = []
        for start in range(0, len(keys), SLICE):
            part = keys[start : start + SLICE]
            prepared = await asyncio.gather(
                *(self._prepare(key) for key in part), return_exceptions=True
            )
            for key, plan in zip(part, prepared, strict=True):
                if isinstance(plan, BaseException):
                    log.error("reconciling service %s failed", key, exc_info=plan)
                elif plan is not None:
                    plans.append(plan)
            await asyncio.sleep(0)
        acked = False
        if any(plan.routed for plan in plans):
            acked = await self.routing.wait_served(timeout=SERVED_TIMEOUT_S)
        statuses: list[tuple[_Plan, dict[str, Any]]] = []
        for i, plan in enumerate(plans):
            if i and i % SLICE == 0:
                await asyncio.sleep(0)
            try:
                status = self._finish(plan, acked)
            except Exception:
                log.exception("reconciling service %s failed", plan.key)
                continue
            if status is not None:
                statuses.append((plan, status))
        if statuses:
            with self.store.transaction():
                for plan, status in statuses:
                    self.store.put_status(plan.service.namespace, plan.service.name, status)
        for plan in plans:
            live = plan.live
            if live.served_generation < plan.generation and plan.served:
                async with live.served:
                    live.served_generation = plan.generation
                    live.served.notify_all()
        reconciled, self._reconciled = self._reconciled, asyncio.Event()
        reconciled.set()

    async def _prepare(self, key: str) -> _Plan | None:
        """Everything up to the gateways' ACK: pods to start, backends, the route."""
        namespace, _, name = key.partition("/")
        stored = self.store.get_service(namespace, name)
        if stored is None:
            live = self._live.get(key)
            if live is not None and not live.pods:
                del self._live[key]
            return None
        service = parse_service(stored.manifest, self._stored_config)
        live = self._live.setdefault(key, _Live())
        revisions = self._index.of(key)
        base_dirs = self._index.base_dirs(key)
        self._ready_without_pods(revisions)
        failed = self._failed(live)
        ready = {r.name for r in revisions if r.key in self._ready}
        ingress, route = route_ingress(
            service, revisions, config=self.route_config, ready=ready, failed=failed
        )
        routed = {t.revision_name for t in route.traffic}
        newest = latest_created(revisions)
        keep = set(routed)

        proxied: dict[str, bool] = {}
        for revision in revisions:
            self._service_of[revision.key] = key
            self._revisions_by_key[revision.key] = revision
            pods = live.pods.get(revision.name)
            wanted = self._wanted_in(revision, keep, newest)
            if pods is None and wanted > 0:
                pods = self._revision_pods(key, revision, base_dirs.get(revision.name, "."))
                live.pods[revision.name] = pods
            if pods is not None and wanted >= len(pods.pods):
                await pods.scale(wanted)
            proxied[revision.name] = self._publish(revision, pods)

        # Make before break: without an activator to hold requests, traffic moves
        # to a revision only once it has a ready pod.
        cold = any(
            self.activation is None and not (n in live.pods and live.pods[n].ready_pods())
            for n in routed
        )
        applied = False
        if route.traffic_assigned and (not cold or live.route is None):
            self.routing.apply_ingress(ingress)
            self._claim(key, _hosts(ingress))
            live.route = route
            applied = True
        return _Plan(
            key=key,
            service=service,
            generation=stored.generation,
            live=live,
            revisions=revisions,
            route=route,
            ready=ready,
            failed=failed,
            keep=keep,
            proxied=proxied,
            newest=newest,
            routed=applied,
            cold=cold,
        )

    def _finish(self, plan: _Plan, acked: bool) -> dict[str, Any] | None:
        """After the gateways' ACK (`acked`): the activator leaves the path, pods no route
        names drain, and the Service's status; the status if it changed."""
        live = plan.live
        plan.served = served = plan.routed and acked and not plan.cold
        if self.activation is not None and served:
            for revision in plan.revisions:
                self.activation.autoscaler.set_activator_in_path(
                    revision.key, plan.proxied[revision.name]
                )
        keep = plan.keep
        if live.route is not None:
            keep |= {t.revision_name for t in live.route.traffic}
        # Only revisions no applied route names shrink. Pods drain and stop in the
        # background, so a slow stop never holds up another Service's reconcile.
        for revision in plan.revisions:
            pods = live.pods.get(revision.name)
            if pods is not None:
                wanted = self._wanted_in(revision, keep, plan.newest)
                if wanted < len(pods.pods):
                    self._background(pods.scale(wanted))

        service = plan.service
        previous = live.status
        if previous is None:
            previous = self.store.get_status(service.namespace, service.name)
        status = service_status(
            service,
            plan.revisions,
            live.route or plan.route,
            now=datetime.now(UTC),
            ready=plan.ready,
            failed=plan.failed,
            ingress_ready=served,
            previous=previous,
            observed_generation=plan.generation,
        )
        newest = plan.newest
        plan.served = (
            served
            and newest is not None
            and newest.key in self._ready
            and status.get("latestReadyRevisionName") == newest.name
        )
        live.settled = (
            plan.served and not plan.failed and not any(p.pods for p in live.pods.values())
        )
        live.status = status
        return None if status == previous else status

    def _initial_pods(self, revision: Revision) -> int:
        """Ready pods the revision needs to become Ready: max(min-scale, initial scale)
        as the autoscaler resolves them; without an autoscaler at least one."""
        if self.activation is None:
            return initial_scale_policy(revision, True)
        scaling = RevisionScaling.for_revision(revision, self.activation.config)
        return scaling.initial_pods

    def _ready_without_pods(self, revisions: list[Revision]) -> None:
        """A revision with no initial pods is Ready at once, its traffic through the
        activator until the first request wakes it (Knative's zero initial scale)."""
        new = {r.key for r in revisions if r.key not in self._ready and self._initial_pods(r) == 0}
        if new:
            self._ready |= new
            self._save_ready()

    def _failed(self, live: _Live) -> dict[str, str]:
        """Revision name → why it cannot become Ready, for revisions that never were:
        a container that exited (Knative marks ContainerHealthy False on the first
        termination), or no ready pods once the progress deadline passed."""
        failed = {}
        now = datetime.now(UTC)
        for name, pods in live.pods.items():
            key = f"{pods.spec.namespace}/{name}"
            statuses = pods.status()
            if key in self._ready or any(s.ready for s in statuses):
                continue
            exited = [s.last_exit for s in statuses if s.last_exit]
            if exited:
                failed[name] = f"container {exited[0]}"
                continue
            revision = self._revisions_by_key.get(key)
            if revision is not None and revision.created_at is not None:
                deadline = self._progress_deadline(revision)
                if (now - revision.created_at).total_seconds() > deadline:
                    failed[name] = (
                        f"ProgressDeadlineExceeded: no ready pod within the progress "
                        f"deadline of {deadline:g}s"
                    )
        return failed

    def _progress_deadline(self, revision: Revision) -> float:
        """The revision's `serving.knative.dev/progress-deadline`, else config-deployment's."""
        config = self.settings.autoscaler or DEFAULT_CONFIG
        return autoscaling_spec(revision.template, config.spec_defaults()).progress_deadline_s

    def _revision_pods(self, key: str, revision: Revision, base_dir: str) -> RevisionPods:
        def changed(endpoints: list[PodEndpoint]) -> None:
            self._publish(revision, self._pods_of(revision))
            if self.activation is not None:
                self.activation.autoscaler.set_ready(revision.key, len(endpoints))
            if (
                endpoints
                and revision.key not in self._ready
                and len(endpoints) >= self._initial_pods(revision)
            ):
                self._ready.add(revision.key)
                self._save_ready()
            self.enqueue(key)

        async def before_stop(_pods: object) -> None:
            await self.routing.wait_served(timeout=10)

        return RevisionPods.for_revision(
            revision,
            base_dir=base_dir,
            log_dir=self.log_dir,
            on_change=changed,
            before_stop=before_stop,
            **self.pod_options,
        )

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _pods_of(self, revision: Revision) -> RevisionPods | None:
        live = self._live.get(self._service_of.get(revision.key, ""))
        return live.pods.get(revision.name) if live is not None else None

    def _wanted_in(self, revision: Revision, keep: set[str], newest: Revision | None) -> int:
        """Pods to run for a revision of a Service whose routes name `keep`: a revision
        named there, or its newest while it has not become ready, counts as routed."""
        starting = revision is newest and revision.key not in self._ready
        return self._wanted(revision, revision.name in keep or starting)

    def _wanted(self, revision: Revision, routed: bool) -> int:
        """Pods the revision should run: the autoscaler's decision, if there is one."""
        if self.activation is None:
            return self.scale_policy(revision, routed)
        pods = self._pods_of(revision)
        autoscaler = self.activation.autoscaler
        autoscaler.track(
            revision.key,
            RevisionScaling.for_revision(revision, self.activation.config),
            routed=routed,
            ready_pods=len(pods.ready_pods()) if pods is not None else 0,
        )
        desired = autoscaler.desired(revision.key)
        return desired if desired is not None else self.scale_policy(revision, routed)

    def _publish(self, revision: Revision, pods: RevisionPods | None) -> bool:
        """Point the revision's backend at its pods, or at the activator in proxy mode
        and while it has no ready pod; True when that is the activator.

        A revision with a `containerConcurrency` (and a gate, see `wakegate.xds.gate`)
        has its pods behind the gate: in serve mode its backend is the gate listener,
        and the activator forwards to the gate too, so one per-pod limit counts every
        request whichever way it came. The activator hears of a pod only once every
        gateway serves it at the gate, so nothing is sent to a gate with no pod.
        """
        endpoints = [Endpoint(e.address, e.port) for e in pods.ready_pods()] if pods else []
        http2 = revision.template.container.port.http2
        if self.activation is None:
            self.routing.set_backend(
                _backend_key(revision), Backend(endpoints=tuple(endpoints), http2=http2)
            )
            return False
        activation = self.activation
        limit = revision.template.container_concurrency
        gate = activation.gate if limit > 0 else None
        announced = endpoints
        if gate is not None:
            self.routing.set_gate(
                Gate(revision.namespace, revision.name, tuple(endpoints), limit, http2)
            )
            served = self._gate_served.setdefault(revision.key, set())
            served &= set(endpoints)
            announced = [e for e in endpoints if e in served]
            if len(announced) < len(endpoints):
                self._confirm_gate(revision, endpoints)
        activation.pods_feed.set_endpoints(
            revision.namespace,
            revision.name,
            announced,
            limit,
            hold_timeout_s=float(revision.template.timeout_seconds),
            gate=gate,
        )
        # Until the autoscaler has decided (mode None), the scale is unknown and the
        # activator stays in the path, as in Knative.
        mode = activation.autoscaler.mode(revision.key)
        proxy = not announced or mode is not Mode.SERVE
        if proxy:
            if http2 and activation.activator_h2c is not None:
                backend = [activation.activator_h2c]
            else:
                backend, http2 = [activation.activator], False
        elif gate is not None:
            backend = [gate]
        else:
            backend = endpoints
        self.routing.set_backend(
            _backend_key(revision), Backend(endpoints=tuple(backend), http2=http2)
        )
        return proxy

    def _confirm_gate(self, revision: Revision, endpoints: list[Endpoint]) -> None:
        """Once the gateways serve `endpoints` at the revision's gate, announce them."""
        if revision.key in self._gate_confirming:
            return
        self._gate_confirming.add(revision.key)

        async def confirm() -> None:
            try:
                await self.routing.wait_served(timeout=10)
            finally:
                self._gate_confirming.discard(revision.key)
            self._gate_served.setdefault(revision.key, set()).update(endpoints)
            if self._service_of.get(revision.key) is not None:
                self._publish(revision, self._pods_of(revision))

        self._background(confirm())

    def scaling_status(self, revision: Revision) -> dict[str, Any]:
        """The autoscaler's view of a revision: desired pods, mode and last decision."""
        if self.activation is None:
            return {"desired": None, "mode": "serve", "reason": "no autoscaler"}
        decision = self.activation.autoscaler.decision(revision.key)
        if decision is None:
            return {"desired": None, "mode": "proxy", "reason": "no decision yet"}
        return {
            "desired": decision.desired,
            "mode": str(decision.mode),
            "panicking": decision.panicking,
            "metric": revision.autoscaling.metric,
            "stableLoad": decision.stable_load,
            "panicLoad": decision.panic_load,
            "reason": decision.reason,
        }

    def failure(self, revision: Revision) -> str:
        """Why the revision's pods keep failing before it ever became ready; "" if not."""
        live = self._live.get(self._service_of.get(revision.key, ""))
        if live is None or revision.name not in live.pods:
            return ""
        return self._failed(live).get(revision.name, "")

    def on_decision(self, revision_key: str, decision: Decision) -> None:
        """The autoscaler changed its mind about a revision: reconcile its Service."""
        if (key := self._service_of.get(revision_key)) is not None:
            self.enqueue(key)

    def _save_ready(self) -> None:
        """Store the ready revisions soon: one write for every change in this turn of
        the event loop (a batch of reconciles readies many at once)."""
        if self._ready_saving is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_ready()
            return
        self._ready_saving = loop.call_soon(self._write_ready)

    def _write_ready(self) -> None:
        self._ready_saving = None
        self.store.put_setting(READY_SETTING, sorted(self._ready))


def _hosts(ingress: Ingress) -> frozenset[str]:
    return frozenset(host for rule in ingress.rules for host in rule.hosts)


def _backend_key(revision: Revision) -> str:
    return BackendRef(revision.namespace, revision.name, SERVICE_PORT).key
