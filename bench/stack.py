"""What the end-to-end benchmarks share: a gateway stack, backends, process figures, tables.

    async with start_echo() as echo, gateway(state) as gw:
        print(gw.url, gw.envoy.gateway.pid)

`gateway()` brings up a ControlPlane serving `state` over ADS and a real Envoy connected
to it, and returns once Envoy ACKed the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from tests.support.backends import Backend as EchoBackend
from tests.support.backends import free_port, start_backend
from tests.support.envoy import LOOPBACK, RunningEnvoy, running_envoy
from wakegate.ingress.model import (
    Backend,
    BackendRef,
    Endpoint,
    Ingress,
    Path,
    RoutingState,
    Rule,
    Split,
)
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

HELLO_APP = pathlib.Path(__file__).resolve().parents[1] / "examples" / "helloworld" / "app.py"
GROUP = "bench"


# --- the gateway ---------------------------------------------------------------------


@dataclass
class Gateway:
    cp: ControlPlane
    envoy: RunningEnvoy
    config: GatewayConfig

    @property
    def url(self) -> str:
        """The external HTTP listener."""
        return f"http://{LOOPBACK}:{self.config.external_port}"

    @property
    def envoy_pid(self) -> int:
        pid = self.envoy.gateway.pid
        assert pid is not None
        return pid


def load(cp: ControlPlane, state: RoutingState) -> None:
    """Put every backend and ingress of `state` into the control plane's desired state."""
    for key, backend in state.backends.items():
        cp.set_backend(key, backend)
    for ingress in state.ingresses:
        cp.apply_ingress(ingress)


@contextlib.asynccontextmanager
async def gateway(
    state: RoutingState,
    *,
    delta: bool = False,
    concurrency: int = 1,
    debounce_s: float | None = None,
    log_level: str = "warning",
    timeout: float = 120.0,
) -> AsyncIterator[Gateway]:
    """A ControlPlane serving `state` and a real Envoy that has ACKed it."""
    config = GatewayConfig(
        external_port=free_port(),
        internal_port=free_port(),
        tls_port=free_port(),
        bind_address=LOOPBACK,
    )
    cp = (
        ControlPlane(config, group=GROUP)
        if debounce_s is None
        else ControlPlane(config, group=GROUP, debounce_s=debounce_s)
    )
    load(cp, state)
    xds_port = await cp.start(LOOPBACK, 0)
    try:
        async with running_envoy(
            xds_port,
            delta=delta,
            node_cluster=GROUP,
            concurrency=concurrency,
            log_level=log_level,
            timeout=timeout,
        ) as envoy:
            if not await cp.wait_served(timeout=timeout):
                raise RuntimeError(f"Envoy did not ACK the state: {cp.server.nodes()}")
            yield Gateway(cp=cp, envoy=envoy, config=config)
    finally:
        await cp.stop()


def route(
    name: str,
    host: str,
    *,
    backend: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    generation: int = 0,
) -> Ingress:
    """Ingress `name` sending every request for `host` to backend `backend` (or `name`),
    appending `headers` to each request."""
    target = backend or name
    split = Split(
        backend=BackendRef("default", target, 80),
        percent=100,
        append_headers=(
            ("Knative-Serving-Namespace", "default"),
            ("Knative-Serving-Revision", target),
        ),
    )
    return Ingress(
        namespace="default",
        name=name,
        generation=generation,
        rules=(Rule(hosts=(host,), paths=(Path(splits=(split,), append_headers=headers),)),),
    )


def backend_key(name: str) -> str:
    """The key of the backend `route()` names `name`."""
    return BackendRef("default", name, 80).key


def loopback(port: int) -> Backend:
    """A backend whose one endpoint is loopback `port`."""
    return Backend(endpoints=(Endpoint(LOOPBACK, port),))


def single_route(name: str, host: str, port: int) -> RoutingState:
    """A state with one ingress: `host` → the process listening on loopback `port`."""
    return RoutingState(
        ingresses=(route(name, host),), backends={backend_key(name): loopback(port)}
    )


# --- backends ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def start_echo(name: str = "echo") -> AsyncIterator[EchoBackend]:
    """The conformance echo backend (JSON of the request it saw) as a process."""
    async with start_backend(name) as backend:
        yield backend


@dataclass
class Process:
    process: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.asynccontextmanager
async def start_hello(target: str = "World", timeout: float = 20.0) -> AsyncIterator[Process]:
    """The seed's hello-world app as a process on a free loopback port."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": LOOPBACK, "TARGET": target}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELLO_APP),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError(f"hello app exited with {await proc.wait()}")
                if b"listening on" in line:
                    break
        yield Process(proc, port)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- process figures -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/status (VmRSS, VmHWM, …), in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields = value.split()
            if len(fields) == 2 and fields[1] == "kB":
                out[name] = int(fields[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores together."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK


# --- reporting -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def table(header: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def percentile_ms(values: Sequence[float], p: float) -> str:
    """`percentile` in ms as `ms` writes it; "-" for no values."""
    return ms(percentile(values, p)) if values else "-"


def mb(n: int) -> str:
    return f"{n / 2**20:.1f}"
