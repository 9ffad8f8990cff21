"""A revision's pods as supervised local processes.

A `Pod` is one process started from the container's `command` + `args` with its own
loopback `PORT`, probed for readiness and restarted with exponential back-off when it
exits (Knative pods restart always). `RevisionPods` keeps a revision at a desired number
of pods and reports the ready endpoints whenever they change.

Stopping is make-before-break: a pod leaves the endpoint set first, the `before_stop`
hook lets the caller wait until the gateways stopped sending it traffic, then the
process group gets SIGTERM, a grace period to finish in-flight requests, and SIGKILL.

Each pod runs in its own process group, so a Ctrl-C in the terminal reaches the runtime
and not the pods. On Linux the kernel kills a pod when the runtime process dies
(`PR_SET_PDEATHSIG`, set by `setpriv` before it execs the command).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from wakegate.runtime.probes import ProbeTiming, ReadinessProber
from wakegate.serving.model import DEFAULT_PROBE, EnvVar, Probe
from wakegate.serving.revision import Revision

log = logging.getLogger("wakegate.runtime")

LOOPBACK = "127.0.0.1"
DEFAULT_GRACE_PERIOD_S = 30.0
"""Kubernetes' `terminationGracePeriodSeconds` default."""

_CONTAINER_PATH = "spec.template.spec.containers[0]"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz"
"""Lowercase consonants, so a random suffix never spells a word."""
_MAX_NAME = 63


class PodError(RuntimeError):
    """A pod that cannot be started; the message is one line meant for the user."""


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


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What a pod runs: the container of one revision, placed in a working directory."""

    namespace: str
    service: str
    revision: str
    command: tuple[str, ...]
    working_dir: Path
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    readiness_probe: Probe = DEFAULT_PROBE
    image: str = ""

    @property
    def configuration(self) -> str:
        """A Knative Service's Configuration has the Service's name."""
        return self.service

    @classmethod
    def from_revision(cls, revision: Revision, base_dir: str | os.PathLike[str]) -> PodSpec:
        """The revision's container; a relative `workingDir` (or none) is under `base_dir`,
        typically the folder of the applied manifest."""
        container = revision.template.container
        return cls(
            namespace=revision.namespace,
            service=revision.service,
            revision=revision.name,
            command=container.command,
            args=container.args,
            env=container.env,
            working_dir=Path(base_dir).absolute() / container.working_dir,
            readiness_probe=container.readiness_probe,
            image=container.image,
        )


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_current_python(name: str) -> bool:
    """`python`, `python3` or `python3.<this minor>`: run this interpreter directly, which
    skips a version manager's shim (pyenv's costs ~55 ms per start)."""
    version = sys.version_info
    return bool(sys.executable) and name in (
        "python",
        f"python{version.major}",
        f"python{version.major}.{version.minor}",
    )


def resolve_command(spec: PodSpec, env: Mapping[str, str]) -> list[str]:
    """The argv to exec, with the program as an absolute path; PodError if it cannot run."""
    if not spec.working_dir.is_dir():
        raise PodError(
            f"{_CONTAINER_PATH}.workingDir: {_quoted(str(spec.working_dir))} is not a directory"
        )
    if not spec.command:
        image = f" {_quoted(spec.image)}" if spec.image else ""
        raise PodError(
            f"{_CONTAINER_PATH}.command: missing; the local runtime runs commands, not images: "
            f"give the command (and args) that start the app instead of only the image{image}"
        )
    program = spec.command[0]
    found: str | None
    if _is_current_python(program):
        found = sys.executable
    elif "/" in program:
        path = spec.working_dir / program
        found = str(path.absolute()) if path.is_file() else None
        if found is not None and not os.access(found, os.X_OK):
            raise PodError(
                f"{_CONTAINER_PATH}.command: {_quoted(program)} is not executable "
                f"(chmod +x it, or run it with its interpreter)"
            )
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise PodError(
            f"{_CONTAINER_PATH}.command: {_quoted(program)} not found "
            "(the local runtime runs commands, not images)"
        )
    return [found, *spec.command[1:], *spec.args]


def pod_name(revision: str, taken: Iterable[str] = ()) -> str:
    """`<revision>-<5 random lowercase letters>`, cut to a 63-character DNS label."""
    base = revision[: _MAX_NAME - 6].rstrip("-")
    used = set(taken)
    while True:
        name = f"{base}-{''.join(random.choices(_NAME_CHARS, k=5))}"
        if name not in used:
            return name


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class PortAllocator:
    """Free loopback ports for pods, never the same one twice while it is held.

    Ports come from below the kernel's ephemeral range, where neither outgoing
    connections nor other programs binding port 0 take them between our choice
    and the app's bind.
    """

    def __init__(self, host: str = LOOPBACK, low: int = 20000, high: int | None = None) -> None:
        self.host = host
        self.low = low
        self.high = high if high is not None else _ephemeral_low() - 1
        self._held: set[int] = set()

    def _free(self, port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind((self.host, port))
            except OSError:
                return False
        return True

    def allocate(self) -> int:
        if self.high - self.low >= 100:
            for _ in range(100):
                port = random.randint(self.low, self.high)
                if port not in self._held and self._free(port):
                    self._held.add(port)
                    return port
        for _ in range(100):
            with socket.socket() as sock:
                sock.bind((self.host, 0))
                port = int(sock.getsockname()[1])
            if port not in self._held:
                self._held.add(port)
                return port
        raise PodError(f"no free port on {self.host}")

    def release(self, port: int) -> None:
        self._held.discard(port)


PORTS = PortAllocator()
"""Shared by every pod of this process unless a caller passes its own."""


def _die_with_parent_prefix() -> list[str]:
    """An exec wrapper that makes the kernel SIGKILL the pod when the runtime dies."""
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--"]
    code = "import ctypes,os,sys;ctypes.CDLL(None).prctl(1,9);os.execv(sys.argv[1],sys.argv[1:])"
    return [sys.executable, "-S", "-E", "-c", code]


_DIE_WITH_PARENT = _die_with_parent_prefix()
_LIVE_GROUPS: set[int] = set()


@atexit.register
def _kill_leftover_groups() -> None:
    """Pods' own children are not covered by PDEATHSIG; take them down on a normal exit."""
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _group_gone(pgid: int) -> None:
    """Until no process is left in the group; nothing signals that, so poll."""
    while True:
        if not _group_alive(pgid):
            return
        await asyncio.sleep(0.02)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


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
        }


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
        )

    def environment(self, port: int) -> dict[str, str]:
        """The runtime's environment, then `HOST`, the container's `env`, `PORT`, `K_*`."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")  # so `logs` shows output as it is printed
        env["HOST"] = self.host
        env.update((var.name, var.value) for var in self.spec.env)
        env["PORT"] = str(port)
        env["K_SERVICE"] = self.spec.service
        env["K_CONFIGURATION"] = self.spec.configuration
        env["K_REVISION"] = self.spec.revision
        return env

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
        _signal_group(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                code = await proc.wait()
                await _group_gone(pgid)
        except TimeoutError:
            _signal_group(pgid, signal.SIGKILL)
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
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                log_file = self.log_path.open("ab")
            except OSError as exc:
                raise PodError(f"cannot write the pod log {self.log_path}: {exc}") from None
            with log_file:
                self._log_offset = log_file.tell()
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *_DIE_WITH_PARENT,
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
                        f"{_CONTAINER_PATH}.command: cannot run {_quoted(argv[0])}: "
                        f"{exc.strerror or exc}"
                    ) from None
        except BaseException:
            self._ports.release(port)
            raise
        _LIVE_GROUPS.add(proc.pid)
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
            _signal_group(proc.pid, signal.SIGKILL)
            _LIVE_GROUPS.discard(proc.pid)
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


class RevisionPods:
    """The pods of one revision, kept at the count `scale()` asks for.

    `on_change(endpoints)` is called with the ready endpoints, in pod creation order,
    each time that list changes. `before_stop(pods)` is awaited after pods left the
    endpoint list and before they get SIGTERM: the place to wait until every gateway
    has acknowledged the endpoints without them.
    """

    def __init__(
        self,
        spec: PodSpec,
        *,
        log_dir: str | os.PathLike[str],
        host: str = LOOPBACK,
        grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
        backoff: Backoff | None = None,
        probe_timing: ProbeTiming | None = None,
        ports: PortAllocator | None = None,
        on_change: Callable[[list[PodEndpoint]], None] | None = None,
        before_stop: Callable[[list[Pod]], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.log_dir = Path(log_dir)
        self.host = host
        self.grace_period_s = grace_period_s
        self.backoff = backoff
        self.probe_timing = probe_timing
        self.ports = ports
        self.on_change = on_change
        self.before_stop = before_stop
        self._pods: dict[str, Pod] = {}
        """Pods that count towards the scale, oldest first."""
        self._terminating: dict[str, Pod] = {}
        self._endpoints: tuple[PodEndpoint, ...] = ()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._stops: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def for_revision(
        cls,
        revision: Revision,
        *,
        base_dir: str | os.PathLike[str],
        log_dir: str | os.PathLike[str],
        **options: Any,
    ) -> RevisionPods:
        return cls(PodSpec.from_revision(revision, base_dir), log_dir=log_dir, **options)

    @property
    def revision(self) -> str:
        return self.spec.revision

    @property
    def pods(self) -> list[Pod]:
        """Pods that count towards the scale (not those terminating)."""
        return list(self._pods.values())

    def ready_pods(self) -> list[PodEndpoint]:
        return list(self._endpoints)

    def status(self) -> list[PodStatus]:
        """Every pod, terminating ones included."""
        return [pod.status() for pod in (*self._pods.values(), *self._terminating.values())]

    async def scale(self, replicas: int) -> None:
        """Start or stop pods until `replicas` count towards the scale.

        Returns once new processes are spawned (not ready: see `wait_ready` and
        `on_change`) and removed pods have exited. Not-ready pods are stopped first,
        then the newest. PodError (and nothing started) if the command cannot run.
        """
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if self._closed:
            raise PodError(f"the pods of revision {self.revision} are closed")
        async with self._lock:
            live = list(self._pods.values())
            if replicas > len(live):
                await self._start(replicas - len(live))
                return
            ranked = sorted(enumerate(live), key=lambda item: (item[1].ready, -item[0]))
            victims = [pod for _, pod in ranked[: len(live) - replicas]]
            self._detach(victims)
        await self._stop(victims, self.grace_period_s)

    async def wait_ready(self, count: int = 1, timeout_s: float | None = None) -> list[PodEndpoint]:
        """Until at least `count` pods are ready; their endpoints."""
        async with asyncio.timeout(timeout_s):
            while len(self._endpoints) < count:
                changed = self._changed
                await changed.wait()
        return list(self._endpoints)

    async def stop_pod(self, pod: Pod | str, grace_s: float | None = None) -> None:
        """Stop one pod (make-before-break, as a scale-down does); the count drops by one."""
        name = pod if isinstance(pod, str) else pod.name
        async with self._lock:
            found = self._pods.get(name)
            if found is not None:
                self._detach([found])
        if found is None:
            if name in self._terminating:
                await self._terminating[name].stop()
                return
            raise KeyError(f"no pod {name} in revision {self.revision}")
        await self._stop([found], self.grace_period_s if grace_s is None else grace_s)

    async def close(self, grace_s: float | None = None) -> None:
        """Stop every pod (after `before_stop`) and wait for all of them to exit."""
        self._closed = True
        async with self._lock:
            victims = list(self._pods.values())
            self._detach(victims)
        await self._stop(victims, self.grace_period_s if grace_s is None else grace_s)
        while self._stops:
            await asyncio.gather(*self._stops, return_exceptions=True)

    def _new_pod(self) -> Pod:
        name = pod_name(self.revision, (*self._pods, *self._terminating))
        return Pod(
            self.spec,
            log_dir=self.log_dir,
            name=name,
            host=self.host,
            ports=self.ports,
            probe_timing=self.probe_timing,
            backoff=self.backoff,
            on_change=self._pod_changed,
        )

    async def _start(self, count: int) -> None:
        new = [self._new_pod() for _ in range(count)]
        for pod in new:
            self._pods[pod.name] = pod
        results = await asyncio.gather(*(pod.start() for pod in new), return_exceptions=True)
        failed = [(pod, r) for pod, r in zip(new, results, strict=True) if r is not None]
        if not failed:
            return
        for pod, _ in failed:
            self._pods.pop(pod.name, None)
        started = [pod for pod in new if pod.name in self._pods]
        self._detach(started)
        await self._stop(started, 0.0)
        raise failed[0][1]

    def _detach(self, pods: Iterable[Pod]) -> None:
        """Take pods out of the scale and the endpoints, before they are stopped."""
        for pod in pods:
            if self._pods.pop(pod.name, None) is not None:
                self._terminating[pod.name] = pod
        self._refresh()

    async def _stop(self, pods: list[Pod], grace_s: float) -> None:
        if not pods:
            return
        task = asyncio.create_task(self._stop_now(pods, grace_s))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        await asyncio.shield(task)

    async def _stop_now(self, pods: list[Pod], grace_s: float) -> None:
        if self.before_stop is not None:
            try:
                await self.before_stop(list(pods))
            except Exception:
                log.exception("before_stop hook failed for %s; stopping anyway", pods)
        await asyncio.gather(*(pod.stop(grace_s) for pod in pods))
        for pod in pods:
            self._terminating.pop(pod.name, None)
        self._refresh()

    def _pod_changed(self, pod: Pod) -> None:
        self._refresh()

    def _refresh(self) -> None:
        endpoints = tuple(ep for pod in self._pods.values() if (ep := pod.endpoint) is not None)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if endpoints != self._endpoints:
            self._endpoints = endpoints
            if self.on_change is not None:
                try:
                    self.on_change(list(endpoints))
                except Exception:
                    log.exception("on_change callback failed for revision %s", self.revision)
