"""An API server restart seen by the cluster reconciler, against a fake Kubernetes API
server (tests/fake_kube.py: no real one runs here) and a real Envoy gateway.

After a restart every watch breaks and each resource comes back, and re-lists, on its
own schedule. Meanwhile another controller creates a Service, its EndpointSlice and a
KIngress naming it. Whatever order the resources come back in, nothing of the new
KIngress reaches the gateway and no status is written until every informer is current
again; the first Ready written for it comes with its endpoints in the gateway's
config, and the gateway answers its host at once. What was served before keeps
serving throughout.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fake_kube import Request
from tests.support.backends import Backend, get
from tests.support.envoy import running_envoy
from tests.test_cluster_fake_kube import (
    echo,  # noqa: F401  (a fixture)
    eventually,
    fake_cluster,
    gateway_config,
    publish_backends,
    simple_kingress,
)
from wakegate.ingress.model import Endpoint
from wakegate.reconciler.cluster.kingress_status import condition_of

pytestmark = pytest.mark.envoy

RESOURCES = ("ingresses", "serverlessservices", "services", "endpointslices", "secrets")
ORDERS = {
    "kingress-first-slices-last": (
        "ingresses", "services", "serverlessservices", "secrets", "endpointslices"
    ),
    "slices-first-kingress-last": (
        "endpointslices", "secrets", "serverlessservices", "services", "ingresses"
    ),
    "services-last": ("ingresses", "endpointslices", "secrets", "serverlessservices", "services"),
}  # fmt: skip


@pytest.mark.parametrize("order", ORDERS.values(), ids=list(ORDERS))
async def test_fake_kube_after_a_restart_nothing_is_pushed_or_ready_from_stale_caches(
    echo: dict[str, Backend],  # noqa: F811
    order: tuple[str, ...],
) -> None:
    assert sorted(order) == sorted(RESOURCES)
    config = gateway_config()
    external = f"http://127.0.0.1:{config.external_port}/"
    async with fake_cluster(gateway=config) as c:
        kube, reconciler = c.kube, c.reconciler
        assert sorted(i.name for i in reconciler.informers) == sorted(RESOURCES)
        async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group):
            publish_backends(kube, {"k0": echo["k0"]})
            kube.apply(simple_kingress("old", "old.example.com", "k0"))
            await eventually(lambda: c.condition("old").get("status") == "True", timeout=15)

            kube.restart()
            await eventually(lambda: not any(i.synced.is_set() for i in reconciler.informers))
            relists = {i.name: i.relists for i in reconciler.informers}
            publish_backends(kube, {"k1": echo["k1"]})
            kube.apply(simple_kingress("new", "new.example.com", "k1"))

            writes: list[tuple[str, float, Any, set[Endpoint] | None]] = []

            def on_request(request: Request) -> None:
                if request.method == "PATCH" and request.path.endswith("/status"):
                    ready = condition_of((request.body or {}).get("status"), "Ready") or {}
                    endpoints = c.endpoints("default/k1:80")
                    writes.append((request.path, time.monotonic(), ready.get("status"), endpoints))

            kube.on_request = on_request
            for plural in order[:-1]:
                kube.restore(plural)
                informer = next(i for i in reconciler.informers if i.name == plural)
                await eventually(
                    lambda: informer.relists == relists[plural] + 1,  # noqa: B023
                    what=f"{plural} re-listed",
                )
                code, body, _ = await get(external, host="old.example.com")
                assert (code, body["name"]) == (200, "k0"), "what was served keeps serving"
                assert c.ingress("new") is None, f"pushed with only {plural} … current"
                assert writes == [], f"status written with only {plural} … current"
                assert not reconciler.current()

            kube.restore(order[-1])
            await eventually(lambda: c.condition("new").get("status") == "True", timeout=15)
            code, body, _ = await get(external, host="new.example.com")
            assert (code, body["name"]) == (200, "k1")
            first_ready = next(w for w in writes if w[0].endswith("/new/status") and w[2] == "True")
            assert first_ready[3] == {Endpoint(echo["k1"].host, echo["k1"].port)}
            assert all(w[3] for w in writes if w[0].endswith("/new/status")), writes
            assert {
                i.name: i.relists - relists[i.name] for i in reconciler.informers
            } == dict.fromkeys(RESOURCES, 1)
