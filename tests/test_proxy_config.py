"""`proxy-config`: what the control plane serves for a host, checked against a real Envoy's
own config dump, through the local stack's API and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.test_cli import WAKEGATE
from tests.test_local_serving import HOST, Client, service, stack_config
from wakegate.stack import LocalStack
from wakegate.xds.proxy_config import (
    EXTRA,
    MISSING,
    REJECTED,
    SERVED,
    STALE,
    GatewayDump,
    proxy_config,
)
from wakegate.xds.resources import ROUTE
from wakegate.xds.scopes import host_label, scoped_name
from wakegate.xds.translate import HTTP_ROUTES

pytestmark = pytest.mark.envoy

CLUSTER_1 = "default/helloworld-go-00001:80"
CLUSTER_2 = "default/helloworld-go-00002:80"
HOST_ROUTES = scoped_name(HTTP_ROUTES, host_label(HOST))
"""The route configuration a delta gateway gets for HOST: its first label's scope."""


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    stack = LocalStack(stack_config(tmp_path))
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


def states(items: list[dict[str, Any]]) -> dict[str, str]:
    return {i["name"]: i["gateway"]["state"] for i in items}


async def dump(client: Client) -> dict[str, Any]:
    assert client.stack.gateway is not None
    return dict(json.loads(await client.stack.gateway.admin_get("/config_dump?include_eds")))


def resources(client: Client) -> Any:
    current = client.stack.cp.cache.current(client.stack.cp.group)
    assert current is not None
    return current[1].resources


async def test_everything_served_matches_the_gateways_own_config(client: Client) -> None:
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply
    for kind, names in [
        ("listeners", {"external", "internal"}),
        ("routes", {HOST_ROUTES}),
        ("clusters", {CLUSTER_1}),
        ("endpoints", {CLUSTER_1}),
    ]:
        _, body = await client.read(f"/v1/proxy-config/{kind}?host={HOST}")
        assert body["gateway"]["dumped"] is True
        assert states(body["items"]) == dict.fromkeys(names, SERVED), (kind, body["items"])
    _, routes = await client.read(f"/v1/proxy-config/routes?host={HOST}:8080")
    (config,) = routes["items"]
    (virtual_host,) = config["summary"]["virtualHosts"]
    assert virtual_host["domains"] == [HOST] and virtual_host["clusters"] == [CLUSTER_1]
    _, by_service = await client.read("/v1/proxy-config/clusters?service=default/helloworld-go")
    assert states(by_service["items"]) == {CLUSTER_1: SERVED}
    _, elsewhere = await client.read("/v1/proxy-config/clusters?host=nothing.example.com")
    assert elsewhere["items"] == []
    status, _ = await client.read("/v1/proxy-config/clusters?service=default/nope")
    assert status == 404

    words = [*WAKEGATE, "proxy-config", "routes", "--host", HOST, "--api-port",
             str(client.stack.api_port)]  # fmt: skip
    table = await asyncio.to_thread(
        subprocess.run, words, capture_output=True, text=True, timeout=30
    )
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "ROUTE",
        "CONFIG",
        "VIRTUAL",
        "HOST",
        "DOMAINS",
        "CLUSTERS",
        "GATEWAY",
    ]
    assert row.split()[-3:] == [HOST, CLUSTER_1, SERVED]


async def test_a_gateway_behind_the_control_plane_is_marked(client: Client) -> None:
    """The dump of a gateway that has not taken the next change yet, against that change:
    the changed route configuration is stale, the new revision's cluster missing, and
    the cluster the control plane dropped is still on the gateway."""
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply
    before = await dump(client)
    status, reply = await client.apply(service(target="Wakegate"))
    assert status == 200 and reply["served"], reply
    await client.stack.cp.wait_served()
    after = resources(client)
    # The gate's route configuration (no revision here has a containerConcurrency) is
    # the same before and after.
    routes = states(proxy_config(after, "routes", dump=before))
    assert routes == {HOST_ROUTES: STALE, "gate": SERVED}
    clusters = states(proxy_config(after, "clusters", dump=before))
    assert clusters == {CLUSTER_2: MISSING, CLUSTER_1: EXTRA}
    served = states(proxy_config(after, "routes", dump=await dump(client)))
    assert served == {HOST_ROUTES: SERVED, "gate": SERVED}


def test_a_rejected_resource_is_marked_with_the_gateways_error() -> None:
    dump = {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "dynamic_route_configs": [
                    {
                        "version_info": "v1",
                        "route_config": {"name": "http"},
                        "error_state": {"details": "duplicate domain"},
                    }
                ],
            }
        ]
    }
    from wakegate.xds.proxy_config import decode

    ours = decode(ROUTE, b"\n\x04http")
    assert GatewayDump.from_config_dump(dump).state(ROUTE, "http", ours) == (
        REJECTED,
        "duplicate domain",
    )
    assert GatewayDump.from_config_dump({"configs": []}).state(ROUTE, "http", ours) == (
        MISSING,
        "",
    )
