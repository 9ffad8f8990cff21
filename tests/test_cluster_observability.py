"""Cluster mode's observability against the fake Kubernetes API server (no real one runs
here) and a real Envoy: the propagation histogram on the controller's /metrics, and the
proxy-config debug endpoint of its metrics listener."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from tests.fake_kube import FakeKube
from tests.support.backends import free_port, launch_backend
from tests.support.envoy import running_envoy
from tests.test_cluster_fake_kube import (
    _port_open,
    endpoint_slice,
    eventually,
    fake_cluster,
    gateway_config,
    service,
    simple_kingress,
)
from wakegate.controller import add_controller_parser, run_controller

PROPAGATION = "wakegate_kingress_propagation_seconds"


def propagated() -> float:
    return REGISTRY.get_sample_value(f"{PROPAGATION}_count") or 0.0


@pytest.mark.envoy
async def test_fake_kube_each_generation_served_is_one_propagation_observed() -> None:
    backend = await launch_backend("p0")
    try:
        async with fake_cluster(gateway=gateway_config()) as c:
            c.kube.apply(service("p0", [{"name": "http", "port": 80, "targetPort": "http"}]))
            c.kube.apply(endpoint_slice("p0", [backend.host], backend.port))
            host = "propagation.default.example.com"
            before = propagated()
            c.kube.apply(simple_kingress("prop", host, "p0"))
            await eventually(lambda: c.ingress("prop"))
            await asyncio.sleep(0.3)
            assert propagated() == before, "nothing is served without a gateway"
            async with running_envoy(c.cp.server.port or 0, node_cluster=c.cp.group):
                await eventually(lambda: c.condition("prop").get("status") == "True", timeout=15)
                assert propagated() == before + 1
                generation_2 = simple_kingress("prop", host, "p0")
                generation_2["spec"]["rules"][0]["hosts"].append("two.default.example.com")
                c.kube.apply(generation_2)
                await eventually(
                    lambda: (
                        c.status("prop").get("observedGeneration") == 2
                        and c.condition("prop").get("status") == "True"
                    ),
                    timeout=15,
                )
                assert propagated() == before + 2
                total = REGISTRY.get_sample_value(f"{PROPAGATION}_sum") or 0.0
                assert 0 < total < 30
    finally:
        await backend.stop()


async def test_fake_kube_controller_serves_proxy_config_on_its_metrics_listener(
    tmp_path: Path,
) -> None:
    async with FakeKube(bookmark_interval_s=0.2) as kube:
        kube.apply(service("svc"))
        kube.apply(endpoint_slice("svc", ["10.0.0.7"], 8080))
        kube.apply(simple_kingress("hello", "hello.example.com", "svc"))
        kube.apply(simple_kingress("other", "other.example.com", "svc"))
        parser = argparse.ArgumentParser()
        add_controller_parser(parser.add_subparsers(), "controller")
        health, metrics, xds = free_port(), free_port(), free_port()
        args = parser.parse_args(
            ["controller", "--kubeconfig", str(kube.kubeconfig(tmp_path / "kubeconfig")),
             "--xds-host", "127.0.0.1", "--xds-port", str(xds),
             "--health-port", str(health), "--metrics-port", str(metrics),
             "--gateway-external-address", "gw.wakegate-system",
             "--leader-election-namespace", "knative-serving"]
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(run_controller(args, stop))
        try:
            await eventually(lambda: _port_open(metrics), what="metrics port open")
            base = f"http://127.0.0.1:{metrics}/debug/proxy-config"
            async with aiohttp.ClientSession() as session:

                async def fetch(path: str) -> tuple[int, dict]:
                    async with session.get(base + path) as resp:
                        return resp.status, await resp.json()

                async def routed() -> bool:
                    _, body = await fetch("/routes?host=hello.example.com")
                    return bool(body["items"])

                for _ in range(200):
                    if await routed():
                        break
                    await asyncio.sleep(0.05)
                status, body = await fetch("/routes?host=hello.example.com")
                assert status == 200
                hosts = [
                    vh["domains"] for i in body["items"] for vh in i["summary"]["virtualHosts"]
                ]
                assert hosts == [["hello.example.com"]]
                assert body["gateways"] == []
                _, clusters = await fetch("/clusters?ingress=default/hello")
                assert [i["name"] for i in clusters["items"]] == ["default/svc:80"]
                _, endpoints = await fetch("/endpoints?ingress=default/hello")
                assert endpoints["items"][0]["summary"]["endpoints"] == ["10.0.0.7:8080"]
                status, missing = await fetch("/routes?ingress=default/nope")
                assert status == 404 and "nope" in missing["error"]
                status, _ = await fetch("/secrets")
                assert status == 404
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
