"""How the translator shapes route configurations, checked through a real Envoy.

The external and internal listeners name the same route configuration (for delta
gateways, the same scoped routes); the internal listener marks its requests before
routing and routes meant for one listener match on that mark. These cases check what
the conformance suite does not: the mark cannot be forged from outside, it never
reaches a backend, Envoy holds one copy of each route configuration, and a header set
once on the route for all splits still reaches each split's backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.support.backends import Backend, free_port, get, start_backends
from tests.support.envoy import RunningEnvoy, running_envoy
from wakegate.autoscaler.gateway_stats import STATS_PATH, parse_active_requests
from wakegate.ingress.model import Backend as RoutedBackend
from wakegate.ingress.model import (
    BackendRef,
    Endpoint,
    HTTPOption,
    Ingress,
    Path,
    Rule,
    Split,
    Visibility,
)
from wakegate.xds.common import INTERNAL_HEADER
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.resources import ROUTE
from wakegate.xds.translate import GatewayConfig

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

LOCAL = Visibility.CLUSTER_LOCAL


@dataclass
class Gateway:
    cp: ControlPlane
    envoy: RunningEnvoy
    config: GatewayConfig
    backends: dict[str, Backend]
    mode: str

    @property
    def external(self) -> str:
        return f"http://127.0.0.1:{self.config.external_port}"

    @property
    def internal(self) -> str:
        return f"http://127.0.0.1:{self.config.internal_port}"

    async def apply(self, *ingresses: Ingress) -> None:
        for ingress in ingresses:
            for rule in ingress.rules:
                for path in rule.paths:
                    for split in path.splits:
                        backend = self.backends[split.backend.name]
                        self.cp.set_backend(
                            split.backend.key,
                            RoutedBackend(endpoints=(Endpoint(backend.host, backend.port),)),
                        )
            self.cp.apply_ingress(ingress)
        assert await self.cp.wait_served(timeout=15), self.cp.server.nodes()


def ingress(
    name: str,
    backend: str,
    *hosts: str,
    visibility: Visibility = Visibility.EXTERNAL_IP,
    http_option: HTTPOption = HTTPOption.ENABLED,
) -> Ingress:
    split = Split(BackendRef("default", backend, 80), 100)
    rule = Rule(hosts, (Path(splits=(split,)),), visibility=visibility)
    return Ingress("default", name, (rule,), http_option=http_option)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends() -> AsyncIterator[dict[str, Backend]]:
    async with start_backends("left", "right", "third") as started:
        yield {b.name: b for b in started}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sotw", "delta"])
async def gw(request: pytest.FixtureRequest, backends: dict[str, Backend]) -> AsyncIterator:
    config = GatewayConfig(
        external_port=free_port(),
        internal_port=free_port(),
        tls_port=free_port(),
        bind_address="127.0.0.1",
    )
    cp = ControlPlane(config, group="shared-routes", debounce_s=0.01)
    xds_port = await cp.start("127.0.0.1", 0)
    try:
        async with running_envoy(
            xds_port, delta=request.param == "delta", node_cluster="shared-routes"
        ) as envoy:
            yield Gateway(
                cp=cp, envoy=envoy, config=config, backends=backends, mode=request.param
            )
    finally:
        await cp.stop()


async def test_the_internal_mark_cannot_be_forged_from_outside(gw: Gateway) -> None:
    await gw.apply(
        ingress("private", "left", "private.default.svc.cluster.local", visibility=LOCAL)
    )
    for forged in ({INTERNAL_HEADER: "1"}, {INTERNAL_HEADER.upper(): ""}):
        status, _, _ = await get(gw.external + "/", "private.default.svc.cluster.local", forged)
        assert status == 404, forged
    status, body, _ = await get(gw.internal + "/", "private.default.svc.cluster.local")
    assert (status, body["name"]) == (200, "left")


async def test_the_mark_never_reaches_a_backend(gw: Gateway) -> None:
    await gw.apply(ingress("public", "right", "public.example.com"))
    for base in (gw.internal, gw.external):
        status, body, _ = await get(base + "/", "public.example.com", {INTERNAL_HEADER: "1"})
        assert (status, body["name"]) == (200, "right")
        assert INTERNAL_HEADER not in body["headers"]


async def test_redirected_ingress_still_forwards_internally(gw: Gateway) -> None:
    await gw.apply(ingress("moved", "left", "moved.example.com", http_option=HTTPOption.REDIRECTED))
    status, _, headers = await get(gw.external + "/x", "moved.example.com", {INTERNAL_HEADER: "1"})
    assert status == 301 and headers["Location"].startswith("https://moved.example.com")
    status, body, _ = await get(gw.internal + "/x", "moved.example.com")
    assert (status, body["name"]) == (200, "left")


async def test_host_split_between_listeners(gw: Gateway) -> None:
    """A ClusterLocal rule keeps a host internally, an ExternalIP rule externally."""
    await gw.apply(
        ingress("a-local", "left", "split.example.com", visibility=LOCAL),
        ingress("b-public", "right", "split.example.com"),
    )
    status, body, _ = await get(gw.internal + "/", "split.example.com")
    assert (status, body["name"]) == (200, "left")
    status, body, _ = await get(gw.external + "/", "split.example.com", {INTERNAL_HEADER: "1"})
    assert (status, body["name"]) == (200, "right")
    gw.cp.delete_ingress("default/a-local")
    assert await gw.cp.wait_served(timeout=15)
    status, body, _ = await get(gw.internal + "/", "split.example.com")
    assert (status, body["name"]) == (200, "right")


async def test_envoy_holds_each_route_configuration_once(gw: Gateway) -> None:
    dump = await gw.envoy.config_dump()
    (routes,) = [c for c in dump["configs"] if c["@type"].endswith(".v3.RoutesConfigDump")]
    names = [r["route_config"]["name"] for r in routes.get("dynamic_route_configs", [])]
    assert len(names) == len(set(names)), "both listeners share them"
    if gw.mode == "sotw":
        assert names == ["http"]
    else:
        # One per first label of the hosts served, as the scopes say.
        snapshot = gw.cp.cache.get_snapshot(gw.cp.group)
        assert snapshot is not None
        assert sorted(names) == sorted(snapshot.resources[ROUTE])
        assert {name.split("/")[1] for name in names} >= {"split", "public"}


async def test_header_shared_by_all_splits_reaches_every_split(gw: Gateway) -> None:
    def split(backend: str, percent: int) -> Split:
        headers = (("Knative-Serving-Namespace", "default"), ("Knative-Serving-Revision", backend))
        return Split(BackendRef("default", backend, 80), percent, headers)

    path = Path(splits=(split("left", 50), split("third", 50)))
    await gw.apply(Ingress("default", "pair", (Rule(("pair.example.com",), (path,)),)))
    seen: dict[str, dict[str, str]] = {}
    forged = {"Knative-Serving-Namespace": "chosen", "Knative-Serving-Revision": "chosen"}
    for _ in range(40):
        status, body, _ = await get(gw.external + "/", "pair.example.com", forged)
        assert status == 200
        seen[body["name"]] = body["headers"]
        if len(seen) == 2:
            break
    assert set(seen) == {"left", "third"}
    for name, headers in seen.items():
        assert headers["knative-serving-namespace"] == "default"
        assert headers["knative-serving-revision"] == name


async def test_a_new_host_answers_its_first_request_with_a_body(gw: Gateway) -> None:
    """Once the gateway ACKed it, a new host (in delta mode a new scope and route
    configuration) answers its very first request, a POST with a body, and a GET."""
    for i in range(4):
        host = f"fresh-{i}.default.example.com"
        await gw.apply(ingress(f"fresh-{i}", "left", host))
        status, body, _ = await get(gw.external + "/upload", host, method="POST", data=b"x" * 4096)
        assert (status, body["name"], body["method"]) == (200, "left", "POST")
        assert (await get(gw.internal + "/", host))[0] == 200


async def test_a_host_with_a_port_is_served_and_an_unknown_one_is_not(gw: Gateway) -> None:
    await gw.apply(ingress("ported", "left", "ported.default.example.com"))
    assert (await get(gw.external + "/", "ported.default.example.com:8080"))[0] == 200
    assert (await get(gw.external + "/", "ported.other.example.com"))[0] == 404
    assert (await get(gw.external + "/", "nowhere.example.com"))[0] == 404


async def test_the_gateway_keeps_the_statistics_that_are_read(gw: Gateway) -> None:
    """Of a revision's cluster only what the autoscaler reads exists (its other
    statistics, and each scope's RDS statistics, are not kept); the listeners' and the
    cluster manager's statistics stay."""
    await gw.apply(ingress("counted", "third", "counted.default.example.com"))
    assert (await get(gw.external + "/", "counted.default.example.com"))[0] == 200
    names = [line.partition(":")[0] for line in (await gw.envoy.admin_get("/stats")).splitlines()]
    assert {n for n in names if n.startswith("cluster.default/third_80.")} == {
        "cluster.default/third_80.upstream_rq_active",
        "cluster.default/third_80.upstream_rq_total",
    }
    assert "http.external.downstream_rq_total" in names
    assert "cluster_manager.cds.update_success" in names
    assert "cluster.xds_cluster.upstream_rq_total" in names
    assert not [n for n in names if ".rds.http/" in n]
    # What the autoscaler samples.
    load = parse_active_requests(await gw.envoy.admin_get(STATS_PATH))
    assert load.get("default/third") == 0.0


async def test_no_request_id_or_envoy_header_is_added(gw: Gateway) -> None:
    """Nothing reads them and every request would pay for them; a client's own
    `x-request-id` still reaches the backend. (The client's address goes upstream in
    `x-envoy-external-address`, with `x-forwarded-for`, as an edge proxy's should.)"""
    await gw.apply(ingress("plain", "left", "plain.default.example.com"))
    status, body, headers = await get(gw.external + "/", "plain.default.example.com")
    assert status == 200
    assert "x-request-id" not in body["headers"]
    upstream = [name for name in body["headers"] if name.startswith("x-envoy")]
    assert upstream == ["x-envoy-external-address"]
    assert not [name for name in headers if name.lower().startswith("x-envoy")]
    sent = {"X-Request-Id": "from-the-client"}
    _, body, _ = await get(gw.external + "/", "plain.default.example.com", sent)
    assert body["headers"]["x-request-id"] == "from-the-client"
