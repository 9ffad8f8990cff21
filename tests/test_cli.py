"""The `wakegate` command line as a user runs it: real processes, real Envoy."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.backends import free_port, get
from wakegate.envoy_process import find_envoy

ROOT = Path(__file__).resolve().parents[1]
WAKEGATE = [sys.executable, "-m", "wakegate.cli"]


@pytest.mark.parametrize(
    ("flags", "api_type"),
    [
        ([], "DELTA_GRPC"),
        (["--xds-protocol", "sotw"], "GRPC"),
        (["--xds-protocol", "delta"], "DELTA_GRPC"),
    ],
    ids=["default", "sotw", "delta"],
)
def test_bootstrap_is_accepted_by_envoy(tmp_path: Path, flags: list[str], api_type: str) -> None:
    args = [*WAKEGATE, "bootstrap", "-o", "json", "--xds-port", "18123", *flags]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    config = json.loads(out)
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == api_type
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    path = tmp_path / "bootstrap.json"
    path.write_text(out)
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_up_reports_a_port_in_use_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*WAKEGATE, "up", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "in use" in lines[0], result.stderr


def test_up_rejects_a_bad_manifest_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples/helloworld/ingress.yaml").read_text().replace("100", "90"))
    result = subprocess.run(
        [*WAKEGATE, "up", "-f", str(bad), "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "percents sum to 90" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.envoy
async def test_up_serves_the_hello_world_example(tmp_path: Path) -> None:
    """What `make run` does, on free ports: the seed's Service answers through the gateway."""
    port = free_port()
    up = await asyncio.create_subprocess_exec(
        *WAKEGATE, "up", "-f", str(ROOT / "examples/helloworld/helloworld-go.yaml"),
        "--data-dir", str(tmp_path), "--port", str(port), "--internal-port", str(free_port()),
        "--tls-port", str(free_port()), "--xds-port", "0", "--api-port", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "ready":
            line = await asyncio.wait_for(up.stdout.readline(), 60)
            assert line, f"up exited early: {lines}"
            lines.append(line.decode().strip())
        host = "helloworld-go.default.example.com"
        assert f"curl -H 'Host: {host}' http://127.0.0.1:{port}/" in lines
        status, body, _ = await get(f"http://127.0.0.1:{port}/", host=host)
        assert (status, body) == (200, "Hello World!\n")
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 30) == 0


async def test_up_stopped_while_starting_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM while the manifests are still being applied: a clean stop, no pod left."""
    mark = f"stop-while-starting-{os.getpid()}-{tmp_path.name}"
    up = await asyncio.create_subprocess_exec(
        *WAKEGATE, "up", "-f", str(hello_manifest(tmp_path, {"WAKEGATE_TEST_MARK": mark})),
        "--data-dir", str(tmp_path), "--port", str(free_port()), "--internal-port",
        str(free_port()), "--tls-port", str(free_port()), "--xds-port", "0", "--api-port", "0",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "WAKEGATE_TEST_MARK": mark},
    )  # fmt: skip
    assert up.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("data"):
        line = await asyncio.wait_for(up.stdout.readline(), 60)
        assert line, f"up exited early: {lines}"
        lines.append(line.decode().strip())
    up.send_signal(signal.SIGTERM)
    rest = (await asyncio.wait_for(up.stdout.read(), 30)).decode()
    assert await asyncio.wait_for(up.wait(), 30) == 0
    assert "ready" not in rest.splitlines()
    assert processes_marked(mark) == []


def hello_manifest(tmp_path: Path, env: dict[str, str], annotations: dict | None = None) -> Path:
    """The hello-world Service with more container `env` (and template annotations),
    written next to a copy of its app."""
    doc = yaml.safe_load((ROOT / "examples/helloworld/helloworld-go.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["env"] += [
        {"name": k, "value": v} for k, v in env.items()
    ]
    doc["spec"]["template"]["metadata"]["annotations"].update(annotations or {})
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples/helloworld", app, dirs_exist_ok=True)
    path = app / "hello.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment carries `WAKEGATE_TEST_MARK=mark` (the stack's
    own processes inherit it from `up`, its pods get it from their container's env)."""
    found = []
    needle = f"WAKEGATE_TEST_MARK={mark}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def zero_scale_manifest(tmp_path: Path) -> Path:
    """The hello-world Service annotated `initial-scale: "0"`, written next to its app."""
    return hello_manifest(tmp_path, {}, {"autoscaling.knative.dev/initial-scale": "0"})


@pytest.mark.envoy
def test_up_refuses_zero_initial_scale_unless_allowed(tmp_path: Path) -> None:
    manifest = zero_scale_manifest(tmp_path)
    result = subprocess.run(
        [*WAKEGATE, "up", "-f", str(manifest), "--data-dir", str(tmp_path / "data"),
         "--port", str(free_port()), "--internal-port", str(free_port()),
         "--tls-port", str(free_port()), "--xds-port", "0", "--api-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    field = "spec.template.metadata.annotations[autoscaling.knative.dev/initial-scale]"
    assert field in result.stderr and "--allow-zero-initial-scale" in result.stderr


@pytest.mark.envoy
async def test_up_with_allow_zero_initial_scale_wakes_on_the_first_request(
    tmp_path: Path,
) -> None:
    manifest = zero_scale_manifest(tmp_path)
    port, api_port = free_port(), free_port()
    up = await asyncio.create_subprocess_exec(
        *WAKEGATE, "up", "--allow-zero-initial-scale", "-f", str(manifest),
        "--data-dir", str(tmp_path / "data"), "--port", str(port),
        "--internal-port", str(free_port()), "--tls-port", str(free_port()),
        "--xds-port", "0", "--api-port", str(api_port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip

    def pods() -> list[dict]:
        out = subprocess.run(
            [*WAKEGATE, "get", "pods", "-o", "json", "--api-port", str(api_port)],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        return list(json.loads(out)["items"])

    try:
        assert up.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "ready":
            line = await asyncio.wait_for(up.stdout.readline(), 60)
            assert line, f"up exited early: {lines}"
            lines.append(line.decode().strip())
        assert "http://helloworld-go.default.example.com is served" in lines
        assert await asyncio.to_thread(pods) == []
        status, body, _ = await get(
            f"http://127.0.0.1:{port}/", host="helloworld-go.default.example.com"
        )
        assert (status, body) == (200, "Hello World!\n")
        ready = [
            p["status"]["containerStatuses"][0]["ready"] for p in await asyncio.to_thread(pods)
        ]
        assert ready == [True]
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), 30) == 0


def test_only_the_controller_subcommand_loads_the_kubernetes_client() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from wakegate.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(sys.argv[1:])\n"
        "print('kubernetes' in sys.modules)\n"
    )
    loaded = {
        words: subprocess.run(
            [sys.executable, "-c", probe, *words], capture_output=True, text=True, check=True
        ).stdout.strip()
        for words in (("--help",), ("up", "--help"), ("-v", "controller", "--help"))
    }
    assert loaded == {
        ("--help",): "False",
        ("up", "--help"): "False",
        ("-v", "controller", "--help"): "True",
    }


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["up", "--port", "abc"], "--port"),
        (["get", "nodes"], "kind"),
        (["bootstrap", "--xds-protocol", "grpc"], "--xds-protocol"),
        (["controller", "--xds-port", "x"], "--xds-port"),
        ([], "command"),
    ],
)
def test_usage_mistakes_are_one_line_naming_the_argument(words: list[str], named: str) -> None:
    result = subprocess.run([*WAKEGATE, *words], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "--help" in lines[0], result.stderr
