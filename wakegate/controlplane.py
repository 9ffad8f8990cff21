"""The control plane: desired routing state → translator → snapshot cache → ADS server.

Level-triggered: every change marks the state dirty and the publisher recomputes
the whole snapshot from the whole state (the translator's memoisation keeps that
cheap). The first change in an idle system is published at once; further
changes within the debounce window are coalesced into the next snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field

from wakegate.ingress.model import Backend, Certificate, Ingress, RoutingState
from wakegate.xds.cache import Snapshot, SnapshotCache
from wakegate.xds.server import XdsServer
from wakegate.xds.translate import GatewayConfig, Translator

log = logging.getLogger(__name__)

DEFAULT_GROUP = "wakegate-gateway"


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
    ) -> None:
        self.gateway = gateway or GatewayConfig()
        self.group = group
        self.debounce_s = debounce_s
        self.cache = SnapshotCache()
        self.server = XdsServer(self.cache, group_of=lambda node: self.group)
        self.translator = Translator(self.gateway)
        self._ingresses: dict[str, Ingress] = {}
        self._backends: dict[str, Backend] = {}
        self._certificates: dict[str, Certificate] = {}
        self._dirty = asyncio.Event()
        self._published = asyncio.Condition()
        self._counter = itertools.count(1)
        self._boot = f"{os.getpid():x}{int(time.time()):x}"
        self._changes = 0
        self.last: Published | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve xDS on host:port (0 = any free port); returns the bound port."""
        self.publish()
        bound = await self.server.start(host, port)
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
        self._ingresses[ingress.key] = ingress
        self._mark()

    def delete_ingress(self, key: str) -> bool:
        found = self._ingresses.pop(key, None) is not None
        if found:
            self._mark()
        return found

    def set_backend(self, key: str, backend: Backend) -> None:
        if self._backends.get(key) != backend:
            self._backends[key] = backend
            self._mark()

    def delete_backend(self, key: str) -> None:
        if self._backends.pop(key, None) is not None:
            self._mark()

    def set_certificate(self, key: str, certificate: Certificate) -> None:
        self._certificates[key] = certificate
        self._mark()

    def backend_keys(self) -> list[str]:
        return list(self._backends)

    def ingresses(self) -> list[Ingress]:
        return [self._ingresses[k] for k in sorted(self._ingresses)]

    def state(self) -> RoutingState:
        return RoutingState(
            ingresses=tuple(self.ingresses()),
            backends=dict(self._backends),
            certificates=dict(self._certificates),
        )

    # --- publishing ----------------------------------------------------------------

    def _mark(self) -> None:
        self._changes += 1
        self._dirty.set()

    def publish(self) -> str:
        """Translate the whole state and set it as the group's snapshot, now."""
        self._dirty.clear()
        resources = self.translator.translate(self.state())
        version = f"{self._boot}-{next(self._counter)}"
        self.cache.set_snapshot(self.group, Snapshot(version=version, resources=resources))
        self.last = Published(version=version, at=time.monotonic())
        return version

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                self.publish()
            except Exception:
                log.exception("translation failed; the last good snapshot keeps serving")
            async with self._published:
                self._published.notify_all()
            await asyncio.sleep(self.debounce_s)

    async def flush(self) -> str:
        """Wait until every change made so far is in a published snapshot."""
        async with self._published:
            await self._published.wait_for(lambda: not self._dirty.is_set())
        assert self.last is not None
        return self.last.version

    async def wait_served(self, timeout: float = 10.0) -> bool:
        """Publish pending changes and wait until every connected gateway ACKed them."""
        version = await self.flush()
        return await self.server.wait_acked(self.group, version, timeout)
