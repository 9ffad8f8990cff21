"""Knative ingress conformance cases, through the whole pipeline and a real Envoy.

KIngress objects → parse/validate → ControlPlane (translator, snapshot cache, ADS)
→ a real Envoy 1.40 → real backend processes. Every case of
tests/support/conformance.py runs once against a gateway speaking state-of-the-world
xDS and once against one speaking delta xDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
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
    distribution,
    gateway_config,
    kingress,
    path,
    rule,
    running_backends,
    self_signed,
    split,
)
from tests.support.envoy import running_envoy
from wakegate.ingress.kingress import parse_ingress
from wakegate.ingress.model import Backend as RoutedBackend
from wakegate.ingress.model import Certificate, Endpoint
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

__all__ = ["_distribution", "_self_signed", "kingress", "path", "rule", "split"]
"""The builders and helpers other test modules import from here."""

_distribution = distribution
_self_signed = self_signed

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]


@dataclass
class DirectDriver(Driver):
    """KIngress parsed here and set straight into the ControlPlane with its backends."""

    cp: ControlPlane
    config: GatewayConfig
    backends: Mapping[str, Backend]

    async def apply(
        self, obj: dict[str, Any], *, secrets: Mapping[str, Certificate] | None = None
    ) -> None:
        ingress = parse_ingress(obj)
        for name, certificate in (secrets or {}).items():
            self.cp.set_certificate(f"{ingress.namespace}/{name}", certificate)
        for rule_ in ingress.rules:
            for path_ in rule_.paths:
                for sp in path_.splits:
                    backend = self.backends[sp.backend.name]
                    self.cp.set_backend(
                        sp.backend.key,
                        RoutedBackend(
                            endpoints=(Endpoint(backend.host, backend.port),),
                            http2=sp.backend.name in HTTP2,
                        ),
                    )
        self.cp.apply_ingress(ingress)
        await self._served()

    async def delete(self, name: str) -> None:
        assert self.cp.delete_ingress(f"{NAMESPACE}/{name}")
        await self._served()

    async def _served(self) -> None:
        assert await self.cp.wait_served(timeout=15), self.cp.server.nodes()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends() -> AsyncIterator[dict[str, Backend]]:
    async with running_backends() as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sotw", "delta"])
async def gw(
    request: pytest.FixtureRequest, backends: dict[str, Backend]
) -> AsyncIterator[DirectDriver]:
    config = gateway_config()
    cp = ControlPlane(config, group="conformance", debounce_s=0.01)
    xds_port = await cp.start("127.0.0.1", 0)
    try:
        async with running_envoy(
            xds_port, delta=request.param == "delta", node_cluster="conformance"
        ):
            yield DirectDriver(cp=cp, config=config, backends=backends)
    finally:
        await cp.stop()


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_conformance(gw: DirectDriver, case: Case) -> None:
    await case(gw)
