"""The control plane: desired routing state → translator → snapshot cache → ADS server.

Every change to the desired state is remembered by key until the next publish, which
hands just those changes to the translator and derives the next snapshot from the
resources they touched, so publishing one change costs the same with 10 ingresses as
with 100,000. The first change in an idle system is published at once; further
changes within the debounce window are coalesced into the next snapshot.

Changes to the set of clusters are published make-before-break. A route may only
name a cluster the gateway has already warmed, which the ADS server ensures per
stream (routes follow the answer to the clusters they name); and a cluster may only
go once no route names it, so a change that drops clusters goes out in two steps:
the new routes with the old clusters kept, then, once every gateway ACKed that, the
removal of clusters nothing routes to any more.

Snapshots carry the delta view of the translator (scoped routes); gateways on the
state-of-the-world protocol get the variant with one route configuration per
listener, assembled once per snapshot when such a gateway is connected or connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from wakegate.ingress.model import Backend, Certificate, Gate, Ingress, RoutingState
from wakegate.xds.cache import Changes, Snapshot, SnapshotCache
from wakegate.xds.gate import GateResources
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from wakegate.xds.server import XdsServer
from wakegate.xds.translate import GatewayConfig, Translator

log = logging.getLogger(__name__)

DEFAULT_GROUP = "wakegate-gateway"

_GATE_SOTW_TYPES = (LISTENER, ROUTE)
"""The gate's types that the state-of-the-world view rebuilds (the others are shared)."""

_BULK = 1000
"""Changes in one publish from which the cyclic garbage collector waits until it is done:
building hundreds of thousands of long-lived objects at once would otherwise have it
traverse everything several times over (a third of the time of a full translation)."""


@contextlib.contextmanager
def _collector_paused(paused: bool) -> Iterator[None]:
    if not paused or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Published:
    version: str
    at: float
    ingress_versions: dict[str, int] = field(default_factory=dict)


class ControlPlane:
    def __init__(
        self,
        gateway: GatewayConfig | None = None,
        *,
        group: str = DEFAULT_GROUP,
        debounce_s: float = 0.05,
        step_timeout_s: float = 5.0,
    ) -> None:
        self.gateway = gateway or GatewayConfig()
        self.group = group
        self.debounce_s = debounce_s
        self.step_timeout_s = step_timeout_s
        """How long one make-before-break step waits for gateways to ACK."""
        self.cache = SnapshotCache()
        self.server = XdsServer(self.cache, group_of=lambda node: self.group)
        self.translator = Translator(self.gateway)
        self._gate = (
            GateResources(
                self.gateway.gate_port,
                connect_timeout_s=self.gateway.connect_timeout_s,
                max_requests=self.gateway.max_upstream_requests,
                idle_timeout_s=self.gateway.stream_idle_timeout_s,
            )
            if self.gateway.gate_port
            else None
        )
        self._ingresses: dict[str, Ingress] = {}
        self._backends: dict[str, Backend] = {}
        self._certificates: dict[str, Certificate] = {}
        self._gates: dict[str, Gate] = {}
        self._pending_ingresses: dict[str, Ingress | None] = {}
        self._pending_backends: dict[str, Backend | None] = {}
        self._certificates_changed = False
        self._gates_changed = False
        self._dirty = asyncio.Event()
        self._published = asyncio.Condition()
        self._counter = itertools.count(1)
        self._boot = f"{os.getpid():x}{int(time.time()):x}"
        self._changes = 0
        self._published_changes = 0
        self.last: Published | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        *,
        credentials: grpc.ServerCredentials | None = None,
        services: Sequence[Callable[[grpc.aio.Server], None]] = (),
        unix_socket: str | None = None,
    ) -> int:
        """Serve xDS (and `services`) on host:port (0 = any free port, None = no TCP),
        over TLS when given server `credentials` (mutual TLS if they require client
        certificates), and on `unix_socket` if given; returns the bound TCP port."""
        self.publish()
        bound = await self.server.start(
            host, port, credentials=credentials, services=services, unix_socket=unix_socket
        )
        self._task = asyncio.create_task(self._publisher(), name="wakegate-publisher")
        return bound

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.server.stop(grace=0.5)

    # --- desired state -------------------------------------------------------------

    def apply_ingress(self, ingress: Ingress) -> None:
        if self._ingresses.get(ingress.key) != ingress:
            self._ingresses[ingress.key] = ingress
            self._pending_ingresses[ingress.key] = ingress
            self._mark()

    def delete_ingress(self, key: str) -> bool:
        found = self._ingresses.pop(key, None) is not None
        if found:
            self._pending_ingresses[key] = None
            self._mark()
        return found

    def set_backend(self, key: str, backend: Backend) -> None:
        if self._backends.get(key) != backend:
            self._backends[key] = backend
            self._pending_backends[key] = backend
            self._mark()

    def delete_backend(self, key: str) -> None:
        if self._backends.pop(key, None) is not None:
            self._pending_backends[key] = None
            self._mark()

    def set_gate(self, gate: Gate) -> None:
        if self._gates.get(gate.key) != gate:
            self._gates[gate.key] = gate
            self._gates_changed = True
            self._mark()

    def delete_gate(self, key: str) -> None:
        if self._gates.pop(key, None) is not None:
            self._gates_changed = True
            self._mark()

    def set_certificate(self, key: str, certificate: Certificate) -> None:
        if self._certificates.get(key) != certificate:
            self._certificates[key] = certificate
            self._certificates_changed = True
            self._mark()

    def delete_certificate(self, key: str) -> bool:
        """Forget a secret's certificate; TLS entries naming it lose their chain."""
        found = self._certificates.pop(key, None) is not None
        if found:
            self._certificates_changed = True
            self._mark()
        return found

    def backend_keys(self) -> list[str]:
        return list(self._backends)

    def ingresses(self) -> list[Ingress]:
        return [self._ingresses[k] for k in sorted(self._ingresses)]

    def state(self) -> RoutingState:
        return RoutingState(
            ingresses=tuple(self.ingresses()),
            backends=dict(self._backends),
            certificates=dict(self._certificates),
            gates=dict(self._gates),
        )

    # --- publishing ----------------------------------------------------------------

    def _mark(self) -> None:
        self._changes += 1
        self._dirty.set()

    def _translate(self) -> Changes:
        """Hand the pending changes to the translator; what changed in its delta view,
        with the gate's changes when the gateway has one."""
        ingresses, self._pending_ingresses = self._pending_ingresses, {}
        backends, self._pending_backends = self._pending_backends, {}
        certificates = dict(self._certificates) if self._certificates_changed else None
        self._certificates_changed = False
        self.translator.update(ingresses=ingresses, backends=backends, certificates=certificates)
        changes = self.translator.take_changes()
        if self._gate is not None:
            if self._gates_changed:
                self._gates_changed = False
                self._gate.sync(self._gates)
            for type_url, named in self._gate.take_changes().items():
                changes.setdefault(type_url, {}).update(named)
        return changes

    def _delta_resources(self) -> Resources:
        out = self.translator.delta_resources()
        return out if self._gate is None else self._gate.merge(out)

    def _sotw_resources(self) -> Resources:
        out = self.translator.sotw_resources()
        return out if self._gate is None else self._gate.merge(out, types=_GATE_SOTW_TYPES)

    def _set(self, changes: Changes) -> str:
        version = f"{self._boot}-{next(self._counter)}"
        previous = self.cache.get_snapshot(self.group)
        sotw = self._sotw_resources
        if previous is None:
            snapshot = Snapshot(version, self._delta_resources(), sotw=sotw)
        else:
            snapshot = previous.evolve(version, changes, sotw=sotw)
        if self.server.connected(self.group, mode="sotw"):
            snapshot.for_sotw()
        self.cache.set_snapshot(self.group, snapshot)
        return version

    def _bulk(self) -> bool:
        return len(self._pending_ingresses) + len(self._pending_backends) >= _BULK

    def publish(self) -> str:
        """Translate the pending changes and set the group's next snapshot, now."""
        self._dirty.clear()
        changes = self._changes
        with _collector_paused(self._bulk()):
            version = self._set(self._translate())
        self._done(version, changes)
        return version

    def _done(self, version: str, changes: int) -> None:
        self.last = Published(version=version, at=time.monotonic())
        self._published_changes = changes

    async def _step(self, changes: Changes) -> None:
        version = self._set(changes)
        if not await self.server.wait_acked(
            self.group, version, self.step_timeout_s, min_gateways=0
        ):
            log.warning("gateways did not ACK step %s within %.1fs", version, self.step_timeout_s)

    async def publish_safely(self) -> str:
        """Publish the pending changes, make-before-break for clusters that go."""
        self._dirty.clear()
        changes = self._changes
        with _collector_paused(self._bulk()):
            target = self._translate()
        current = self.cache.get_snapshot(self.group)
        later: dict[str, dict[str, bytes | None]] = {}
        if current is not None and self.server.connected(self.group):
            first: dict[str, dict[str, bytes | None]] = {}
            for type_url, named in target.items():
                kept = first[type_url] = {}
                for name, body in named.items():
                    if body is None and type_url in (CLUSTER, ENDPOINT):
                        later.setdefault(type_url, {})[name] = None
                    else:
                        kept[name] = body
            if later:
                await self._step(first)
                target = later
        with _collector_paused(sum(map(len, target.values())) >= _BULK):
            version = self._set(target)
        self._done(version, changes)
        return version

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self.publish_safely()
            except Exception:
                log.exception("translation failed; the last good snapshot keeps serving")
                self._published_changes = self._changes
            async with self._published:
                self._published.notify_all()
            await asyncio.sleep(self.debounce_s)

    async def flush(self) -> str:
        """Wait until every change made so far is in a published snapshot."""
        wanted = self._changes
        async with self._published:
            await self._published.wait_for(lambda: self._published_changes >= wanted)
        assert self.last is not None
        return self.last.version

    async def wait_served(self, timeout: float = 10.0) -> bool:
        """Publish pending changes and wait until every connected gateway ACKed them."""
        version = await self.flush()
        return await self.server.wait_acked(self.group, version, timeout)
