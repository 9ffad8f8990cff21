"""Cluster mode against a fake Kubernetes API server (tests/fake_kube.py).

No real API server runs on this machine, so every test here talks to the in-process
fake, through the official client and the real list/watch protocol. Everything else
is real: the ControlPlane and its xDS server, and in the end-to-end and conformance
tests a real Envoy routing to real echo backends whose addresses are published as
EndpointSlices.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import importlib.metadata
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from envoy.config.cluster.v3 import cluster_pb2

from tests.fake_kube import FakeKube, Request
from tests.support.backends import Backend, free_port, get, launch_backend
from tests.support.envoy import running_envoy
from tests.support.waiting import eventually
from tests.test_conformance import _distribution, _self_signed, rule, split
from tests.test_conformance import kingress as conformance_kingress
from tests.test_conformance import path as http_path
from wakegate.controller import add_controller_parser, run_controller, xds_credentials
from wakegate.ingress.model import Endpoint
from wakegate.reconciler.cluster.gateway_probe import GatewayProber, GatewayService, pod_name
from wakegate.reconciler.cluster.kingress_status import LoadBalancers, condition_of
from wakegate.reconciler.cluster.kubernetes import KINGRESSES, Backoff, KubeApi
from wakegate.reconciler.cluster.leader import LeaderElector
from wakegate.reconciler.cluster.objects import DEFAULT_INGRESS_CLASS
from wakegate.reconciler.cluster.reconciler import ClusterReconciler
from wakegate.xds.bootstrap import XdsTls
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.readiness import ready_host, ready_path
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from wakegate.xds.translate import EXTERNAL_TLS, GatewayConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

KIN = "networking.internal.knative.dev/v1alpha1"
CLASS_ANNOTATION = "networking.knative.dev/ingress.class"
LB = LoadBalancers(
    external="wakegate-gateway.knative-serving.svc.cluster.local",
    internal="wakegate-gateway-internal.knative-serving.svc.cluster.local",
)
FAST = Backoff(initial_s=0.05, max_s=0.4)
FAST_PROBES = Backoff(initial_s=0.05, max_s=0.3)


# --- Kubernetes objects ----------------------------------------------------------------


def kingress(name: str, *rules: dict[str, Any], cls: str = DEFAULT_INGRESS_CLASS, **spec: Any):
    obj = conformance_kingress(name, *rules, **spec)
    obj["metadata"]["annotations"] = {CLASS_ANNOTATION: cls}
    return obj


def simple_kingress(name: str, host: str, service: str, **kw: Any) -> dict[str, Any]:
    return kingress(name, rule([host], http_path(split(service))), **kw)


def service(name: str, ports: list[dict[str, Any]] | None = None, ns: str = "default") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


def endpoint_slice(
    service_name: str,
    addresses: list[str] | dict[str, bool],
    ports: list[dict[str, Any]] | int,
    *,
    name: str | None = None,
    ns: str = "default",
) -> dict[str, Any]:
    ready = addresses if isinstance(addresses, dict) else dict.fromkeys(addresses, True)
    if isinstance(ports, int):
        ports = [{"name": "http", "port": ports, "protocol": "TCP"}]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-x1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": ok}} for address, ok in ready.items()
        ],
        "ports": ports,
    }


def known_backend(kube: FakeKube, name: str, address: str = "127.0.0.99") -> None:
    """A Service and an EndpointSlice of it: a backend whose endpoints are known."""
    kube.apply(service(name))
    kube.apply(endpoint_slice(name, [address], 8080))


def sks(name: str, mode: str, private: str, protocol: str = "http1") -> dict[str, Any]:
    return {
        "apiVersion": KIN,
        "kind": "ServerlessService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"mode": mode, "protocolType": protocol},
        "status": {"privateServiceName": private},
    }


def tls_secret(name: str, cert: str, key: str) -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"tls.crt": b64(cert), "tls.key": b64(key)},
    }


# --- harness ---------------------------------------------------------------------------


@dataclass
class Cluster:
    kube: FakeKube
    cp: ControlPlane
    api: KubeApi
    reconciler: ClusterReconciler
    task: asyncio.Task[None]
    make_reconciler: Callable[[], ClusterReconciler]

    async def pause(self) -> None:
        """Stop reconciling: the ControlPlane keeps serving its last snapshot."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def resume(self) -> None:
        """Reconcile again, with a fresh reconciler over the same ControlPlane."""
        self.reconciler = self.make_reconciler()
        self.task = asyncio.create_task(self.reconciler.run())
        await asyncio.wait_for(self.reconciler.synced.wait(), 10)

    def ingress(self, name: str, ns: str = "default") -> Any:
        return {i.key: i for i in self.cp.ingresses()}.get(f"{ns}/{name}")

    def endpoints(self, backend_key: str) -> set[Endpoint] | None:
        backend = self.cp.state().backends.get(backend_key)
        return None if backend is None else set(backend.endpoints)

    def status(self, name: str) -> dict[str, Any]:
        obj = self.kube.get(KIN, "Ingress", "default", name)
        return (obj or {}).get("status") or {}

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any]:
        return dict(condition_of(self.status(name), kind) or {})


@contextlib.asynccontextmanager
async def fake_cluster(
    kube: FakeKube | None = None,
    *,
    gateway: GatewayConfig | None = None,
    group: str = "fake-kube-gateway",
    may_write_status: Callable[[], bool] = lambda: True,
    user_agent: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
    gateway_service: GatewayService | None = None,
) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        if kube is None:
            kube = await stack.enter_async_context(FakeKube(bookmark_interval_s=0.2))
        api = KubeApi.for_host(kube.url)
        if user_agent is not None:
            api.api_client.user_agent = user_agent
        stack.push_async_callback(api.close)
        cp = ControlPlane(gateway or GatewayConfig(bind_address="127.0.0.1"), group=group)
        await cp.start("127.0.0.1", 0, credentials=credentials)
        stack.push_async_callback(cp.stop)

        def make_reconciler() -> ClusterReconciler:
            return ClusterReconciler(
                api,
                cp,
                load_balancers=LB,
                may_write_status=may_write_status,
                backoff=FAST,
                ack_poll_s=0.2,
                gateway_service=gateway_service,
                prober=GatewayProber(backoff=FAST_PROBES) if gateway_service else None,
            )

        reconciler = make_reconciler()
        cluster = Cluster(
            kube, cp, api, reconciler, asyncio.create_task(reconciler.run()), make_reconciler
        )
        stack.push_async_callback(cluster.pause)
        await asyncio.wait_for(reconciler.synced.wait(), 10)
        yield cluster


# --- sources → ControlPlane ------------------------------------------------------------


async def expect_gateway_rejection(kube: FakeKube, c: Any) -> None:
    """Apply KIngress `broken`, whose TLS Secret holds a pair only Envoy refuses (a
    secp256k1 key), and wait for the gateway's NACK of it to show as LoadBalancerReady
    False (GatewayRejected)."""
    kube.apply(tls_secret("garbage-tls", *_self_signed("broken.example.com", "secp256k1")))
    tls = {"hosts": ["broken.example.com"], "secretName": "garbage-tls"}
    kube.apply(
        kingress(
            "broken",
            rule(["broken.example.com"], http_path(split("k2"))),
            tls=[{**tls, "secretNamespace": "default"}],
        )
    )
    rejected = await eventually(
        lambda: (
            c.condition("broken", "LoadBalancerReady").get("status") == "False"
            and c.condition("broken", "LoadBalancerReady")
        ),
        timeout=15,
        what="the gateway's NACK in the status",
    )
    assert rejected["reason"] == "GatewayRejected"
    assert "rejected lds" in rejected["message"], rejected["message"]
    assert c.condition("broken")["status"] == "False"


async def test_fake_kube_kingress_create_update_delete_reaches_control_plane() -> None:
    async with fake_cluster() as c:
        c.kube.apply(service("hello-00001"))
        c.kube.apply(endpoint_slice("hello-00001", ["127.0.0.11"], 8080))
        c.kube.apply(simple_kingress("hello", "hello.default.example.com", "hello-00001"))
        ingress = await eventually(lambda: c.ingress("hello"), what="ingress applied")
        assert ingress.rules[0].hosts == ("hello.default.example.com",)
        assert ingress.generation == 1
        assert c.endpoints("default/hello-00001:80") == {Endpoint("127.0.0.11", 8080)}

        c.kube.apply(simple_kingress("hello", "hi.default.example.com", "hello-00001"))
        await eventually(
            lambda: c.ingress("hello").rules[0].hosts == ("hi.default.example.com",),
            what="update applied",
        )
        assert c.ingress("hello").generation == 2

        c.kube.delete(KIN, "Ingress", "default", "hello")
        await eventually(lambda: c.ingress("hello") is None, what="ingress removed")
        await eventually(lambda: c.endpoints("default/hello-00001:80") is None)


async def test_fake_kube_requests_carry_our_user_agent_and_field_manager() -> None:
    """The API server (and its audit log) sees `wakegate/<version>`, and the status
    writes in `managedFields` are ours, not the client library's default."""
    async with fake_cluster() as c:
        known_backend(c.kube, "svc")
        c.kube.apply(simple_kingress("who", "who.example.com", "svc"))
        await eventually(lambda: c.condition("who").get("status") == "Unknown")
        assert {r.user_agent for r in c.kube.requests} == {
            f"wakegate/{importlib.metadata.version('wakegate')}"
        }
        writes = [r for r in c.kube.requests if r.method in ("POST", "PUT", "PATCH")]
        assert writes and {r.field_manager for r in writes} == {"wakegate"}
        stored = c.kube.get(KIN, "Ingress", "default", "who")
        assert stored is not None
        managers = [
            (e["manager"], e.get("subresource")) for e in stored["metadata"]["managedFields"]
        ]
        assert managers == [("wakegate", "status")]


async def test_fake_kube_other_ingress_class_is_ignored() -> None:
    async with fake_cluster() as c:
        known_backend(c.kube, "svc")
        other = "kourier.ingress.networking.knative.dev"
        c.kube.apply(simple_kingress("theirs", "theirs.example.com", "svc", cls=other))
        c.kube.apply(simple_kingress("ours", "ours.example.com", "svc"))
        await eventually(lambda: c.ingress("ours"), what="our ingress applied")
        await asyncio.sleep(0.3)
        assert c.ingress("theirs") is None
        assert c.reconciler.ingress_keys() == ["default/ours"]
        assert not c.kube.requests_to("PATCH", "/ingresses/theirs/status")

        c.kube.apply(simple_kingress("ours", "ours.example.com", "svc", cls=other))
        await eventually(lambda: c.ingress("ours") is None, what="handed to another class")


async def test_fake_kube_invalid_kingress_keeps_previous_rules_and_reports_why() -> None:
    async with fake_cluster() as c:
        known_backend(c.kube, "shop-00001")
        c.kube.apply(simple_kingress("shop", "shop.example.com", "shop-00001"))
        await eventually(lambda: c.ingress("shop"), what="valid generation applied")
        broken = kingress(
            "shop",
            rule(["shop.example.com"], http_path(split("shop-00001", 50), split("shop-00002", 40))),
        )
        c.kube.apply(broken)
        ready = await eventually(
            lambda: c.status("shop").get("observedGeneration") == 2 and c.condition("shop"),
            what="status of the invalid generation",
        )
        assert ready["status"] == "False"
        assert ready["reason"] == "InvalidIngress"
        assert "spec.rules[0].http.paths[0].splits" in ready["message"]
        assert "percents sum to 90" in ready["message"]
        assert "generation 1 is still served" in ready["message"]
        assert c.condition("shop", "NetworkConfigured")["status"] == "False"
        served = c.ingress("shop")
        assert served.generation == 1, "the previous valid generation keeps serving"
        assert [s.backend.name for s in served.rules[0].paths[0].splits] == ["shop-00001"]
        assert c.reconciler.invalid() == {"default/shop": ready["message"].split(": ", 1)[1]}


async def test_fake_kube_host_conflict_reported_from_translator() -> None:
    async with fake_cluster() as c:
        known_backend(c.kube, "a")
        known_backend(c.kube, "b")
        c.kube.apply(simple_kingress("first", "same.example.com", "a"))
        await eventually(lambda: c.ingress("first"))
        c.kube.apply(simple_kingress("second", "same.example.com", "b"))
        network = await eventually(
            lambda: (
                c.condition("second", "NetworkConfigured").get("reason") == "TranslationFailed"
                and c.condition("second", "NetworkConfigured")
            ),
            what="conflict reported",
        )
        assert network["status"] == "False"
        assert "already served by ingress default/first" in network["message"]
        assert c.condition("second")["status"] == "False"
        c.kube.delete(KIN, "Ingress", "default", "first")
        await eventually(
            lambda: c.condition("second", "NetworkConfigured").get("status") == "True",
            what="conflict cleared once the other ingress is gone",
        )


async def test_fake_kube_sks_mode_flips_between_pods_and_activator() -> None:
    async with fake_cluster() as c:
        k = c.kube
        k.apply(service("activator-service", [{"name": "http", "port": 80}], ns="knative-serving"))
        k.apply(
            endpoint_slice(
                "activator-service",
                ["127.0.0.21", "127.0.0.22"],
                [{"name": "http", "port": 8012}, {"name": "http2", "port": 8013}],
                ns="knative-serving",
            )
        )
        k.apply(service("rev-00001", [{"name": "http", "port": 80, "targetPort": 8012}]))
        k.apply(
            service(
                "rev-00001-private",
                [
                    {"name": "http", "port": 80, "targetPort": 8012},
                    {"name": "queue-metrics", "port": 9090, "targetPort": 9090},
                ],
            )
        )
        pods = {"127.0.0.11": True, "127.0.0.12": True}
        k.apply(
            endpoint_slice(
                "rev-00001-private",
                pods,
                [{"name": "queue-metrics", "port": 9090}, {"name": "http", "port": 8012}],
            )
        )
        k.apply(sks("rev-00001", "Serve", "rev-00001-private"))
        k.apply(simple_kingress("rev", "rev.example.com", "rev-00001"))
        key = "default/rev-00001:80"
        on_pods = {Endpoint("127.0.0.11", 8012), Endpoint("127.0.0.12", 8012)}
        on_activator = {Endpoint("127.0.0.21", 8012), Endpoint("127.0.0.22", 8012)}
        await eventually(lambda: c.endpoints(key) == on_pods, what="Serve → pods")

        k.apply(sks("rev-00001", "Proxy", "rev-00001-private"))
        await eventually(lambda: c.endpoints(key) == on_activator, what="Proxy → activator")
        k.apply(sks("rev-00001", "Serve", "rev-00001-private"))
        await eventually(lambda: c.endpoints(key) == on_pods, what="Serve again → pods")

        k.apply(endpoint_slice("rev-00001-private", dict.fromkeys(pods, False), 8012))
        await eventually(
            lambda: c.endpoints(key) == on_activator, what="Serve without a ready pod → activator"
        )
        k.apply(endpoint_slice("activator-service", ["127.0.0.23"], 8012, ns="knative-serving"))
        await eventually(lambda: c.endpoints(key) == {Endpoint("127.0.0.23", 8012)})

        h2c_port = {"name": "http2", "port": 81, "appProtocol": "kubernetes.io/h2c"}
        k.apply(service("grpc-00001", [h2c_port]))
        k.apply(sks("grpc-00001", "Proxy", "grpc-00001-private", protocol="h2c"))
        k.apply(
            kingress(
                "grpc",
                rule(
                    ["grpc.example.com"],
                    http_path({**split("grpc-00001"), "servicePort": 81}),
                ),
            )
        )
        await eventually(
            lambda: c.endpoints("default/grpc-00001:81") == {Endpoint("127.0.0.23", 8013)},
            what="h2c revision in Proxy → activator's h2c port",
        )
        assert c.cp.state().backends["default/grpc-00001:81"].http2


async def test_fake_kube_endpoint_slice_changes_update_endpoints() -> None:
    async with fake_cluster() as c:
        k = c.kube
        k.apply(service("web", [{"name": "http", "port": 80, "targetPort": "web"}]))
        k.apply(
            endpoint_slice("web", {"127.0.0.31": True, "127.0.0.32": False}, 9000, name="web-a")
        )
        k.apply(simple_kingress("web", "web.example.com", "web"))
        key = "default/web:80"
        await eventually(lambda: c.endpoints(key) == {Endpoint("127.0.0.31", 9000)})
        k.apply(endpoint_slice("web", ["127.0.0.31", "127.0.0.32"], 9000, name="web-a"))
        await eventually(
            lambda: c.endpoints(key) == {Endpoint("127.0.0.31", 9000), Endpoint("127.0.0.32", 9000)}
        )
        k.apply(endpoint_slice("web", ["127.0.0.33"], 9001, name="web-b"))
        await eventually(lambda: Endpoint("127.0.0.33", 9001) in c.endpoints(key))
        k.delete("discovery.k8s.io/v1", "EndpointSlice", "default", "web-a")
        await eventually(lambda: c.endpoints(key) == {Endpoint("127.0.0.33", 9001)})
        assert not c.cp.state().backends[key].http2

        k.apply(service("web", [{"name": "h2c", "port": 80, "targetPort": "web"}]))
        k.apply(
            endpoint_slice("web", ["127.0.0.33"], [{"name": "h2c", "port": 9001}], name="web-b")
        )
        await eventually(lambda: c.cp.state().backends[key].http2, what="h2c port name")
        k.delete("v1", "Service", "default", "web")
        await eventually(lambda: c.endpoints(key) is None, what="no Service, no backend")


async def test_fake_kube_tls_secret_becomes_the_certificate() -> None:
    async with fake_cluster() as c:
        known_backend(c.kube, "svc")
        host = "secure.example.com"
        c.kube.apply(
            kingress(
                "secure",
                rule([host], http_path(split("svc"))),
                tls=[{"hosts": [host], "secretName": "secure-tls", "secretNamespace": "default"}],
            )
        )
        network = await eventually(
            lambda: (
                c.condition("secure", "NetworkConfigured").get("reason") == "TranslationFailed"
                and c.condition("secure", "NetworkConfigured")
            ),
            what="missing certificate reported",
        )
        assert "secure-tls" in network["message"]
        cert, key = _self_signed(host)
        c.kube.apply(tls_secret("unrelated", cert, key))
        c.kube.apply(tls_secret("secure-tls", cert, key))
        await eventually(lambda: "default/secure-tls" in c.cp.state().certificates)
        assert c.cp.state().certificates["default/secure-tls"].cert_chain_pem == cert
        assert "default/unrelated" not in c.cp.state().certificates
        await eventually(
            lambda: c.condition("secure", "NetworkConfigured").get("status") == "True",
            what="certificate found",
        )


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
async def test_fake_kube_410_gone_relists_and_converges(gone_as_http: bool) -> None:
    async with FakeKube(bookmark_interval_s=0.2, gone_as_http=gone_as_http) as kube:
        async with fake_cluster(kube) as c:
            for name in ("a", "b", "c"):
                known_backend(kube, name)
            for name in ("a", "b"):
                kube.apply(simple_kingress(name, f"{name}.example.com", name))
            await eventually(lambda: c.ingress("a") and c.ingress("b"))
            informer = c.reconciler.informers[0]
            relists = informer.relists
            kube.fail(10_000, watch=True, path_contains="/ingresses")
            kube.close_watches()
            await asyncio.sleep(0.1)
            kube.delete(KIN, "Ingress", "default", "a")
            kube.apply(simple_kingress("b", "b2.example.com", "b"))
            kube.apply(simple_kingress("c", "c.example.com", "c"))
            kube.compact()
            await asyncio.sleep(0.1)
            assert c.ingress("a") is not None, "the changes are not seen while the watch is down"
            kube.clear_failures()
            await eventually(
                lambda: (
                    c.ingress("a") is None
                    and c.ingress("b").rules[0].hosts == ("b2.example.com",)
                    and c.ingress("c")
                ),
                what="converged after re-list",
            )
            assert informer.relists == relists + 1
            gone = [r for r in kube.requests if r.status == 410 and "/ingresses" in r.path]
            assert gone or not gone_as_http


async def test_fake_kube_api_errors_are_retried_with_backoff() -> None:
    async with FakeKube(bookmark_interval_s=0.2) as kube:
        known_backend(kube, "svc")
        kube.apply(simple_kingress("retry", "retry.example.com", "svc"))
        kube.fail(3, method="GET", path_contains="/ingresses", watch=False)
        async with fake_cluster(kube) as c:
            assert c.ingress("retry") is not None
            lists = [r for r in kube.requests_to("GET", "/ingresses") if "watch" not in r.query]
            assert [r.status for r in lists[:4]] == [500, 500, 500, 200]
            gaps = [b.at - a.at for a, b in itertools.pairwise(lists[:4])]
            assert gaps[2] > gaps[0], f"back-off grows: {gaps}"

            kube.fail(2, watch=True, path_contains="/endpointslices")
            kube.close_watches()
            kube.apply(service("svc"))
            kube.apply(endpoint_slice("svc", ["127.0.0.41"], 8080))
            await eventually(
                lambda: c.endpoints("default/svc:80") == {Endpoint("127.0.0.41", 8080)}
            )

            await eventually(lambda: c.condition("retry").get("status") == "Unknown")
            before = len(kube.requests_to("PATCH", "/ingresses/retry/status"))
            kube.fail(2, method="PATCH", path_contains="/status")
            kube.apply(kingress("retry", rule(["Not A Host"], http_path(split("svc")))))
            await eventually(
                lambda: c.condition("retry").get("reason") == "InvalidIngress",
                what="status written after failed attempts",
            )
            patches = kube.requests_to("PATCH", "/ingresses/retry/status")[before:]
            assert [r.status for r in patches[:3]] == [500, 500, 200]


async def test_fake_kube_pages_of_a_large_list_are_all_read() -> None:
    async with FakeKube() as kube:
        for i in range(12):
            kube.apply(simple_kingress(f"p{i:02d}", f"p{i}.example.com", "svc"))
        api = KubeApi.for_host(kube.url)
        try:
            items, version = await api.list(KINGRESSES, page_size=5)
        finally:
            await api.close()
        assert len(items) == 12 and version == str(kube.resource_version)
        pages = [r for r in kube.requests if r.query.get("limit") == "5"]
        assert len(pages) == 3


# --- leader election --------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    elector: LeaderElector
    cluster: Cluster
    task: asyncio.Task[None]
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.stack.aclose()


async def start_replica(
    kube: FakeKube,
    name: str,
    *,
    gateway: GatewayConfig | None = None,
    gateway_service: GatewayService | None = None,
) -> Replica:
    stack = contextlib.AsyncExitStack()
    holder: dict[str, LeaderElector] = {}
    c = await stack.enter_async_context(
        fake_cluster(
            kube,
            gateway=gateway,
            group=f"gw-{name}",
            user_agent=name,
            may_write_status=lambda: "e" in holder and holder["e"].is_leader,
            gateway_service=gateway_service,
        )
    )
    api = KubeApi.for_host(kube.url)
    api.api_client.user_agent = name
    stack.push_async_callback(api.close)
    elector = LeaderElector(
        api,
        namespace="knative-serving",
        name="wakegate-controller",
        identity=name,
        lease_duration_s=1.5,
        renew_deadline_s=1.0,
        retry_period_s=0.1,
        on_started_leading=lambda: c.reconciler.resync_status(),
    )
    holder["e"] = elector
    task = asyncio.create_task(elector.run())
    return Replica(name, elector, c, task, stack)


def lease_holder(kube: FakeKube) -> str | None:
    lease = kube.get("coordination.k8s.io/v1", "Lease", "knative-serving", "wakegate-controller")
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_fake_kube_only_the_leader_writes_status_and_a_follower_takes_over() -> None:
    async with FakeKube(bookmark_interval_s=0.2) as kube:
        a = await start_replica(kube, "replica-a")
        b: Replica | None = None
        try:
            await asyncio.wait_for(a.elector.leading.wait(), 5)
            b = await start_replica(kube, "replica-b")
            kube.apply(kingress("bad-1", rule(["bad one"], http_path(split("svc")))))
            await eventually(lambda: a.cluster.condition("bad-1").get("status") == "False")
            await asyncio.sleep(0.5)
            assert not b.elector.is_leader and lease_holder(kube) == "replica-a"
            writers = {r.user_agent for r in kube.requests_to("PATCH", "/status")}
            assert writers == {"replica-a"}

            await a.stop()
            stopped_at = asyncio.get_running_loop().time()
            await asyncio.wait_for(b.elector.leading.wait(), 3)
            assert lease_holder(kube) == "replica-b"
            kube.apply(kingress("bad-2", rule(["bad two"], http_path(split("svc")))))
            await eventually(lambda: b.cluster.condition("bad-2").get("status") == "False")
            by_b = [r for r in kube.requests_to("PATCH", "/status") if r.user_agent == "replica-b"]
            assert by_b and all(r.at > stopped_at for r in by_b)
            assert {r.path.split("/")[-2] for r in by_b} == {"bad-2"}
        finally:
            for replica in (b, a):
                if replica is not None:
                    await replica.stop()
        assert lease_holder(kube) is None, "a stopping leader releases the lease"


async def test_fake_kube_lease_of_a_vanished_leader_expires() -> None:
    async with FakeKube() as kube:
        api = KubeApi.for_host(kube.url)
        try:
            fast = {"lease_duration_s": 1.0, "renew_deadline_s": 0.6, "retry_period_s": 0.1}
            a = LeaderElector(api, namespace="knative-serving", name="lock", identity="a", **fast)
            b = LeaderElector(api, namespace="knative-serving", name="lock", identity="b", **fast)
            assert await a.try_acquire_or_renew()
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(50):
                if await b.try_acquire_or_renew():
                    break
                await asyncio.sleep(0.1)
            assert loop.time() - started >= 0.95, "taken only once the lease went unrenewed"
            lease = kube.get("coordination.k8s.io/v1", "Lease", "knative-serving", "lock")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] == 1
            assert not await a.try_acquire_or_renew(), "the old holder sees b's fresh lease"
        finally:
            await api.close()


# --- the controller entry point ----------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_fake_kube_controller_serves_health_metrics_and_xds(tmp_path: Path) -> None:
    async with FakeKube(bookmark_interval_s=0.2) as kube:
        known_backend(kube, "svc")
        kube.apply(simple_kingress("hello", "hello.example.com", "svc"))
        parser = argparse.ArgumentParser()
        add_controller_parser(parser.add_subparsers(), "controller")
        health, metrics, xds = free_port(), free_port(), free_port()
        args = parser.parse_args(
            ["controller", "--kubeconfig", str(kube.kubeconfig(tmp_path / "kubeconfig")),
             "--xds-host", "127.0.0.1", "--xds-port", str(xds),
             "--health-host", "127.0.0.1", "--health-port", str(health),
             "--metrics-host", "127.0.0.2", "--metrics-port", str(metrics),
             "--gateway-external-address", "gw.wakegate-system",
             "--leader-election-namespace", "knative-serving"]
        )  # fmt: skip
        assert callable(args.handler)
        stop = asyncio.Event()
        task = asyncio.create_task(run_controller(args, stop))
        try:
            async with aiohttp.ClientSession() as session:

                async def fetch(port: int, p: str) -> tuple[int, str]:
                    async with session.get(f"http://127.0.0.1:{port}{p}") as resp:
                        return resp.status, await resp.text()

                await eventually(lambda: _port_open(health), what="health port open")
                assert (await fetch(health, "/healthz"))[0] == 200
                for _ in range(200):
                    if (await fetch(health, "/readyz"))[0] == 200:
                        break
                    await asyncio.sleep(0.05)
                assert (await fetch(health, "/readyz"))[0] == 200
                assert _port_open(xds), "xDS serves once ready"
                async with session.get(f"http://127.0.0.2:{metrics}/metrics") as resp:
                    assert resp.status == 200
                    assert "wakegate_kube_relists_total" in await resp.text()
                assert not _port_open(metrics), "--metrics-host 127.0.0.2 only"
            await eventually(lambda: lease_holder(kube), what="leader elected")
            ready = await eventually(
                lambda: condition_of(
                    (kube.get(KIN, "Ingress", "default", "hello") or {}).get("status"),
                    "LoadBalancerReady",
                ),
                what="status written by the leader",
            )
            assert ready["status"] == "Unknown" and "no gateway is connected" in ready["message"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        assert lease_holder(kube) is None
        assert not _port_open(xds)


async def test_fake_kube_controller_with_gateway_service_waits_for_its_pods(
    tmp_path: Path,
) -> None:
    async with FakeKube(bookmark_interval_s=0.2) as kube:
        known_backend(kube, "svc")
        kube.apply(simple_kingress("hello", "hello.example.com", "svc"))
        parser = argparse.ArgumentParser()
        add_controller_parser(parser.add_subparsers(), "controller")
        args = parser.parse_args(
            ["controller", "--kubeconfig", str(kube.kubeconfig(tmp_path / "kubeconfig")),
             "--xds-host", "127.0.0.1", "--xds-port", str(free_port()),
             "--health-port", str(free_port()), "--metrics-port", str(free_port()),
             "--gateway-service", "knative-serving/gw-internal", "--gateway-probe-port", "http"]
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(run_controller(args, stop))

        def balancer() -> dict[str, Any]:
            obj = kube.get(KIN, "Ingress", "default", "hello") or {}
            return dict(condition_of(obj.get("status"), "LoadBalancerReady") or {})

        try:
            waiting = await eventually(lambda: balancer().get("message"), timeout=15)
            assert balancer()["status"] == "Unknown"
            assert "no ready gateway pod behind Service knative-serving/gw-internal" in waiting

            port = free_port()
            kube.apply(
                endpoint_slice(
                    "gw-internal",
                    ["127.0.0.1"],
                    [{"name": "http", "port": port}],
                    ns="knative-serving",
                )
            )
            waiting = await eventually(
                lambda: (
                    "gateway pods do not serve it yet" in balancer().get("message", "")
                    and balancer()["message"]
                ),
                timeout=15,
                what="the pod from the EndpointSlice is probed on its named port",
            )
            assert f"1 of 1 gateway pods do not serve it yet: 127.0.0.1:{port}" in waiting
            assert balancer()["status"] == "Unknown"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


# --- a real Envoy, real backends --------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo() -> AsyncIterator[dict[str, Backend]]:
    started = await asyncio.gather(*(launch_backend(f"k{i}") for i in range(3)))
    try:
        yield {b.name: b for b in started}
    finally:
        await asyncio.gather(*(b.stop() for b in started))


def publish_backends(kube: FakeKube, backends: dict[str, Backend]) -> None:
    """A Service (port 80 → http) and an EndpointSlice with the process's address each."""
    for name, b in backends.items():
        kube.apply(service(name, [{"name": "http", "port": 80, "targetPort": "http"}]))
        kube.apply(endpoint_slice(name, [b.host], b.port))


def gateway_config(*, readiness_probes: bool = False) -> GatewayConfig:
    return GatewayConfig(
        external_port=free_port(), internal_port=free_port(), tls_port=free_port(),
        bind_address="127.0.0.1", readiness_probes=readiness_probes,
    )  # fmt: skip


@pytest.mark.envoy
async def test_fake_kube_end_to_end_envoy_serves_kingress_and_ready_follows_ack(
    echo: dict[str, Backend],
) -> None:
    config = gateway_config()
    async with fake_cluster(gateway=config) as c:
        kube, cp = c.kube, c.cp
        publish_backends(kube, echo)
        host = "e2e.default.example.com"
        kube.apply(simple_kingress("e2e", host, "k0"))
        await eventually(lambda: c.ingress("e2e"))
        version = await cp.flush()
        published = cp.cache.sequence(cp.group, version)
        assert published is not None
        # (It may first wait for the Services informer to see the backends.)
        waiting = await eventually(
            lambda: (
                "no gateway is connected"
                in c.condition("e2e", "LoadBalancerReady").get("message", "")
                and c.condition("e2e", "LoadBalancerReady")
            ),
            what="status says it waits for a gateway",
        )
        assert waiting["status"] == "Unknown"
        assert c.condition("e2e")["status"] == "Unknown"

        acked_at_write: list[dict[str, int | None]] = []

        def on_request(request: Request) -> None:
            if request.method != "PATCH" or not request.path.endswith("/e2e/status"):
                return
            ready = condition_of((request.body or {}).get("status"), "Ready") or {}
            if ready.get("status") != "True":
                return
            for node in cp.server.nodes():
                if node.connected:
                    acked_at_write.append(
                        {
                            kind: cp.cache.sequence(cp.group, node.acked_snapshot.get(kind, ""))
                            for kind in (LISTENER, ROUTE, CLUSTER)
                        }
                    )

        kube.on_request = on_request
        async with running_envoy(cp.server.port or 0, node_cluster=cp.group):
            await eventually(lambda: c.condition("e2e").get("status") == "True", timeout=15)
            assert acked_at_write, "Ready was written while a gateway was connected"
            for acked in acked_at_write:
                assert all(seq is not None and seq >= published for seq in acked.values()), (
                    f"Ready written before the gateway ACKed snapshot {published}: {acked}"
                )
            status = c.status("e2e")
            assert status["observedGeneration"] == 1
            assert status["publicLoadBalancer"] == {"ingress": [{"domainInternal": LB.external}]}
            assert status["privateLoadBalancer"] == {"ingress": [{"domainInternal": LB.internal}]}
            code, body, _ = await get(f"http://127.0.0.1:{config.external_port}/", host=host)
            assert (code, body["name"]) == (200, "k0")

            kube.apply(simple_kingress("e2e", host, "k1"))
            await eventually(
                lambda: (
                    c.status("e2e").get("observedGeneration") == 2
                    and c.condition("e2e").get("status") == "True"
                ),
                timeout=15,
            )
            code, body, _ = await get(f"http://127.0.0.1:{config.external_port}/", host=host)
            assert (code, body["name"]) == (200, "k1"), "Ready means the new generation serves"

            kube.apply(endpoint_slice("k1", {echo["k1"].host: False}, echo["k1"].port))
            await eventually(lambda: c.endpoints("default/k1:80") == set())
            await cp.wait_served(10)
            code, _, _ = await get(f"http://127.0.0.1:{config.external_port}/", host=host)
            assert code == 503, "no ready endpoint left"

            await expect_gateway_rejection(kube, c)
            assert c.condition("e2e")["status"] == "True", "what was served stays served"
            kube.delete(KIN, "Ingress", "default", "broken")
            await eventually(lambda: c.ingress("broken") is None)
            assert await cp.wait_served(10), "config without the rejected part is accepted"


# --- splits naming a Service (or port) that does not exist ------------------------------


async def test_fake_kube_unknown_backend_is_false_until_its_service_exists() -> None:
    async with fake_cluster() as c:
        k = c.kube
        known_backend(k, "known")
        k.apply(
            kingress(
                "late",
                rule(["late.example.com"], http_path(split("known", 50), split("missing", 50))),
            )
        )
        split_1 = "spec.rules[0].http.paths[0].splits[1]"
        expected = f"{split_1}: service default/missing not found (nothing is served yet)"
        ready = await eventually(
            lambda: c.condition("late").get("message") == expected and c.condition("late"),
            what="the unknown Service in the status",
        )
        assert (ready["status"], ready["reason"]) == ("False", "BackendNotFound")
        network = c.condition("late", "NetworkConfigured")
        assert (network["status"], network["reason"]) == ("False", "BackendNotFound")
        assert network["message"] == ready["message"]
        balancer = c.condition("late", "LoadBalancerReady")
        assert balancer["status"] == "Unknown"
        assert "generation 1 waits for the Services it names" in balancer["message"]
        assert c.ingress("late") is None, "held back whole, the split to `known` too"

        k.apply(service("missing", [{"name": "http", "port": 81, "targetPort": 8080}]))
        ready = await eventually(
            lambda: "has no port" in c.condition("late").get("message", "") and c.condition("late"),
            what="the missing port in the status",
        )
        assert ready["message"] == (
            f"{split_1}: service default/missing has no port 80 (nothing is served yet)"
        )
        assert c.ingress("late") is None

        k.apply(service("missing"))
        balancer = await eventually(
            lambda: (
                "endpoints" in c.condition("late", "LoadBalancerReady").get("message", "")
                and c.condition("late", "LoadBalancerReady")
            ),
            what="the Service's unknown endpoints in the status",
        )
        assert balancer["status"] == "Unknown" and balancer["reason"] == "Uninitialized"
        assert balancer["message"] == (
            "Waiting for load balancer to be ready: generation 1 waits for the endpoints of "
            f"its splits: {split_1}: the endpoints of service default/missing are not known "
            "yet (no EndpointSlice)"
        )
        assert c.condition("late", "NetworkConfigured")["status"] == "True"
        assert c.condition("late")["status"] == "Unknown"
        assert c.ingress("late") is None, "held back until its endpoints are known"

        k.apply(endpoint_slice("missing", ["127.0.0.98"], 8080))
        ingress = await eventually(lambda: c.ingress("late"), what="applied once all is known")
        assert ingress.generation == 1
        network = await eventually(
            lambda: (
                c.condition("late", "NetworkConfigured").get("status") == "True"
                and c.condition("late", "NetworkConfigured")
            ),
            what="NetworkConfigured once the Service has the port",
        )
        assert "reason" not in network and "message" not in network
        ready = await eventually(
            lambda: (
                "no gateway is connected" in c.condition("late").get("message", "")
                and c.condition("late")
            ),
            what="waiting for a gateway, the endpoints known",
        )
        assert ready["status"] == "Unknown"
        stored = k.get(KIN, "Ingress", "default", "late")
        assert stored is not None
        assert stored["metadata"]["generation"] == 1, "the KIngress itself did not change"
        assert stored["status"]["observedGeneration"] == 1


async def test_fake_kube_external_name_service_is_a_dns_backend_or_not_found() -> None:
    """An ExternalName Service has no EndpointSlices: its split goes to its
    `externalName` on the Service port, resolved by the gateway; without one, it is a
    backend that cannot be served, never Ready."""
    async with fake_cluster() as c:
        k = c.kube
        external = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "elsewhere", "namespace": "default"},
            "spec": {"type": "ExternalName", "ports": [{"name": "http", "port": 80}]},
        }
        k.apply(external)
        k.apply(simple_kingress("far", "far.example.com", "elsewhere"))
        ready = await eventually(
            lambda: c.condition("far").get("reason") == "BackendNotFound" and c.condition("far"),
            what="no externalName: not found",
        )
        assert ready["status"] == "False"
        assert "ExternalName without externalName" in ready["message"]
        assert c.ingress("far") is None

        external["spec"]["externalName"] = "elsewhere.example.org"
        external["spec"]["ports"] = [{"name": "h2c", "port": 80}]
        k.apply(external)
        await eventually(lambda: c.ingress("far"), what="applied with its DNS name")
        backend = c.cp.state().backends["default/elsewhere:80"]
        assert backend.dns and backend.http2
        assert backend.endpoints == (Endpoint("elsewhere.example.org", 80),)
        await c.cp.flush()
        snapshot = c.cp.cache.get_snapshot(c.cp.group)
        assert snapshot is not None
        cluster = cluster_pb2.Cluster.FromString(
            snapshot.resources[CLUSTER]["default/elsewhere:80"]
        )
        assert cluster.type == cluster_pb2.Cluster.LOGICAL_DNS
        assert cluster.dns_lookup_family == cluster_pb2.Cluster.V4_PREFERRED
        address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
        assert (address.socket_address.address, address.socket_address.port_value) == (
            "elsewhere.example.org",
            80,
        )
        assert "default/elsewhere:80" not in snapshot.resources[ENDPOINT], "no EDS for it"
        assert snapshot.eds_names(["default/elsewhere:80"]) == set()


@pytest.mark.envoy
async def test_fake_kube_envoy_keeps_serving_until_a_missing_service_appears(
    echo: dict[str, Backend],
) -> None:
    config = gateway_config()
    first, second = "held.example.com", "held-new.example.com"
    external = f"http://127.0.0.1:{config.external_port}/"

    async def answer(host: str) -> tuple[int, str | None]:
        code, body, _ = await get(external, host=host)
        return code, body["name"] if code == 200 else None

    def ready(generation: int) -> bool:
        return (
            c.status("held").get("observedGeneration") == generation
            and c.condition("held").get("status") == "True"
        )

    async with fake_cluster(gateway=config) as c:
        kube = c.kube
        publish_backends(kube, {name: echo[name] for name in ("k0", "k2")})
        kube.apply(kingress("held", rule([first], http_path(split("k0")))))
        async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group):
            await eventually(lambda: ready(1), timeout=15, what="generation 1 Ready")
            assert await answer(first) == (200, "k0")

            kube.apply(
                kingress(
                    "held",
                    rule([first], http_path(split("k2"))),
                    rule([second], http_path(split("late"))),
                )
            )
            held = await eventually(
                lambda: (
                    c.status("held").get("observedGeneration") == 2
                    and c.condition("held").get("reason") == "BackendNotFound"
                    and c.condition("held")
                ),
                what="generation 2 reported held back",
            )
            missing = "spec.rules[1].http.paths[0].splits[0]: service default/late not found"
            assert held["status"] == "False"
            assert held["message"] == f"{missing} (generation 1 is still served)"
            assert c.condition("held", "NetworkConfigured")["status"] == "False"
            assert c.condition("held", "LoadBalancerReady")["status"] == "Unknown"
            assert await c.cp.wait_served(10)
            assert c.ingress("held").generation == 1
            assert await answer(first) == (200, "k0"), "generation 1 keeps serving, all of it"
            assert (await answer(second))[0] == 404, "no rule of generation 2 is served"
            async with fake_cluster(
                kube, group="fake-kube-replica-meanwhile", may_write_status=lambda: False
            ) as meanwhile:
                assert meanwhile.ingress("held") is None, "nor by a replica started now"

            kube.apply(service("late", [{"name": "http", "port": 80, "targetPort": "http"}]))
            kube.apply(endpoint_slice("late", [echo["k1"].host], echo["k1"].port))
            await eventually(lambda: ready(2), timeout=15, what="generation 2 Ready")
            stored = kube.get(KIN, "Ingress", "default", "held")
            assert stored is not None and stored["metadata"]["generation"] == 2
            late = Endpoint(echo["k1"].host, echo["k1"].port)
            await eventually(lambda: c.endpoints("default/late:80") == {late})
            assert await c.cp.wait_served(10)
            assert await answer(first) == (200, "k2")
            assert await answer(second) == (200, "k1")

            kube.delete("v1", "Service", "default", "late")
            network = await eventually(
                lambda: (
                    c.condition("held", "NetworkConfigured").get("status") == "False"
                    and c.condition("held", "NetworkConfigured")
                ),
                what="the deleted Service in the status",
            )
            assert (network["reason"], network["message"]) == ("BackendNotFound", missing)
            assert c.condition("held")["status"] == "False"
            assert c.condition("held", "LoadBalancerReady")["status"] == "True"
            await eventually(lambda: c.endpoints("default/late:80") is None)
            assert await c.cp.wait_served(10)
            assert c.ingress("held").generation == 2, "an applied generation stays applied"
            assert await answer(first) == (200, "k2"), "its other rules keep serving"
            assert (await answer(second))[0] == 503

            # A replica started now applies the generation the status reports served.
            async with fake_cluster(
                kube, group="fake-kube-later-replica", may_write_status=lambda: False
            ) as later:
                assert later.ingress("held") is not None
                assert later.ingress("held").generation == 2


def write_pki(directory: Path) -> tuple[Path, Path]:
    """A CA and two certificates it signed, as ca.crt/tls.crt/tls.key in server/ and client/."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(name: str, issuer: x509.Name | None, signer: Any, *, ca: bool = False) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        cert = builder.sign(signer or key, hashes.SHA256())
        return cert, key

    ca_cert, ca_key = build("wakegate-test-ca", None, None, ca=True)
    pem = serialization.Encoding.PEM
    dirs = []
    for role in ("server", "client"):
        cert, key = build(f"wakegate-{role}", ca_cert.subject, ca_key)
        folder = directory / role
        folder.mkdir()
        (folder / "ca.crt").write_bytes(ca_cert.public_bytes(pem))
        (folder / "tls.crt").write_bytes(cert.public_bytes(pem))
        (folder / "tls.key").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        dirs.append(folder)
    return dirs[0], dirs[1]


@pytest.mark.envoy
async def test_fake_kube_gateway_fetches_config_over_mutual_tls(
    echo: dict[str, Backend], tmp_path: Path
) -> None:
    server, client = write_pki(tmp_path)
    config = gateway_config()
    async with fake_cluster(gateway=config, credentials=xds_credentials(server)) as c:
        publish_backends(c.kube, echo)
        c.kube.apply(simple_kingress("mtls", "mtls.example.com", "k2"))
        port = c.cp.server.port or 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2)
        tls = XdsTls(
            ca_file=str(client / "ca.crt"),
            cert_file=str(client / "tls.crt"),
            key_file=str(client / "tls.key"),
            server_name="localhost",
        )
        async with running_envoy(port, node_cluster=c.cp.group, xds_tls=tls):
            await eventually(lambda: c.condition("mtls").get("status") == "True", timeout=15)
            code, body, _ = await get(
                f"http://127.0.0.1:{config.external_port}/", host="mtls.example.com"
            )
            assert (code, body["name"]) == (200, "k2")


@pytest.mark.envoy
async def test_fake_kube_deleted_tls_secret_takes_its_certificate_off_the_gateway(
    echo: dict[str, Backend],
) -> None:
    config = gateway_config()
    hosts = {"a": "tls-a.example.com", "b": "tls-b.example.com"}
    pems = {r: _self_signed(host) for r, host in hosts.items()}

    async def https(r: str) -> int:
        context = ssl.create_default_context(cadata=pems[r][0])
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"https://127.0.0.1:{config.tls_port}/",
                headers={"Host": hosts[r]},
                ssl=context,
                server_hostname=hosts[r],
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                return resp.status

    def tls_listener(c: Cluster) -> bytes | None:
        snapshot = c.cp.cache.get_snapshot(c.cp.group)
        assert snapshot is not None
        return snapshot.resources[LISTENER].get(EXTERNAL_TLS)

    async with fake_cluster(gateway=config) as c:
        publish_backends(c.kube, echo)
        for r, host in hosts.items():
            c.kube.apply(tls_secret(f"tls-{r}", *pems[r]))
            tls = {"hosts": [host], "secretName": f"tls-{r}", "secretNamespace": "default"}
            c.kube.apply(kingress(f"tls-{r}", rule([host], http_path(split("k0"))), tls=[tls]))
        async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group):
            for r in hosts:
                await eventually(
                    lambda r=r: c.condition(f"tls-{r}").get("status") == "True", timeout=15
                )
            assert await https("a") == 200 and await https("b") == 200

            c.kube.delete("v1", "Secret", "default", "tls-a")
            await eventually(lambda: "default/tls-a" not in c.cp.state().certificates)
            assert await c.cp.wait_served(10), "the gateway accepts the config without it"
            with pytest.raises(aiohttp.ClientError):
                await https("a")
            assert await https("b") == 200, "the other certificate keeps serving"
            network = await eventually(
                lambda: (
                    c.condition("tls-a", "NetworkConfigured").get("status") == "False"
                    and c.condition("tls-a", "NetworkConfigured")
                ),
                what="the missing certificate in the status",
            )
            assert "secret default/tls-a has no certificate" in network["message"]
            status, body, _ = await get(
                f"http://127.0.0.1:{config.external_port}/", host=hosts["a"]
            )
            assert (status, body["name"]) == (200, "k0"), "plain HTTP is unaffected"

            # No ingress uses tls-b any more: its certificate goes, and with no chain
            # left the TLS listener goes too.
            assert tls_listener(c) is not None
            c.kube.delete(KIN, "Ingress", "default", "tls-b")
            await eventually(lambda: "default/tls-b" not in c.cp.state().certificates)
            await eventually(lambda: tls_listener(c) is None, what="TLS listener removed")
            assert await c.cp.wait_served(10)
            with pytest.raises(aiohttp.ClientError):
                await https("b")


# --- readiness probes: two replicas, a gateway on each ----------------------------------------

GATEWAY_NS = "knative-serving"
GATEWAY_SVC = "wakegate-gateway-internal"
GATEWAY_SERVICE = GatewayService(GATEWAY_NS, GATEWAY_SVC, "http")


def gateway_slice(replica: str, port: int, *, ready: bool = True) -> dict[str, Any]:
    """The EndpointSlice of one gateway pod of the cluster-local Service: every pod is
    127.0.0.1 here, so each gets a slice of its own with its own port."""
    return endpoint_slice(
        GATEWAY_SVC,
        {"127.0.0.1": ready},
        [{"name": "http", "port": port, "protocol": "TCP"}],
        name=f"{GATEWAY_SVC}-{replica}",
        ns=GATEWAY_NS,
    )


@pytest.mark.envoy
async def test_fake_kube_two_replicas_ready_only_once_every_gateway_pod_serves(
    echo: dict[str, Backend],
) -> None:
    host, key = "both.example.com", "default/both"
    configs = {r: gateway_config(readiness_probes=True) for r in ("a", "b")}
    pods = {r: pod_name(Endpoint("127.0.0.1", c.internal_port)) for r, c in configs.items()}
    async with FakeKube(bookmark_interval_s=0.2) as kube, contextlib.AsyncExitStack() as stack:
        publish_backends(kube, echo)
        kube.apply(
            service(GATEWAY_SVC, [{"name": "http", "port": 80, "targetPort": 8081}], ns=GATEWAY_NS)
        )
        for r, config in configs.items():
            kube.apply(gateway_slice(r, config.internal_port))
        replicas: dict[str, Replica] = {}
        for r in ("a", "b"):
            replica = await start_replica(
                kube, f"replica-{r}", gateway=configs[r], gateway_service=GATEWAY_SERVICE
            )
            stack.push_async_callback(replica.stop)
            replicas[r] = replica
            if r == "a":
                await asyncio.wait_for(replica.elector.leading.wait(), 5)
        a, b = replicas["a"].cluster, replicas["b"].cluster
        assert not replicas["b"].elector.is_leader

        # For each replica: generation → the first snapshot sequence that serves it.
        first: dict[str, dict[int, int]] = {r: {} for r in replicas}

        def tracker(r: str, cp: ControlPlane) -> Callable[[], None]:
            def seen() -> None:
                found, current = cp.translator.readiness(key), cp.cache.current(cp.group)
                if found is not None and current is not None:
                    first[r].setdefault(found[0].generation, current[0])

            return seen

        for r, replica in replicas.items():
            cp = replica.cluster.cp
            cp.cache.watch(cp.group, tracker(r, cp))

        ready_writes: list[int] = []
        writes: list[tuple[str, str]] = []
        violations: list[str] = []

        def on_request(request: Request) -> None:
            """At each Ready=True write, every ready gateway pod has ACKed that generation."""
            if request.method != "PATCH" or not request.path.endswith("/both/status"):
                return
            status = (request.body or {}).get("status") or {}
            writes.append((request.user_agent, (condition_of(status, "Ready") or {})["status"]))
            if (condition_of(status, "Ready") or {}).get("status") != "True":
                return
            generation = int(status["observedGeneration"])
            ready_writes.append(generation)
            for r, replica in replicas.items():
                pod = kube.get(
                    "discovery.k8s.io/v1", "EndpointSlice", GATEWAY_NS, f"{GATEWAY_SVC}-{r}"
                )
                if not pod or not pod["endpoints"][0]["conditions"]["ready"]:
                    continue
                cp = replica.cluster.cp
                acked = [
                    cp.cache.sequence(cp.group, node.acked_snapshot.get(ROUTE, ""))
                    for node in cp.server.nodes()
                    if node.connected
                ]
                needed = first[r].get(generation)
                if needed is None or not acked or any(s is None or s < needed for s in acked):
                    violations.append(
                        f"gen {generation} Ready; gateway {r} acked {acked} < {needed}"
                    )

        kube.on_request = on_request

        def ready(generation: int) -> bool:
            return (
                a.status("both").get("observedGeneration") == generation
                and a.condition("both").get("status") == "True"
            )

        def waiting_for_b(generation: int) -> dict[str, Any] | None:
            condition = a.condition("both")
            if a.status("both").get("observedGeneration") != generation:
                return None
            return condition if pods["b"] in condition.get("message", "") else None

        async def backend(r: str) -> str | None:
            status, body, _ = await get(f"http://127.0.0.1:{configs[r].external_port}/", host=host)
            return body["name"] if status == 200 else None

        async def serves(r: str, name: str) -> bool:
            return await backend(r) == name

        def digest_of(c: Cluster) -> str:
            found = c.cp.translator.readiness(key)
            assert found is not None
            return found[1]

        kube.apply(simple_kingress("both", host, "k0"))
        for c in (a, b):
            await eventually(lambda c=c: c.ingress("both"), what="generation 1 in both replicas")
        envoys = {
            r: await stack.enter_async_context(
                running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group)
            )
            for r, c in (("a", a), ("b", b))
        }
        await eventually(lambda: ready(1), timeout=20, what="generation 1 Ready")
        assert await backend("a") == "k0" and await backend("b") == "k0"

        # Both replicas built the same hash; the status host answers it on the
        # cluster-local listener only.
        digest = digest_of(a)
        assert digest_of(b) == digest
        for config in configs.values():
            internal = f"http://127.0.0.1:{config.internal_port}"
            external = f"http://127.0.0.1:{config.external_port}"
            assert (await get(internal + ready_path(digest), host=ready_host(digest)))[0] == 200
            unknown = "0" * 32
            assert (await get(internal + ready_path(unknown), host=ready_host(unknown)))[0] == 404
            assert (await get(external + ready_path(digest), host=ready_host(digest)))[0] == 404

        # Replica b (not the leader) stops reconciling; its gateway keeps generation 1.
        await b.pause()
        kube.apply(simple_kingress("both", host, "k1"))
        await eventually(
            lambda: serves("a", "k1"), timeout=15, what="a's gateway serves generation 2"
        )
        waiting = await eventually(lambda: waiting_for_b(2), what="status waits for b's pod")
        assert waiting["status"] == "Unknown", waiting
        assert "1 of 2 gateway pods do not serve it yet" in waiting["message"]
        new_digest = digest_of(a)
        assert new_digest != digest
        prober = a.reconciler.prober
        assert prober is not None
        await eventually(
            lambda: "HTTP 404" in prober.waiting(key, new_digest), what="b's pod answers 404"
        )
        # b's gateway keeps answering the new hash with 404, and status stays not Ready.
        answered = "http.internal.downstream_rq_4xx"
        before = (await envoys["b"].stats(answered))[answered]

        async def probed_again() -> bool:
            return (await envoys["b"].stats(answered))[answered] >= before + 3

        await eventually(probed_again, timeout=15, what="b's gateway probed three more times")
        assert await backend("b") == "k0"
        assert 2 not in ready_writes and not ready(2)
        assert a.condition("both")["status"] == "Unknown"

        await b.resume()
        await eventually(lambda: ready(2), timeout=20, what="generation 2 Ready once b serves it")
        assert await backend("b") == "k1"

        # A gateway pod that leaves is no longer waited for.
        await b.pause()
        kube.apply(simple_kingress("both", host, "k2"))
        await eventually(lambda: waiting_for_b(3), what="generation 3 waits for b's pod")
        assert 3 not in ready_writes
        kube.apply(gateway_slice("b", configs["b"].internal_port, ready=False))
        await eventually(lambda: ready(3), timeout=20, what="generation 3 Ready without b's pod")
        assert await backend("a") == "k2" and await backend("b") == "k1"

        # The leader goes; b takes over and keeps the status it finds.
        await b.resume()
        written = len(writes)
        await replicas["a"].stop()
        await asyncio.wait_for(replicas["b"].elector.leading.wait(), 5)
        kube.apply(simple_kingress("other", "other.example.com", "k0"))
        await eventually(
            lambda: "gateway pods do not serve it yet" in b.condition("other").get("message", ""),
            what="b writes status as the leader",
        )
        assert writes[written:] == [], "the new leader does not flip a served ingress"
        assert ready(3)

        kube.on_request = None
        assert sorted(set(ready_writes)) == [1, 2, 3]
        assert not violations, violations


@pytest.mark.envoy
async def test_fake_kube_probed_gateway_rejection_still_gives_false(
    echo: dict[str, Backend],
) -> None:
    config = gateway_config(readiness_probes=True)
    async with fake_cluster(gateway=config, gateway_service=GATEWAY_SERVICE) as c:
        kube = c.kube
        publish_backends(kube, echo)
        kube.apply(
            service(GATEWAY_SVC, [{"name": "http", "port": 80, "targetPort": 8081}], ns=GATEWAY_NS)
        )
        kube.apply(gateway_slice("solo", config.internal_port))
        kube.apply(simple_kingress("fine", "fine.example.com", "k0"))
        async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group):
            await eventually(lambda: c.condition("fine").get("status") == "True", timeout=15)

            await expect_gateway_rejection(kube, c)
            # Its routes were accepted (the probe answers); the rejection still decides.
            found = c.cp.translator.readiness("default/broken")
            assert found is not None
            probe = f"http://127.0.0.1:{config.internal_port}{ready_path(found[1])}"
            assert (await get(probe, host=ready_host(found[1])))[0] == 200
            assert c.condition("fine")["status"] == "True", "what was served stays served"

            kube.delete(KIN, "Ingress", "default", "broken")
            await eventually(lambda: c.ingress("broken") is None)
            assert await c.cp.wait_served(10), "config without the rejected part is accepted"


@pytest.mark.envoy
async def test_fake_kube_joining_gateway_pod_is_waited_for_by_later_generations_only(
    echo: dict[str, Backend],
) -> None:
    host, key = "joined.example.com", "default/joined"
    config = gateway_config(readiness_probes=True)
    joining_config = gateway_config(readiness_probes=True)
    joining = Endpoint("127.0.0.1", joining_config.internal_port)
    async with (
        fake_cluster(gateway=config, gateway_service=GATEWAY_SERVICE) as c,
        contextlib.AsyncExitStack() as stack,
    ):
        kube = c.kube
        prober = c.reconciler.prober
        assert prober is not None
        publish_backends(kube, echo)
        kube.apply(
            service(GATEWAY_SVC, [{"name": "http", "port": 80, "targetPort": 8081}], ns=GATEWAY_NS)
        )
        kube.apply(gateway_slice("first", config.internal_port))
        kube.apply(simple_kingress("joined", host, "k0"))
        # The joining pod's gateway has a control plane of its own, which gets an
        # ingress only when the test hands it one.
        other = ControlPlane(joining_config, group="fake-kube-joining")
        await other.start("127.0.0.1", 0)
        stack.push_async_callback(other.stop)
        for cp in (c.cp, other):
            await stack.enter_async_context(
                running_envoy(cp.server.port or 0, node_cluster=cp.group)
            )
        await eventually(lambda: c.condition("joined").get("status") == "True", timeout=15)
        writes = len(kube.requests_to("PATCH", "/ingresses/joined/status"))

        kube.apply(gateway_slice("joining", joining_config.internal_port))
        await eventually(lambda: prober.pods is not None and joining in prober.pods)
        kube.apply(simple_kingress("marker", "marker.example.com", "k0"))
        only_joining = f"1 of 2 gateway pods do not serve it yet: {pod_name(joining)}"
        marker = await eventually(
            lambda: (
                only_joining in c.condition("marker").get("message", "") and c.condition("marker")
            ),
            timeout=15,
            what="an ingress new to every pod waits for the joining pod only",
        )
        assert marker["status"] == "Unknown"
        assert key not in prober.wanted(), "a served generation is not probed again"
        assert len(kube.requests_to("PATCH", "/ingresses/joined/status")) == writes
        assert c.condition("joined")["status"] == "True"

        kube.apply(simple_kingress("joined", host, "k1"))
        waiting = await eventually(
            lambda: (
                c.status("joined").get("observedGeneration") == 2
                and only_joining in c.condition("joined").get("message", "")
                and c.condition("joined")
            ),
            timeout=15,
            what="generation 2 waits for the joining pod only",
        )
        assert waiting["status"] == "Unknown"
        assert "HTTP 404" in await eventually(lambda: prober.waiting(key, digest(c.cp, key)))

        found = c.cp.translator.readiness(key)
        assert found is not None and found[0].generation == 2
        for name, backend in c.cp.state().backends.items():
            other.set_backend(name, backend)
        other.apply_ingress(found[0])
        assert await other.wait_served(10)
        assert digest(other, key) == found[1], "both gateways build the same hash"
        await eventually(
            lambda: (
                c.status("joined").get("observedGeneration") == 2
                and c.condition("joined").get("status") == "True"
            ),
            timeout=15,
            what="generation 2 Ready once the joining pod serves it",
        )
        assert c.condition("marker")["status"] == "Unknown", "the marker still waits for it"


def digest(cp: ControlPlane, key: str) -> str:
    found = cp.translator.readiness(key)
    assert found is not None
    return found[1]


# --- conformance cases, driven through the Kubernetes source -------------------------------


@dataclass
class KubeGateway:
    cluster: Cluster
    config: GatewayConfig

    @property
    def external(self) -> str:
        return f"http://127.0.0.1:{self.config.external_port}"

    @property
    def internal(self) -> str:
        return f"http://127.0.0.1:{self.config.internal_port}"

    async def apply(self, obj: dict[str, Any]) -> None:
        """Apply a KIngress to the API and wait for its status to say it is served."""
        stored = self.cluster.kube.apply(copy.deepcopy(obj))
        name, generation = stored["metadata"]["name"], stored["metadata"]["generation"]
        await eventually(
            lambda: (
                self.cluster.status(name).get("observedGeneration") == generation
                and self.cluster.condition(name).get("status") == "True"
            ),
            timeout=15,
            what=f"{name} Ready",
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kube_gateway(echo: dict[str, Backend]) -> AsyncIterator[KubeGateway]:
    config = gateway_config()
    async with fake_cluster(gateway=config, group="fake-kube-conformance") as c:
        publish_backends(c.kube, echo)
        async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group):
            yield KubeGateway(c, config)


@pytest.mark.envoy
async def test_fake_kube_conformance_basics(kube_gateway: KubeGateway) -> None:
    gw = kube_gateway
    await gw.apply(kingress("basics", rule(["basics.example.com"], http_path(split("k0")))))
    status, body, _ = await get(gw.external + "/", host="basics.example.com")
    assert status == 200 and body["name"] == "k0" and body["host"] == "basics.example.com"
    status, _, _ = await get(gw.external + "/", host="nobody.example.com")
    assert status == 404


@pytest.mark.envoy
async def test_fake_kube_conformance_percentage(kube_gateway: KubeGateway) -> None:
    gw = kube_gateway
    host = "percentage.example.com"
    weights = {"k0": 20, "k1": 30, "k2": 50}
    splits = [split(name, weight) for name, weight in weights.items()]
    await gw.apply(kingress("percentage", rule([host], http_path(*splits))))
    counts = await _distribution(gw, host, 400)  # type: ignore[arg-type]
    for name, weight in weights.items():
        share = counts[name] / 4
        assert abs(share - weight) <= 10, (name, weight, share, counts)


@pytest.mark.envoy
async def test_fake_kube_conformance_headers(kube_gateway: KubeGateway) -> None:
    gw = kube_gateway
    await gw.apply(
        kingress(
            "headers",
            rule(
                ["headers.example.com"],
                http_path(
                    split(
                        "k1",
                        appendHeaders={
                            "Post-Split": "k1",
                            "Knative-Serving-Revision": "k1",
                            "Knative-Serving-Namespace": "default",
                        },
                    ),
                    appendHeaders={"Pre-Split": "rule"},
                ),
            ),
        )
    )
    status, body, _ = await get(
        gw.external + "/",
        host="headers.example.com",
        headers={"Knative-Serving-Revision": "chosen-by-client"},
    )
    assert status == 200
    headers = body["headers"]
    assert headers["pre-split"] == "rule" and headers["post-split"] == "k1"
    assert headers["knative-serving-revision"] == "k1"
    assert headers["knative-serving-namespace"] == "default"


@pytest.mark.envoy
async def test_fake_kube_conformance_visibility(kube_gateway: KubeGateway) -> None:
    gw = kube_gateway
    local = "vis.default.svc.cluster.local"
    await gw.apply(
        kingress(
            "visibility",
            rule([local], http_path(split("k2")), visibility="ClusterLocal"),
            rule(["vis.example.com"], http_path(split("k2"))),
        )
    )
    status, _, _ = await get(gw.external + "/", host=local)
    assert status == 404, "a cluster-local host is not on the external listener"
    status, body, _ = await get(gw.internal + "/", host=local)
    assert status == 200 and body["name"] == "k2"
    status, body, _ = await get(gw.external + "/", host="vis.example.com")
    assert status == 200 and body["name"] == "k2"


@pytest.mark.envoy
async def test_fake_kube_a_tls_secret_that_does_not_load_never_reaches_the_gateway(
    echo: dict[str, Backend],
) -> None:
    """A Secret whose key is not the certificate's (a copy-paste slip) is reported on its
    ingress and kept from the gateway, so other ingresses' TLS changes still go out."""
    config = gateway_config()
    good, bad = "tls-good.example.com", "tls-bad.example.com"
    first, second = _self_signed(good), _self_signed(good)
    mismatched = (_self_signed(bad)[0], _self_signed(bad)[1])

    async def served_certificate() -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection(
            "127.0.0.1", config.tls_port, ssl=context, server_hostname=good
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return ssl.DER_cert_to_PEM_cert(der)

    def same(pem_a: str, pem_b: str) -> bool:
        return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)

    async with fake_cluster(gateway=config) as c:
        publish_backends(c.kube, echo)
        c.kube.apply(tls_secret("good-tls", *first))
        tls = {"hosts": [good], "secretName": "good-tls", "secretNamespace": "default"}
        c.kube.apply(kingress("good", rule([good], http_path(split("k0"))), tls=[tls]))
        async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group) as envoy:
            await eventually(lambda: c.condition("good").get("status") == "True", timeout=15)
            assert same(await served_certificate(), first[0])

            c.kube.apply(tls_secret("bad-tls", *mismatched))
            tls = {"hosts": [bad], "secretName": "bad-tls", "secretNamespace": "default"}
            c.kube.apply(kingress("bad", rule([bad], http_path(split("k1"))), tls=[tls]))
            network = await eventually(
                lambda: (
                    c.condition("bad", "NetworkConfigured").get("status") == "False"
                    and c.condition("bad", "NetworkConfigured")
                ),
                what="the unusable Secret in the status",
            )
            assert network["message"].endswith(
                "spec.tls[0]: secret default/bad-tls: tls.key does not match the certificate "
                "in tls.crt"
            ), network["message"]

            c.kube.apply(tls_secret("good-tls", *second))
            await eventually(
                lambda: c.cp.state().certificates["default/good-tls"].cert_chain_pem == second[0],
                what="the rotated certificate seen",
            )
            assert await c.cp.wait_served(10), "the gateway accepts the update"
            assert same(await served_certificate(), second[0]), "the rotation is served"
            [node] = [n for n in c.cp.server.nodes() if n.node_id == envoy.node_id]
            assert node.last_nack is None
