"""The Knative ingress conformance cases through the Kubernetes source, against a fake
Kubernetes API server (tests/fake_kube.py: no real one runs on this machine).

Each case's KIngress (of wakegate's ingress class), the Services and EndpointSlices of
the backends it names (the addresses of real echo processes) and the TLS Secrets it
names are created in the fake API server. The cluster reconciler lists and watches them
through the official client, as `wakegate controller` does, and translates them into a
ControlPlane; a real Envoy gateway speaking delta xDS serves them. A change counts as
served when the KIngress status says Ready for its generation, which the reconciler
writes only after the gateway ACKed it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from tests.fake_kube import FakeKube
from tests.support.backends import Backend
from tests.support.conformance import (
    CASES,
    HTTP2,
    NAMESPACE,
    Case,
    Driver,
    backend_names,
    backend_of,
    gateway_config,
    kingress,
    path,
    rule,
    running_backends,
    split,
)
from tests.support.envoy import running_envoy
from tests.support.waiting import eventually
from wakegate.controller import start_control_plane
from wakegate.ingress.model import Certificate
from wakegate.reconciler.cluster.kingress_status import LoadBalancers, condition_of
from wakegate.reconciler.cluster.kubernetes import (
    ENDPOINT_SLICES,
    KINGRESSES,
    SECRETS,
    SERVICES,
    ApiError,
    KubeApi,
    key_of,
)
from wakegate.reconciler.cluster.objects import TLS_SECRET_TYPE
from wakegate.reconciler.cluster.reconciler import ClusterReconciler
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

pytestmark = [pytest.mark.envoy, pytest.mark.asyncio(loop_scope="module")]

Obj = dict[str, Any]

LB = LoadBalancers(
    external="wakegate-gateway.knative-serving.svc.cluster.local",
    internal="localhost",
)
"""`internal`: the name of the gateway's cluster-local listener, as this machine resolves
it (in a cluster, the cluster-local gateway Service's DNS name)."""


# --- Kubernetes objects ----------------------------------------------------------------


def service_port(backend: str) -> Obj:
    """The port a split's `servicePort: 80` names; h2c the way Knative marks it."""
    if backend in HTTP2:
        return {"name": "http2", "port": 80, "appProtocol": "kubernetes.io/h2c"}
    return {"name": "http", "port": 80}


def service(name: str) -> Obj:
    port = service_port(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ports": [{**port, "targetPort": port["name"]}]},
    }


def endpoint_slice(name: str, backend: Backend) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abcde",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [backend.host], "conditions": {"ready": True}}],
        "ports": [{**service_port(name), "port": backend.port, "protocol": "TCP"}],
    }


def tls_secret(name: str, namespace: str, certificate: Certificate) -> Obj:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TLS_SECRET_TYPE,
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": b64(certificate.cert_chain_pem),
            "tls.key": b64(certificate.private_key_pem),
        },
    }


# --- the driver ------------------------------------------------------------------------


RESOURCES = {(r.api_version, r.kind): r for r in (SERVICES, ENDPOINT_SLICES, SECRETS, KINGRESSES)}


@dataclass
class FakeKubeDriver(Driver):
    """Objects written to the fake API server through the official client, as Knative's
    controllers write them; served once the KIngress status is Ready."""

    kube: FakeKube
    client: KubeApi
    cp: ControlPlane
    reconciler: ClusterReconciler
    config: GatewayConfig
    backends: Mapping[str, Backend]
    published: set[str] = field(default_factory=set)

    async def apply(self, obj: Obj, *, secrets: Mapping[str, Certificate] | None = None) -> None:
        namespace = obj["metadata"]["namespace"]
        created = [
            await self._write(tls_secret(name, namespace, certificate))
            for name, certificate in (secrets or {}).items()
        ]
        for name in backend_names(obj):
            if name not in self.published:
                created.append(await self._write(service(name)))
                created.append(await self._write(endpoint_slice(name, self.backends[name])))
                self.published.add(name)
        await eventually(
            lambda: all(self._seen(o) for o in created),
            timeout=15,
            what="the controller saw the Services, EndpointSlices and Secrets",
        )
        stored = await self._write(obj)
        name, generation = stored["metadata"]["name"], stored["metadata"]["generation"]
        await eventually(
            lambda: self._ready(namespace, name, generation),
            timeout=15,
            what=f"KIngress {name} Ready for generation {generation}",
            explain=lambda: self._status(namespace, name),
        )

    async def delete(self, name: str) -> None:
        await self.client.request("DELETE", KINGRESSES.path(NAMESPACE, name))
        key = f"{NAMESPACE}/{name}"
        await eventually(
            lambda: key not in {i.key for i in self.cp.ingresses()},
            timeout=15,
            what=f"KIngress {key} gone from the control plane",
        )
        assert await self.cp.wait_served(timeout=15), self.cp.server.nodes()

    async def _write(self, obj: Obj) -> Obj:
        """Create `obj`, or update its spec (the status stays) if it exists; as stored."""
        resource = RESOURCES[(obj["apiVersion"], obj["kind"])]
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            return await self.client.create(resource, namespace, obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
        return await self.client.replace(resource, namespace, name, obj)

    def _seen(self, obj: Obj) -> bool:
        """The reconciler's informer holds `obj` at its stored version or a later one."""
        for informer in self.reconciler.informers:
            resource = informer.resource
            if (resource.api_version, resource.kind) == (obj["apiVersion"], obj["kind"]):
                held = informer.store.get(key_of(obj))
                version = int(obj["metadata"]["resourceVersion"])
                return held is not None and int(held["metadata"]["resourceVersion"]) >= version
        raise AssertionError(f"no informer for {obj['apiVersion']} {obj['kind']}")

    def _status(self, namespace: str, name: str) -> Obj:
        current = self.kube.get(KINGRESSES.api_version, KINGRESSES.kind, namespace, name) or {}
        return current.get("status") or {}

    def _ready(self, namespace: str, name: str, generation: int) -> bool:
        status = self._status(namespace, name)
        ready = condition_of(status, "Ready") or {}
        return status.get("observedGeneration") == generation and ready.get("status") == "True"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends() -> AsyncIterator[dict[str, Backend]]:
    async with running_backends() as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(backends: dict[str, Backend]) -> AsyncIterator[FakeKubeDriver]:
    config = gateway_config()
    async with contextlib.AsyncExitStack() as stack:
        kube = await stack.enter_async_context(FakeKube())
        api = KubeApi.for_host(kube.url)
        stack.push_async_callback(api.close)
        client = KubeApi.for_host(kube.url)
        stack.push_async_callback(client.close)
        cp = ControlPlane(config, group="fake-kube-conformance")
        stack.push_async_callback(cp.stop)
        reconciler = ClusterReconciler(api, cp, load_balancers=LB)
        serving: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def serve_xds() -> None:
            serving.set_result(await start_control_plane(cp, "127.0.0.1", 0))

        task = asyncio.create_task(reconciler.run(serve_xds))

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(cancel)
        await asyncio.wait([task, serving], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert serving.done(), "the reconciler did not list every source within 15s"
        xds_port = serving.result()
        await stack.enter_async_context(running_envoy(xds_port, delta=True, node_cluster=cp.group))
        yield FakeKubeDriver(
            kube=kube,
            client=client,
            cp=cp,
            reconciler=reconciler,
            config=config,
            backends=backends,
        )


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_fake_kube_conformance(gw: FakeKubeDriver, case: Case) -> None:
    await case(gw)


async def test_fake_kube_conformance_rewrite_host_to_an_external_name_service(
    gw: FakeKubeDriver,
) -> None:
    """Knative networking's TestRewriteHost (test/conformance/ingress/rewrite.go): a
    cluster-local KIngress serves a runtime Service under its private host name; an
    ExternalName Service of that name points at the gateway's private load balancer
    (read from that KIngress's status), with a port named h2c; a second KIngress sends
    vanity hosts there, rewriting Host to the private name. The gateway resolves the
    ExternalName by DNS and the request goes round through its own cluster-local
    listener over h2c. Here the Service port is that listener's port, where the case's
    cluster has the gateway Service's port 80 in front of it."""
    runtime, private = "b7", "rewrite-private"
    private_host = f"{private}.{NAMESPACE}.svc.cluster.local"
    await gw.apply(
        kingress("rewrite-private", rule([private_host], path(split(runtime)),
                                         visibility="ClusterLocal"))
    )  # fmt: skip
    status = gw._status(NAMESPACE, "rewrite-private")
    gateway_domain = status["privateLoadBalancer"]["ingress"][0]["domainInternal"]
    port = gw.config.internal_port
    await gw._write(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": private, "namespace": NAMESPACE},
            "spec": {
                "type": "ExternalName",
                "externalName": gateway_domain,
                "sessionAffinity": "None",
                "ports": [{"name": "h2c", "port": port, "targetPort": port}],
            },
        }
    )
    gw.published.add(private)
    hosts = [f"{runtime}.vanity.ismy.name", f"{runtime}.vanity.isalsomy.number"]
    await gw.apply(
        kingress(
            "rewrite-vanity",
            rule(hosts, path({**split(private), "servicePort": port}, rewriteHost=private_host)),
        )
    )
    backend = gw.cp.state().backends[f"{NAMESPACE}/{private}:{port}"]
    assert backend.dns and backend.http2
    assert [(e.address, e.port) for e in backend.endpoints] == [(gateway_domain, port)]
    for host in hosts:
        code, body = await backend_of(gw, host)
        assert code == 200 and body["name"] == runtime, (host, code, body)
        assert body["host"] == private_host
    code, _ = await backend_of(gw, private_host)
    assert code == 404, "the private host stays off the external listener"
    for name in ("rewrite-vanity", "rewrite-private"):
        await gw.delete(name)
