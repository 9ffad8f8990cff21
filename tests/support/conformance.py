"""The Knative ingress conformance cases, for every way KIngress reaches a gateway.

A case builds KIngress objects, hands them to a `Driver` ("apply these, with the TLS
Secrets they name, and return once the gateway serves them") and then talks to the
real Envoy gateway behind it, which routes to real echo backends (`running_backends`).
Each test module brings a driver: tests/test_conformance.py feeds a ControlPlane
directly, tests/test_conformance_kube_fake.py goes through a fake Kubernetes API
server and the cluster reconciler. Both run every case in `CASES`.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from tests.support.backends import (
    Backend,
    free_port,
    get,
    grpc_ping,
    grpc_ping_stream,
    h2c_get,
    launch_backend,
    probing,
    ws_roundtrip,
)
from wakegate.ingress.model import Certificate
from wakegate.reconciler.cluster.objects import DEFAULT_INGRESS_CLASS, INGRESS_CLASS_ANNOTATION
from wakegate.xds.translate import GatewayConfig

Obj = dict[str, Any]

NAMESPACE = "default"
PLAIN = [f"b{i}" for i in range(10)]
FRESH = [f"fresh{i}" for i in range(10)]
HTTP2 = frozenset({"h2c", "grpc"})
"""Backends that speak h2c only (the second one serves gRPC)."""


# --- KIngress builders -------------------------------------------------------------


def split(service: str, percent: int = 100, **extra: Any) -> Obj:
    return {
        "serviceNamespace": NAMESPACE,
        "serviceName": service,
        "servicePort": 80,
        "percent": percent,
        **extra,
    }


def path(*splits: Obj, **extra: Any) -> Obj:
    return {"splits": list(splits), **extra}


def rule(hosts: list[str], *paths: Obj, visibility: str = "ExternalIP") -> Obj:
    return {"hosts": hosts, "visibility": visibility, "http": {"paths": list(paths)}}


def kingress(name: str, *rules: Obj, **spec: Any) -> Obj:
    """A KIngress of wakegate's ingress class."""
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "annotations": {INGRESS_CLASS_ANNOTATION: DEFAULT_INGRESS_CLASS},
        },
        "spec": {"rules": list(rules), **spec},
    }


def backend_names(obj: Obj) -> list[str]:
    """The services the splits of KIngress `obj` send traffic to."""
    names = {
        sp["serviceName"]
        for r in obj["spec"]["rules"]
        for p in r["http"]["paths"]
        for sp in p["splits"]
    }
    return sorted(names)


def self_signed(host: str, curve: str = "secp256r1") -> tuple[str, str]:
    """A PEM certificate for `host`, signed by its own ECDSA key on `curve`, and that key.

    Envoy serves P-256/P-384/P-521 keys only; secp256k1 gives a pair that loads anywhere
    else but that a gateway rejects.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1())
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


# --- what a case runs against ----------------------------------------------------------


def gateway_config() -> GatewayConfig:
    """Listeners on free loopback ports; plain HTTP redirects to the TLS listener."""
    tls_port = free_port()
    return GatewayConfig(
        external_port=free_port(),
        internal_port=free_port(),
        tls_port=tls_port,
        bind_address="127.0.0.1",
        https_redirect_port=tls_port,
    )


@contextlib.asynccontextmanager
async def running_backends() -> AsyncIterator[dict[str, Backend]]:
    """Every backend a case names, as echo processes, by name."""
    specs: list[tuple[str, dict[str, bool]]] = [(n, {}) for n in PLAIN + FRESH]
    specs += [("h2c", {"h2c": True}), ("grpc", {"grpc": True})]
    results = await asyncio.gather(
        *(launch_backend(n, **kw) for n, kw in specs), return_exceptions=True
    )
    started = [r for r in results if isinstance(r, Backend)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield {b.name: b for b in started}
    finally:
        await asyncio.gather(*(b.stop() for b in started))


class Driver(abc.ABC):
    """How KIngress objects reach the Envoy gateway under test."""

    config: GatewayConfig
    backends: Mapping[str, Backend]
    """The running backends, by the service name splits use."""

    @property
    def external(self) -> str:
        return f"http://127.0.0.1:{self.config.external_port}"

    @property
    def internal(self) -> str:
        return f"http://127.0.0.1:{self.config.internal_port}"

    @property
    def tls(self) -> str:
        return f"https://127.0.0.1:{self.config.tls_port}"

    @abc.abstractmethod
    async def apply(self, obj: Obj, *, secrets: Mapping[str, Certificate] | None = None) -> None:
        """Create or update KIngress `obj`, with the backends its splits name and the TLS
        `secrets` (by name, in its namespace); return once the gateway serves it."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Delete KIngress `name`; return once the gateway no longer serves it."""


Case = Callable[[Driver], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


async def backend_of(gw: Driver, host: str, p: str = "/", **kw: Any) -> tuple[int, Any]:
    status, body, _ = await get(gw.external + p, host=host, **kw)
    return status, body


async def distribution(gw: Driver, host: str, n: int, p: str = "/") -> collections.Counter[str]:
    """Which backend answered each of `n` requests; every one must succeed."""
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


# --- the cases -------------------------------------------------------------------------


@case("basics")
async def basics(gw: Driver) -> None:
    await gw.apply(kingress("basics", rule(["basics.example.com"], path(split("b0")))))
    status, body = await backend_of(gw, "basics.example.com")
    assert status == 200 and body["name"] == "b0"
    assert body["host"] == "basics.example.com"
    status, _ = await backend_of(gw, "basics.example.com:80")
    assert status == 200, "host:port must match the same virtual host"
    status, _ = await backend_of(gw, "nobody-serves-this.example.com")
    assert status == 404
    await gw.delete("basics")
    status, _ = await backend_of(gw, "basics.example.com")
    assert status == 404, "a deleted ingress is no longer served"


@case("http2")
async def http2_upstream_and_downstream(gw: Driver) -> None:
    await gw.apply(kingress("http2", rule(["http2.example.com"], path(split("h2c")))))
    status, body = await backend_of(gw, "http2.example.com")
    assert status == 200 and body["proto"] == "HTTP/2.0"
    status, body, _ = await h2c_get(gw.external + "/", host="http2.example.com")
    assert status == 200 and body["name"] == "h2c" and body["proto"] == "HTTP/2.0"


@case("grpc")
async def grpc(gw: Driver) -> None:
    await gw.apply(kingress("grpc", rule(["grpc.example.com"], path(split("grpc")))))
    address = f"127.0.0.1:{gw.config.external_port}"
    assert await grpc_ping(address, "hello", authority="grpc.example.com") == "grpc:hello"
    replies = await grpc_ping_stream(address, ["a", "b", "c"], authority="grpc.example.com")
    assert replies == ["grpc:a", "grpc:b", "grpc:c"]


@case("headers")
async def headers_pre_and_post_split(gw: Driver) -> None:
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


@case("multiple-hosts")
async def multiple_hosts(gw: Driver) -> None:
    hosts = ["one.multi.example.com", "two.multi.example.com"]
    await gw.apply(kingress("multi", rule(hosts, path(split("b2")))))
    for host in hosts:
        status, body = await backend_of(gw, host)
        assert status == 200 and body["name"] == "b2"
    status, _ = await backend_of(gw, "three.multi.example.com")
    assert status == 404


@case("path")
async def path_prefixes(gw: Driver) -> None:
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


@case("percentage")
async def percentage(gw: Driver) -> None:
    weights = [1, 2, 4, 8, 16, 32, 37, 0, 0, 0]
    host = "percentage.example.com"
    splits = [split(name, w) for name, w in zip(PLAIN, weights, strict=True)]
    await gw.apply(kingress("percentage", rule([host], path(*splits))))
    counts = await distribution(gw, host, 1000)
    for name, weight in zip(PLAIN, weights, strict=True):
        share = counts[name] / 10
        assert abs(share - weight) <= 10, (name, weight, share, counts)
        if weight == 0:
            assert counts[name] == 0, f"{name} has 0 % but received {counts[name]}"


@case("path-and-percentage")
async def path_and_percentage(gw: Driver) -> None:
    host = "pathpct.example.com"
    await gw.apply(
        kingress(
            "pathpct",
            rule([host], path(split("b1", 50), split("b2", 50), path="/split"), path(split("b0"))),
        )
    )
    counts = await distribution(gw, host, 200, "/split")
    assert set(counts) == {"b1", "b2"}
    assert all(abs(c / 2 - 50) <= 15 for c in counts.values()), counts
    assert await distribution(gw, host, 20, "/other") == {"b0": 20}


@case("timeout")
async def timeout(gw: Driver) -> None:
    host = "timeout.example.com"
    await gw.apply(kingress("timeout", rule([host], path(split("b3"), timeout="1s"))))
    status, body = await backend_of(gw, host, "/?sleep=100")
    assert status == 200 and body["name"] == "b3"
    status, _ = await backend_of(gw, host, "/?sleep=2500")
    assert status == 504


@case("tls")
async def tls_and_redirect(gw: Driver) -> None:
    host = "tls.example.com"
    cert, key = self_signed(host)
    await gw.apply(
        kingress(
            "tls",
            rule([host], path(split("b4"))),
            tls=[{"hosts": [host], "secretName": "tls-cert", "secretNamespace": NAMESPACE}],
            httpOption="Redirected",
        ),
        secrets={"tls-cert": Certificate(cert, key)},
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


@case("visibility")
async def visibility(gw: Driver) -> None:
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


@case("websocket")
async def websocket(gw: Driver) -> None:
    host = "ws.example.com"
    await gw.apply(kingress("ws", rule([host], path(split("b6")))))
    replies = await ws_roundtrip(gw.external + "/ws", host, ["ping", "pong"])
    assert replies == ["b6:ping", "b6:pong"]


@case("host-rewrite")
async def host_rewrite(gw: Driver) -> None:
    await gw.apply(
        kingress(
            "rewrite",
            rule(["rewrite.example.com"], path(split("b7"), rewriteHost="rewritten.internal")),
        )
    )
    status, body = await backend_of(gw, "rewrite.example.com")
    assert status == 200 and body["host"] == "rewritten.internal"


@case("tags")
async def tag_header_routing(gw: Driver) -> None:
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


@case("retry")
async def retry(gw: Driver) -> None:
    host = "retry.example.com"
    await gw.apply(kingress("retry", rule([host], path(split("b9"), retries={"attempts": 3}))))
    key = f"k-{id(gw)}"
    status, body = await backend_of(gw, host, f"/retry?key={key}&fail=2")
    assert status == 200 and body["attempt"] == 3
    await gw.apply(kingress("retry", rule([host], path(split("b9")))))
    status, _ = await backend_of(gw, host, f"/retry?key={key}-none&fail=1")
    assert status == 503, "without a retry policy the failure reaches the client"


@case("update")
async def update_without_dropped_traffic(gw: Driver) -> None:
    """20 rule changes under a prober: zero failures; each change served once applied."""
    host = "update.example.com"
    await gw.apply(kingress("update", rule([host], path(split("b0")))))
    async with (
        probing(gw.external + "/", host, lambda status, _: status == 200) as probes,
        aiohttp.ClientSession() as session,
    ):
        for i in range(10):  # header-only changes
            await gw.apply(
                kingress("update", rule([host], path(split("b0"), appendHeaders={"Gen": f"h{i}"})))
            )
            status, body, _ = await get(gw.external + "/", host=host, session=session)
            assert (status, body["headers"].get("gen")) == (200, f"h{i}")
        for name in FRESH:  # each change to a backend never routed to before
            await gw.apply(kingress("update", rule([host], path(split(name)))))
            status, body, _ = await get(gw.external + "/", host=host, session=session)
            assert (status, body["name"]) == (200, name)
    assert probes.served > 100
    assert probes.failures == [], probes.summary()
