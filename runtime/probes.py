"""Readiness probes for local pods: a TCP connect or an HTTP GET, as the kubelet runs them.

Start-up probing is aggressive, as Knative's queue-proxy does it: every few milliseconds
until the first success, so a pod joins the endpoints as soon as it listens. After that
the probe runs every `periodSeconds` (a default when the container sets none) and marks
the pod not ready after `failureThreshold` failures in a row, so an app that stops
answering leaves the endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from wakegate.serving.model import Probe

log = logging.getLogger("wakegate.runtime")

PROBE_USER_AGENT = "kube-probe/wakegate"
"""Apps (and Knative's own handlers) recognise probes by the `kube-probe/` prefix."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str = ""
    """Why it failed (or the HTTP status it got), one line."""


@dataclass(frozen=True, slots=True)
class ProbeTiming:
    """How often to probe where the container's `readinessProbe` leaves it open."""

    startup_interval_s: float = 0.01
    """Between start-up attempts, until the first success (Knative's aggressive probing)."""
    startup_aggressive_s: float = 10.0
    """After this long without success, start-up attempts slow to `startup_slow_interval_s`."""
    startup_slow_interval_s: float = 0.1
    period_s: float = 1.0
    """Between probes once ready, when `periodSeconds` is 0 (unset)."""
    timeout_s: float = 1.0
    """Per attempt, when `timeoutSeconds` is 0 (unset)."""
    failure_threshold: int = 3
    """Failures in a row that make a ready pod not ready, when `failureThreshold` is 0."""


async def tcp_probe(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Ready if a TCP connection to host:port opens."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeResult(False, f"TCP connect to {host}:{port} timed out after {timeout_s:g}s")
    except OSError as exc:
        return ProbeResult(False, f"TCP connect to {host}:{port}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True)


async def http_probe(
    host: str,
    port: int,
    path: str = "/",
    headers: tuple[tuple[str, str], ...] = (),
    timeout_s: float = 1.0,
) -> ProbeResult:
    """Ready if `GET path` answers 2xx or 3xx (redirects are not followed)."""
    sent = {"host": ("Host", f"{host}:{port}"), "user-agent": ("User-Agent", PROBE_USER_AGENT)}
    sent["k-network-probe"] = ("K-Network-Probe", "queue")
    for name, value in headers:
        sent[name.lower()] = (name, value)
    sent["connection"] = ("Connection", "close")
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in sent.values())
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write((head + "\r\n").encode("latin-1"))
            status_line = await reader.readline()
    except TimeoutError:
        return ProbeResult(False, f"HTTP GET {path} timed out after {timeout_s:g}s")
    except OSError as exc:
        return ProbeResult(False, f"HTTP GET {path}: {exc.strerror or exc}")
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status_line.decode("latin-1").split(maxsplit=2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        shown = status_line[:80].decode("latin-1").strip() or "no response"
        return ProbeResult(False, f"HTTP GET {path}: not an HTTP response ({shown})")
    code = int(parts[1])
    return ProbeResult(200 <= code < 400, f"HTTP GET {path} returned {code}")


class ReadinessProber:
    """Probes one process's port in the background and tracks whether it is ready.

    `on_change(ready)` is called (from the event loop) whenever readiness flips;
    `ready_event` is set while ready. `initialDelaySeconds` and `successThreshold` are
    honoured; start-up is probed aggressively whatever `periodSeconds` says.
    """

    def __init__(
        self,
        probe: Probe,
        host: str,
        port: int,
        *,
        timing: ProbeTiming | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.probe = probe
        self.host = host
        self.port = port
        self.timing = timing or ProbeTiming()
        self.on_change = on_change
        self.ready = False
        self.ready_event = asyncio.Event()
        self.last_result: ProbeResult | None = None
        self.ready_at: float | None = None
        """`time.monotonic()` of the first success."""
        self._task: asyncio.Task[None] | None = None

    @property
    def period_s(self) -> float:
        return float(self.probe.period_s) or self.timing.period_s

    @property
    def timeout_s(self) -> float:
        return float(self.probe.timeout_s) or self.timing.timeout_s

    @property
    def failure_threshold(self) -> int:
        return self.probe.failure_threshold or self.timing.failure_threshold

    async def check(self) -> ProbeResult:
        """One probe attempt."""
        get = self.probe.http_get
        if get is not None:
            result = await http_probe(
                self.host, self.port, get.path, get.http_headers, self.timeout_s
            )
        else:
            result = await tcp_probe(self.host, self.port, self.timeout_s)
        self.last_result = result
        return result

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"probe {self.host}:{self.port}")

    async def stop(self) -> None:
        """Stop probing; a ready prober becomes not ready (and says so)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set(False)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        async with asyncio.timeout(timeout_s):
            await self.ready_event.wait()

    def _set(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if ready:
            self.ready_event.set()
        else:
            self.ready_event.clear()
        if self.on_change is not None:
            try:
                self.on_change(ready)
            except Exception:
                log.exception("readiness callback failed for %s:%d", self.host, self.port)

    async def _run(self) -> None:
        if self.probe.initial_delay_s:
            await asyncio.sleep(self.probe.initial_delay_s)
        needed = max(1, self.probe.success_threshold)
        timing = self.timing
        started = time.monotonic()
        successes = 0
        while successes < needed:
            successes = successes + 1 if (await self.check()).ok else 0
            if successes >= needed:
                break
            aggressive = time.monotonic() - started < timing.startup_aggressive_s
            await asyncio.sleep(
                timing.startup_interval_s if aggressive else timing.startup_slow_interval_s
            )
        self.ready_at = time.monotonic()
        self._set(True)
        failures = successes = 0
        while True:
            await asyncio.sleep(self.period_s)
            ok = (await self.check()).ok
            if self.ready:
                failures = 0 if ok else failures + 1
                if failures >= self.failure_threshold:
                    failures = successes = 0
                    self._set(False)
            else:
                successes = successes + 1 if ok else 0
                if successes >= needed:
                    successes = 0
                    self._set(True)
