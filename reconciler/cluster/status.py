"""KIngress status in cluster mode: when a generation counts as served, and the writes.

A generation counts as served (LoadBalancerReady) once
- with a `gateway_service`: every ready pod behind that Service answers its readiness
  probe (`gateway_probe`), so gateways connected to other replicas count too;
- without one: every gateway connected to this replica ACKed a snapshot containing it.
Either way a gateway of this replica that rejected the config since keeps it
False (GatewayRejected) until it accepts a later snapshot. With probes, a generation
the stored status already reports LoadBalancerReady (written by an earlier leader) counts
as served, so a new leader or a restarted one does not flip Ready while it re-learns.

The writer reads what the reconciler made of each KIngress (`IngressBook`) and writes
only while `may_write_status()` (the leader) and while `current()` (every cache the
reconciler reads is current; writes due meanwhile wait), a bounded number of writes at
a time, skipping writes that would change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from wakegate.ingress.model import Ingress
from wakegate.reconciler.cluster.gateway_probe import GatewayProber, GatewayService
from wakegate.reconciler.cluster.kingress_status import (
    LoadBalancers,
    Observation,
    desired_status,
    reported_served,
    same_status,
)
from wakegate.reconciler.cluster.kubernetes import KINGRESSES, ApiError, Backoff, KubeApi
from wakegate.reconciler.cluster.objects import (
    ClusterObjects,
    IngressBook,
    missing_backends,
    unknown_backends,
)
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.resources import SHORT_NAMES
from wakegate.xds.status import NodeStatus

log = logging.getLogger(__name__)

STATUS_WRITES = Counter(
    "wakegate_kingress_status_writes_total", "KIngress status writes", ["result"]
)
PROPAGATION = Histogram(
    "wakegate_kingress_propagation_seconds",
    "From a KIngress generation first seen by this replica to every gateway serving it "
    "(as LoadBalancerReady counts it: ACKed, or answering the readiness probe).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)


def nack_message(node: NodeStatus) -> str:
    nack = node.last_nack
    assert nack is not None
    kind = SHORT_NAMES.get(nack.type_url, nack.type_url)
    detail = " | ".join(line.strip() for line in nack.message.strip().splitlines() if line.strip())
    return f"gateway {node.node_id} rejected {kind} version {nack.version}: {detail}"


class StatusWriter:
    """Keeps every KIngress's status levelled to what the gateways serve."""

    def __init__(
        self,
        api: KubeApi,
        control_plane: ControlPlane,
        book: IngressBook,
        objects: ClusterObjects,
        *,
        load_balancers: LoadBalancers,
        may_write_status: Callable[[], bool],
        current: Callable[[], bool] = lambda: True,
        backoff: Backoff,
        ack_poll_s: float,
        concurrency: int,
        gateway_service: GatewayService | None,
        prober: GatewayProber | None,
    ) -> None:
        self.api = api
        self.cp = control_plane
        self.book = book
        self.objects = objects
        self.load_balancers = load_balancers
        self.may_write_status = may_write_status
        self.current = current
        self.backoff = backoff
        self.ack_poll_s = ack_poll_s
        self.gateway_service = gateway_service
        self.prober = prober
        self._limit = asyncio.Semaphore(concurrency)
        self._served: dict[str, Ingress] = {}
        """Key → the applied Ingress every gateway accepted (compared by identity)."""
        self._errors: dict[str, tuple[str, ...]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def mark(self, key: str) -> None:
        """`key`'s status may have to change."""
        self._dirty.add(key)
        self._wake.set()

    def wake(self) -> None:
        """What the gateways serve may have changed."""
        self._wake.set()

    def resync(self) -> None:
        """Re-check every status (on gaining leadership)."""
        self._dirty.update(self.book.stored)
        self._wake.set()

    def forget(self, key: str) -> None:
        self._served.pop(key, None)
        self._dirty.discard(key)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pushed = dict(self.book.applied)
            version = await self.cp.flush()
            errors = self.cp.translator.errors
            for key in set(errors) | set(self._errors):
                if errors.get(key) != self._errors.get(key):
                    self._dirty.add(key)
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
                        if self.book.applied.get(key) is pushed[key]:
                            self._mark_served(key, pushed[key])
                else:
                    self._wake.set()
            self._dirty.update(unserved)
            await self._write_all()

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
            if reported_served(self.book.stored.get(key), pushed[key].generation):
                if self.book.applied.get(key) is pushed[key]:
                    # Served before this replica saw it: nothing propagated just now.
                    self._served[key] = pushed[key]
                    self.book.seen_at.pop(key, None)
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
                    self._wake.set()
                    continue
            if self.book.applied.get(key) is pushed[key]:
                self._mark_served(key, pushed[key])
        prober.set_wanted(wanted)

    def _mark_served(self, key: str, ingress: Ingress) -> None:
        """Every gateway serves `ingress`: time its propagation, once per generation."""
        self._served[key] = ingress
        seen = self.book.seen_at.get(key)
        if seen is not None and seen[0] == ingress.generation:
            del self.book.seen_at[key]
            PROPAGATION.observe(time.monotonic() - seen[1])

    def observe(self, key: str) -> Observation:
        """What is known about one KIngress, for its status."""
        obj = self.book.stored[key]
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        applied = self.book.applied.get(key)
        served = applied is not None and self._served.get(key) is applied
        rejected, waiting = None, ""
        if applied is not None and not served:
            rejected = self._rejection(key)
            if self.prober is not None:
                waiting = self._probe_waiting(key)
            elif not self.cp.server.connected(self.cp.group):
                waiting = "no gateway is connected"
        latest = self.book.latest.get(key)
        missing = missing_backends(latest, self.objects) if latest is not None else ()
        unknown = unknown_backends(latest, self.objects) if latest is not None else ()
        return Observation(
            generation=generation,
            invalid=self.book.invalid.get(key),
            applied_generation=applied.generation if applied is not None else None,
            served=served,
            problems=self._errors.get(key, ()) if applied is not None else (),
            rejected=rejected,
            waiting=waiting,
            missing=missing,
            unknown=unknown,
            held_back=key in self.book.held_back,
        )

    def _rejection(self, key: str) -> str | None:
        """A NACK from a gateway of this replica since `key`'s generation was applied."""
        since = self.book.applied_at.get(key, 0.0)
        for node in self.cp.server.nodes():
            nack = node.last_nack
            if node.group == self.cp.group and node.connected and nack and nack.time >= since:
                return nack_message(node)
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

    async def _write_all(self) -> None:
        if not self.may_write_status():
            self._dirty.clear()
            return
        if not self.current():
            return
        keys, self._dirty = self._dirty, set()
        await asyncio.gather(*(self._write(key) for key in sorted(keys)))

    async def _write(self, key: str) -> None:
        obj = self.book.stored.get(key)
        if obj is None:
            return
        status = desired_status(self.observe(key), self.load_balancers, obj.get("status"))
        if same_status(status, obj.get("status")):
            return
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        writes = Backoff(self.backoff.initial_s, self.backoff.max_s, attempts=3)
        async with self._limit:
            if not self.may_write_status():
                return
            if not self.current():
                self._dirty.add(key)
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
                self._dirty.add(key)
                loop = asyncio.get_running_loop()
                loop.call_later(self.backoff.max_s / 4, self._wake.set)
                return
        STATUS_WRITES.labels(result="ok").inc()
        current = self.book.stored.get(key)
        if current is not None:
            current["status"] = updated.get("status", status)
