"""Run the benchmarks: `python -m bench` runs all, `python -m bench NAME...` the named ones.

Each prints its figures next to a baseline measured in the same run and exits normally
whatever the figures are; sizes and durations are flags of each benchmark's own command
(`python -m bench.NAME --help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence

BENCHMARKS: dict[str, str] = {
    "translate": "(a) translate + snapshot build, 1,000 / 10,000 / 100,000 rules, per change",
    "propagation": "(b) rule change → Envoy serving it, SotW and delta",
    "dataplane": "(c) hello-world app direct vs minimal static Envoy vs wakegate (hey, wrk)",
    "memory": "(d) control-plane and gateway RSS with 10,000 rules",
    "coldstart": "(e) scale from zero, activator in path, burst to 5 pods, cc 1 vs 0",
    "apply": "(f) apply → first answer, empty and with 1,000 Services at zero",
}


def _runner(name: str) -> Callable[[], None]:
    run: Callable[[], None] = importlib.import_module(f"bench.{name}").run
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="\n".join(f"  {name:12} {what}" for name, what in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="default: all, in order")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    names = list(dict.fromkeys(args.names)) or list(BENCHMARKS)
    failed = []
    for name in names:
        t0 = time.monotonic()
        try:
            _runner(name)()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"-- {name}: {time.monotonic() - t0:.0f} s\n", flush=True)
    if failed:
        print(f"benchmarks that could not run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
