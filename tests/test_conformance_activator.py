"""The Knative ingress conformance cases for HTTP/2 and gRPC, through the activator.

Every split's backend is the real activator process (its h2c listener for the h2c and
gRPC backends), as for a revision in proxy mode, and the activator forwards to the real
echo backend: once with the backend's address known from the start (proxy mode), once
with none until the activator pokes the control plane for it (a revision at zero, woken
by the request it holds).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from tests.support.backends import Backend
from tests.support.conformance import (
    CASES,
    HTTP2,
    NAMESPACE,
    Case,
    Driver,
    gateway_config,
    running_backends,
)
from tests.support.envoy import running_envoy
from wakegate.autoscaler.service import AutoscalerService
from wakegate.ingress.kingress import parse_ingress
from wakegate.ingress.model import Backend as RoutedBackend
from wakegate.ingress.model import Certificate, Endpoint
from wakegate.serving.headers import NAMESPACE_HEADER, REVISION_HEADER
from wakegate.stack import ActivatorProcess
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

THROUGH_THE_ACTIVATOR = ("http2", "grpc")


@dataclass
class ActivatorDriver(Driver):
    """KIngress into the ControlPlane, every split sent to the activator."""

    cp: ControlPlane
    config: GatewayConfig
    backends: Mapping[str, Backend]
    feed: AutoscalerService
    activator: ActivatorProcess
    at_zero: bool
    woken: list[str] = field(default_factory=list)

    def wake(self, namespace: str, revision: str) -> None:
        """The activator holds a request for `revision`: its pod is there now."""
        self.woken.append(revision)
        backend = self.backends[revision]
        self.feed.set_endpoints(namespace, revision, [(backend.host, backend.port)])

    async def apply(
        self, obj: dict[str, Any], *, secrets: Mapping[str, Certificate] | None = None
    ) -> None:
        obj = copy.deepcopy(obj)
        for rule in obj["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                for split in path["splits"]:
                    # As Knative's route does for a revision: the activator's target.
                    split.setdefault("appendHeaders", {}).update(
                        {NAMESPACE_HEADER: NAMESPACE, REVISION_HEADER: split["serviceName"]}
                    )
        ingress = parse_ingress(obj)
        for rule_ in ingress.rules:
            for path_ in rule_.paths:
                for sp in path_.splits:
                    name = sp.backend.name
                    http2 = name in HTTP2
                    port = self.activator.h2c_port if http2 else self.activator.port
                    if self.at_zero:
                        self.feed.set_endpoints(NAMESPACE, name, [])
                    else:
                        backend = self.backends[name]
                        self.feed.set_endpoints(NAMESPACE, name, [(backend.host, backend.port)])
                    self.cp.set_backend(
                        sp.backend.key,
                        RoutedBackend(endpoints=(Endpoint("127.0.0.1", port),), http2=http2),
                    )
        self.cp.apply_ingress(ingress)
        assert await self.cp.wait_served(timeout=15), self.cp.server.nodes()

    async def delete(self, name: str) -> None:
        assert self.cp.delete_ingress(f"{NAMESPACE}/{name}")
        assert await self.cp.wait_served(timeout=15)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends() -> AsyncIterator[dict[str, Backend]]:
    async with running_backends() as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["proxy mode", "at zero"])
async def gw(
    request: pytest.FixtureRequest, backends: dict[str, Backend]
) -> AsyncIterator[ActivatorDriver]:
    config = gateway_config()
    cp = ControlPlane(config, group="conformance", debounce_s=0.01)
    feed = AutoscalerService()
    xds_port = await cp.start("127.0.0.1", 0, services=[feed.add_to_server])
    activator = ActivatorProcess(f"127.0.0.1:{xds_port}", hold_timeout_s=30)
    await activator.start()
    driver = ActivatorDriver(
        cp=cp,
        config=config,
        backends=backends,
        feed=feed,
        activator=activator,
        at_zero=request.param == "at zero",
    )
    feed.on_poke = driver.wake
    try:
        async with running_envoy(xds_port, delta=True, node_cluster="conformance"):
            yield driver
    finally:
        await activator.stop()
        await cp.stop()


@pytest.mark.parametrize(
    "case", [CASES[name] for name in THROUGH_THE_ACTIVATOR], ids=THROUGH_THE_ACTIVATOR
)
async def test_conformance_through_the_activator(gw: ActivatorDriver, case: Case) -> None:
    gw.woken.clear()
    await case(gw)
    if gw.at_zero:
        assert gw.woken, "the first request was held and woke the revision"
