"""The activator as a supervised process of the local stack.

The stack owns the activator's listening sockets, HTTP/1.1 and h2c, and hands them to each
activator process it starts (`--listen-fd`, `--listen-h2c-fd`), so the gateway's activator
endpoints never change and, while
a crashed activator is being restarted, connections wait in the socket's backlog rather
than being refused; the gateway's retry of requests that never reached an upstream
(`reset-before-request`, `connect-failure`) covers the rest. Only the requests the dead
process was handling are lost.

A process that exits on its own is restarted at once after a run of `stable_after_s`
seconds, with exponential back-off while it keeps dying sooner; each exit and restart
is logged and counted in `status()`, which `wakegate status` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

log = logging.getLogger("wakegate.activator")

BACKLOG = 1024


class ActivatorError(RuntimeError):
    """The activator could not be started."""


class _Died(Exception):
    """The activator exited soon after it started: back off, then restart."""


class _StableRunEnded(Exception):
    """The activator exited after a stable run: restart at once."""


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class ActivatorProcess:
    """The activator, run as its own process next to the control plane, and restarted
    whenever it exits until `stop()`."""

    def __init__(
        self,
        control_plane: str,
        hold_timeout_s: float,
        *,
        host: str = "127.0.0.1",
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 30.0,
        start_timeout_s: float = 20.0,
        log_level: str = "WARNING",
    ) -> None:
        self.control_plane = control_plane
        self.hold_timeout_s = hold_timeout_s
        self.host = host
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.start_timeout_s = start_timeout_s
        self.log_level = log_level
        self.port = 0
        self.h2c_port = 0
        self.restarts = 0
        self.last_exit = ""
        self.last_exit_at: datetime | None = None
        self.started_at: datetime | None = None
        self._sock: socket.socket | None = None
        self._h2c_sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._spawned_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            "address": f"{self.host}:{self.port}",
            "h2cAddress": f"{self.host}:{self.h2c_port}",
            "restarts": self.restarts,
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "lastExit": self.last_exit,
            "lastExitAt": self.last_exit_at.isoformat() if self.last_exit_at else None,
        }

    async def start(self) -> int:
        """Listen, start the first process and its supervision; the port."""
        if self._sock is not None:
            raise ActivatorError("the activator was already started")
        self._sock, self._h2c_sock = self._listen(), self._listen()
        self.port = int(self._sock.getsockname()[1])
        self.h2c_port = int(self._h2c_sock.getsockname()[1])
        try:
            await self._spawn()
        except BaseException:
            self._close_socket()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="activator-supervisor")
        return self.port

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop supervising, close the listening socket, SIGTERM (SIGKILL after
        `timeout_s`)."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        # Without our copy of the socket, connections are refused as soon as the
        # process closes its own, instead of waiting for an activator that never comes.
        self._close_socket()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
        return sock

    def _close_socket(self) -> None:
        for sock in (self._sock, self._h2c_sock):
            if sock is not None:
                sock.close()
        self._sock = self._h2c_sock = None

    async def _spawn(self) -> None:
        assert self._sock is not None and self._h2c_sock is not None
        fd, h2c_fd = self._sock.fileno(), self._h2c_sock.fileno()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wakegate.activator.main",
            "--listen-fd", str(fd), "--listen-h2c-fd", str(h2c_fd),
            "--control-plane", self.control_plane,
            "--hold-timeout", str(self.hold_timeout_s), "--stop-on-stdin-eof",
            "--log-level", self.log_level,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            pass_fds=(fd, h2c_fd),
        )  # fmt: skip
        self._proc = proc
        self._spawned_at = time.monotonic()
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout_s):
                while line := await proc.stdout.readline():
                    if line.startswith(b"READY "):
                        self.started_at = datetime.now(UTC)
                        log.info("activator started: pid %d, port %d", proc.pid, self.port)
                        return
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ActivatorError(
                f"activator not ready after {self.start_timeout_s:g}s; killed it"
            ) from None
        raise ActivatorError(f"activator {_exit_reason(await proc.wait())} before it was ready")

    def _backing_off(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.error("%s; restarting it in %.1fs", error, delay)

    async def _supervise(self) -> None:
        spawn = False
        while not self._stopping:
            try:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential(
                        multiplier=self.backoff_initial_s, max=self.backoff_max_s
                    ),
                    retry=retry_if_exception_type((_Died, ActivatorError, OSError)),
                    before_sleep=self._backing_off,
                ):
                    with attempt:
                        if spawn:
                            self.restarts += 1
                            await self._spawn()
                        spawn = True
                        proc = self._proc
                        assert proc is not None
                        code = await proc.wait()
                        if self._stopping:
                            return
                        self.last_exit = f"activator {_exit_reason(code)}"
                        self.last_exit_at = datetime.now(UTC)
                        if time.monotonic() - self._spawned_at < self.stable_after_s:
                            raise _Died(self.last_exit)
                        log.error("%s; restarting it", self.last_exit)
                        raise _StableRunEnded
            except _StableRunEnded:
                continue
