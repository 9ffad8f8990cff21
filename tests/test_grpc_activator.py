"""gRPC (h2c) Services through the whole local stack, with a real grpcio client.

The revision's port is named `h2c`, so the gateway speaks HTTP/2 to it, and to the
activator while the activator is in the path. Unary and server-streaming calls succeed
at zero (the call wakes the revision), in proxy mode and in serve mode, with status
codes, details and trailing metadata intact, also 20 at a time; with a
`containerConcurrency` the h2c gate holds every pod to it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.backends import ping_pb2, ping_pb2_grpc
from tests.test_autoscaling_e2e import ECHO, GRACE_S, NAMESPACE, TICK_S, WINDOW_S, peaks
from tests.test_local_serving import Client, service, stack_config
from tests.test_scale_to_zero import wait_pods
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.autoscaler.decider import Mode
from wakegate.stack import LocalStack

pytestmark = pytest.mark.envoy


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    config = stack_config(tmp_path)
    config.autoscaler = AutoscalerConfig(
        stable_window_s=WINDOW_S, scale_to_zero_grace_period_s=GRACE_S, tick_interval_s=TICK_S
    )
    stack = LocalStack(config)
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


def grpc_service(name: str, annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    doc = service(name)
    template = doc["spec"]["template"]
    container = template["spec"]["containers"][0]
    container["command"] = ["python3", str(ECHO), "--grpc", "--name", name]
    container["ports"] = [{"name": "h2c", "containerPort": 8080}]
    template["spec"].update(spec)
    template["metadata"]["annotations"] = {
        f"autoscaling.knative.dev/{key}": value for key, value in annotations.items()
    }
    return doc


class Calls:
    """A grpcio channel to the gateway for one Service's host."""

    def __init__(self, client: Client, name: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{client.stack.config.port}",
            options=[
                ("grpc.enable_http_proxy", 0),
                ("grpc.default_authority", f"{name}.{NAMESPACE}.example.com"),
            ],
        )
        self.stub = ping_pb2_grpc.PingServiceStub(self.channel)
        self.name = name

    async def unary(self, msg: str = "hi") -> None:
        call = self.stub.Ping(ping_pb2.PingRequest(msg=msg), timeout=30)
        reply = await call
        assert reply.msg == f"{self.name}:{msg}"
        assert await call.code() == grpc.StatusCode.OK
        assert ("x-backend-name", self.name) in tuple(await call.trailing_metadata())

    async def failing(self) -> None:
        call = self.stub.Ping(ping_pb2.PingRequest(msg="status:NOT_FOUND:no such thing"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "no such thing"
        assert ("x-backend-name", self.name) in tuple(caught.value.trailing_metadata())

    async def streaming(self, count: int = 5, interval_ms: int = 20) -> None:
        call = self.stub.Count(
            ping_pb2.CountRequest(msg="s", count=count, interval_ms=interval_ms), timeout=30
        )
        replies = [reply.msg async for reply in call]
        assert replies == [f"{self.name}:s:{i}" for i in range(count)]
        assert await call.code() == grpc.StatusCode.OK
        assert ("x-backend-name", self.name) in tuple(await call.trailing_metadata())

    async def all_kinds(self) -> None:
        await self.unary()
        await self.failing()
        await self.streaming()

    async def many(self, n: int = 20) -> None:
        """`n` calls at once, half unary (each 200 ms), half streaming."""
        await asyncio.gather(
            *(self.unary(f"sleep:200:{i}") for i in range(n // 2)),
            *(self.streaming(4, 50) for _ in range(n - n // 2)),
        )

    async def close(self) -> None:
        await self.channel.close()


def mode(client: Client, name: str) -> Mode | None:
    autoscaler = client.stack.autoscaler
    assert autoscaler is not None
    return autoscaler.mode(f"{NAMESPACE}/{name}-00001")


async def until_mode(client: Client, name: str, wanted: Mode) -> None:
    for _ in range(100):
        if mode(client, name) is wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} is not in {wanted} mode: {mode(client, name)}")


async def test_grpc_through_the_activator_at_zero_and_in_proxy_mode(client: Client) -> None:
    status, reply = await client.apply(grpc_service("grpc-proxy", {}))
    assert status == 200 and reply["served"], reply
    calls = Calls(client, "grpc-proxy")
    try:
        # Before the autoscaler's first decision the activator is in the path; after
        # it, the default burst capacity keeps a one-pod revision behind it.
        await calls.all_kinds()
        await until_mode(client, "grpc-proxy", Mode.PROXY)
        await calls.all_kinds()
        await calls.many()
        assert mode(client, "grpc-proxy") is Mode.PROXY
        # At zero, a call wakes the revision and is answered.
        await wait_pods(client, 0, WINDOW_S + GRACE_S + 15)
        await calls.unary("wake")
        await calls.streaming()
        await calls.failing()
    finally:
        await calls.close()


async def test_grpc_in_serve_mode_with_container_concurrency(client: Client) -> None:
    status, reply = await client.apply(
        grpc_service("grpc-serve", {"target-burst-capacity": "0"}, containerConcurrency=2)
    )
    assert status == 200 and reply["served"], reply
    calls = Calls(client, "grpc-serve")
    try:
        await calls.unary()
        await until_mode(client, "grpc-serve", Mode.SERVE)
        await calls.all_kinds()
        await calls.many()
        # Every pod held at most 2 calls at once, over the gate's h2c connection.
        found = peaks(client, "grpc-serve-00001")
        print(f"peaks {found}")
        assert found and max(found.values()) <= 2, found
        assert all(re.match(r"grpc-serve-00001-\w+$", pod) for pod in found)
    finally:
        await calls.close()
