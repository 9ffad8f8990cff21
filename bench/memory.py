"""(d) Control-plane and gateway memory with 10,000 rules loaded, a real Envoy ACKed.

The control plane runs in a process of its own that builds the synthetic state (two
weighted clusters per rule, as the propagation benchmark), publishes it and serves xDS;
once a real Envoy (delta xDS by default) has ACKed everything, the VmRSS and VmHWM
(peak) of both are read from /proc. Baseline: the same processes with 0 rules, in the
same run. Targets at 10,000 rules: control plane ≤ 250 MB, Envoy ≤ 500 MB.

Also measured in the same run: the same hosts with one cluster each (`--one-cluster`),
as gateways of control planes that give a host a single cluster hold them, to tell the
cost of a revision's cluster from that of its host. Envoy 1.40 holds about 24 kB per
EDS cluster (21 kB as a static one), and rejecting every statistic saves under 50 MB at
10,000 rules, so the clusters, not the routes (about 14 kB per host and its scope), are
most of a gateway's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import command_line, python_child
from bench.synthetic import state
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.translate import GatewayConfig

GROUP = "bench-memory"
TARGET_BYTES = 250 * 2**20
ENVOY_TARGET_BYTES = 500 * 2**20


# --- the control-plane process -----------------------------------------------------------


def serve(
    rules: int, external_port: int, internal_port: int, tls_port: int, splits: int = 2
) -> None:
    """Run a control plane holding `rules` synthetic rules until stdin closes.

    Prints `XDS <port> <build s> <resource bytes>` once it serves, then
    `ACKED <0|1> <s>` when a gateway has ACKed the state (or did not in time).
    """
    config = GatewayConfig(external_port, internal_port, tls_port, "127.0.0.1")
    asyncio.run(_serve(rules, config, splits))


async def _serve(rules: int, config: GatewayConfig, splits: int) -> None:
    t0 = time.perf_counter()
    cp = ControlPlane(config, group=GROUP)
    st = state(rules, splits=splits)
    for key, backend in st.backends.items():
        cp.set_backend(key, backend)
    for ingress in st.ingresses:
        cp.apply_ingress(ingress)
    del st
    port = await cp.start("127.0.0.1", 0)
    snapshot = cp.cache.get_snapshot(GROUP)
    assert snapshot is not None and cp.last is not None
    size = sum(len(body) for named in snapshot.resources.values() for body in named.values())
    print(f"XDS {port} {time.perf_counter() - t0:.3f} {size}", flush=True)
    t1 = time.perf_counter()
    acked = await cp.server.wait_acked(GROUP, cp.last.version, 600, min_gateways=1)
    print(f"ACKED {int(acked)} {time.perf_counter() - t1:.3f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await cp.stop()


# --- the measurement ---------------------------------------------------------------------


@dataclass
class Sample:
    rules: int
    splits: int
    rss: int
    hwm: int
    build_s: float
    ack_s: float
    acked: bool
    resource_bytes: int
    envoy_rss: int


async def measure(rules: int, *, timeout: float, delta: bool = True, splits: int = 2) -> Sample:
    from bench.stack import proc_status
    from tests.support.backends import free_port
    from tests.support.envoy import running_envoy

    ports = [free_port() for _ in range(3)]
    args = ", ".join(map(str, [rules, *ports, splits]))
    code = f"from bench.memory import serve; serve({args})"
    async with python_child(code, grace_s=15) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout):
            _, xds_port, build_s, size = (await proc.stdout.readline()).decode().split()
            async with running_envoy(
                int(xds_port), delta=delta, node_cluster=GROUP, log_level="warning", timeout=timeout
            ) as envoy:
                _, acked, ack_s = (await proc.stdout.readline()).decode().split()
                status = proc_status(proc.pid)
                assert envoy.gateway.pid is not None
                await asyncio.sleep(2)  # the allocator's background release
                envoy_rss = proc_status(envoy.gateway.pid)["VmRSS"]
                await envoy.gateway.stop(timeout=60)
    return Sample(
        rules=rules,
        splits=splits,
        rss=status["VmRSS"],
        hwm=status["VmHWM"],
        build_s=float(build_s),
        ack_s=float(ack_s),
        acked=acked == "1",
        resource_bytes=int(size),
        envoy_rss=envoy_rss,
    )


def envoy_target(s: Sample, base: Sample) -> str:
    if s is base:
        return "(baseline)"
    if s.rules < 10_000 or s.splits != 2:
        return "" if s.splits == 2 else "(one cluster per host)"
    verdict = "met" if s.envoy_rss <= ENVOY_TARGET_BYTES else "MISSED"
    return f"≤ {ENVOY_TARGET_BYTES / 2**20:.0f} {verdict}"


def report(samples: Sequence[Sample]) -> None:
    from bench.stack import mb, table

    base = samples[0]
    rows = []
    for s in samples:
        target = f"≤ {TARGET_BYTES / 2**20:.0f}"
        if s.rules >= 10_000 and s.splits == 2:
            target += " met" if s.rss <= TARGET_BYTES else " MISSED"
        elif s is base:
            target = "(baseline)"
        else:
            target = ""
        clusters = s.rules * s.splits
        rows.append(
            [
                f"{s.rules:,}",
                f"{clusters:,}",
                mb(s.rss),
                mb(s.hwm),
                f"{s.rss / base.rss:.1f}x",
                f"+{mb(s.rss - base.rss)}",
                target,
                f"{s.resource_bytes / 1e6:.1f}",
                f"{s.build_s:.2f}",
                f"{s.ack_s:.2f}" + ("" if s.acked else " (not ACKed)"),
                mb(s.envoy_rss),
                envoy_target(s, base),
            ]
        )
    header = ["rules", "clusters", "RSS MB", "peak MB", "vs base", "Δ MB", "target MB", "xDS MB"]
    print(table([*header, "build s", "ACK s", "Envoy RSS MB", "Envoy target MB"], rows))
    print(
        "RSS/peak: the control-plane process (VmRSS/VmHWM) after Envoy ACKed; xDS MB: the "
        "serialised resources of the snapshot; build s: state + translate + first snapshot; "
        "ACK s: Envoy connected → ACKed everything."
    )


async def main_async(args: argparse.Namespace) -> None:
    sizes = [0, *(n for n in args.rules if n > 0)]
    print(
        f"== (d) control-plane memory with {', '.join(f'{n:,}' for n in sizes[1:])} rules, "
        "real Envoy connected and ACKed =="
    )
    delta = args.xds == "delta"
    samples = [await measure(n, timeout=args.timeout, delta=delta) for n in sizes]
    if args.one_cluster:
        for n in sizes[1:]:
            samples.append(await measure(n, timeout=args.timeout, delta=delta, splits=1))
    report(samples)


def parser() -> argparse.ArgumentParser:
    p = command_line("memory", __doc__)
    p.add_argument("--rules", type=int, nargs="+", default=[10_000], help="sizes besides 0")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per size")
    p.add_argument("--xds", choices=("sotw", "delta"), default="delta", help="Envoy's variant")
    p.add_argument(
        "--one-cluster",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the same hosts with one cluster each",
    )
    return p


def run(argv: Sequence[str] = ()) -> None:
    asyncio.run(main_async(parser().parse_args(list(argv))))


if __name__ == "__main__":
    run(sys.argv[1:])
