"""Local pods as real processes: start, probe, scale, crash loops, graceful and forced stops."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import get
from wakegate.runtime.pods import Backoff, Pod, PodEndpoint, PodPhase
from wakegate.runtime.ports import PortAllocator
from wakegate.runtime.probes import ProbeTiming
from wakegate.runtime.revision_pods import RevisionPods
from wakegate.runtime.spec import PodError, PodSpec, pod_name, resolve_command
from wakegate.serving.revision import Revision
from wakegate.serving.validation import parse_template

HELLO_DIR = Path(__file__).resolve().parents[1] / "examples" / "helloworld"
FAST_PROBES = ProbeTiming(period_s=0.05, failure_threshold=2)
FAST_BACKOFF = Backoff(initial_s=0.1, max_s=0.4, reset_after_s=30.0)

# A test pod: GET /env answers its environment and working directory, /slow takes
# SLOW_S seconds, /healthz is 503 while $DOWN_DIR/all or $DOWN_DIR/$PORT exists (200
# otherwise), /exit makes it exit 1. On SIGTERM it finishes in-flight requests and
# exits 0, unless IGNORE_TERM is set.
POD_APP = r"""
import asyncio, json, os, signal, sys

async def handle(reader, writer):
    app.inflight += 1
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        status, body = 200, b"ok"
        if path == "/env":
            keys = ("PORT", "HOST", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "TARGET")
            seen = {k: os.environ.get(k) for k in keys}
            seen["cwd"] = os.getcwd()
            body = json.dumps(seen).encode()
        elif path == "/slow":
            print("slow request started")
            await asyncio.sleep(float(os.environ.get("SLOW_S", "1")))
            body = b"slow done"
        elif path == "/healthz":
            down = os.environ.get("DOWN_DIR", "/nonexistent")
            if any(os.path.exists(os.path.join(down, f)) for f in ("all", os.environ["PORT"])):
                status = 503
        elif path == "/exit":
            os._exit(1)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (status, len(body), body))
        await writer.drain()
    finally:
        app.inflight -= 1
        writer.close()

class app:
    inflight = 0

async def main():
    server = await asyncio.start_server(handle, os.environ["HOST"], int(os.environ["PORT"]))
    print("pod app listening on", os.environ["PORT"])
    stop = asyncio.Event()
    if os.environ.get("IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    while app.inflight:
        await asyncio.sleep(0.01)
    print("drained")

asyncio.run(main())
"""


def make_revision(
    command: list[str],
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    probe: dict[str, Any] | None = None,
    service: str = "hello",
    name: str = "hello-00001",
    working_dir: str = "",
) -> Revision:
    container: dict[str, Any] = {"command": command}
    if args:
        container["args"] = args
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if probe:
        container["readinessProbe"] = probe
    if working_dir:
        container["workingDir"] = working_dir
    template = parse_template({"spec": {"containers": [container]}}, service)
    return Revision("default", service, name, 1, template)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "app.py").write_text(POD_APP)
    return folder


@pytest.fixture
async def open_pods(tmp_path: Path) -> AsyncIterator[Callable[..., RevisionPods]]:
    """Makes RevisionPods with fast probes and back-off, all closed after the test."""
    made: list[RevisionPods] = []

    def make(revision: Revision, base_dir: Path = HELLO_DIR, **options: Any) -> RevisionPods:
        options.setdefault("probe_timing", FAST_PROBES)
        options.setdefault("backoff", FAST_BACKOFF)
        pods = RevisionPods.for_revision(
            revision, base_dir=base_dir, log_dir=tmp_path / "logs", **options
        )
        made.append(pods)
        return pods

    yield make
    await asyncio.gather(*(pods.close(grace_s=1.0) for pods in made))


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def text_of(path: Path) -> str:
    return path.read_text()


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - a process's state has no event to await
            await asyncio.sleep(0.02)


async def test_hello_pod_becomes_ready_serves_and_logs(
    open_pods: Callable[..., RevisionPods],
) -> None:
    seen: list[list[PodEndpoint]] = []
    revision = make_revision(["python3", "app.py"], env={"TARGET": "wakegate"})
    pods = open_pods(revision, on_change=seen.append)
    await pods.scale(1)
    [endpoint] = await pods.wait_ready(1, timeout_s=10)
    assert re.fullmatch(r"hello-00001-[a-z]{5}", endpoint.pod)
    assert endpoint.address == "127.0.0.1"
    status, body, _ = await get(f"http://127.0.0.1:{endpoint.port}/")
    assert (status, body) == (200, "Hello wakegate!\n")
    assert seen == [[endpoint]]
    [pod_status] = pods.status()
    assert pod_status.name == endpoint.pod and pod_status.port == endpoint.port
    assert pod_status.phase is PodPhase.READY and pod_status.ready
    assert pod_status.restarts == 0 and pod_status.reason == ""
    assert pod_status.pid is not None and alive(pod_status.pid)
    assert pod_status.started_at is not None
    assert pod_status.to_dict()["phase"] == "Ready"
    log = Path(pod_status.log_path)
    assert log == pods.log_dir / f"{endpoint.pod}.log"
    await eventually(lambda: log.exists() and "listening on" in log.read_text())
    assert f"helloworld: listening on 127.0.0.1:{endpoint.port}" in text_of(log)


async def test_environment_and_working_directory(
    open_pods: Callable[..., RevisionPods], app_dir: Path
) -> None:
    (app_dir / "sub").mkdir()
    (app_dir / "sub" / "app.py").write_text(POD_APP)
    revision = make_revision(
        ["python3"], args=["app.py"], env={"TARGET": "t"}, working_dir="sub", name="hello-00002"
    )
    pods = open_pods(revision, base_dir=app_dir)
    await pods.scale(1)
    [endpoint] = await pods.wait_ready(1, timeout_s=10)
    _, body, _ = await get(f"http://127.0.0.1:{endpoint.port}/env")
    assert json.loads(body) == {
        "PORT": str(endpoint.port),
        "HOST": "127.0.0.1",
        "K_SERVICE": "hello",
        "K_REVISION": "hello-00002",
        "K_CONFIGURATION": "hello",
        "TARGET": "t",
        "cwd": str(app_dir / "sub"),
    }


async def test_scale_up_then_down_stops_newest_after_before_stop(
    open_pods: Callable[..., RevisionPods],
) -> None:
    hooks: list[tuple[list[Pod], list[str], list[bool]]] = []
    pods: RevisionPods

    async def before_stop(victims: list[Pod]) -> None:
        ready = [ep.pod for ep in pods.ready_pods()]
        running = [v.pid is not None and alive(v.pid) for v in victims]
        hooks.append((victims, ready, running))

    seen: list[list[PodEndpoint]] = []
    pods = open_pods(
        make_revision(["python3", "app.py"]), before_stop=before_stop, on_change=seen.append
    )
    await pods.scale(1)
    await pods.wait_ready(1, timeout_s=10)
    await pods.scale(3)
    endpoints = await pods.wait_ready(3, timeout_s=10)
    assert len({ep.port for ep in endpoints}) == 3
    for ep in endpoints:
        assert (await get(f"http://127.0.0.1:{ep.port}/"))[:2] == (200, "Hello World!\n")
    oldest, *newer = pods.pods
    pids = [pod.pid for pod in newer]

    await pods.scale(1)
    [(victims, ready_during_hook, running_during_hook)] = hooks
    assert sorted(v.name for v in victims) == sorted(p.name for p in newer)
    assert ready_during_hook == [oldest.name]  # already out of the endpoints ...
    assert running_during_hook == [True, True]  # ... but not yet signalled
    assert [s.name for s in pods.status()] == [oldest.name]
    assert [ep.pod for ep in pods.ready_pods()] == [oldest.name]
    assert seen[-1] == pods.ready_pods()
    for pod, pid in zip(newer, pids, strict=True):
        assert (pod.phase, pod.reason) == (PodPhase.TERMINATED, "exited with code 0")
        assert pid is not None and not alive(pid)


async def test_scale_down_stops_not_ready_pods_first(
    open_pods: Callable[..., RevisionPods], app_dir: Path, tmp_path: Path
) -> None:
    down = tmp_path / "down"
    down.mkdir()
    revision = make_revision(
        ["python3", "app.py"], env={"DOWN_DIR": str(down)}, probe={"httpGet": {"path": "/healthz"}}
    )
    pods = open_pods(revision, base_dir=app_dir)
    await pods.scale(3)
    await pods.wait_ready(3, timeout_s=10)
    oldest, middle, newest = pods.pods
    assert oldest.port is not None
    (down / str(oldest.port)).touch()
    await eventually(lambda: not oldest.ready)
    await pods.scale(2)
    assert pods.pods == [middle, newest]
    assert oldest.phase is PodPhase.TERMINATED
    assert [ep.pod for ep in pods.ready_pods()] == [middle.name, newest.name]


async def test_crash_loop_backs_off_and_counts_restarts(tmp_path: Path) -> None:
    reasons: list[str] = []
    revision = make_revision(["python3", "-c", "import sys; print('boom'); sys.exit(3)"])
    pod = Pod(
        PodSpec.from_revision(revision, tmp_path),
        log_dir=tmp_path / "logs",
        probe_timing=FAST_PROBES,
        backoff=FAST_BACKOFF,
        on_change=lambda p: reasons.append(p.reason),
    )
    await pod.start()
    try:
        await eventually(lambda: pod.restarts >= 4)
        backoffs = [
            r
            for i, r in enumerate(reasons)
            if r.startswith("CrashLoopBackOff") and (i == 0 or reasons[i - 1] != r)
        ]
        assert backoffs[:4] == [
            f"CrashLoopBackOff: exited with code 3: boom; restarting in {delay}s"
            for delay in (0.1, 0.2, 0.4, 0.4)
        ]
        assert not pod.ready and pod.endpoint is None
        assert pod.log_path.read_text().count("boom") >= 4
    finally:
        await pod.stop(grace_s=1.0)
    assert pod.phase is PodPhase.TERMINATED and pod.pid is None


async def test_crashed_ready_pod_is_restarted_and_rejoins(
    open_pods: Callable[..., RevisionPods], app_dir: Path
) -> None:
    seen: list[list[PodEndpoint]] = []
    pods = open_pods(make_revision(["python3", "app.py"]), base_dir=app_dir, on_change=seen.append)
    await pods.scale(1)
    [before] = await pods.wait_ready(1, timeout_s=10)
    [pod] = pods.pods
    first_pid = pod.pid
    assert first_pid is not None
    with pytest.raises(Exception):  # noqa: B017 - the app exits mid-request
        await get(f"http://127.0.0.1:{before.port}/exit")
    await eventually(lambda: pod.restarts == 1 and pod.ready)
    [after] = pods.ready_pods()
    assert after.pod == before.pod and pod.pid != first_pid and not alive(first_pid)
    assert (await get(f"http://127.0.0.1:{after.port}/"))[:2] == (200, "ok")
    assert seen[0] == [before] and [] in seen and seen[-1] == [after]
    assert pods.status()[0].restarts == 1


async def test_missing_command_is_a_clear_error(
    open_pods: Callable[..., RevisionPods], tmp_path: Path
) -> None:
    pods = open_pods(make_revision(["wakegate-no-such-command"]))
    with pytest.raises(PodError) as err:
        await pods.scale(2)
    assert str(err.value) == (
        'spec.template.spec.containers[0].command: "wakegate-no-such-command" not found '
        "(the local runtime runs commands, not images)"
    )
    assert pods.status() == [] and pods.ready_pods() == []

    spec = PodSpec("default", "hello", "hello-00001", (), tmp_path, image="gcr.io/x/hello")
    with pytest.raises(PodError, match=r'runs commands, not images.*"gcr\.io/x/hello"'):
        resolve_command(spec, os.environ)
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    spec = PodSpec("default", "hello", "hello-00001", ("./run.sh",), tmp_path)
    with pytest.raises(PodError, match=r'"\./run\.sh" is not executable'):
        resolve_command(spec, os.environ)
    script.chmod(0o755)
    assert resolve_command(spec, os.environ) == [str(script)]
    spec = PodSpec("default", "hello", "hello-00001", ("python3", "app.py"), tmp_path, ("-v",))
    assert resolve_command(spec, os.environ) == [sys.executable, "app.py", "-v"]


async def test_http_readiness_probe_path_is_honoured(
    open_pods: Callable[..., RevisionPods], app_dir: Path, tmp_path: Path
) -> None:
    down = tmp_path / "down"
    down.mkdir()
    (down / "all").touch()
    revision = make_revision(
        ["python3", "app.py"], env={"DOWN_DIR": str(down)}, probe={"httpGet": {"path": "/healthz"}}
    )
    pods = open_pods(revision, base_dir=app_dir)
    await pods.scale(1)
    [pod] = pods.pods
    # The app listens (a TCP probe would pass) but answers 503 on the probe path.
    await eventually(lambda: "listening" in pod.log_path.read_text())
    await asyncio.sleep(0.3)
    assert pod.phase is PodPhase.RUNNING and pods.ready_pods() == []
    (down / "all").unlink()
    [endpoint] = await pods.wait_ready(1, timeout_s=10)
    (down / "all").touch()
    await eventually(lambda: not pods.ready_pods())
    assert pod.phase is PodPhase.RUNNING
    assert pod.reason == "readiness probe failed: HTTP GET /healthz returned 503"
    assert (await get(f"http://127.0.0.1:{endpoint.port}/"))[0] == 200


async def test_stop_lets_in_flight_request_finish(
    open_pods: Callable[..., RevisionPods], app_dir: Path
) -> None:
    revision = make_revision(["python3", "app.py"], env={"SLOW_S": "0.5"})
    pods = open_pods(revision, base_dir=app_dir, grace_period_s=10.0)
    await pods.scale(1)
    [endpoint] = await pods.wait_ready(1, timeout_s=10)
    [pod] = pods.pods
    request = asyncio.create_task(get(f"http://127.0.0.1:{endpoint.port}/slow"))
    await eventually(lambda: "slow request started" in pod.log_path.read_text())
    await pods.stop_pod(pod)
    assert request.done()
    assert (await request)[:2] == (200, "slow done")
    assert pod.phase is PodPhase.TERMINATED and pod.reason == "exited with code 0"
    assert pods.status() == []


async def test_sigterm_ignored_is_killed_after_grace(
    open_pods: Callable[..., RevisionPods], app_dir: Path
) -> None:
    revision = make_revision(["python3", "app.py"], env={"IGNORE_TERM": "1"})
    pods = open_pods(revision, base_dir=app_dir)
    await pods.scale(1)
    await pods.wait_ready(1, timeout_s=10)
    [pod] = pods.pods
    pid = pod.pid
    assert pid is not None
    started = time.monotonic()
    await pods.stop_pod(pod, grace_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert pod.reason == "killed with SIGKILL after the 0.3s grace period"
    assert not alive(pid)


RUNTIME_THAT_DIES = """
import asyncio, os, sys
from wakegate.serving.revision import Revision
from wakegate.serving.validation import parse_template
from wakegate.runtime.revision_pods import RevisionPods

async def main():
    template = parse_template({"spec": {"containers": [{"command": ["python3", "app.py"],
        "env": [{"name": "IGNORE_TERM", "value": "1"}]}]}}, "hello")
    revision = Revision("default", "hello", "hello-00001", 1, template)
    pods = RevisionPods.for_revision(revision, base_dir=sys.argv[1], log_dir=sys.argv[2])
    await pods.scale(2)
    await pods.wait_ready(2, timeout_s=20)
    print(" ".join(str(p.pid) for p in pods.pods), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_pods_die_with_the_runtime(app_dir: Path, tmp_path: Path) -> None:
    runtime = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNTIME_THAT_DIES,
        str(app_dir),
        str(tmp_path / "logs"),
        stdout=subprocess.PIPE,
    )
    assert runtime.stdout is not None
    pids: list[int] = []
    try:
        line = await asyncio.wait_for(runtime.stdout.readline(), 20)
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        runtime.send_signal(signal.SIGKILL)
        await runtime.wait()
        await eventually(lambda: not any(alive(pid) for pid in pids), timeout_s=5)
    finally:
        for pid in [runtime.pid, *pids]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        await runtime.wait()


def test_pod_names_and_ports() -> None:
    name = pod_name("a" * 63, taken=())
    assert len(name) == 63 and re.fullmatch(r"a{57}-[a-z]{5}", name)
    ports = PortAllocator()
    held = [ports.allocate() for _ in range(20)]
    assert len(set(held)) == 20
    assert all(ports.low <= port <= ports.high for port in held)
    ports.release(held[0])
    assert held[0] not in ports._held
