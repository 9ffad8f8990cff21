"""Loopback ports for pods."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from wakegate.runtime.spec import PodError

LOOPBACK = "127.0.0.1"


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
