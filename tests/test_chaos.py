"""Chaos under load: the activator, the Envoy gateway and pods are SIGKILLed at random
while clients keep requesting two Services, one served straight from its pods and one
through the activator (target burst capacity -1 keeps it in the path). Every process
comes back on its own (supervised, restarted with back-off), and only requests in
flight on a killed process may fail.

A connection refused while the gateway itself is down carried no request: the clients
send those again, as any client may, and the test checks that refusals happen only
while the gateway is down. Nothing can hide the gateway's restart from new connections
without a second gateway in front of it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.backends import probing
from tests.support.chaos import Kill, in_flight, kill_process, unexplained
from tests.support.waiting import eventually
from tests.test_local_serving import Client, service, stack_config
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.stack import LocalStack

pytestmark = pytest.mark.envoy

SERVICES = {"direct": "0", "proxied": "-1"}
"""Service name → its target burst capacity."""
KILLS_EACH = 3
"""Kills of each kind, in a random order: a process that keeps dying is restarted with a
growing back-off, which three kills keep short."""
EXPECTED = (200, "Hello World!\n")


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    config = stack_config(tmp_path)
    config.autoscaler = AutoscalerConfig(stable_window_s=6.0, tick_interval_s=1.0)
    stack = LocalStack(config)
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


def host(name: str) -> str:
    return f"{name}.default.example.com"


async def became(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll `check()` until it is true; when that was (time.monotonic())."""
    await eventually(check, 30.0, what, interval=0.05)
    return time.monotonic()


WHAT = ("activator", "gateway", "pod")


async def kill_one(
    stack: LocalStack, what: str, rng: random.Random, pods_ready: Callable[[], Awaitable[bool]]
) -> tuple[Kill, float]:
    """SIGKILL the activator, the gateway or a random ready pod; the kill, and when the
    process was back (serving, for the gateway)."""
    assert stack.gateway is not None and stack.activator is not None and stack.serving
    activator, gateway = stack.activator, stack.gateway
    if what == "activator":
        pid = activator.pid
        back: Callable[[], Awaitable[bool]]

        async def back() -> bool:
            return activator.running and activator.pid != pid

    elif what == "gateway":
        pid = gateway.pid

        async def back() -> bool:
            return gateway.pid not in (None, pid) and await gateway.is_live()

    else:
        pod = rng.choice([p for p in stack.serving.pods() if p["ready"]])
        pid, what, back = pod["pid"], f"pod {pod['name']}", pods_ready
    assert pid is not None
    kill = await kill_process(pid, what)
    return kill, await became(back, f"{what} back")


async def test_kills_of_activator_gateway_and_pods_fail_only_requests_in_flight(
    client: Client,
) -> None:
    stack = client.stack
    assert stack.gateway is not None and stack.activator is not None and stack.serving
    for name, burst in SERVICES.items():
        spec = service(name)
        annotations = spec["spec"]["template"]["metadata"]["annotations"]
        annotations["autoscaling.knative.dev/min-scale"] = "2"
        annotations["autoscaling.knative.dev/target-burst-capacity"] = burst
        status, reply = await client.apply(spec)
        assert status == 200 and reply["served"], reply

    async def modes() -> bool:
        _, revisions = await client.read("/v1/revisions")
        wanted = {"direct-00001": "serve", "proxied-00001": "proxy"}
        return {r["name"]: r["autoscaler"]["mode"] for r in revisions} == wanted

    async def pods_ready() -> bool:
        pods = stack.serving.pods() if stack.serving else []
        return sum(1 for p in pods if p["ready"]) == 4

    await became(modes, "serve and proxy")
    await became(pods_ready, "4 pods ready")

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills: list[Kill] = []
    gateway_down: list[tuple[float, float]] = []
    async with (
        probing(client.gateway + "/", host("direct"), lambda *a: a == EXPECTED,
                workers=2, retry_refused=True) as direct,
        probing(client.gateway + "/", host("proxied"), lambda *a: a == EXPECTED,
                workers=2, retry_refused=True) as proxied,
    ):  # fmt: skip
        await asyncio.sleep(1.0)
        plan = [what for what in WHAT for _ in range(KILLS_EACH)]
        rng.shuffle(plan)
        for what in plan:
            kill, restored = await kill_one(stack, what, rng, pods_ready)
            kills.append(kill)
            if kill.what == "gateway":
                gateway_down.append((kill.signalled, restored))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
        await asyncio.sleep(1.0)

    attempts = direct.attempts + proxied.attempts
    failed = [a for a in attempts if not a.ok]
    refused = direct.refused + proxied.refused
    summary = ", ".join(f"{k.what} ({len(in_flight(attempts, k))} in flight)" for k in kills)
    print(
        f"chaos (seed {seed}): {len(attempts)} requests, {len(failed)} failed, "
        f"{len(refused)} connections refused while the gateway was down; kills: {summary}"
    )
    assert direct.served > 100 and proxied.served > 100
    stray = unexplained(attempts, kills)
    assert stray == [], (seed, [(round(a.sent, 3), a.what) for a in stray], kills)
    # Each client has one request in flight at a time: 4 at most per kill.
    assert len(failed) <= 4 * len(kills)
    outside = [t for t in refused if not any(start <= t <= end for start, end in gateway_down)]
    assert outside == [], (seed, outside, gateway_down)
    assert stack.activator.restarts == sum(k.what == "activator" for k in kills)
    assert stack.gateway.restarts == sum(k.what == "gateway" for k in kills)
