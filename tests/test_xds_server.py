"""The ADS server spoken to by a real gRPC client: state of the world and delta."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from tests.support.envoy import ControlPlane
from wakegate.xds.cache import Snapshot
from wakegate.xds.delta import CHUNK
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE
from wakegate.xds.scopes import scope_bytes
from wakegate.xds.server import ADS_SERVICE, XdsServer

GROUP = "gateway"


def cluster(name: str, timeout: int = 1) -> bytes:
    message = cluster_pb2.Cluster(name=name)
    message.connect_timeout.seconds = timeout
    return message.SerializeToString()


def endpoints(name: str, weight: int = 1) -> bytes:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    message.policy.overprovisioning_factor.value = 100 + weight
    return message.SerializeToString()


def listener(name: str, port: int = 8080) -> bytes:
    message = listener_pb2.Listener(name=name)
    message.address.socket_address.port_value = port
    return message.SerializeToString()


def route(name: str, tag: str = "") -> bytes:
    message = route_pb2.RouteConfiguration(name=name)
    message.virtual_hosts.add(name=f"vh{tag}", domains=["*"])
    return message.SerializeToString()


def resources(
    *,
    clusters: Mapping[str, bytes] | None = None,
    eps: Mapping[str, bytes] | None = None,
    listeners: Mapping[str, bytes] | None = None,
    routes: Mapping[str, bytes] | None = None,
) -> dict[str, dict[str, bytes]]:
    base = {
        CLUSTER: {"a": cluster("a"), "b": cluster("b")},
        ENDPOINT: {"a": endpoints("a"), "b": endpoints("b")},
        LISTENER: {"http": listener("http")},
        ROUTE: {"r1": route("r1"), "r2": route("r2")},
    }
    for type_url, override in (
        (CLUSTER, clusters),
        (ENDPOINT, eps),
        (LISTENER, listeners),
        (ROUTE, routes),
    ):
        if override is not None:
            base[type_url] = dict(override)
    return base


class Stream:
    """One ADS stream of a test gateway; the node is sent on the first request only."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, group: str, delta: bool) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.delta = delta
        self.call: Any = (
            stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        )
        self.node_id = node_id
        self.group = group
        self._node_sent = False

    def _node(self, request: Any) -> None:
        if not self._node_sent:
            request.node.id = self.node_id
            request.node.cluster = self.group
            self._node_sent = True

    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        nonce: str = "",
        version: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=version,
        )
        if error is not None:
            request.error_detail.code = 13
            request.error_detail.message = error
        self._node(request)
        await self.call.write(request)

    async def ack(self, response: Any, names: Iterable[str] | None = None) -> None:
        if self.delta:
            await self.delta_request(response.type_url, nonce=response.nonce)
        else:
            resource_names = names if names is not None else self.names(response)
            await self.request(
                response.type_url,
                resource_names if response.type_url in (ROUTE, ENDPOINT) else (),
                nonce=response.nonce,
                version=response.version_info,
            )

    async def nack(self, response: Any, message: str, *, version: str = "") -> None:
        if self.delta:
            await self.delta_request(response.type_url, nonce=response.nonce, error=message)
        else:
            names = self.names(response) if response.type_url in (ROUTE, ENDPOINT) else ()
            await self.request(
                response.type_url, names, nonce=response.nonce, version=version, error=message
            )

    async def delta_request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        initial: Mapping[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            initial_resource_versions=dict(initial or {}),
            response_nonce=nonce,
        )
        if error is not None:
            request.error_detail.code = 13
            request.error_detail.message = error
        self._node(request)
        await self.call.write(request)

    async def recv(self, within: float = 5.0) -> Any:
        response = await asyncio.wait_for(self.call.read(), within)
        assert response is not grpc.aio.EOF, "stream ended"
        return response

    @staticmethod
    def names(response: Any) -> list[str]:
        """Resource names of a SotW response (decoded from the resources)."""
        decoders = {
            CLUSTER: cluster_pb2.Cluster,
            ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
            LISTENER: listener_pb2.Listener,
            ROUTE: route_pb2.RouteConfiguration,
        }
        out = []
        for any_ in response.resources:
            message = decoders[any_.type_url].FromString(any_.value)
            out.append(message.cluster_name if any_.type_url == ENDPOINT else message.name)
        return out

    @staticmethod
    def bodies(response: Any) -> dict[str, bytes]:
        """name → bytes of a delta response."""
        return {r.name: r.resource.value for r in response.resources}


@pytest.fixture
async def channel(control_plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as ch:
        yield ch


def open_stream(
    channel: grpc.aio.Channel, node_id: str = "gw-1", group: str = GROUP, *, delta: bool = False
) -> Stream:
    return Stream(channel, node_id, group, delta)


def node(cp: ControlPlane, node_id: str) -> Any:
    return next(n for n in cp.server.nodes() if n.node_id == node_id)


def nacks(type_url: str) -> float:
    return REGISTRY.get_sample_value("wakegate_xds_nacks_total", {"type_url": type_url}) or 0.0


def pushes(type_url: str) -> float:
    return REGISTRY.get_sample_value("wakegate_xds_pushes_total", {"type_url": type_url}) or 0.0


async def wait_for_nack(cp: ControlPlane, node_id: str) -> None:
    for _ in range(500):
        if node(cp, node_id).last_nack is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no NACK recorded: {node(cp, node_id)}")


async def settle(cp: ControlPlane, node_id: str, type_url: str, version: str) -> None:
    """Wait until the server processed an ACK of `version` for `type_url`."""
    for _ in range(500):
        if node(cp, node_id).acked.get(type_url) == version:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{type_url} {version} never ACKed: {node(cp, node_id)}")


# --- state of the world ---------------------------------------------------------------


async def test_sotw_initial_responses_and_named_subscriptions(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    snap = control_plane.set(GROUP, resources())
    s = open_stream(channel)

    await s.request(CLUSTER)
    cds = await s.recv()
    assert cds.type_url == CLUSTER
    assert cds.version_info == snap.type_versions[CLUSTER]
    assert {r.value for r in cds.resources} == {cluster("a"), cluster("b")}
    assert all(r.type_url == CLUSTER for r in cds.resources)
    await s.ack(cds)

    await s.request(ENDPOINT, ["a", "missing"])
    eds = await s.recv()
    assert Stream.names(eds) == ["a"]
    assert eds.resources[0].value == endpoints("a")
    assert eds.nonce != cds.nonce

    # Growing the subscription answers with the newly subscribed names that exist.
    await s.ack(eds, names=["a", "b", "missing"])
    eds2 = await s.recv()
    assert Stream.names(eds2) == ["b"]

    await s.request(ROUTE, ["r2"])
    rds = await s.recv()
    assert Stream.names(rds) == ["r2"]

    await s.request(LISTENER)
    lds = await s.recv()
    assert Stream.names(lds) == ["http"]


async def test_sotw_ack_and_nack_bookkeeping(
    control_plane: ControlPlane, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    cp = control_plane
    first = cp.set(GROUP, resources())
    s = open_stream(channel)
    await s.request(CLUSTER)
    cds = await s.recv()
    await s.ack(cds)
    await s.request(LISTENER)
    await s.ack(await s.recv())
    assert await cp.server.wait_acked(GROUP, first.version, 5)
    status = node(cp, "gw-1")
    assert status.acked[CLUSTER] == cds.version_info
    assert status.acked_snapshot[CLUSTER] == first.version
    assert (status.group, status.mode, status.connected, status.last_nack) == (
        GROUP,
        "sotw",
        True,
        None,
    )

    before = nacks(CLUSTER)
    bad = cp.set(GROUP, resources(clusters={"a": cluster("a", timeout=99)}))
    rejected = await s.recv()
    assert rejected.type_url == CLUSTER
    await s.nack(rejected, "cluster a: bad\nsecond line", version=cds.version_info)
    await wait_for_nack(cp, "gw-1")
    status = node(cp, "gw-1")
    assert status.last_nack is not None
    assert status.last_nack.type_url == CLUSTER
    assert status.last_nack.version == rejected.version_info
    assert status.last_nack.message == "cluster a: bad\nsecond line"
    assert status.last_nack.time > 0
    assert status.acked[CLUSTER] == cds.version_info  # the last accepted version stays
    assert nacks(CLUSTER) == before + 1
    [logged] = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert logged == (
        f"gateway gw-1 (group {GROUP}) rejected cds version {rejected.version_info}: "
        "cluster a: bad | second line"
    )
    assert not await cp.server.wait_acked(GROUP, bad.version, 0.2)

    # The rejected clusters are not resent: the next message is the listener change.
    listeners_changed = cp.set(
        GROUP,
        resources(
            clusters={"a": cluster("a", timeout=99)},
            listeners={"http": listener("http", 9090)},
        ),
    )
    lds = await s.recv()
    assert lds.type_url == LISTENER
    await s.ack(lds)
    await settle(cp, "gw-1", LISTENER, lds.version_info)
    assert not await cp.server.wait_acked(GROUP, listeners_changed.version, 0.2)

    # A snapshot that changes the clusters again is sent and accepted.
    fixed = cp.set(GROUP, resources(listeners={"http": listener("http", 9090)}))
    cds2 = await s.recv()
    assert cds2.type_url == CLUSTER
    await s.ack(cds2)
    assert await cp.server.wait_acked(GROUP, fixed.version, 5)
    assert node(cp, "gw-1").acked_snapshot[CLUSTER] == fixed.version
    assert nacks(CLUSTER) == before + 1


async def test_sotw_stale_nonces_are_ignored(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    cp.set(GROUP, resources(listeners={}))
    s = open_stream(channel)
    await s.request(CLUSTER)
    cds1 = await s.recv()
    await s.ack(cds1)
    await s.request(ROUTE, ["r1"])
    rds1 = await s.recv()
    await s.ack(rds1)

    second = cp.set(GROUP, resources(clusters={"a": cluster("a", timeout=5)}, listeners={}))
    cds2 = await s.recv()
    # A NACK and a subscription change carrying superseded nonces are ignored.
    await s.nack(cds1, "late complaint about an old version")  # stale nonce
    await s.request(ROUTE, ["r1", "r2"], nonce="not-a-nonce-we-sent", version=rds1.version_info)
    await s.ack(cds2)
    assert await cp.server.wait_acked(GROUP, second.version, 5)
    assert node(cp, "gw-1").last_nack is None

    # The ignored request did not subscribe r2: a change of r1 sends r1 alone.
    cp.set(
        GROUP,
        resources(
            clusters={"a": cluster("a", timeout=5)},
            listeners={},
            routes={"r1": route("r1", "x"), "r2": route("r2", "x")},
        ),
    )
    rds2 = await s.recv()
    assert Stream.names(rds2) == ["r1"]


async def test_sotw_pushes_only_changed_types_in_warming_order(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    cp.set(GROUP, resources())
    s = open_stream(channel)
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ["a"]), (LISTENER, ()), (ROUTE, ["r1"])):
        await s.request(type_url, names)
        await s.ack(await s.recv())

    before = pushes(ENDPOINT)
    # Endpoints of "a" change; so does route r2, which this gateway does not use.
    cp.set(GROUP, resources(eps={"a": endpoints("a", 7)}, routes={"r1": route("r1"), "r2": b""}))
    eds = await s.recv()
    assert eds.type_url == ENDPOINT
    assert eds.resources[0].value == endpoints("a", 7)
    assert pushes(ENDPOINT) == before + 1
    await s.ack(eds)

    # Everything changes: clusters before endpoints, listeners before routes.
    cp.set(
        GROUP,
        resources(
            clusters={"a": cluster("a", 2)},
            eps={"a": endpoints("a", 8)},
            listeners={"http": listener("http", 1)},
            routes={"r1": route("r1", "new")},
        ),
    )
    order = [(await s.recv()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_routes_naming_new_clusters_wait_for_the_clusters_answer(
    control_plane: ControlPlane, channel: grpc.aio.Channel, delta: bool
) -> None:
    cp = control_plane
    cp.set(GROUP, resources(clusters={"a": cluster("a")}, eps={"a": endpoints("a")}))
    s = open_stream(channel, delta=delta)
    subscribe = s.delta_request if delta else s.request
    last = {}
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ["a"]), (LISTENER, ()), (ROUTE, ["r1"])):
        await subscribe(type_url, names)
        last[type_url] = await s.recv()
        await s.ack(last[type_url])

    # Cluster "b" is new and route r1 changes (to name it, in a real gateway).
    cp.set(GROUP, resources(routes={"r1": route("r1", "to-b"), "r2": route("r2")}))
    cds = await s.recv()
    assert cds.type_url == CLUSTER
    held = asyncio.create_task(s.recv())
    done, _ = await asyncio.wait({held}, timeout=0.3)
    assert not done, "routes were sent before the gateway answered the new clusters"

    # As Envoy does: ask for the new cluster's endpoints, then ACK the clusters.
    if delta:
        await s.delta_request(ENDPOINT, ["b"])
    else:
        eds = last[ENDPOINT]
        await s.request(ENDPOINT, ["a", "b"], nonce=eds.nonce, version=eds.version_info)
    await s.ack(cds)
    eds = await held
    assert eds.type_url == ENDPOINT
    assert "b" in (Stream.bodies(eds) if delta else Stream.names(eds))
    rds = await s.recv()
    assert rds.type_url == ROUTE
    if delta:
        assert Stream.bodies(rds) == {"r1": route("r1", "to-b")}
    else:
        assert [r.value for r in rds.resources] == [route("r1", "to-b")]


async def test_sotw_subscription_change_after_an_ack_is_answered(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    control_plane.set(GROUP, resources())
    s = open_stream(channel)
    await s.request(ENDPOINT, ["a"])
    eds = await s.recv()
    await s.ack(eds)
    # Envoy repeats the nonce it last saw when it only changes its subscription.
    await s.request(ENDPOINT, ["a", "b"], nonce=eds.nonce, version=eds.version_info)
    grown = await s.recv()
    assert Stream.names(grown) == ["b"]


async def test_sotw_per_name_types_carry_only_what_changed(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """Routes and endpoints may be sent one by one (clusters and listeners may not), so a
    change resends only the resources that changed, not every subscribed one."""
    cp = control_plane
    cp.set(GROUP, resources())
    s = open_stream(channel)
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ["a", "b"]), (ROUTE, ["r1", "r2"])):
        await s.request(type_url, names)
        first = await s.recv()
        assert len(first.resources) == 2
        await s.ack(first, names=names)

    cp.set(GROUP, resources(eps={"a": endpoints("a"), "b": endpoints("b", 9)}))
    eds = await s.recv()
    assert (eds.type_url, Stream.names(eds)) == (ENDPOINT, ["b"])
    await s.ack(eds, names=["a", "b"])
    cp.set(
        GROUP,
        resources(
            eps={"a": endpoints("a"), "b": endpoints("b", 9)},
            routes={"r1": route("r1"), "r2": route("r2", "new")},
        ),
    )
    rds = await s.recv()
    assert (rds.type_url, Stream.names(rds)) == (ROUTE, ["r2"])
    await s.ack(rds, names=["r1", "r2"])

    again = open_stream(channel, node_id="gw-2")
    await again.request(ENDPOINT, ["a", "b"])
    assert sorted(Stream.names(await again.recv())) == ["a", "b"]


def eds_cluster(name: str, service_name: str = "", timeout: int = 1) -> bytes:
    message = cluster_pb2.Cluster.FromString(cluster(name, timeout))
    message.type = cluster_pb2.Cluster.EDS
    message.eds_cluster_config.eds_config.ads.SetInParent()
    message.eds_cluster_config.service_name = service_name
    return message.SerializeToString()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_modified_clusters_get_their_endpoints_again(
    control_plane: ControlPlane, channel: grpc.aio.Channel, delta: bool
) -> None:
    """Envoy warms a modified EDS cluster until its endpoints arrive, changed or not."""
    cp = control_plane
    clusters = {"a": eds_cluster("a"), "b": eds_cluster("b"), "c": eds_cluster("c", "svc-c")}
    eps = {"a": endpoints("a"), "b": endpoints("b"), "svc-c": endpoints("c")}
    cp.set(GROUP, resources(clusters=clusters, eps=eps))
    s = open_stream(channel, delta=delta)
    if delta:
        await s.delta_request(CLUSTER)
        await s.ack(await s.recv())
        await s.delta_request(ENDPOINT, ["a", "svc-c"])
    else:
        await s.request(CLUSTER)
        await s.ack(await s.recv())
        await s.request(ENDPOINT, ["a", "svc-c"])
    subscribed = ["a", "svc-c"]
    await s.ack(await s.recv(), names=subscribed)

    def names(response: Any) -> list[str]:
        return sorted(Stream.bodies(response) if delta else Stream.names(response))

    cp.set(GROUP, resources(clusters={**clusters, "a": eds_cluster("a", timeout=2)}, eps=eps))
    cds = await s.recv()
    assert (cds.type_url, names(cds)) == (CLUSTER, ["a"] if delta else ["a", "b", "c"])
    await s.ack(cds)
    eds = await s.recv()
    assert eds.type_url == ENDPOINT
    assert names(eds) == ["a"]
    await s.ack(eds, names=subscribed)

    # A cluster named by its EDS service name; b's endpoints are not subscribed.
    cp.set(
        GROUP,
        resources(
            clusters={
                "a": eds_cluster("a", timeout=2),
                "b": eds_cluster("b", timeout=3),
                "c": eds_cluster("c", "svc-c", timeout=3),
            },
            eps=eps,
        ),
    )
    cds = await s.recv()
    assert cds.type_url == CLUSTER
    await s.ack(cds)
    eds = await s.recv()
    assert eds.type_url == ENDPOINT
    assert names(eds) == (["svc-c"] if delta else ["c"])


async def test_sotw_reconnect_gets_the_whole_current_snapshot(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    cp.set(GROUP, resources())
    gauge = {"group": GROUP}
    connected_before = REGISTRY.get_sample_value("wakegate_xds_connected_gateways", gauge) or 0
    s = open_stream(channel)
    await s.request(CLUSTER)
    cds = await s.recv()
    await s.ack(cds)
    await settle(cp, "gw-1", CLUSTER, cds.version_info)
    connected = REGISTRY.get_sample_value("wakegate_xds_connected_gateways", gauge)
    assert connected == connected_before + 1
    s.call.cancel()
    for _ in range(200):
        if not node(cp, "gw-1").connected:
            break
        await asyncio.sleep(0.01)
    status = node(cp, "gw-1")
    assert not status.connected
    assert status.disconnected_at is not None
    connected = REGISTRY.get_sample_value("wakegate_xds_connected_gateways", gauge)
    assert connected == connected_before

    many = {f"c{i}": cluster(f"c{i}") for i in range(2_000)}
    latest = cp.set(GROUP, resources(clusters=many))
    again = open_stream(channel)
    await again.request(CLUSTER, version=cds.version_info)
    full = await again.recv()
    assert full.version_info == latest.type_versions[CLUSTER]
    assert sorted(Stream.names(full)) == sorted(many)
    assert node(cp, "gw-1").connected


async def test_wait_acked(control_plane: ControlPlane, channel: grpc.aio.Channel) -> None:
    cp = control_plane
    first = cp.set(GROUP, resources())
    assert not await cp.server.wait_acked(GROUP, first.version, 0.1)  # nobody connected

    s = open_stream(channel)
    await s.request(CLUSTER)
    cds = await s.recv()
    assert not await cp.server.wait_acked(GROUP, first.version, 0.1)
    await s.ack(cds)
    await s.request(LISTENER)
    lds = await s.recv()
    # Listeners exist in the snapshot and are not ACKed yet.
    assert not await cp.server.wait_acked(GROUP, first.version, 0.1)

    waiter = asyncio.create_task(cp.server.wait_acked(GROUP, first.version, 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await s.ack(lds)
    assert await waiter

    # An unchanged type counts as ACKed for a later snapshot; a later ACK covers older ones.
    second = cp.set(GROUP, resources(clusters={"a": cluster("a", 3)}))
    assert not await cp.server.wait_acked(GROUP, second.version, 0.1)
    await s.ack(await s.recv())
    assert await cp.server.wait_acked(GROUP, second.version, 5)
    assert await cp.server.wait_acked(GROUP, first.version, 0.1)
    assert not await cp.server.wait_acked(GROUP, "never-set", 0.1)

    # Every gateway of the group must have ACKed.
    other = open_stream(channel, "gw-2")
    await other.request(CLUSTER)
    await other.recv()
    assert not await cp.server.wait_acked(GROUP, second.version, 0.1)
    assert not await cp.server.wait_acked(GROUP, second.version, 0.1, min_gateways=3)


async def test_groups_are_isolated(control_plane: ControlPlane, channel: grpc.aio.Channel) -> None:
    cp = control_plane
    cp.set("external", resources(clusters={"ext": cluster("ext")}))
    cp.set("internal", resources(clusters={"int": cluster("int")}))
    ext = open_stream(channel, "ext-1", "external")
    internal = open_stream(channel, "int-1", "internal")
    await ext.request(CLUSTER)
    await internal.request(CLUSTER)
    assert Stream.names(await ext.recv()) == ["ext"]
    first_internal = await internal.recv()
    assert Stream.names(first_internal) == ["int"]
    await internal.ack(first_internal)

    cp.set("external", resources(clusters={"ext2": cluster("ext2")}))
    assert Stream.names(await ext.recv()) == ["ext2"]
    # The internal gateway got nothing from that: its next message is its own change.
    cp.set("internal", resources(clusters={"int2": cluster("int2")}))
    assert Stream.names(await internal.recv()) == ["int2"]
    assert {n.node_id: n.group for n in cp.server.nodes()} == {
        "ext-1": "external",
        "int-1": "internal",
    }


async def test_many_streams_of_a_group_get_the_same_snapshot(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    streams = [open_stream(channel, f"gw-{i}") for i in range(20)]
    for s in streams:
        await s.request(CLUSTER)
    many = {f"c{i}": cluster(f"c{i}") for i in range(500)}
    snap = cp.set(GROUP, resources(clusters=many, listeners={}))
    replies = [await s.recv() for s in streams]
    assert {r.version_info for r in replies} == {snap.type_versions[CLUSTER]}
    assert all(len(r.resources) == 500 for r in replies)
    for s, r in zip(streams, replies, strict=True):
        await s.ack(r)
    assert await cp.server.wait_acked(GROUP, snap.version, 5)
    assert cp.server.connected(GROUP) == 20


async def test_health_reports_serving(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", ADS_SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_bad_client_input_does_not_break_the_server(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    cp.set(GROUP, resources())
    # No node on the first request: that stream is refused.
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(call.read(), 5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # An unsupported type is ignored and the stream keeps working.
    s = open_stream(channel)
    await s.request("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")
    await s.request("")
    await s.request(CLUSTER)
    cds = await s.recv()
    assert cds.type_url == CLUSTER
    assert len(cds.resources) == 2


# --- delta ----------------------------------------------------------------------------------


async def test_delta_initial_wildcard_and_named_subscriptions(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    snap = control_plane.set(GROUP, resources())
    s = open_stream(channel, delta=True)
    await s.delta_request(CLUSTER)
    cds = await s.recv()
    assert cds.system_version_info == snap.version
    assert Stream.bodies(cds) == {"a": cluster("a"), "b": cluster("b")}
    assert {r.name: r.version for r in cds.resources} == dict(snap.names(CLUSTER))
    assert list(cds.removed_resources) == []
    await s.ack(cds)

    await s.delta_request(ENDPOINT, ["a", "missing"])
    eds = await s.recv()
    assert Stream.bodies(eds) == {"a": endpoints("a")}
    assert list(eds.removed_resources) == ["missing"]  # tells it does not exist
    await s.ack(eds)

    await s.delta_request(ENDPOINT, ["b"])
    eds2 = await s.recv()
    assert Stream.bodies(eds2) == {"b": endpoints("b")}
    await s.ack(eds2)
    status = node(control_plane, "gw-1")
    assert status.mode == "delta"
    assert status.acked[ENDPOINT] == snap.version


async def test_delta_pushes_only_changed_resources_and_removals(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    cp.set(GROUP, resources())
    s = open_stream(channel, delta=True)
    await s.delta_request(CLUSTER)
    await s.ack(await s.recv())
    await s.delta_request(ENDPOINT, ["a", "b"])
    await s.ack(await s.recv())
    await s.delta_request(LISTENER)
    await s.ack(await s.recv())

    second = cp.set(
        GROUP,
        resources(clusters={"a": cluster("a", 9), "c": cluster("c")}, eps={"b": endpoints("b")}),
    )
    cds = await s.recv()
    assert cds.type_url == CLUSTER
    assert Stream.bodies(cds) == {"a": cluster("a", 9), "c": cluster("c")}
    assert list(cds.removed_resources) == ["b"]
    await s.ack(cds)
    eds = await s.recv()
    assert eds.type_url == ENDPOINT
    assert Stream.bodies(eds) == {}
    assert list(eds.removed_resources) == ["a"]
    await s.ack(eds)
    assert await cp.server.wait_acked(GROUP, second.version, 5)

    # Only the listener changes: nothing else is sent.
    cp.set(
        GROUP,
        resources(
            clusters={"a": cluster("a", 9), "c": cluster("c")},
            eps={"b": endpoints("b")},
            listeners={"http": listener("http", 1)},
        ),
    )
    lds = await s.recv()
    assert lds.type_url == LISTENER
    assert list(Stream.bodies(lds)) == ["http"]


async def test_delta_reconnect_sends_only_what_differs(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    snap = cp.set(GROUP, resources(clusters={"a": cluster("a"), "b": cluster("b", 4)}))
    s = open_stream(channel, delta=True)
    held = {"a": snap.names(CLUSTER)["a"], "b": "stale-version", "gone": "x"}
    await s.delta_request(CLUSTER, initial=held)
    cds = await s.recv()
    assert Stream.bodies(cds) == {"b": cluster("b", 4)}
    assert list(cds.removed_resources) == ["gone"]
    await s.ack(cds)
    await s.delta_request(LISTENER, initial=dict(snap.names(LISTENER)))
    lds = await s.recv()
    assert (Stream.bodies(lds), list(lds.removed_resources)) == ({}, [])
    await s.ack(lds)

    await s.delta_request(ENDPOINT, ["a"], initial={"a": snap.names(ENDPOINT)["a"], "z": "1"})
    eds = await s.recv()  # nothing to send, but the subscription is answered
    assert Stream.bodies(eds) == {}
    assert list(eds.removed_resources) == []
    await s.ack(eds)
    assert await cp.server.wait_acked(GROUP, snap.version, 5)


async def test_delta_unsubscribe_stops_updates(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    cp.set(GROUP, resources())
    s = open_stream(channel, delta=True)
    await s.delta_request(ENDPOINT, ["a", "b"])
    await s.ack(await s.recv())
    await s.delta_request(ENDPOINT, unsubscribe=["a"])
    await s.delta_request(LISTENER)  # answered after the unsubscription was processed
    assert (await s.recv()).type_url == LISTENER
    cp.set(GROUP, resources(eps={"a": endpoints("a", 5), "b": endpoints("b")}))
    cp.set(GROUP, resources(eps={"a": endpoints("a", 5), "b": endpoints("b", 6)}))
    eds = await s.recv()
    assert Stream.bodies(eds) == {"b": endpoints("b", 6)}
    assert list(eds.removed_resources) == []


async def test_delta_nack_keeps_last_accepted_and_is_not_resent(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    first = cp.set(GROUP, resources())
    s = open_stream(channel, delta=True)
    await s.delta_request(CLUSTER)
    await s.ack(await s.recv())
    await s.delta_request(ROUTE, ["r1"])
    await s.ack(await s.recv())
    await s.delta_request(LISTENER)
    await s.ack(await s.recv())
    assert await cp.server.wait_acked(GROUP, first.version, 5)

    before = nacks(CLUSTER)
    bad = cp.set(GROUP, resources(clusters={"a": cluster("a", 77), "b": cluster("b")}))
    rejected = await s.recv()
    assert Stream.bodies(rejected) == {"a": cluster("a", 77)}
    await s.nack(rejected, "cluster a is invalid")
    await wait_for_nack(cp, "gw-1")
    assert not await cp.server.wait_acked(GROUP, bad.version, 0.2)
    status = node(cp, "gw-1")
    assert status.last_nack is not None
    assert (status.last_nack.type_url, status.last_nack.version) == (CLUSTER, bad.version)
    assert status.last_nack.message == "cluster a is invalid"
    assert status.acked[CLUSTER] == first.version
    assert nacks(CLUSTER) == before + 1

    # A route change goes out alone; the rejected cluster is not sent again.
    routes_changed = cp.set(
        GROUP,
        resources(
            clusters={"a": cluster("a", 77), "b": cluster("b")},
            routes={"r1": route("r1", "2")},
        ),
    )
    rds = await s.recv()
    assert rds.type_url == ROUTE
    await s.ack(rds)
    assert not await cp.server.wait_acked(GROUP, routes_changed.version, 0.2)

    fixed = cp.set(GROUP, resources(routes={"r1": route("r1", "2")}))
    cds = await s.recv()
    assert Stream.bodies(cds) == {"a": cluster("a")}
    await s.ack(cds)
    assert await cp.server.wait_acked(GROUP, fixed.version, 5)
    assert node(cp, "gw-1").acked[CLUSTER] == fixed.version


async def test_a_taken_port_is_refused(control_plane: ControlPlane) -> None:
    second = XdsServer(control_plane.cache)
    with pytest.raises(OSError, match=f"127.0.0.1:{control_plane.port}"):
        await second.start("127.0.0.1", control_plane.port)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_ack_that_grows_the_subscription_is_not_enough(
    control_plane: ControlPlane, channel: grpc.aio.Channel, delta: bool
) -> None:
    """An ACK carrying new names leaves the answer to those names to be ACKed."""
    cp = control_plane
    only_routes = {"clusters": {}, "listeners": {}}
    cp.set(GROUP, resources(**only_routes))
    s = open_stream(channel, delta=delta)
    if delta:
        await s.delta_request(ROUTE, ["r1"])
    else:
        await s.request(ROUTE, ["r1"])
    await s.ack(await s.recv())
    second = cp.set(
        GROUP, resources(routes={"r1": route("r1", "2"), "r2": route("r2")}, **only_routes)
    )
    changed = await s.recv()
    if delta:
        await s.delta_request(ROUTE, ["r2"], nonce=changed.nonce)
    else:
        await s.ack(changed, names=["r1", "r2"])
    grown = await s.recv()
    assert "r2" in (Stream.bodies(grown) if delta else Stream.names(grown))
    assert not await cp.server.wait_acked(GROUP, second.version, 0.2)
    await s.ack(grown, names=["r1", "r2"])
    assert await cp.server.wait_acked(GROUP, second.version, 5)


async def test_delta_routes_wait_until_every_scope_route_configuration_is_subscribed(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """Routes of one update go out together: a response with routes waits until the
    gateway subscribed to every route configuration its scopes name."""
    cp = control_plane

    def scoped(*labels: str, tag: str = "") -> dict[str, dict[str, bytes]]:
        return {
            LISTENER: {"http": listener("http")},
            SCOPED_ROUTE: {f"http/{n}": scope_bytes(f"http/{n}", n) for n in labels},
            ROUTE: {f"http/{n}": route(f"http/{n}", tag) for n in labels},
        }

    first = cp.set(GROUP, scoped("a"))
    s = open_stream(channel, delta=True)
    await s.delta_request(LISTENER)
    await s.ack(await s.recv())
    await s.delta_request(SCOPED_ROUTE)
    srds = await s.recv()
    assert list(Stream.bodies(srds)) == ["http/a"]
    assert not await cp.server.wait_acked(GROUP, first.version, 0.1), "routes not sent yet"
    await s.delta_request(ROUTE, ["http/a"])
    rds = await s.recv()
    assert list(Stream.bodies(rds)) == ["http/a"]
    await s.ack(srds)
    await s.ack(rds)
    assert await cp.server.wait_acked(GROUP, first.version, 5)

    # A new scope: its route configuration and the changed one wait for the subscription.
    routes_sent = pushes(ROUTE)
    second = cp.set(GROUP, scoped("a", "b", tag="2"))
    srds = await s.recv()
    assert (srds.type_url, list(Stream.bodies(srds))) == (SCOPED_ROUTE, ["http/b"])
    assert not await cp.server.wait_acked(GROUP, second.version, 0.2)
    assert pushes(ROUTE) == routes_sent
    await s.delta_request(ROUTE, ["http/b"])
    rds = await s.recv()
    assert set(Stream.bodies(rds)) == {"http/a", "http/b"}
    await s.ack(srds)
    await s.ack(rds)
    assert await cp.server.wait_acked(GROUP, second.version, 5)

    # A removed scope: routes are not held for it.
    third = cp.set(GROUP, scoped("b", tag="3"))
    srds = await s.recv()
    assert list(srds.removed_resources) == ["http/a"]
    rds = await s.recv()
    assert (rds.type_url, list(Stream.bodies(rds))) == (ROUTE, ["http/b"])
    assert list(rds.removed_resources) == ["http/a"]
    await s.ack(srds)
    await s.ack(rds)
    assert await cp.server.wait_acked(GROUP, third.version, 5)


async def test_delta_answers_a_change_with_what_it_touched(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    """After its first answer, a delta stream diffs only the names that changed between
    snapshots of a chain; the answer carries just those."""
    cp = control_plane
    clusters = {f"c{i}": cluster(f"c{i}") for i in range(2000)}
    first = Snapshot("1", {CLUSTER: clusters, LISTENER: {"http": listener("http")}})
    cp.cache.set_snapshot(GROUP, first)
    s = open_stream(channel, delta=True)
    await s.delta_request(CLUSTER)
    cds = await s.recv()
    assert len(cds.resources) == 2000
    await s.ack(cds)
    second = first.evolve("2", {CLUSTER: {"c7": cluster("c7", 9), "c8": None}})
    looked: list[str] = []
    versions = type(second.names(CLUSTER))
    original = versions.__getitem__

    def spy(self: Any, name: str) -> str:
        looked.append(name)
        return original(self, name)

    versions.__getitem__ = spy  # type: ignore[method-assign]
    try:
        cp.cache.set_snapshot(GROUP, second)
        cds = await s.recv()
    finally:
        versions.__getitem__ = original  # type: ignore[method-assign]
    assert Stream.bodies(cds) == {"c7": cluster("c7", 9)}
    assert list(cds.removed_resources) == ["c8"]
    assert len(looked) <= 4, looked


async def test_delta_sends_a_large_answer_in_parts_all_of_which_are_acked(
    control_plane: ControlPlane, channel: grpc.aio.Channel
) -> None:
    cp = control_plane
    count = 2 * CHUNK + 7
    snap = cp.set(GROUP, {CLUSTER: {f"c{i}": cluster(f"c{i}") for i in range(count)}})
    s = open_stream(channel, delta=True)
    await s.delta_request(CLUSTER)
    parts = [await s.recv() for _ in range(3)]
    assert [len(p.resources) for p in parts] == [CHUNK, CHUNK, 7]
    assert len({p.nonce for p in parts}) == 3
    assert {r.name for p in parts for r in p.resources} == {f"c{i}" for i in range(count)}
    for part in parts[:2]:
        await s.ack(part)
    assert not await cp.server.wait_acked(GROUP, snap.version, 0.2), "one part unanswered"
    await s.ack(parts[2])
    assert await cp.server.wait_acked(GROUP, snap.version, 5)
