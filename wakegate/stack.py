"""The local stack: store, control plane, Envoy gateway, local runtime and API, wired."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wakegate import data_dir
from wakegate.activator_process import ActivatorProcess
from wakegate.api import Api
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.autoscaler.gateway_stats import GatewayStats
from wakegate.autoscaler.scaler import Autoscaler
from wakegate.autoscaler.service import AutoscalerService
from wakegate.envoy_process import EnvoyGateway, check_port_free
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
    xds_port: int | None = None
    """Also serve xDS on xds_host:xds_port, for gateways run apart (`wakegate gateway`);
    the stack's own gateway and activator use the owner-only socket in the data dir."""
    api_port: int = 18001
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
        self.api_token = ""

    def preflight(self) -> None:
        """Fail with one line naming the port if a port the stack needs is taken (or the
        data directory's path is too long for its sockets)."""
        c = self.config
        data_dir.socket_path(c.data_dir, "gateway/admin.sock")
        check_port_free(c.api_port, "127.0.0.1", purpose="api (--api-port)")
        if c.xds_port is not None:
            check_port_free(c.xds_port, c.xds_host, purpose="xDS (--xds-port)")
        if c.gateway:
            check_port_free(c.port, c.bind, purpose="gateway listener (--port)")
            check_port_free(c.internal_port, c.bind, purpose="gateway listener (--internal-port)")
            check_port_free(self.gate_port, "127.0.0.1", purpose="gate listener")

    async def start(self) -> None:
        c = self.config
        self.preflight()
        data_dir.prepare(c.data_dir)
        xds_socket = self.xds_socket
        admin_socket = data_dir.socket_path(c.data_dir, "gateway/admin.sock")
        self.store = Store.in_dir(c.data_dir)
        pods_feed = AutoscalerService()
        self.xds_port = await self.cp.start(
            c.xds_host,
            c.xds_port,
            services=[pods_feed.add_to_server],
            unix_socket=str(xds_socket),
        )
        if c.gateway:
            self.gateway = EnvoyGateway(
                build_bootstrap(
                    node_id=c.node_id,
                    node_cluster=c.node_cluster,
                    xds_socket=str(xds_socket),
                    admin_socket=str(admin_socket),
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
            self.activator = ActivatorProcess(f"unix:{xds_socket}", c.activator_hold_timeout_s)
            port = await self.activator.start()
            self._stats = GatewayStats(self.gateway.admin_url, unix_socket=str(admin_socket))
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
            gateway_admin_socket=(
                str(admin_socket) if self.gateway is not None else None
            ),
            activator=f"http://127.0.0.1:{self.activator.port}" if self.activator else None,
        )
        self.api_token = data_dir.new_token(c.data_dir)
        self.api = Api(self.cp, self.manifests, self.serving, self.live, token=self.api_token,
                       processes=self.processes)  # fmt: skip
        self.api_port = await self.api.start("127.0.0.1", c.api_port)
        await self.serving.start()
        if self.autoscaler is not None:
            self.autoscaler.start()
        await self.live.start()

    @property
    def xds_socket(self) -> Path:
        """The control plane's xDS (and autoscaler) socket, for the stack's own gateway
        and activator: in the owner-only data directory, itself 0600."""
        return data_dir.socket_path(self.config.data_dir, "xds.sock")

    async def processes(self) -> dict[str, Any]:
        """The gateway's and the activator's processes, for `wakegate status`."""
        out: dict[str, Any] = {}
        gateway = self.gateway
        if gateway is not None:
            out["gateway"] = {
                "running": gateway.running,
                "pid": gateway.pid,
                "live": await gateway.is_live(),
                "admin": gateway.admin_address,
                "gate": f"127.0.0.1:{self.gate_port}",
                "restarts": gateway.restarts,
                "lastExit": gateway.last_exit,
            }
        if self.activator is not None:
            out["activator"] = self.activator.status()
        return out

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
