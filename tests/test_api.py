"""The loopback API and the CLI against a running control plane and a real Envoy:
bad input gets a clear one-line error and leaves the served config unchanged."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.support.backends import Backend, free_port, get, launch_backend
from tests.support.envoy import running_envoy
from wakegate.api import Api
from wakegate.reconciler.local.manifests import ManifestReconciler
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

pytestmark = pytest.mark.envoy

HOST = "api.example.com"


def manifest(port: int, *, percent: int = 100, visibility: str = "ExternalIP") -> str:
    ingress = {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {
            "rules": [
                {
                    "hosts": [HOST],
                    "visibility": visibility,
                    "http": {
                        "paths": [
                            {
                                "splits": [
                                    {
                                        "serviceNamespace": "default",
                                        "serviceName": "echo",
                                        "servicePort": 80,
                                        "percent": percent,
                                    }
                                ]
                            }
                        ]
                    },
                }
            ]
        },
    }
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "echo", "namespace": "default"},
        "subsets": [
            {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": port}]}
        ],
    }
    return yaml.safe_dump_all([ingress, endpoints])


@dataclass
class Stack:
    api_url: str
    gateway_url: str
    api_port: int
    backend: Backend


@pytest_asyncio.fixture
async def stack() -> AsyncIterator[Stack]:
    backend = await launch_backend("echo")
    config = GatewayConfig(
        external_port=free_port(), internal_port=free_port(), bind_address="127.0.0.1"
    )
    cp = ControlPlane(config, group="api-test", debounce_s=0.01)
    api = Api(cp, ManifestReconciler(cp))
    xds_port = await cp.start()
    api_port = await api.start("127.0.0.1", 0)
    try:
        async with running_envoy(xds_port, node_cluster="api-test"):
            yield Stack(
                api_url=f"http://127.0.0.1:{api_port}",
                gateway_url=f"http://127.0.0.1:{config.external_port}",
                api_port=api_port,
                backend=backend,
            )
    finally:
        await api.stop()
        await cp.stop()
        await backend.stop()


async def _put(stack: Stack, body: str, wait: bool = True) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        url = stack.api_url + "/v1/manifests" + ("?wait=1" if wait else "")
        async with session.put(url, data=body) as resp:
            return resp.status, await resp.json()


BAD_INPUT = [
    ("malformed yaml", "kind: [unclosed", "malformed YAML"),
    ("missing hosts", "hosts", "spec.rules[0].hosts"),
    ("percent not 100", "percent", "percents sum to 90"),
    ("negative port", "port", "servicePort"),
    ("unknown visibility", "visibility", "spec.rules[0].visibility"),
    ("wrong kind", "kind", "apiVersion/kind"),
]


def _bad(case: str, port: int) -> str:
    good = manifest(port)
    if case == "malformed yaml":
        return "kind: [unclosed"
    if case == "missing hosts":
        return good.replace(f"- {HOST}", "").replace("hosts:\n", "hosts: []\n")
    if case == "percent not 100":
        return manifest(port, percent=90)
    if case == "negative port":
        return good.replace("servicePort: 80", "servicePort: -80")
    if case == "unknown visibility":
        return manifest(port, visibility="Public")
    if case == "wrong kind":
        return good.replace("kind: Ingress", "kind: Ingres")
    raise AssertionError(case)


async def test_bad_input_is_rejected_and_the_last_good_config_keeps_serving(stack: Stack) -> None:
    status, reply = await _put(stack, manifest(stack.backend.port))
    assert status == 200 and reply["served"] is True
    status, body, _ = await get(stack.gateway_url + "/", host=HOST)
    assert status == 200 and body["name"] == "echo"
    version = reply["version"]

    for case, _, expected in BAD_INPUT:
        status, reply = await _put(stack, _bad(case, stack.backend.port))
        assert status == 400, (case, reply)
        message = reply["error"]
        assert expected in message, (case, message)
        assert "\n" not in message, (case, message)
        # Nothing changed: same snapshot, still served.
        async with aiohttp.ClientSession() as session:
            async with session.get(stack.api_url + "/v1/status") as resp:
                assert (await resp.json())["version"] == version, case
        status, body, _ = await get(stack.gateway_url + "/", host=HOST)
        assert status == 200 and body["name"] == "echo", case


async def test_cli_apply_reports_errors_with_exit_code_2(stack: Stack, tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(manifest(stack.backend.port))
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest(stack.backend.port, percent=90))

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wakegate.cli",
            *args,
            "--api-port",
            str(stack.api_port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await cli("apply", "-f", str(good), "--wait")
    assert code == 0, err
    assert "ingress default/api applied" in out and "served by every gateway" in out
    code, out, err = await cli("apply", "-f", str(bad))
    assert code == 2
    assert err.count("\n") == 1 and "percents sum to 90" in err
    code, _, err = await cli("apply", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err
