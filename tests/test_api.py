"""The loopback API and the CLI against a running control plane and a real Envoy:
bad input gets a clear one-line error and leaves the served config unchanged."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.support.backends import Backend, free_port, get, launch_backend
from tests.support.envoy import running_envoy
from wakegate.api import Api
from wakegate.data_dir import TOKEN_FILE, write_owner_only
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


TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stack:
    api_url: str
    gateway_url: str
    api_port: int
    backend: Backend
    data_dir: Path


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    backend = await launch_backend("echo")
    config = GatewayConfig(
        external_port=free_port(), internal_port=free_port(), bind_address="127.0.0.1"
    )
    cp = ControlPlane(config, group="api-test", debounce_s=0.01)
    api = Api(cp, ManifestReconciler(cp), token=TOKEN)
    write_owner_only(tmp_path / TOKEN_FILE, TOKEN)
    xds_port = await cp.start()
    api_port = await api.start("127.0.0.1", 0)
    try:
        async with running_envoy(xds_port, node_cluster="api-test"):
            yield Stack(
                api_url=f"http://127.0.0.1:{api_port}",
                gateway_url=f"http://127.0.0.1:{config.external_port}",
                api_port=api_port,
                backend=backend,
                data_dir=tmp_path,
            )
    finally:
        await api.stop()
        await cp.stop()
        await backend.stop()


async def _put(stack: Stack, body: str, wait: bool = True) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        url = stack.api_url + "/v1/manifests" + ("?wait=1" if wait else "")
        async with session.put(url, data=body, headers=AUTH) as resp:
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
            "--data-dir",
            str(stack.data_dir),
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


async def _call(
    stack: Stack, method: str, path: str, *, body: str | None = None, **headers: str
) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, stack.api_url + path, data=body, headers=headers
        ) as resp:
            return resp.status, dict(resp.headers), await resp.text()


async def _version(stack: Stack) -> str | None:
    status, _, text = await _call(stack, "GET", "/v1/status")
    assert status == 200, text
    return json.loads(text)["version"]


async def test_a_foreign_host_is_refused_for_get_and_put_and_nothing_is_applied(
    stack: Stack,
) -> None:
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its own
    name as Host."""
    before = await _version(stack)
    foreign = f"attacker.example:{stack.api_port}"
    for method, path, body in [
        ("PUT", "/v1/manifests?wait=1", manifest(stack.backend.port)),
        ("GET", "/v1/ingresses", None),
        ("GET", "/v1/status", None),
        ("DELETE", "/v1/ingresses/default/api", None),
    ]:
        status, _, text = await _call(
            stack, method, path, body=body, Host=foreign, Authorization=AUTH["Authorization"]
        )
        assert status == 403, (method, path, text)
        assert "attacker.example" in json.loads(text)["error"]
    assert await _version(stack) == before
    status, _, text = await _call(stack, "GET", "/v1/ingresses")
    assert status == 200 and json.loads(text) == []

    for host in ("localhost", f"localhost:{stack.api_port}", "127.0.0.1", "[::1]:1", "127.1.2.3"):
        status, _, text = await _call(stack, "GET", "/v1/ingresses", Host=host)
        assert status == 200, (host, text)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
async def test_a_call_that_changes_state_needs_the_token(
    stack: Stack, authorization: str | None
) -> None:
    before = await _version(stack)
    headers = {"Authorization": authorization} if authorization else {}
    status, _, text = await _call(
        stack, "PUT", "/v1/manifests?wait=1", body=manifest(stack.backend.port), **headers
    )
    assert status == 401, text
    assert "token" in json.loads(text)["error"]
    assert await _version(stack) == before
    status, _, _ = await _call(stack, "DELETE", "/v1/ingresses/default/api", **headers)
    assert status == 401
    # With it, the same call applies.
    status, reply = await _put(stack, manifest(stack.backend.port))
    assert status == 200 and reply["served"] is True


async def test_no_cors_headers_are_sent(stack: Stack) -> None:
    origin = {"Origin": "http://attacker.example"}
    status, headers, _ = await _call(stack, "GET", "/v1/status", **origin)
    assert status == 200
    status, preflight, _ = await _call(
        stack,
        "OPTIONS",
        "/v1/manifests",
        **origin,
        **{"Access-Control-Request-Method": "PUT"},
    )
    assert status >= 400
    for answer in (headers, preflight):
        assert not [h for h in answer if h.lower().startswith("access-control-")], answer


async def test_cli_without_the_token_is_refused_with_one_line(stack: Stack, tmp_path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(manifest(stack.backend.port))
    before = await _version(stack)
    elsewhere = tmp_path / "not-the-data-dir"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wakegate.cli", "apply", "-f", str(path),
        "--api-port", str(stack.api_port), "--data-dir", str(elsewhere),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().count("\n") == 1 and str(elsewhere / TOKEN_FILE) in err.decode()
    assert await _version(stack) == before
