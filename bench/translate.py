"""(a) Translate + snapshot build for 1,000 and 10,000 ingresses, full and incremental.

Targets: a full build of 10,000 rules in ≤ 1 s; a one-rule change in ≤ 10 ms without
rebuilding untouched resources. The baseline for the incremental figure is a full
rebuild of the same state from a cold translator, measured in the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from bench.synthetic import ingress, state
from wakegate.xds.cache import Snapshot
from wakegate.xds.translate import GatewayConfig, Translator


def _build(translator: Translator, st, previous: Snapshot | None = None) -> Snapshot:
    """Translate and build the snapshot, as the control plane does on every change."""
    snapshot = Snapshot("bench", translator.translate(st), previous)
    # Encode as the server does for the first gateway stream that sends it.
    for type_url in snapshot.resources:
        snapshot.sotw_fields(type_url)
    return snapshot


def _rebuilt(before: Snapshot, after: Snapshot) -> int:
    """Resources whose serialised bytes are a new object (were rebuilt)."""
    count = 0
    for type_url, named in after.resources.items():
        old = before.resources.get(type_url, {})
        count += sum(1 for name, body in named.items() if old.get(name) is not body)
    return count


def run(sizes: tuple[int, ...] = (1_000, 10_000), changes: int = 50) -> None:
    print("== (a) translate + snapshot build ==")
    for n in sizes:
        st = state(n)
        full = []
        for _ in range(3):
            t0 = time.perf_counter()
            resources = _build(Translator(GatewayConfig()), st).resources
            full.append(time.perf_counter() - t0)
        total = sum(len(v) for v in resources.values())
        size = sum(len(b) for v in resources.values() for b in v.values())
        print(
            f"{n:>6} rules  full build  median {statistics.median(full) * 1000:8.1f} ms  "
            f"({total} resources, {size / 1e6:.1f} MB)  target ≤ 1000 ms for 10,000"
        )

        translator = Translator(GatewayConfig())
        before = _build(translator, st)
        ingresses = list(st.ingresses)
        times, rebuilt = [], []
        for k in range(changes):
            i = (k * 7919) % n
            ingresses[i] = ingress(i, generation=k + 1)
            changed = dataclasses.replace(st, ingresses=tuple(ingresses))
            t0 = time.perf_counter()
            after = _build(translator, changed, before)
            times.append(time.perf_counter() - t0)
            rebuilt.append(_rebuilt(before, after))
            before = after
        med = statistics.median(times) * 1000
        base = statistics.median(full) * 1000
        print(
            f"{n:>6} rules  one-rule change  median {med:6.2f} ms  p99 "
            f"{sorted(times)[int(len(times) * 0.99) - 1] * 1000:6.2f} ms  "
            f"vs full rebuild {base:8.1f} ms ({base / med:,.0f}x)  "
            f"resources rebuilt per change: {max(rebuilt)}  target ≤ 10 ms"
        )


if __name__ == "__main__":
    run()
