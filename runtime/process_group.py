"""Process groups of pods: started to die with the runtime, signalled and awaited whole.

Each pod runs in its own process group, so a Ctrl-C in the terminal reaches the runtime
and not the pods. On Linux the kernel kills a pod when the runtime process dies
(`PR_SET_PDEATHSIG`, set by `setpriv` before it execs the command); the groups still
alive when the runtime exits normally are killed by an exit hook, which also reaches a
pod's own children.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import sys


def _die_with_parent_prefix() -> list[str]:
    """An exec wrapper that makes the kernel SIGKILL the pod when the runtime dies."""
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--"]
    code = "import ctypes,os,sys;ctypes.CDLL(None).prctl(1,9);os.execv(sys.argv[1],sys.argv[1:])"
    return [sys.executable, "-S", "-E", "-c", code]


DIE_WITH_PARENT = _die_with_parent_prefix()
LIVE_GROUPS: set[int] = set()


@atexit.register
def _kill_leftover_groups() -> None:
    """Pods' own children are not covered by PDEATHSIG; take them down on a normal exit."""
    for pgid in list(LIVE_GROUPS):
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


async def group_gone(pgid: int) -> None:
    """Until no process is left in the group; nothing signals that, so poll."""
    while True:
        if not _group_alive(pgid):
            return
        await asyncio.sleep(0.02)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
