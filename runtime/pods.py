"""A pod: one supervised local process of a revision.

A `Pod` is one process started from the container's `command` + `args` with its own
loopback `PORT`, probed for readiness and restarted with exponential back-off when it
exits (Knative pods restart always). A stop sends the process group SIGTERM, waits a
grace period for in-flight requests, then sends SIGKILL.

Each pod runs in its own process group (`process_group`), so a Ctrl-C in the terminal
reaches the runtime and not the pods, and the kernel kills a pod when the runtime dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from wakegate.runtime.ports import LOOPBACK, PORTS, PortAllocator
from wakegate.runtime.probes import ProbeTiming, ReadinessProber
from wakegate.runtime.process_group import (
    DIE_WITH_PARENT,
    LIVE_GROUPS,
    exit_reason,
    group_gone,
    signal_group,
)
from wakegate.runtime.spec import (
    CONTAINER_PATH,
    PodError,
    PodSpec,
    pod_name,
    quoted,
    resolve_command,
)

log = logging.getLogger("wakegate.runtime")

DEFAULT_GRACE_PERIOD_S = 30.0
"""Kubernetes' `terminationGracePeriodSeconds` default."""


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    """The process is up but not (or no longer) ready."""
    READY = "Ready"
    TERMINATING = "Terminating"
    TERMINATED = "Terminated"
    FAILED = "Failed"
    """The process died; `reason` says why and whether it restarts (CrashLoopBackOff)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays of a crashing pod: `initial_s` doubling up to `max_s`.

    A process that ran at least `reset_after_s` before exiting is restarted at once
    and the delays start over, as the kubelet does after a stable run.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0


class PodEndpoint(NamedTuple):
    pod: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class PodStatus:
    name: str
    namespace: str
    revision: str
    phase: PodPhase
    ready: bool
    restarts: int
    address: str
    port: int | None
    pid: int | None
    started_at: datetime | None
    reason: str
    log_path: str
    last_exit: str = ""
    """How the process last ended on its own (Kubernetes' `lastState.terminated`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "revision": self.revision,
            "phase": str(self.phase),
            "ready": self.ready,
            "restarts": self.restarts,
            "address": self.address,
            "port": self.port,
            "pid": self.pid,
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "reason": self.reason,
            "logPath": self.log_path,
            "lastExit": self.last_exit,
        }


def open_log(path: Path) -> BinaryIO:
    """A pod's log for appending, readable by its owner only (0600): what a pod prints
    may well be secret."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return open(fd, "ab")


class _Crashed(Exception):
    """The process exited on its own, soon after it started: back off, then restart."""


class _StableRunEnded(Exception):
    """The process exited after a stable run: restart at once, back-off starts over."""


class Pod:
    """One supervised process of a revision, restarted in place (same name) when it exits.

    `on_change(pod)` is called whenever the phase or readiness changes.
    """

    def __init__(
        self,
        spec: PodSpec,
        *,
        log_dir: str | os.PathLike[str],
        name: str | None = None,
        host: str = LOOPBACK,
        ports: PortAllocator | None = None,
        probe_timing: ProbeTiming | None = None,
        backoff: Backoff | None = None,
        on_change: Callable[[Pod], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = name or pod_name(spec.revision)
        self.host = host
        self.log_path = Path(log_dir) / f"{self.name}.log"
        self.probe_timing = probe_timing or ProbeTiming()
        self.backoff = backoff or Backoff()
        self.on_change = on_change
        self.phase = PodPhase.PENDING
        self.reason = ""
        self.last_exit = ""
        self.restarts = 0
        self.port: int | None = None
        self.started_at: datetime | None = None
        self.startup_s: float | None = None
        """Seconds from spawning the current process to its first passed probe."""
        self._ports = ports or PORTS
        self._proc: asyncio.subprocess.Process | None = None
        self._prober: ReadinessProber | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._held_port: int | None = None
        self._spawned_at = 0.0
        self._log_offset = 0
        self._stopping = False
        self._stopped = asyncio.Event()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Pod {self.name} {self.phase} port={self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def ready(self) -> bool:
        return self.phase is PodPhase.READY

    @property
    def endpoint(self) -> PodEndpoint | None:
        """Where to send traffic, while ready."""
        if not self.ready or self.port is None:
            return None
        return PodEndpoint(self.name, self.host, self.port)

    def status(self) -> PodStatus:
        return PodStatus(
            name=self.name,
            namespace=self.spec.namespace,
            revision=self.spec.revision,
            phase=self.phase,
            ready=self.ready,
            restarts=self.restarts,
            address=self.host,
            port=self.port,
            pid=self.pid,
            started_at=self.started_at,
            reason=self.reason,
            log_path=str(self.log_path),
            last_exit=self.last_exit,
        )

    def environment(self, port: int) -> dict[str, str]:
        return self.spec.environment(self.host, port)

    async def start(self) -> None:
        """Start the process and its supervision; PodError if the command cannot run."""
        if self._supervisor is not None or self._stopping:
            raise PodError(f"pod {self.name} was already started")
        try:
            await self._spawn()
        except PodError as err:
            self._set_phase(PodPhase.FAILED, str(err))
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name=f"pod {self.name}")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until the pod is ready; PodError if it is stopped first."""
        async with asyncio.timeout(timeout_s):
            while not self.ready:
                if self._stopping or (self._supervisor is None and self.phase is PodPhase.FAILED):
                    raise PodError(f"pod {self.name} is {self.phase}: {self.reason}")
                changed = self._changed
                await changed.wait()

    async def stop(self, grace_s: float = DEFAULT_GRACE_PERIOD_S) -> None:
        """SIGTERM the process group, wait up to `grace_s` for it to exit, then SIGKILL."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._set_phase(PodPhase.TERMINATING, "")
        try:
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            await self._stop_probing()
            proc = self._proc
            reason = "stopped"
            if proc is not None and proc.returncode is None:
                reason = await self._terminate(proc, grace_s)
            self._cleanup(proc)
            self._set_phase(PodPhase.TERMINATED, reason)
        finally:
            self._stopped.set()

    async def _terminate(self, proc: asyncio.subprocess.Process, grace_s: float) -> str:
        pgid = proc.pid
        signal_group(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                code = await proc.wait()
                await group_gone(pgid)
        except TimeoutError:
            signal_group(pgid, signal.SIGKILL)
            code = await proc.wait()
            if code == -signal.SIGKILL:
                log.warning("pod %s ignored SIGTERM for %gs; killed it", self.name, grace_s)
                return f"killed with SIGKILL after the {grace_s:g}s grace period"
            log.warning("pod %s left processes after its exit; killed them", self.name)
        return exit_reason(code)

    def _set_phase(self, phase: PodPhase, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        if phase is self.phase and reason is None:
            return
        self.phase = phase
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:
                log.exception("on_change callback failed for pod %s", self.name)

    def _readiness_changed(self, ready: bool) -> None:
        if self._stopping or self._proc is None or self._proc.returncode is not None:
            return
        if ready:
            prober = self._prober
            if self.startup_s is None and prober is not None and prober.ready_at is not None:
                self.startup_s = prober.ready_at - self._spawned_at
                log.info("pod %s ready in %.0f ms", self.name, self.startup_s * 1000)
            self._set_phase(PodPhase.READY, "")
        else:
            result = self._prober.last_result if self._prober else None
            detail = result.detail if result is not None else ""
            self._set_phase(PodPhase.RUNNING, f"readiness probe failed: {detail}")

    async def _spawn(self) -> None:
        port = self._ports.allocate()
        try:
            env = self.environment(port)
            argv = resolve_command(self.spec, env)
            try:
                self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                log_file = open_log(self.log_path)
            except OSError as exc:
                raise PodError(f"cannot write the pod log {self.log_path}: {exc}") from None
            with log_file:
                self._log_offset = log_file.tell()
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *DIE_WITH_PARENT,
                        *argv,
                        cwd=self.spec.working_dir,
                        env=env,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=asyncio.subprocess.STDOUT,
                        process_group=0,
                    )
                except OSError as exc:
                    raise PodError(
                        f"{CONTAINER_PATH}.command: cannot run {quoted(argv[0])}: "
                        f"{exc.strerror or exc}"
                    ) from None
        except BaseException:
            self._ports.release(port)
            raise
        LIVE_GROUPS.add(proc.pid)
        self._spawned_at = time.monotonic()
        self._proc = proc
        self.port = self._held_port = port
        self.started_at = datetime.now(UTC)
        self.startup_s = None
        log.info("pod %s started: pid %d, port %d", self.name, proc.pid, port)
        self._set_phase(PodPhase.RUNNING, "")
        self._prober = ReadinessProber(
            self.spec.readiness_probe,
            self.host,
            port,
            timing=self.probe_timing,
            on_change=self._readiness_changed,
        )
        self._prober.start()

    async def _stop_probing(self) -> None:
        prober, self._prober = self._prober, None
        if prober is not None:
            await prober.stop()

    def _cleanup(self, proc: asyncio.subprocess.Process | None) -> None:
        """Kill what the process left behind and give its port back."""
        if proc is not None:
            signal_group(proc.pid, signal.SIGKILL)
            LIVE_GROUPS.discard(proc.pid)
        port, self._held_port = self._held_port, None
        if port is not None:
            self._ports.release(port)

    def _last_log_line(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - 4096))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

    async def _exited(self, proc: asyncio.subprocess.Process) -> str:
        code = proc.returncode
        assert code is not None
        await self._stop_probing()
        self._cleanup(proc)
        reason = exit_reason(code)
        last = self._last_log_line()
        if last:
            reason = f"{reason}: {last}"
        log.warning("pod %s %s", self.name, reason)
        self.last_exit = reason
        self._set_phase(PodPhase.FAILED, reason)
        return reason

    def _backing_off(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        self._set_phase(PodPhase.FAILED, f"CrashLoopBackOff: {error}; restarting in {delay:g}s")

    async def _supervise(self) -> None:
        spawn = False
        backoff = self.backoff
        while True:
            try:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential(multiplier=backoff.initial_s, max=backoff.max_s),
                    retry=retry_if_exception_type(_Crashed),
                    before_sleep=self._backing_off,
                    reraise=True,
                ):
                    with attempt:
                        if spawn:
                            self.restarts += 1
                            self._set_phase(PodPhase.PENDING)
                            try:
                                await self._spawn()
                            except PodError as err:
                                self._set_phase(PodPhase.FAILED, str(err))
                                raise _Crashed(str(err)) from None
                        spawn = True
                        proc = self._proc
                        assert proc is not None
                        await proc.wait()
                        reason = await self._exited(proc)
                        if time.monotonic() - self._spawned_at < backoff.reset_after_s:
                            raise _Crashed(reason)
                        raise _StableRunEnded(reason)
            except _StableRunEnded:
                continue
