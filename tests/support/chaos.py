"""Killing processes under load, and telling which failed requests they explain.

    async with probing(url, host, expected) as probes:
        kill = await kill_process(pid, "pod")      # SIGKILL, back once the process is gone
    assert unexplained(probes.attempts, [kill]) == []

A request is in flight on a killed process if it was sent before the process was gone
and answered after it was signalled: only such requests may fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tests.support.backends import Attempt


@dataclass(frozen=True, slots=True)
class Kill:
    what: str
    pid: int
    signalled: float
    gone: float
    """When the process was seen gone (time.monotonic()): no later than its death."""

    def in_flight(self, attempt: Attempt) -> bool:
        return attempt.sent <= self.gone and attempt.answered >= self.signalled


async def kill_process(pid: int, what: str) -> Kill:
    """SIGKILL `pid` and wait until it has exited (its pidfd turns readable)."""
    pidfd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        signalled = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(exited, 10)
        return Kill(what, pid, signalled, time.monotonic())
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def in_flight(attempts: Iterable[Attempt], kill: Kill) -> list[Attempt]:
    return [a for a in attempts if kill.in_flight(a)]


def unexplained(attempts: Iterable[Attempt], kills: Iterable[Kill]) -> list[Attempt]:
    """Failed requests that were not in flight on any killed process."""
    kills = list(kills)
    return [a for a in attempts if not a.ok and not any(k.in_flight(a) for k in kills)]
