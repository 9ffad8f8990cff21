"""(a) Translate + snapshot build for 1,000 / 10,000 / 100,000 ingresses, full and per change.

Full: a cold translator given every ingress and backend, its first snapshot built and
encoded for a delta stream, as the control plane does at start. Per change: one ingress
changed among all of them, fed to the translator as a change, the next snapshot derived
from what changed (`Snapshot.evolve`) and what a delta stream would send encoded.

Targets: a full build of 100,000 rules in ≤ 10 s; a one-rule change that costs the same
at every size, touching one route configuration. The baseline for the per-change figure
is the full build of the same state, measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Sequence

from bench import command_line
from bench.synthetic import ingress, state
from wakegate.xds.cache import Snapshot
from wakegate.xds.translate import GatewayConfig, Translator

TARGET_FULL_S = {100_000: 10.0}


def _full(n: int) -> tuple[float, float, Translator, Snapshot, int]:
    """Seconds to translate and snapshot the whole state, then to encode it for a stream."""
    st = state(n)
    gc.collect()
    gc.disable()  # as ControlPlane does for a bulk publish
    try:
        t0 = time.perf_counter()
        translator = Translator(GatewayConfig())
        translator.update(
            ingresses={i.key: i for i in st.ingresses}, backends=dict(st.backends)
        )
        resources = translator.delta_resources()
        translator.take_changes()
        snapshot = Snapshot("0", resources)
        t1 = time.perf_counter()
        for type_url in resources:
            fields = snapshot.delta_fields(type_url)
            for name in resources[type_url]:
                fields[name]
        t2 = time.perf_counter()
    finally:
        gc.enable()
    count = sum(len(named) for named in resources.values())
    return t1 - t0, t2 - t1, translator, snapshot, count


def _changes(
    translator: Translator, snapshot: Snapshot, n: int, changes: int
) -> tuple[list[float], list[int]]:
    times, touched = [], []
    for k in range(changes):
        i = (k * 7919) % n
        changed = ingress(i, generation=k + 1)
        t0 = time.perf_counter()
        translator.update(ingresses={changed.key: changed})
        delta = translator.take_changes()
        after = snapshot.evolve(str(k + 1), delta)
        for type_url, named in delta.items():
            fields = after.delta_fields(type_url)
            for name, body in named.items():
                if body is not None:
                    fields[name]
        times.append(time.perf_counter() - t0)
        touched.append(sum(len(named) for named in delta.values()))
        snapshot = after
    return times, touched


def run(argv: Sequence[str] = ()) -> None:
    args = parser().parse_args(list(argv))
    print("== (a) translate + snapshot build, full and per one-rule change ==")
    for n in args.rules:
        full_s, encode_s, translator, snapshot, count = _full(n)
        times, touched = _changes(translator, snapshot, n, args.changes)
        target = TARGET_FULL_S.get(n)
        verdict = (
            f"target ≤ {target:g} s {'met' if full_s <= target else 'MISSED'}" if target else ""
        )
        print(
            f"{n:>7,} rules  full build {full_s:7.2f} s ({count:,} resources; encoding them "
            f"for a delta stream {encode_s:.2f} s more)  {verdict}".rstrip()
        )
        med = statistics.median(times) * 1000
        p99 = sorted(times)[max(0, int(len(times) * 0.99) - 1)] * 1000
        print(
            f"{n:>7,} rules  one-rule change  median {med:6.2f} ms  p99 {p99:6.2f} ms  "
            f"vs full build {full_s * 1000:,.0f} ms ({full_s * 1000 / med:,.0f}x)  "
            f"resources changed per change: {max(touched)}"
        )
        del translator, snapshot
    print(
        "full build: a cold translator given the whole state and its first snapshot (what "
        "the control plane does at start); one-rule change: the change fed to the "
        "translator, the next snapshot derived from it, its changed resources encoded"
    )


def parser() -> argparse.ArgumentParser:
    p = command_line("translate", __doc__)
    p.add_argument(
        "--rules", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="sizes"
    )
    p.add_argument("--changes", type=int, default=50, help="one-rule changes per size")
    return p


if __name__ == "__main__":
    run(sys.argv[1:])
