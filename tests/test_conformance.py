"""Knative ingress conformance cases, through the whole pipeline and a real Envoy.

KIngress objects → parse/validate → ControlPlane (translator, snapshot cache, ADS)
→ a real Envoy 1.40 → real backend processes. Every case runs once against a
gateway speaking state-of-the-world xDS and once against one speaking delta xDS.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.backends import (
    Backend,
    free_port,
    get,
    grpc_ping,
    grpc_ping_stream,
    h2c_get,
    launch_backend,
    ws_roundtrip,
)
from tests.support.envoy import RunningEnvoy, running_envoy
from wakegate.controlplane import ControlPlane
from wakegate.ingress.kingress import parse_ingress
from wakegate.ingress.model import Backend as RoutedBackend
from wakegate.ingress.model import Certificate, Endpoint, Ingress
from wakegate.xds.translate import GatewayConfig

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

PLAIN = [f"b{i}" for i in range(10)]
FRESH = [f"fresh{i}" for i in range(10)]


# --- KIngress builders -------------------------------------------------------------


def split(service: str, percent: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "serviceNamespace": "default",
        "serviceName": service,
        "servicePort": 80,
        "percent": percent,
        **extra,
    }


def path(*splits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"splits": list(splits), **extra}


def rule(hosts: list[str], *paths: dict[str, Any], visibility: str = "ExternalIP") -> dict:
    return {"hosts": hosts, "visibility": visibility, "http": {"paths": list(paths)}}


def kingress(name: str, *rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": list(rules), **spec},
    }


# --- the gateway under test -----------------------------------------------------------


@dataclass
class Gateway:
    cp: ControlPlane
    envoy: RunningEnvoy
    backends: dict[str, Backend]
    config: GatewayConfig
    http2: set[str] = field(default_factory=lambda: {"h2c", "grpc"})

    @property
    def external(self) -> str:
        return f"http://127.0.0.1:{self.config.external_port}"

    @property
    def internal(self) -> str:
        return f"http://127.0.0.1:{self.config.internal_port}"

    @property
    def tls(self) -> str:
        return f"https://127.0.0.1:{self.config.tls_port}"

    async def apply(self, obj: dict[str, Any]) -> Ingress:
        """Apply one KIngress and wait until the gateway ACKed it."""
        ingress = parse_ingress(obj)
        for rule_ in ingress.rules:
            for path_ in rule_.paths:
                for sp in path_.splits:
                    backend = self.backends[sp.backend.name]
                    self.cp.set_backend(
                        sp.backend.key,
                        RoutedBackend(
                            endpoints=(Endpoint(backend.host, backend.port),),
                            http2=sp.backend.name in self.http2,
                        ),
                    )
        self.cp.apply_ingress(ingress)
        assert await self.cp.wait_served(timeout=15), self.cp.server.nodes()
        return ingress


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends() -> AsyncIterator[dict[str, Backend]]:
    specs = [(n, {}) for n in PLAIN + FRESH] + [("h2c", {"h2c": True}), ("grpc", {"grpc": True})]
    started = await asyncio.gather(*(launch_backend(n, **kw) for n, kw in specs))
    try:
        yield {b.name: b for b in started}
    finally:
        await asyncio.gather(*(b.stop() for b in started))


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sotw", "delta"])
async def gw(request: pytest.FixtureRequest, backends: dict[str, Backend]) -> AsyncIterator:
    tls_port = free_port()
    config = GatewayConfig(
        external_port=free_port(),
        internal_port=free_port(),
        tls_port=tls_port,
        bind_address="127.0.0.1",
        https_redirect_port=tls_port,
    )
    cp = ControlPlane(config, group="conformance", debounce_s=0.01)
    xds_port = await cp.start("127.0.0.1", 0)
    try:
        async with running_envoy(
            xds_port, delta=request.param == "delta", node_cluster="conformance"
        ) as envoy:
            yield Gateway(cp=cp, envoy=envoy, backends=backends, config=config)
    finally:
        await cp.stop()


async def backend_of(gw: Gateway, host: str, p: str = "/", **kw: Any) -> tuple[int, Any]:
    status, body, _ = await get(gw.external + p, host=host, **kw)
    return status, body


# --- the cases -------------------------------------------------------------------------


async def test_basics(gw: Gateway) -> None:
    await gw.apply(kingress("basics", rule(["basics.example.com"], path(split("b0")))))
    status, body = await backend_of(gw, "basics.example.com")
    assert status == 200 and body["name"] == "b0"
    assert body["host"] == "basics.example.com"
    status, _ = await backend_of(gw, "basics.example.com:80")
    assert status == 200, "host:port must match the same virtual host"
    status, _ = await backend_of(gw, "nobody-serves-this.example.com")
    assert status == 404


async def test_http2_upstream_and_downstream(gw: Gateway) -> None:
    await gw.apply(kingress("http2", rule(["http2.example.com"], path(split("h2c")))))
    status, body = await backend_of(gw, "http2.example.com")
    assert status == 200 and body["proto"] == "HTTP/2.0"
    status, body, _ = await h2c_get(gw.external + "/", host="http2.example.com")
    assert status == 200 and body["name"] == "h2c" and body["proto"] == "HTTP/2.0"


async def test_grpc(gw: Gateway) -> None:
    await gw.apply(kingress("grpc", rule(["grpc.example.com"], path(split("grpc")))))
    address = f"127.0.0.1:{gw.config.external_port}"
    assert await grpc_ping(address, "hello", authority="grpc.example.com") == "grpc:hello"
    replies = await grpc_ping_stream(address, ["a", "b", "c"], authority="grpc.example.com")
    assert replies == ["grpc:a", "grpc:b", "grpc:c"]


async def test_headers_pre_and_post_split(gw: Gateway) -> None:
    await gw.apply(
        kingress(
            "headers",
            rule(
                ["headers.example.com"],
                path(
                    split(
                        "b1",
                        appendHeaders={
                            "Post-Split": "b1",
                            "Knative-Serving-Revision": "b1",
                            "Knative-Serving-Namespace": "default",
                        },
                    ),
                    appendHeaders={"Pre-Split": "rule"},
                ),
            ),
        )
    )
    status, body = await backend_of(
        gw,
        "headers.example.com",
        headers={"Knative-Serving-Revision": "chosen-by-client", "Knative-Serving-Namespace": "x"},
    )
    assert status == 200
    headers = body["headers"]
    assert headers["pre-split"] == "rule"
    assert headers["post-split"] == "b1"
    assert headers["knative-serving-revision"] == "b1", "the gateway overwrites, never appends"
    assert headers["knative-serving-namespace"] == "default"


async def test_multiple_hosts(gw: Gateway) -> None:
    hosts = ["one.multi.example.com", "two.multi.example.com"]
    await gw.apply(kingress("multi", rule(hosts, path(split("b2")))))
    for host in hosts:
        status, body = await backend_of(gw, host)
        assert status == 200 and body["name"] == "b2"
    status, _ = await backend_of(gw, "three.multi.example.com")
    assert status == 404


async def test_path(gw: Gateway) -> None:
    host = "path.example.com"
    await gw.apply(
        kingress(
            "path",
            rule(
                [host],
                path(split("b1"), path="/foo"),
                path(split("b2"), path="/bar"),
                path(split("b0")),
            ),
        )
    )
    for p, want in [
        ("/foo", "b1"),
        ("/foo/deeper", "b1"),
        ("/bar", "b2"),
        ("/", "b0"),
        ("/baz", "b0"),
    ]:
        status, body = await backend_of(gw, host, p)
        assert (status, body["name"], body["path"]) == (200, want, p)


async def _distribution(gw: Gateway, host: str, n: int, p: str = "/") -> collections.Counter:
    counts: collections.Counter[str] = collections.Counter()
    failures = 0
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal failures
            async with sem:
                status, body, _ = await get(gw.external + p, host=host, session=session)
                if status == 200:
                    counts[body["name"]] += 1
                else:
                    failures += 1

        await asyncio.gather(*(one() for _ in range(n)))
    assert failures == 0
    return counts


async def test_percentage(gw: Gateway) -> None:
    weights = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0]
    host = "percentage.example.com"
    splits = [split(name, w) for name, w in zip(PLAIN, weights, strict=True)]
    await gw.apply(kingress("percentage", rule([host], path(*splits))))
    counts = await _distribution(gw, host, 1000)
    for name, weight in zip(PLAIN, weights, strict=True):
        share = counts[name] / 10
        assert abs(share - weight) <= 10, (name, weight, share, counts)
        if weight == 0:
            assert counts[name] == 0, f"{name} has 0 % but received {counts[name]}"


async def test_path_and_percentage(gw: Gateway) -> None:
    host = "pathpct.example.com"
    await gw.apply(
        kingress(
            "pathpct",
            rule([host], path(split("b1", 50), split("b2", 50), path="/split"), path(split("b0"))),
        )
    )
    counts = await _distribution(gw, host, 200, "/split")
    assert set(counts) == {"b1", "b2"}
    assert all(abs(c / 2 - 50) <= 15 for c in counts.values()), counts
    assert await _distribution(gw, host, 20, "/other") == {"b0": 20}


async def test_timeout(gw: Gateway) -> None:
    host = "timeout.example.com"
    await gw.apply(kingress("timeout", rule([host], path(split("b3"), timeout="1s"))))
    status, body = await backend_of(gw, host, "/?sleep=100")
    assert status == 200 and body["name"] == "b3"
    status, _ = await backend_of(gw, host, "/?sleep=2500")
    assert status == 504


def _self_signed(host: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


async def test_tls_and_redirect(gw: Gateway, tmp_path: Path) -> None:
    host = "tls.example.com"
    cert, key = _self_signed(host)
    gw.cp.set_certificate("default/tls-cert", Certificate(cert, key))
    await gw.apply(
        kingress(
            "tls",
            rule([host], path(split("b4"))),
            tls=[{"hosts": [host], "secretName": "tls-cert", "secretNamespace": "default"}],
            httpOption="Redirected",
        )
    )
    ctx = ssl.create_default_context(cadata=cert)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            gw.tls + "/secure", headers={"Host": host}, ssl=ctx, server_hostname=host
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["name"] == "b4" and body["path"] == "/secure"
    status, _, headers = await get(gw.external + "/secure", host=host)
    assert status == 301
    assert headers["Location"] == f"https://{host}:{gw.config.tls_port}/secure"


async def test_visibility(gw: Gateway) -> None:
    await gw.apply(
        kingress(
            "visibility",
            rule(["vis.default.svc.cluster.local"], path(split("b5")), visibility="ClusterLocal"),
            rule(["vis.example.com"], path(split("b5"))),
        )
    )
    status, _, _ = await get(gw.external + "/", host="vis.default.svc.cluster.local")
    assert status == 404, "a cluster-local host must not be reachable on the external listener"
    status, body, _ = await get(gw.internal + "/", host="vis.default.svc.cluster.local")
    assert status == 200 and body["name"] == "b5"
    status, body, _ = await get(gw.internal + "/", host="vis.example.com")
    assert status == 200 and body["name"] == "b5"


async def test_websocket(gw: Gateway) -> None:
    host = "ws.example.com"
    await gw.apply(kingress("ws", rule([host], path(split("b6")))))
    replies = await ws_roundtrip(gw.external + "/ws", host, ["ping", "pong"])
    assert replies == ["b6:ping", "b6:pong"]


async def test_host_rewrite(gw: Gateway) -> None:
    await gw.apply(
        kingress(
            "rewrite",
            rule(["rewrite.example.com"], path(split("b7"), rewriteHost="rewritten.internal")),
        )
    )
    status, body = await backend_of(gw, "rewrite.example.com")
    assert status == 200 and body["host"] == "rewritten.internal"


async def test_tag_header_routing(gw: Gateway) -> None:
    host = "tags.example.com"
    await gw.apply(
        kingress(
            "tags",
            rule(
                [host],
                path(split("b8"), headers={"Knative-Serving-Tag": {"exact": "blue"}}),
                path(split("b0")),
            ),
        )
    )
    status, body = await backend_of(gw, host, headers={"Knative-Serving-Tag": "blue"})
    assert (status, body["name"]) == (200, "b8")
    status, body = await backend_of(gw, host, headers={"Knative-Serving-Tag": "green"})
    assert (status, body["name"]) == (200, "b0")
    status, body = await backend_of(gw, host)
    assert (status, body["name"]) == (200, "b0")


async def test_retry(gw: Gateway) -> None:
    host = "retry.example.com"
    await gw.apply(kingress("retry", rule([host], path(split("b9"), retries={"attempts": 3}))))
    key = f"k-{id(gw)}"
    status, body = await backend_of(gw, host, f"/retry?key={key}&fail=2")
    assert status == 200 and body["attempt"] == 3
    await gw.apply(kingress("retry", rule([host], path(split("b9")))))
    status, _ = await backend_of(gw, host, f"/retry?key={key}-none&fail=1")
    assert status == 503, "without a retry policy the failure reaches the client"


async def test_update_without_dropped_traffic(gw: Gateway) -> None:
    """20 rule changes under a prober: zero failures; each change served once ACKed."""
    host = "update.example.com"
    failures: list[str] = []
    served = 0
    stop = asyncio.Event()

    async def prober(session: aiohttp.ClientSession) -> None:
        nonlocal served
        while not stop.is_set():
            try:
                status, _, _ = await get(gw.external + "/", host=host, session=session)
            except Exception as exc:  # a transport failure is a dropped request too
                failures.append(repr(exc))
                continue
            served += 1
            if status != 200:
                failures.append(str(status))

    await gw.apply(kingress("update", rule([host], path(split("b0")))))
    async with aiohttp.ClientSession() as session:
        probers = [asyncio.create_task(prober(session)) for _ in range(4)]
        try:
            for i in range(10):  # header-only changes
                await gw.apply(
                    kingress(
                        "update", rule([host], path(split("b0"), appendHeaders={"Gen": f"h{i}"}))
                    )
                )
                status, body, _ = await get(gw.external + "/", host=host, session=session)
                assert (status, body["headers"].get("gen")) == (200, f"h{i}")
            for name in FRESH:  # each change to a backend never routed to before
                await gw.apply(kingress("update", rule([host], path(split(name)))))
                status, body, _ = await get(gw.external + "/", host=host, session=session)
                assert (status, body["name"]) == (200, name)
        finally:
            stop.set()
            await asyncio.gather(*probers)
    assert served > 100
    assert failures == [], f"{len(failures)} of {served} probes failed: {failures[:5]}"
