"""A real control plane and real Envoy gateways for tests.

async with xds_control_plane() as cp:
    cp.set("gateway", resources)                     # a new snapshot, versions auto
    async with running_envoy(cp.port, node_cluster="gateway") as envoy:
        await cp.push("gateway", newer_resources)    # set + wait until ACKed
        print(await envoy.admin_get("/ready"), envoy.log())
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wakegate.envoy_process import EnvoyGateway
from wakegate.xds.bootstrap import build_bootstrap
from wakegate.xds.cache import Snapshot, SnapshotCache
from wakegate.xds.resources import Resources
from wakegate.xds.server import XdsServer

LOOPBACK = "127.0.0.1"
DEFAULT_GROUP = "gateway"


@dataclass
class ControlPlane:
    cache: SnapshotCache
    server: XdsServer
    port: int
    host: str = LOOPBACK
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def set(self, group: str, resources: Resources, *, version: str | None = None) -> Snapshot:
        """Make `resources` the current snapshot of `group`; returns it."""
        snapshot = Snapshot(version=version or f"v{next(self._versions)}", resources=resources)
        self.cache.set_snapshot(group, snapshot)
        return snapshot

    async def push(
        self,
        group: str,
        resources: Resources,
        *,
        version: str | None = None,
        timeout: float = 15.0,
    ) -> Snapshot:
        """`set` and wait until every gateway of `group` ACKed it; fails the test if not."""
        snapshot = self.set(group, resources, version=version)
        if not await self.server.wait_acked(group, snapshot.version, timeout):
            nodes = [n for n in self.server.nodes() if n.group == group]
            raise AssertionError(f"snapshot {snapshot.version} not ACKed in {timeout}s: {nodes}")
        return snapshot


@contextlib.asynccontextmanager
async def xds_control_plane(
    cache: SnapshotCache | None = None, *, host: str = LOOPBACK, **server_kwargs: Any
) -> AsyncIterator[ControlPlane]:
    """An XdsServer over a SnapshotCache, listening on a free port of `host`."""
    cache = cache if cache is not None else SnapshotCache()
    server = XdsServer(cache, **server_kwargs)
    port = await server.start(host, 0)
    try:
        yield ControlPlane(cache=cache, server=server, port=port, host=host)
    finally:
        await server.stop(0)


@dataclass
class RunningEnvoy:
    gateway: EnvoyGateway
    node_id: str
    node_cluster: str

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin interface: a unix socket (0600) in the gateway's workdir."""
        assert self.gateway.admin_socket is not None
        return self.gateway.admin_socket

    @property
    def log_path(self) -> Path:
        return self.gateway.log_path

    def log(self) -> str:
        return self.gateway.read_log()

    async def admin_get(self, path: str) -> str:
        return await self.gateway.admin_get(path)

    async def config_dump(self) -> dict[str, Any]:
        return json.loads(await self.admin_get("/config_dump"))

    async def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose names start with `prefix`."""
        text = await self.admin_get("/stats?filter=" + prefix.replace(".", r"\."))
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


@contextlib.asynccontextmanager
async def running_envoy(
    xds_port: int,
    *,
    delta: bool = False,
    node_cluster: str = DEFAULT_GROUP,
    node_id: str | None = None,
    xds_host: str = LOOPBACK,
    wait_live: bool = True,
    timeout: float = 30.0,
    log_level: str = "info",
    concurrency: int = 1,
    supervise: bool = False,
    drain_time: float | None = None,
    bootstrap_overrides: Mapping[str, Any] | None = None,
    **bootstrap_kwargs: Any,
) -> AsyncIterator[RunningEnvoy]:
    """A real Envoy bootstrapped against the ADS server on `xds_port`.

    With `wait_live=True` (the default) the group should already have a snapshot
    with its listeners and clusters: Envoy only reports LIVE once they arrived.
    Admin listens on a unix socket in the gateway's temporary workdir, as in the stack.
    On an error inside the block the tail of Envoy's log goes to stderr.
    """
    node_id = node_id or f"envoy-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="wakegate-envoy-"))
    bootstrap = build_bootstrap(
        node_id=node_id,
        node_cluster=node_cluster,
        xds_host=xds_host,
        xds_port=xds_port,
        admin_socket=str(workdir / "admin.sock"),
        delta=delta,
        **bootstrap_kwargs,
    )
    if bootstrap_overrides:
        bootstrap.update(bootstrap_overrides)
    gateway = EnvoyGateway(
        bootstrap,
        workdir,
        log_level=log_level,
        concurrency=concurrency,
        drain_time=drain_time,
        supervise=supervise,
    )
    envoy = RunningEnvoy(gateway=gateway, node_id=node_id, node_cluster=node_cluster)
    try:
        await gateway.start(timeout, wait_live=wait_live)
        yield envoy
    except BaseException:
        tail = "\n".join(gateway.read_log().splitlines()[-40:])
        sys.stderr.write(f"--- Envoy {node_id} log (last 40 lines) ---\n{tail}\n")
        raise
    finally:
        await gateway.stop(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)
