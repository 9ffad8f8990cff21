"""kubectl habits against `wakegate up` as a user runs it: `get KIND NAME`, Knative-shaped
`-o json|yaml`, `-o jsonpath` and `-o name`, `wait --for=condition=Ready`, `logs -f`
of a pod and of a Service, `get -w`, and `apply --wait` progress on a terminal only.
Real processes, real Envoy, real pods."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.support.backends import free_port
from tests.test_cli import WAKEGATE
from tests.test_local_serving import EXAMPLE, HOST, service

pytestmark = pytest.mark.envoy


class Up:
    def __init__(self, api_port: int, data_dir: Path, workdir: Path) -> None:
        self.api_port = api_port
        self.data_dir = data_dir
        self.workdir = workdir

    @property
    def stack(self) -> list[str]:
        """Where the running stack is: its API port and (for its token) data dir."""
        return ["--api-port", str(self.api_port), "--data-dir", str(self.data_dir)]

    def run(self, *words: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WAKEGATE, *words, *self.stack],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    async def arun(self, *words: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.run, *words)

    async def start(self, *words: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *WAKEGATE, *words, *self.stack, stdout=asyncio.subprocess.PIPE
        )

    def manifest(self, doc: dict) -> Path:
        path = self.workdir / f"{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path


@pytest_asyncio.fixture
async def up(tmp_path: Path) -> AsyncIterator[Up]:
    api_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *WAKEGATE, "up", "-f", str(EXAMPLE / "helloworld-go.yaml"),
        "--data-dir", str(tmp_path / "data"), "--port", str(free_port()),
        "--internal-port", str(free_port()), "--tls-port", str(free_port()),
        "--api-port", str(api_port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "ready":
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, f"up exited early: {lines}"
            lines.append(line.decode().strip())
        assert f"ui       http://127.0.0.1:{api_port}/" in lines
        workdir = tmp_path / "app"
        workdir.mkdir()
        for name in ("app.py",):
            (workdir / name).write_text((EXAMPLE / name).read_text())
        yield Up(api_port, tmp_path / "data", workdir)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_get_one_object_knative_shaped_jsonpath_name_and_wait(up: Up) -> None:
    got = await up.arun("get", "ksvc", "helloworld-go", "-o", "json")
    assert got.returncode == 0, got.stderr
    ksvc = json.loads(got.stdout)
    assert (ksvc["apiVersion"], ksvc["kind"]) == ("serving.knative.dev/v1", "Service")
    assert ksvc["metadata"]["name"] == "helloworld-go"
    assert ksvc["metadata"]["namespace"] == "default"
    assert ksvc["spec"]["template"]["metadata"]["annotations"] == {
        "autoscaling.knative.dev/target": "10"
    }
    assert ksvc["status"]["url"] == f"http://{HOST}"
    assert ksvc["status"]["latestReadyRevisionName"] == "helloworld-go-00001"
    assert ksvc["status"]["traffic"] == [
        {"revisionName": "helloworld-go-00001", "percent": 100, "latestRevision": True}
    ]
    ready = {c["type"]: c["status"] for c in ksvc["status"]["conditions"]}
    assert ready == {"ConfigurationsReady": "True", "Ready": "True", "RoutesReady": "True"}

    listed = yaml.safe_load((await up.arun("get", "ksvc", "-o", "yaml")).stdout)
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["helloworld-go"]

    # The walkthrough's own command, and the kubectl forms around it.
    domain = await up.arun("get", "route", "helloworld-go", "--output", "jsonpath={.status.domain}")
    assert (domain.returncode, domain.stdout) == (0, HOST)
    url = await up.arun("get", "ksvc/helloworld-go", "-o", "jsonpath={.status.url}")
    assert url.stdout == f"http://{HOST}"
    names = await up.arun("get", "ksvc", "-o", "name")
    assert names.stdout == "service.serving.knative.dev/helloworld-go\n"
    pods = await up.arun("get", "pods", "-o", "jsonpath={.items[*].status.phase}")
    assert pods.stdout == "Running"
    revision = await up.arun(
        "get", "revision", "helloworld-go-00001",
        "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
    )  # fmt: skip
    assert revision.stdout == "True"

    table = await up.arun("get", "ksvc", "helloworld-go")
    rows = table.stdout.splitlines()
    assert rows[0].split()[:2] == ["NAME", "URL"] and len(rows) == 2
    assert rows[1].split()[:2] == ["helloworld-go", f"http://{HOST}"]
    revisions = (await up.arun("get", "revisions")).stdout
    assert "COLD STARTS" in revisions.splitlines()[0]

    missing = await up.arun("get", "ksvc", "nope")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "wakegate: ksvc default/nope: not found"
    bad = await up.arun("get", "ksvc", "-o", "jsonpath={.status[0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "-o" in bad.stderr

    met = await up.arun("wait", "--for=condition=Ready", "ksvc/helloworld-go", "--timeout=60s")
    assert (met.returncode, met.stdout) == (0, "service.serving.knative.dev/helloworld-go "
                                                "condition met\n")  # fmt: skip
    late = await up.arun(
        "wait", "--for=condition=Ready=False", "ksvc/helloworld-go", "--timeout=1s"
    )
    assert late.returncode == 1 and "timed out after 1 s" in late.stderr, late.stderr
    gone = await up.arun("wait", "--for=condition=Ready", "ksvc/nope", "--timeout=1s")
    assert gone.returncode == 2 and "not found" in gone.stderr


def _run_on_a_terminal(words: list[str], timeout: float = 90) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal: (exit code, everything it wrote)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(words, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    out = b""
    while True:
        ready, _, _ = select.select([controller], [], [], timeout)
        assert ready, "no output in time"
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    return proc.wait(timeout), out.decode()


async def test_logs_follow_get_watch_and_apply_progress(up: Up) -> None:
    first = await up.arun("logs", "ksvc", "helloworld-go")
    assert first.returncode == 0, first.stderr
    (line,) = first.stdout.splitlines()
    assert line.startswith("[pod/helloworld-go-00001-") and "helloworld: listening on" in line

    follow = await up.start("logs", "-f", "ksvc", "helloworld-go")
    watch = await up.start("get", "pods", "-w")
    assert follow.stdout is not None and watch.stdout is not None
    try:
        seen = await asyncio.wait_for(follow.stdout.readline(), 20)
        assert seen.decode().strip() == line
        header = (await asyncio.wait_for(watch.stdout.readline(), 20)).decode()
        assert header.split()[:2] == ["NAME", "READY"]

        # A new revision's pod, applied with --wait on a terminal: progress is shown.
        # Its readiness probe starts after a second, so there is progress to show.
        doc = service(target="Wakegate")
        container = doc["spec"]["template"]["spec"]["containers"][0]
        container["readinessProbe"] = {"tcpSocket": {}, "initialDelaySeconds": 1}
        changed = up.manifest(doc)
        words = [*WAKEGATE, "apply", "-f", str(changed), "--wait", *up.stack]
        code, shown = await asyncio.to_thread(_run_on_a_terminal, words)
        assert code == 0, shown
        assert "pods ready" in shown and "gateways serving" in shown, shown
        assert "\x1b[K" in shown
        assert f"{HOST} is served" in shown.replace("http://", "")

        async def line_of(proc: asyncio.subprocess.Process, start: str) -> str:
            assert proc.stdout is not None
            while True:
                text = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
                assert text, f"stream ended before a line starting {start!r}"
                if text.startswith(start):
                    return text

        new = await line_of(follow, "[pod/helloworld-go-00002-")
        assert "helloworld: listening on" in new
        row = await line_of(watch, "helloworld-go-00002-")
        assert row.split()[1] in ("0/1", "1/1")
    finally:
        for proc in (follow, watch):
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()

    # Piped, the same apply prints only its result lines.
    quiet = await up.arun("apply", "-f", str(changed), "--wait")
    assert quiet.returncode == 0 and "\r" not in quiet.stdout and "pods ready" not in quiet.stdout

    # `logs -f POD` ends once its pod is gone.
    pods = json.loads((await up.arun("get", "pods", "-o", "json")).stdout)["items"]
    pod = next(p["metadata"]["name"] for p in pods if "-00002-" in p["metadata"]["name"])
    tail = await up.start("logs", "-f", pod)
    assert tail.stdout is not None
    assert b"listening on" in await asyncio.wait_for(tail.stdout.readline(), 20)
    assert (await up.arun("delete", "ksvc", "helloworld-go")).returncode == 0
    assert await asyncio.wait_for(tail.wait(), 30) == 0
