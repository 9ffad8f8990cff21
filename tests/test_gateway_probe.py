"""Readiness probes of gateway pods (reconciler/gateway_probe.py) against real Envoys.

Each gateway is a real Envoy fed by its own ControlPlane with the status virtual host,
so a gateway serves an ingress's hash exactly when its ControlPlane has the ingress.
A pod that accepts connections and never answers stands for a hung gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.support.backends import free_port
from tests.support.envoy import RunningEnvoy, running_envoy
from tests.support.waiting import eventually
from wakegate.ingress.model import BackendRef, Endpoint, Ingress, Path, Rule, Split
from wakegate.reconciler.cluster.gateway_probe import (
    GatewayProber,
    parse_gateway_service,
    parse_probe_port,
    pod_name,
)
from wakegate.reconciler.cluster.kubernetes import Backoff
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

module_loop = pytest.mark.asyncio(loop_scope="module")

FAST = Backoff(initial_s=0.02, max_s=0.2)
_names = itertools.count(1)


# --- flags ------------------------------------------------------------------------------


def test_gateway_service_and_port_parse() -> None:
    assert parse_gateway_service("knative-serving/wakegate-gateway-internal") == (
        "knative-serving",
        "wakegate-gateway-internal",
    )
    for bad in ("wakegate-gateway", "a/b/c", "/name", "ns/", "Upper/case", "ns/under_score"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_gateway_service(bad)
    assert parse_probe_port("8081") == 8081
    assert parse_probe_port("http") == "http"
    for bad in ("0", "65536", "-1", "HTTP", "a b", ""):
        with pytest.raises(ValueError, match="port number"):
            parse_probe_port(bad)
    assert pod_name(Endpoint("10.0.0.7", 8081)) == "10.0.0.7:8081"
    assert pod_name(Endpoint("fd00::7", 8081)) == "[fd00::7]:8081"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--gateway-service", "wakegate-gateway-internal"], "--gateway-service"),
        (["--gateway-service", "ns/gw", "--gateway-probe-port", "99999"], "--gateway-probe-port"),
        (["--gateway-service", "ns/gw", "--gateway-probe-concurrency", "0"], "--gateway-probe-"),
    ],
    ids=["service", "port", "concurrency"],
)
def test_malformed_probe_flags_get_one_line_naming_the_flag(flags: list[str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wakegate.cli", "controller", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wakegate: {named}"), lines[0]


# --- real gateways ----------------------------------------------------------------------


@dataclass
class Gateway:
    cp: ControlPlane
    config: GatewayConfig
    envoy: RunningEnvoy

    @property
    def pod(self) -> Endpoint:
        """Where a prober reaches this gateway: its cluster-local listener."""
        return Endpoint("127.0.0.1", self.config.internal_port)

    async def serve(self, ingress: Ingress) -> None:
        self.cp.apply_ingress(ingress)
        assert await self.cp.wait_served(10)

    async def drop(self, ingress: Ingress) -> None:
        self.cp.delete_ingress(ingress.key)
        assert await self.cp.wait_served(10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateways() -> AsyncIterator[tuple[Gateway, Gateway]]:
    async with contextlib.AsyncExitStack() as stack:
        found = []
        for i in range(2):
            config = GatewayConfig(
                external_port=free_port(),
                internal_port=free_port(),
                tls_port=free_port(),
                bind_address="127.0.0.1",
                readiness_probes=True,
            )
            cp = ControlPlane(config, group=f"probed-{i}")
            port = await cp.start("127.0.0.1", 0)
            stack.push_async_callback(cp.stop)
            envoy = await stack.enter_async_context(running_envoy(port, node_cluster=cp.group))
            found.append(Gateway(cp, config, envoy))
        yield found[0], found[1]


def new_ingress() -> Ingress:
    name = f"probed-{next(_names)}"
    split = Split(BackendRef("default", f"{name}-00001", 80), 100)
    return Ingress("default", name, (Rule((f"{name}.example.com",), (Path(splits=(split,)),)),))


def digest_of(gateway: Gateway, ingress: Ingress) -> str:
    found = gateway.cp.translator.readiness(ingress.key)
    assert found is not None and found[0] == ingress
    return found[1]


@contextlib.asynccontextmanager
async def running(prober: GatewayProber) -> AsyncIterator[GatewayProber]:
    task = asyncio.create_task(prober.run())
    try:
        await asyncio.wait_for(prober.running.wait(), 5)
        yield prober
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class SilentPod:
    """A TCP server that accepts connections and never answers: a hung gateway."""

    server: asyncio.Server
    open: int = 0
    most: int = 0
    accepted: int = 0

    @property
    def pod(self) -> Endpoint:
        return Endpoint("127.0.0.1", int(self.server.sockets[0].getsockname()[1]))


@contextlib.asynccontextmanager
async def silent_pod() -> AsyncIterator[SilentPod]:
    holder: list[SilentPod] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pod = holder[0]
        pod.open += 1
        pod.accepted += 1
        pod.most = max(pod.most, pod.open)
        try:
            while await reader.read(4096):
                pass
        finally:
            pod.open -= 1
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    holder.append(SilentPod(server))
    try:
        yield holder[0]
    finally:
        server.close()


@pytest.mark.envoy
@module_loop
async def test_served_only_once_every_pod_answers(gateways: tuple[Gateway, Gateway]) -> None:
    a, b = gateways
    ingress = new_ingress()
    await a.serve(ingress)
    digest = digest_of(a, ingress)
    changes: list[int] = []
    prober = GatewayProber(on_change=lambda: changes.append(1), backoff=FAST)
    try:
        async with running(prober):
            assert prober.waiting(ingress.key, digest) == "the gateway pods are not known yet"
            prober.set_pods([a.pod, b.pod])
            prober.set_wanted({ingress.key: digest})
            await eventually(lambda: prober.pending(ingress.key, digest) == [b.pod])
            await eventually(lambda: "(HTTP 404)" in prober.waiting(ingress.key, digest))
            assert prober.waiting(ingress.key, digest) == (
                f"1 of 2 gateway pods do not serve it yet: {pod_name(b.pod)} (HTTP 404)"
            )
            assert not prober.served(ingress.key, digest)
            assert prober.probing() == {(ingress.key, b.pod)}, "a's answer is kept"

            await b.serve(ingress)
            assert digest_of(b, ingress) == digest, "the same ingress, the same hash"
            await eventually(lambda: prober.served(ingress.key, digest), what="served by both")
            assert prober.probing() == set()
            assert prober.waiting(ingress.key, digest) == ""
            assert len(changes) >= 3, "pods set, then one answer per pod"
            assert not prober.served(ingress.key, "0" * 32), "only for the hash asked about"
    finally:
        await a.drop(ingress)
        await b.drop(ingress)


@pytest.mark.envoy
@module_loop
async def test_pod_changes_are_followed(gateways: tuple[Gateway, Gateway]) -> None:
    a, b = gateways
    ingress = new_ingress()
    await a.serve(ingress)
    await b.serve(ingress)
    digest = digest_of(a, ingress)
    prober = GatewayProber(backoff=FAST, timeout_s=0.5)
    try:
        async with running(prober), silent_pod() as hung:
            prober.set_pods([a.pod, b.pod])
            prober.set_wanted({ingress.key: digest})
            await eventually(lambda: prober.served(ingress.key, digest))

            prober.set_pods([a.pod, b.pod, hung.pod])
            assert not prober.served(ingress.key, digest), "a new pod must answer too"
            assert prober.pending(ingress.key, digest) == [hung.pod]
            await eventually(lambda: "(timed out)" in prober.waiting(ingress.key, digest))
            assert pod_name(hung.pod) in prober.waiting(ingress.key, digest)

            prober.set_pods([a.pod, b.pod])
            assert prober.served(ingress.key, digest), "answers of the pods that stayed are kept"
            assert prober.probing() == set()

            prober.set_pods([])
            assert not prober.served(ingress.key, digest)
            assert prober.waiting(ingress.key, digest) == "no gateway pod is ready"
    finally:
        await a.drop(ingress)
        await b.drop(ingress)


@pytest.mark.envoy
@module_loop
async def test_what_is_no_longer_wanted_is_no_longer_probed(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    ingress = new_ingress()
    await a.serve(ingress)
    await b.serve(ingress)
    digest = digest_of(a, ingress)
    stale = "f" * 32
    prober = GatewayProber(backoff=FAST)
    try:
        prober.set_pods([a.pod, b.pod])
        prober.set_wanted({ingress.key: stale})
        assert prober.probing() == set(), "nothing runs before the prober does"
        async with running(prober):
            assert prober.probing() == {(ingress.key, a.pod), (ingress.key, b.pod)}
            await eventually(lambda: "(HTTP 404)" in prober.waiting(ingress.key, stale))
            prober.set_wanted({ingress.key: digest})
            assert prober.wanted() == {ingress.key: digest}
            await eventually(lambda: prober.served(ingress.key, digest))
            assert not prober.served(ingress.key, stale)
            prober.set_wanted({})
            assert prober.probing() == set() and prober.wanted() == {}
            assert not prober.served(ingress.key, digest), "forgotten once no longer wanted"
    finally:
        await a.drop(ingress)
        await b.drop(ingress)


@module_loop
async def test_requests_in_flight_are_bounded() -> None:
    async with silent_pod() as hung:
        prober = GatewayProber(backoff=FAST, timeout_s=0.2, concurrency=2)
        async with running(prober):
            prober.set_pods([hung.pod])
            prober.set_wanted({f"default/k{i}": "0" * 32 for i in range(10)})
            assert len(prober.probing()) == 10
            await eventually(lambda: hung.accepted >= 12, what="several rounds of probes")
            assert hung.most == 2, f"at most 2 requests at a time, saw {hung.most}"
            assert not any(prober.served(f"default/k{i}", "0" * 32) for i in range(10))
