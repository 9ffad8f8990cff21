"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

A candidate takes the Lease when nobody holds it, when its holder released it (empty
`holderIdentity`), or when the holder has not renewed it for `leaseDurationSeconds`.
Expiry is judged by when this candidate last saw the record change, on its own
monotonic clock, never by comparing `renewTime` with the local wall clock, so clock
skew between replicas cannot hand the Lease to two holders. Every write is an update
with the resourceVersion read just before (optimistic concurrency): a 409 Conflict
means another candidate wrote first, and the attempt is simply retried next period.
The leader renews every `retry_period_s` and steps down when it could not renew for
`renew_deadline_s`; on stop it releases the Lease so another replica takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge

from wakegate.reconciler.cluster.kubernetes import LEASES, ApiError, KubeApi

log = logging.getLogger(__name__)

IS_LEADER = Gauge("wakegate_leader", "1 while this replica holds the leader Lease")


def default_identity() -> str:
    """`$POD_NAME` (or the host name) plus a random suffix, unique per process."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        identity: str | None = None,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry_period_s < renew_deadline_s < lease_duration_s")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.leading = asyncio.Event()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Campaign and renew until cancelled; a leader releases the Lease on the way out."""
        try:
            while True:
                try:
                    held = await self.try_acquire_or_renew()
                except ApiError as exc:
                    log.warning("leader election: %s", exc)
                    held = False
                now = self._loop_time()
                if held:
                    self._renewed_at = now
                    if not self.is_leader:
                        self._set_leading(True)
                elif self.is_leader and (
                    self._holder() not in ("", self.identity)
                    or now - self._renewed_at >= self.renew_deadline_s
                ):
                    self._set_leading(False)
                await asyncio.sleep(self.retry_period_s)
        finally:
            if self.is_leader:
                self._set_leading(False)
                await asyncio.shield(self._release_quietly())

    def _holder(self) -> str:
        return str(self._observed[0] or "") if self._observed else ""

    def _set_leading(self, leading: bool) -> None:
        if leading:
            self.leading.set()
            IS_LEADER.set(1)
            log.info("%s became the leader (lease %s/%s)", self.identity, self.namespace, self.name)
            callback = self.on_started_leading
        else:
            self.leading.clear()
            IS_LEADER.set(0)
            log.info("%s stopped leading (lease %s/%s)", self.identity, self.namespace, self.name)
            callback = self.on_stopped_leading
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("leader election callback failed")

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time()
        previous = previous or {}
        transitions = int(previous.get("leaseTransitions") or 0)
        already = previous.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
            "acquireTime": previous.get("acquireTime") if already else now,
            "renewTime": now,
            "leaseTransitions": transitions if already or not previous else transitions + 1,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards."""
        try:
            lease = await self.api.get(LEASES, self.namespace, self.name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None),
            }
            try:
                created = await self.api.create(LEASES, self.namespace, body)
            except ApiError as exc:
                if exc.status == 409:
                    return False
                raise
            self._observe(created.get("spec") or {})
            return True
        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        expired = self._loop_time() - self._observed_at >= duration
        if holder and holder != self.identity and not expired:
            return False
        lease["spec"] = self._spec(spec)
        try:
            updated = await self.api.replace(LEASES, self.namespace, self.name, lease)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        self._observe(updated.get("spec") or {})
        return True

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("leaseDurationSeconds"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = self._loop_time()

    async def release(self) -> bool:
        """Give the Lease up if held: empty holder, so any candidate may take it now."""
        lease = await self.api.get(LEASES, self.namespace, self.name)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return False
        now = _micro_time()
        lease["spec"] = {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": spec.get("leaseTransitions") or 0,
        }
        await self.api.replace(LEASES, self.namespace, self.name, lease)
        return True

    async def _release_quietly(self) -> None:
        try:
            await asyncio.wait_for(self.release(), timeout=self.retry_period_s + 2)
        except (ApiError, TimeoutError) as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
