"""Benchmarks: each prints its figures next to a baseline measured in the same run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command_line(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m bench.NAME`: its help is `doc`, the benchmark's docstring,
    as written."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


@contextlib.asynccontextmanager
async def python_child(
    code: str, *, grace_s: float = 10.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -c code` in the repository, talking over stdin/stdout. Closing its stdin
    tells it to finish; it is killed if it has not within `grace_s`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
