"""The local stack: store, control plane, Envoy gateway, local runtime and API, wired."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wakegate.api import Api
from wakegate.controlplane import ControlPlane
from wakegate.envoy_process import EnvoyGateway, check_port_free
from wakegate.reconciler.manifests import ManifestReconciler
from wakegate.reconciler.services import LocalServing
from wakegate.store import Store
from wakegate.xds.bootstrap import build_bootstrap
from wakegate.xds.translate import GatewayConfig

log = logging.getLogger(__name__)


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
    node_id: str = "wakegate-gateway-0"
    node_cluster: str = "wakegate-gateway"
    delta: bool = False
    gateway: bool = True
    pod_options: dict[str, Any] = field(default_factory=dict)


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.cp = ControlPlane(
            GatewayConfig(
                external_port=config.port,
                internal_port=config.internal_port,
                tls_port=config.tls_port,
                bind_address=config.bind,
                https_redirect_port=config.tls_port,
            ),
            group=config.node_cluster,
        )
        self.manifests = ManifestReconciler(self.cp)
        self.serving: LocalServing | None = None
        self.api: Api | None = None
        self.gateway: EnvoyGateway | None = None
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

    async def start(self) -> None:
        c = self.config
        self.preflight()
        self.store = Store.in_dir(c.data_dir)
        self.serving = LocalServing(
            self.store, self.cp, data_dir=c.data_dir, domain=c.domain, pod_options=c.pod_options
        )
        self.xds_port = await self.cp.start(c.xds_host, c.xds_port)
        self.api = Api(self.cp, self.manifests, self.serving)
        self.api_port = await self.api.start("127.0.0.1", c.api_port)
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
            )
            await self.gateway.start()
        await self.serving.start()

    async def stop(self) -> None:
        if self.serving is not None:
            await self.serving.close()
        if self.gateway is not None:
            await self.gateway.stop()
        if self.api is not None:
            await self.api.stop()
        await self.cp.stop()
        if self.store is not None:
            self.store.close()
