"""A revision's ready pods and the activator's load on each: least-loaded selection."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

UNREACHABLE_COOLDOWN_S = 1.0
"""How long a pod that refused a connection is passed over, unless the endpoints change."""


@dataclass(eq=False, slots=True)
class PodSlot:
    ip: str
    port: int
    in_flight: int = 0
    """Requests the activator is forwarding to this pod right now."""
    last_picked: int = 0
    unreachable_until: float = 0.0

    @property
    def authority(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


class PodSet:
    """The ready pods of one revision.

    A pod stays the same `PodSlot` across endpoint updates while it remains ready, so its
    in-flight count (and with it `containerConcurrency`) carries over. A pod removed while
    requests to it are in flight keeps their slot until they finish; it is no longer picked.
    """

    def __init__(self) -> None:
        self._slots: dict[tuple[str, int], PodSlot] = {}
        self._picks = 0
        self.container_concurrency = 0
        """At most this many requests at once per pod; 0 = no limit."""

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[PodSlot]:
        return iter(self._slots.values())

    def replace(self, addresses: Iterable[tuple[str, int]]) -> None:
        slots: dict[tuple[str, int], PodSlot] = {}
        for ip, port in addresses:
            key = (ip, port)
            if key not in slots:
                slots[key] = self._slots.get(key) or PodSlot(ip, port)
        self._slots = slots

    def _has_room(self, slot: PodSlot) -> bool:
        cc = self.container_concurrency
        return cc <= 0 or slot.in_flight < cc

    def pick(self, now: float) -> PodSlot | None:
        """The reachable pod with room and the fewest requests in flight (the least
        recently picked among equals), counted as taken; None if there is none."""
        best: PodSlot | None = None
        for slot in self._slots.values():
            if slot.unreachable_until > now or not self._has_room(slot):
                continue
            if best is None or (slot.in_flight, slot.last_picked) < (
                best.in_flight,
                best.last_picked,
            ):
                best = slot
        if best is not None:
            self._picks += 1
            best.last_picked = self._picks
            best.in_flight += 1
        return best

    def next_reachable_at(self) -> float | None:
        """When the earliest pod passed over as unreachable (and with room) is tried again."""
        times = [
            s.unreachable_until
            for s in self._slots.values()
            if s.unreachable_until and self._has_room(s)
        ]
        return min(times) if times else None

    @staticmethod
    def mark_unreachable(slot: PodSlot, now: float) -> None:
        slot.unreachable_until = now + UNREACHABLE_COOLDOWN_S
