"""`wakegate up` as its user runs it, seen from everywhere else: other users of the
machine (file modes, Envoy's admin interface), a web page (the API's Host check and
token are in test_api.py), and the pods (what they inherit). Real processes, real Envoy.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.backends import free_port, get
from tests.support.chaos import kill_process
from tests.test_cli import WAKEGATE, hello_manifest
from wakegate.runtime.spec import INHERITED

pytestmark = pytest.mark.envoy

HOST = "helloworld-go.default.example.com"
SECRET_NAME = "WAKEGATE_TEST_CLOUD_SECRET"


@dataclass
class Up:
    proc: asyncio.subprocess.Process
    data: Path
    port: int
    internal_port: int
    tls_port: int
    api_port: int
    manifest: Path

    def cli(self, *words: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WAKEGATE, *words, "--api-port", str(self.api_port),
             "--data-dir", str(data_dir or self.data)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def json(self, *words: str) -> Any:
        result = self.cli(*words)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def api(self, path: str) -> Any:
        """A GET of the API's own (flat) listing, which carries pids and autoscaler state."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def processes(self) -> dict[str, Any]:
        return dict(self.json("status")["processes"])


@pytest_asyncio.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    manifest = hello_manifest(tmp_path, {"DECLARED": "by the container"})
    data = tmp_path / "data"
    ports = [free_port() for _ in range(4)]
    env = {**os.environ, SECRET_NAME: "s3cr3t", "TZ": "UTC", "LC_TIME": "C"}
    proc = await asyncio.create_subprocess_exec(
        *WAKEGATE, "up", "-f", str(manifest), "--data-dir", str(data),
        "--port", str(ports[0]), "--internal-port", str(ports[1]), "--tls-port", str(ports[2]),
        "--api-port", str(ports[3]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not lines or lines[-1] != "ready":
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, f"up exited early: {lines}"
            lines.append(line.decode().strip())
        yield Up(proc, data, *ports, manifest=manifest)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def listening_tcp_ports(pid: int) -> set[int]:
    """Ports of the TCP sockets process `pid` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cells = row.split()
            if cells[3] == "0A" and cells[9] in inodes:  # 0A: LISTEN
                ports.add(int(cells[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_pod_gets_what_a_container_would_not_the_stacks_environment(up: Up) -> None:
    [pod] = up.api("/v1/pods")
    env = environ_of(pod["pid"])
    assert SECRET_NAME not in env
    assert env["DECLARED"] == "by the container" and env["TARGET"] == "World"
    assert env["PORT"] == str(pod["port"]) and env["HOST"] == "127.0.0.1"
    assert (env["K_SERVICE"], env["K_CONFIGURATION"]) == ("helloworld-go", "helloworld-go")
    assert env["K_REVISION"] == "helloworld-go-00001"
    assert env["TZ"] == "UTC" and env["LC_TIME"] == "C" and env["PATH"] == os.environ["PATH"]
    declared = {"DECLARED", "TARGET", "PORT", "HOST", "PYTHONUNBUFFERED"}
    extra = {
        name
        for name in env
        if name not in INHERITED | declared and not name.startswith(("K_", "LC_"))
    }
    assert extra == set(), extra


def test_everything_in_the_data_dir_is_owner_only(up: Up) -> None:
    seen = {}
    for path in [up.data, *up.data.rglob("*")]:
        mode = path.lstat().st_mode
        seen[str(path.relative_to(up.data))] = stat.filemode(mode)
        assert stat.S_IMODE(mode) & 0o077 == 0, (path, stat.filemode(mode))
        if path.is_dir():
            assert stat.S_IMODE(mode) == 0o700, path
    for name in ("api.token", "wakegate.db", "xds.sock", "gateway/envoy.log", "gateway/admin.sock"):
        assert name in seen, sorted(seen)
    assert any(name.startswith("logs/helloworld-go-00001-") for name in seen), sorted(seen)
    assert stat.S_ISSOCK((up.data / "gateway/admin.sock").stat().st_mode)


async def test_xds_and_the_gateways_admin_are_on_unix_sockets_only(up: Up) -> None:
    """Over TCP the stack itself listens for its API and (for the gateway) its
    activator's HTTP/1.1 and h2c sockets; xDS, which carries TLS keys, is on a 0600
    socket in the data dir."""
    processes = up.processes()
    activator = processes["activator"]
    activator_ports = {int(activator[key].rpartition(":")[2]) for key in ("address", "h2cAddress")}
    assert listening_tcp_ports(up.proc.pid) == {up.api_port, *activator_ports}
    assert stat.S_IMODE((up.data / "xds.sock").stat().st_mode) == 0o600
    gateway = processes["gateway"]
    assert gateway["live"] is True and gateway["admin"] == f"unix:{up.data}/gateway/admin.sock"
    # Envoy listens on TCP for the routed traffic only (TLS once a Secret is applied),
    # and on loopback for its gate (per-pod containerConcurrency).
    gate = int(gateway["gate"].rpartition(":")[2])
    assert listening_tcp_ports(gateway["pid"]) <= {up.port, up.internal_port, up.tls_port, gate}
    assert up.port in listening_tcp_ports(gateway["pid"])
    connector = aiohttp.UnixConnector(path=str(up.data / "gateway/admin.sock"))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get("http://localhost/ready") as resp:
            assert (await resp.text()).strip() == "LIVE"


def test_the_cli_changes_state_with_the_token_only(up: Up, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    refused = up.cli("delete", "ksvc", "helloworld-go", data_dir=stranger)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "api.token" in refused.stderr
    request = urllib.request.Request(
        f"http://127.0.0.1:{up.api_port}/v1/services/default/helloworld-go", method="DELETE"
    )
    with pytest.raises(urllib.error.HTTPError) as refusal:
        urllib.request.urlopen(request, timeout=30)
    assert refusal.value.code == 401
    services = up.json("get", "ksvc", "-o", "json")["items"]
    assert [s["metadata"]["name"] for s in services] == ["helloworld-go"]

    applied = up.cli("apply", "-f", str(up.manifest))
    assert applied.returncode == 0, applied.stderr
    assert "service.serving.knative.dev/default/helloworld-go applied" in applied.stdout
    deleted = up.cli("delete", "ksvc", "helloworld-go")
    assert deleted.returncode == 0, deleted.stderr
    assert up.json("get", "ksvc", "-o", "json")["items"] == []


async def test_a_killed_activator_is_restarted_and_requests_meanwhile_are_held(up: Up) -> None:
    """The revision is behind the activator (its spare capacity is below the burst
    capacity, Knative's default 211). Requests sent right after the activator is killed
    wait for the new one instead of failing."""
    [revision] = up.api("/v1/revisions")
    assert revision["autoscaler"]["mode"] == "proxy", revision
    before = up.processes()["activator"]
    assert before["running"] and before["restarts"] == 0
    url = f"http://127.0.0.1:{up.port}/"
    assert (await get(url, host=HOST))[:2] == (200, "Hello World!\n")

    await kill_process(before["pid"], "activator")  # gone; its restart backs off 0.5 s
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(get(url, host=HOST, session=session) for _ in range(20)))
    assert [a[:2] for a in answers] == [(200, "Hello World!\n")] * 20

    deadline = time.monotonic() + 30
    while not (after := up.processes()["activator"])["running"]:
        assert time.monotonic() < deadline, after
        await asyncio.sleep(0.1)
    assert after["restarts"] == 1 and after["pid"] != before["pid"], after
    assert after["address"] == before["address"]
    assert after["lastExit"] == "activator was killed by SIGKILL"
    up.proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(up.proc.communicate(), 30)
    assert "activator was killed by SIGKILL; restarting it" in err.decode(), err.decode()
