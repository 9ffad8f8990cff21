"""A real Envoy gateway bootstrapped with build_bootstrap against the real XdsServer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import any_pb2, duration_pb2
from prometheus_client import REGISTRY

from tests.support.backends import free_port
from tests.support.envoy import ControlPlane, RunningEnvoy, running_envoy
from wakegate.envoy_process import EnvoyGateway, GatewayError, find_envoy
from wakegate.xds.bootstrap import XdsTls, build_bootstrap
from wakegate.xds.cache import Snapshot, SnapshotCache
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from wakegate.xds.server import XdsServer

pytestmark = pytest.mark.envoy

GROUP = "gateway"
ROUTE_NAME = "local_route"
BACKEND = "backend"
ENVOY = find_envoy()


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _socket_address(port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
    )


def http_listener(port: int, stat_prefix: str = "ingress") -> bytes:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=ROUTE_NAME),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            )
        ],
    )
    listener = listener_pb2.Listener(
        name="http",
        address=_socket_address(port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_any(manager),
                    )
                ]
            )
        ],
    )
    return listener.SerializeToString()


def route_config(body: str, *, regex: str | None = None) -> bytes:
    direct = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/direct"),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_string=body)
        ),
    )
    if regex is not None:
        direct.match.ClearField("prefix")
        direct.match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=regex))
    to_backend = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/backend"),
        route=route_components_pb2.RouteAction(cluster=BACKEND),
    )
    config = route_pb2.RouteConfiguration(
        name=ROUTE_NAME,
        virtual_hosts=[
            route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[direct, to_backend])
        ],
    )
    return config.SerializeToString()


def eds_cluster(connect_timeout: int = 1) -> bytes:
    cluster = cluster_pb2.Cluster(
        name=BACKEND,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=duration_pb2.Duration(seconds=connect_timeout),
    )
    return cluster.SerializeToString()


def load_assignment(port: int) -> bytes:
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=BACKEND,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(port))
                    )
                ]
            )
        ],
    )
    return assignment.SerializeToString()


def snapshot(
    listen: int,
    body: str,
    backend_port: int,
    *,
    regex: str | None = None,
    connect_timeout: int = 1,
    stat_prefix: str = "ingress",
) -> dict:
    return {
        LISTENER: {"http": http_listener(listen, stat_prefix)},
        ROUTE: {ROUTE_NAME: route_config(body, regex=regex)},
        CLUSTER: {BACKEND: eds_cluster(connect_timeout)},
        ENDPOINT: {BACKEND: load_assignment(backend_port)},
    }


@contextlib.asynccontextmanager
async def backend(name: str) -> AsyncIterator[int]:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text=f"from {name}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def fetch(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def eventually_serves(port: int, path: str, body: str, within: float = 10.0) -> None:
    """Poll until the gateway answers `body` (a listener may still be warming)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: object = None
    while loop.time() < deadline:
        try:
            last = await fetch(port, path)
        except aiohttp.ClientError as exc:
            last = exc
        if last == (200, body):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"GET {path}: wanted {body!r}, last got {last!r}")


def nacks(type_url: str) -> float:
    return REGISTRY.get_sample_value("wakegate_xds_nacks_total", {"type_url": type_url}) or 0.0


async def wait_for_nack(cp: ControlPlane, node_id: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        node = next((n for n in cp.server.nodes() if n.node_id == node_id), None)
        if node is not None and node.last_nack is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no NACK from {node_id}: {cp.server.nodes()}")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_gateway_serves_snapshots_keeps_config_on_nack(
    control_plane: ControlPlane, delta: bool
) -> None:
    cp = control_plane
    listen = free_port()
    async with backend("one") as port_one, backend("two") as port_two:
        first = cp.set(GROUP, snapshot(listen, "v1", port_one))
        async with running_envoy(cp.port, delta=delta, node_cluster=GROUP) as envoy:
            assert await cp.server.wait_acked(GROUP, first.version, 10)
            await eventually_serves(listen, "/direct", "v1")
            assert await fetch(listen, "/backend/x") == (200, "from one")
            [node] = cp.server.nodes()
            assert (node.node_id, node.group, node.connected) == (envoy.node_id, GROUP, True)
            assert node.mode == ("delta" if delta else "sotw")
            assert set(node.acked) == {LISTENER, ROUTE, CLUSTER, ENDPOINT}

            # A change to the route and the endpoints is served once ACKed.
            await cp.push(GROUP, snapshot(listen, "v2", port_two))
            assert await fetch(listen, "/direct") == (200, "v2")
            assert await fetch(listen, "/backend/x") == (200, "from two")
            acked_routes = cp.server.nodes()[0].acked[ROUTE]

            # A modified cluster and listener with unchanged endpoints and routes finish
            # warming: the gateway gets their endpoints again and ACKs.
            modified = snapshot(listen, "v2", port_two, connect_timeout=2, stat_prefix="edge")
            await cp.push(GROUP, modified, timeout=5)
            stats = await envoy.stats("cluster_manager.")
            assert stats["cluster_manager.warming_clusters"] == 0
            assert stats["cluster_manager.cluster_modified"] == 1
            stats = await envoy.stats("listener_manager.")
            assert stats["listener_manager.total_listeners_warming"] == 0
            assert stats["listener_manager.listener_modified"] == 1
            assert await fetch(listen, "/backend/x") == (200, "from two")

            # An invalid regex is rejected; Envoy keeps serving the previous routes.
            before = nacks(ROUTE)
            bad = cp.set(
                GROUP,
                snapshot(
                    listen, "v3", port_two, regex="(unclosed", connect_timeout=2, stat_prefix="edge"
                ),
            )
            await wait_for_nack(cp, envoy.node_id)
            [node] = cp.server.nodes()
            assert node.last_nack is not None
            assert node.last_nack.type_url == ROUTE
            assert "unclosed" in node.last_nack.message or "regex" in node.last_nack.message
            assert node.acked[ROUTE] == acked_routes
            assert nacks(ROUTE) == before + 1
            assert not await cp.server.wait_acked(GROUP, bad.version, 0.3)
            assert await fetch(listen, "/direct") == (200, "v2")

            # The next valid snapshot is accepted.
            await cp.push(GROUP, snapshot(listen, "v4", port_one))
            assert await fetch(listen, "/direct") == (200, "v4")
            assert await fetch(listen, "/backend/x") == (200, "from one")
            assert nacks(ROUTE) == before + 1
            assert cp.server.nodes()[0].acked[ROUTE] != acked_routes


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_gateway_keeps_config_across_control_plane_restart(delta: bool) -> None:
    listen = free_port()
    async with backend("one") as port_one, contextlib.AsyncExitStack() as stack:
        cache = SnapshotCache()
        cache.set_snapshot(GROUP, Snapshot("before", snapshot(listen, "before", port_one)))
        server = XdsServer(cache)
        xds_port = await server.start()
        await stack.enter_async_context(running_envoy(xds_port, delta=delta, node_cluster=GROUP))
        await eventually_serves(listen, "/direct", "before")

        # Without a control plane the gateway keeps serving what it had.
        await server.stop(0)
        assert await fetch(listen, "/direct") == (200, "before")

        # A new control plane on the same port serves a new snapshot; Envoy reconnects.
        cache = SnapshotCache()
        cache.set_snapshot(GROUP, Snapshot("after", snapshot(listen, "after", port_one)))
        server = XdsServer(cache)
        await server.start("127.0.0.1", xds_port)
        stack.push_async_callback(server.stop, 0)
        assert await server.wait_acked(GROUP, "after", 15)
        assert await fetch(listen, "/direct") == (200, "after")
        assert await fetch(listen, "/backend/") == (200, "from one")


async def test_supervisor_restarts_a_dead_gateway(control_plane: ControlPlane) -> None:
    listen = free_port()
    async with backend("one") as port_one:
        control_plane.set(GROUP, snapshot(listen, "alive", port_one))
        async with running_envoy(control_plane.port, node_cluster=GROUP, supervise=True) as envoy:
            gateway = envoy.gateway
            await eventually_serves(listen, "/direct", "alive")
            first_pid = gateway.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not (gateway.restarts == 1 and gateway.pid != first_pid and gateway.running):
                assert loop.time() < deadline, "gateway was not restarted"
                await asyncio.sleep(0.05)
            await eventually_serves(listen, "/direct", "alive")
            assert await gateway.is_live()
        assert not gateway.running


def _bootstrap(admin_port: int) -> dict:
    return build_bootstrap(
        node_id="n",
        node_cluster=GROUP,
        xds_host="127.0.0.1",
        xds_port=free_port(),
        admin_port=admin_port,
    )


async def test_admin_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = EnvoyGateway(_bootstrap(port), tmp_path / "checked", concurrency=1)
        with pytest.raises(GatewayError, match=rf"admin port {port} on 127\.0\.0\.1 .*in use"):
            await gateway.start(10)
        assert not gateway.running

        # Without the pre-flight check Envoy itself fails; its own reason is reported.
        gateway = EnvoyGateway(_bootstrap(port), tmp_path / "raw", concurrency=1, preflight=False)
        with pytest.raises(GatewayError, match=rf"exited .*{port}.*[Aa]ddress already in use"):
            await gateway.start(10)
        assert not gateway.running


async def test_listener_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = EnvoyGateway(
            _bootstrap(0), tmp_path, concurrency=1, check_ports=[("127.0.0.1", port)]
        )
        with pytest.raises(GatewayError, match=rf"listener port {port} .*in use"):
            await gateway.start(10)


async def test_readiness_timeout_is_reported(tmp_path: Path) -> None:
    # Nothing serves xDS: Envoy stays initialising and start() gives up.
    gateway = EnvoyGateway(_bootstrap(0), tmp_path, concurrency=1)
    with pytest.raises(GatewayError, match=r"not ready after 0\.5s"):
        await gateway.start(0.5)
    assert not gateway.running


def _self_signed(tmp_path: Path) -> XdsTls:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wakegate-xds")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("wakegate-xds")]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return XdsTls(
        ca_file=str(tmp_path / "cert.pem"),
        cert_file=str(tmp_path / "cert.pem"),
        key_file=str(tmp_path / "key.pem"),
        server_name="wakegate-xds",
    )


@pytest.mark.parametrize(
    ("delta", "xds_host", "tls"),
    [
        (False, "127.0.0.1", False),
        (True, "127.0.0.1", False),
        (False, "wakegate.wakegate-system.svc", True),
    ],
    ids=["sotw", "delta", "dns-mtls"],
)
def test_bootstrap_passes_envoy_validation(
    tmp_path: Path, delta: bool, xds_host: str, tls: bool
) -> None:
    bootstrap = build_bootstrap(
        node_id="gw-0",
        node_cluster=GROUP,
        xds_host=xds_host,
        xds_port=18000,
        admin_port=9901,
        delta=delta,
        xds_tls=_self_signed(tmp_path) if tls else None,
        node_metadata={"role": "external"},
    )
    ads = bootstrap["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{path}' OK" in result.stdout + result.stderr


def test_invalid_bootstrap_fails_validation(tmp_path: Path) -> None:
    bootstrap = _bootstrap(9901)
    bootstrap["dynamic_resources"]["ads_config"]["api_type"] = "NOT_A_TYPE"
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


async def test_running_envoy_exposes_admin_and_log(control_plane: ControlPlane) -> None:
    listen = free_port()
    async with backend("one") as port_one:
        control_plane.set(GROUP, snapshot(listen, "hi", port_one))
        async with running_envoy(control_plane.port, node_cluster=GROUP) as envoy:
            assert isinstance(envoy, RunningEnvoy)
            assert stat.S_ISSOCK(envoy.admin_socket.stat().st_mode)
            assert stat.S_IMODE(envoy.admin_socket.stat().st_mode) == 0o600
            assert envoy.gateway.admin_port is None
            assert (await envoy.admin_get("/ready")).strip() == "LIVE"
            dump = await envoy.config_dump()
            assert any("ListenersConfigDump" in c["@type"] for c in dump["configs"])
            stats = await envoy.stats("cluster_manager.cds.")
            assert stats["cluster_manager.cds.update_success"] >= 1
            assert "starting main dispatch loop" in envoy.log()


_ORPHAN_SCRIPT = """
import asyncio, sys, tempfile
from wakegate.envoy_process import EnvoyGateway
from wakegate.xds.bootstrap import build_bootstrap

async def main():
    bootstrap = build_bootstrap(
        node_id="orphan", node_cluster="g", xds_host="127.0.0.1", xds_port=int(sys.argv[1]),
        admin_port=0,
    )
    gateway = EnvoyGateway(bootstrap, tempfile.mkdtemp(), concurrency=1)
    await gateway.start(20, wait_live=False)
    print(gateway.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_gateway_dies_with_its_parent() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN_SCRIPT, str(free_port()), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 30)
    envoy_pid = int(line)
    assert _alive(envoy_pid)
    parent.kill()
    await parent.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while _alive(envoy_pid):
        assert loop.time() < deadline, "Envoy outlived its parent"
        await asyncio.sleep(0.05)
