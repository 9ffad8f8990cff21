"""Waiting in tests for something to become true, without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import aiohttp

TOLERATED: tuple[type[BaseException], ...] = (AssertionError, KeyError, aiohttp.ClientError)
"""What a check may raise while the state it looks at is still coming."""


async def eventually(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "",
    *,
    interval: float = 0.02,
    explain: Callable[[], object] | None = None,
) -> Any:
    """Poll `check` (a function or a coroutine function) until it returns something
    truthy, and return that; on `timeout` fail naming `what` and the last result (or
    `explain()`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except TOLERATED as exc:
            last = exc
        if loop.time() > deadline:
            detail = explain() if explain is not None else last
            raise AssertionError(f"not true within {timeout:g}s: {what or check} ({detail!r})")
        await asyncio.sleep(interval)
