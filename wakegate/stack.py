"""The local stack: store, control plane, Envoy gateway, local runtime and API, wired."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wakegate.api import Api
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.autoscaler.gateway_stats import GatewayStats
from wakegate.autoscaler.scaler import Autoscaler
from wakegate.autoscaler.service import AutoscalerService
from wakegate.envoy_process import EnvoyGateway, GatewayError, check_port_free
from wakegate.ingress.model import Endpoint
from wakegate.reconciler.local.live import LiveState
from wakegate.reconciler.local.manifests import ManifestReconciler
from wakegate.reconciler.local.services import Activation, LocalServing
from wakegate.reconciler.local.store import Store
from wakegate.serving.config import ServingConfig
from wakegate.xds.bootstrap import build_bootstrap
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

log = logging.getLogger(__name__)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StackConfig:
    data_dir: Path = Path(".wakegate")
    domain: str = "example.com"
    bind: str = "127.0.0.1"
    port: int = 8080
    internal_port: int = 8081
    tls_port: int = 8443
    xds_host: str = "127.0.0.1"
    xds_port: int = 18000
    api_port: int = 18001
    admin_port: int = 9901
    gate_port: int = 0
    """Loopback port of the gateway's gate listener (per-pod `containerConcurrency`);
    0 picks a free one."""
    node_id: str = "wakegate-gateway-0"
    node_cluster: str = "wakegate-gateway"
    delta: bool = True
    gateway: bool = True
    pod_options: dict[str, Any] = field(default_factory=dict)
    autoscaler: AutoscalerConfig | None = field(default_factory=AutoscalerConfig)
    """None runs every routed revision at its initial scale, with no activator."""
    activator_hold_timeout_s: float = 60.0
    allow_zero_initial_scale: bool = False
    """Knative's `allow-zero-initial-scale`: accept `autoscaling.knative.dev/initial-scale:
    "0"`, a revision that is Ready without a pod and wakes on its first request. Also on
    when `autoscaler.allow_zero_initial_scale` is; without an autoscaler such a revision
    still runs one pod."""

    @property
    def zero_initial_scale(self) -> bool:
        return self.allow_zero_initial_scale or bool(
            self.autoscaler and self.autoscaler.allow_zero_initial_scale
        )


class ActivatorProcess:
    """The activator, run as its own process next to the control plane."""

    def __init__(self, control_plane: str, hold_timeout_s: float) -> None:
        self.control_plane = control_plane
        self.hold_timeout_s = hold_timeout_s
        self.port = 0
        self.h2c_port = 0
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 20.0) -> int:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wakegate.activator.main",
            "--listen", "127.0.0.1:0", "--listen-h2c", "127.0.0.1:0",
            "--control-plane", self.control_plane,
            "--hold-timeout", str(self.hold_timeout_s), "--stop-on-stdin-eof",
            "--log-level", "WARNING",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while line := await self._proc.stdout.readline():
                if line.startswith(b"READY "):
                    self.port, self.h2c_port = (int(p) for p in line.split()[1:3])
                    return self.port
        raise GatewayError(
            f"activator exited with code {await self._proc.wait()} before it was ready"
        )

    async def stop(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.terminate()
        try:
            async with asyncio.timeout(10):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.gate_port = config.gate_port or _free_loopback_port()
        self.cp = ControlPlane(
            GatewayConfig(
                external_port=config.port,
                internal_port=config.internal_port,
                tls_port=config.tls_port,
                bind_address=config.bind,
                https_redirect_port=config.tls_port,
                gate_port=self.gate_port,
            ),
            group=config.node_cluster,
        )
        self.manifests = ManifestReconciler(self.cp)
        self.serving: LocalServing | None = None
        self.api: Api | None = None
        self.live: LiveState | None = None
        self.gateway: EnvoyGateway | None = None
        self.activator: ActivatorProcess | None = None
        self.autoscaler: Autoscaler | None = None
        self._stats: GatewayStats | None = None
        self.xds_port = 0
        self.api_port = 0

    def preflight(self) -> None:
        """Fail with one line naming the port if a port the stack needs is taken."""
        c = self.config
        check_port_free(c.api_port, "127.0.0.1", purpose="api (--api-port)")
        check_port_free(c.xds_port, c.xds_host, purpose="xDS (--xds-port)")
        if c.gateway:
            check_port_free(c.port, c.bind, purpose="gateway listener (--port)")
            check_port_free(c.internal_port, c.bind, purpose="gateway listener (--internal-port)")
            check_port_free(c.admin_port, "127.0.0.1", purpose="Envoy admin (--admin-port)")
            check_port_free(self.gate_port, "127.0.0.1", purpose="gate listener")

    async def start(self) -> None:
        c = self.config
        self.preflight()
        self.store = Store.in_dir(c.data_dir)
        pods_feed = AutoscalerService()
        self.xds_port = await self.cp.start(
            c.xds_host, c.xds_port, services=[pods_feed.add_to_server]
        )
        if c.gateway:
            self.gateway = EnvoyGateway(
                build_bootstrap(
                    node_id=c.node_id,
                    node_cluster=c.node_cluster,
                    xds_host=c.xds_host,
                    xds_port=self.xds_port,
                    admin_port=c.admin_port,
                    delta=c.delta,
                ),
                c.data_dir / "gateway",
                supervise=True,
                # One worker: Envoy's per-pod connection limits, which enforce
                # containerConcurrency at the gate, are exact only within a worker.
                concurrency=1,
            )
            await self.gateway.start()
        activation = None
        allow_zero = c.zero_initial_scale
        if c.autoscaler is not None and self.gateway is not None:
            autoscaling = replace(c.autoscaler, allow_zero_initial_scale=allow_zero).validate()
            self.activator = ActivatorProcess(
                f"127.0.0.1:{self.xds_port}", c.activator_hold_timeout_s
            )
            port = await self.activator.start()
            self._stats = GatewayStats(self.gateway.admin_url)
            self.autoscaler = Autoscaler(autoscaling, self._stats, self._on_decision)
            pods_feed.on_poke = lambda ns, rev: (
                self.autoscaler and self.autoscaler.poke(f"{ns}/{rev}", 1.0)
            )
            activation = Activation(
                self.autoscaler,
                autoscaling,
                Endpoint("127.0.0.1", port),
                pods_feed,
                activator_h2c=Endpoint("127.0.0.1", self.activator.h2c_port),
                gate=Endpoint("127.0.0.1", self.gate_port),
            )
        self.serving = LocalServing(
            self.store,
            self.cp,
            data_dir=c.data_dir,
            domain=c.domain,
            pod_options=c.pod_options,
            activation=activation,
            config=ServingConfig(allow_zero_initial_scale=allow_zero),
        )
        self.live = LiveState(
            self.cp,
            self.serving,
            gateway_admin=self.gateway.admin_url if self.gateway is not None else None,
            activator=f"http://127.0.0.1:{self.activator.port}" if self.activator else None,
        )
        self.api = Api(self.cp, self.manifests, self.serving, self.live)
        self.api_port = await self.api.start("127.0.0.1", c.api_port)
        await self.serving.start()
        if self.autoscaler is not None:
            self.autoscaler.start()
        await self.live.start()

    def _on_decision(self, revision_key: str, decision: Any) -> None:
        if self.serving is not None:
            self.serving.on_decision(revision_key, decision)

    async def stop(self) -> None:
        if self.live is not None:
            await self.live.stop()
        if self.api is not None:
            await self.api.stop()
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        if self.serving is not None:
            await self.serving.close()
        if self.activator is not None:
            await self.activator.stop()
        if self._stats is not None:
            await self._stats.close()
        if self.gateway is not None:
            await self.gateway.stop()
        await self.cp.stop()
        if self.store is not None:
            self.store.close()
