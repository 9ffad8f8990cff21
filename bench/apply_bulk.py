"""(f.2) Many Services applied at once → every one served, in local mode.

Part of `python -m bench apply`. On a fresh stack for each way of applying (control
plane, real Envoy gateway, activator, loopback API, all in this process), `--bulk`
hello-world Services annotated `autoscaling.knative.dev/initial-scale: "0"` (the stack
runs with allow-zero-initial-scale: Ready with no pod, the activator in path, a pod
only on the first request) are applied

- as one multi-document PUT `?wait=1`, the call `wakegate apply -f all.yaml --wait`
  makes: the figure is PUT sent → its reply saying every Service is served;
- as one PUT `?wait=1` per Service, `--clients` of them in flight at once, as that
  many `wakegate apply -f svc.yaml --wait` running side by side would send them: the
  figure is the first PUT sent → the last reply saying its Service is served;
- as one PUT per Service without `wait`, one after the other, as a loop of `wakegate
  apply -f svc.yaml` sends them (less the CLI's own start, timed below), then all of
  them again, unchanged, in one PUT `?wait=1` that returns once each is served: the
  figure is the first PUT sent → that reply.

Baseline, same run and same stack, the same way, just before: `--bulk-baseline`
Services (10). If every step is proportional to the change, the time per Service is
the same for both sizes. Served means the gateway ACKed the Service's route and its
revision is Ready; the bench then checks it independently in the gateway's own config
dump (every host in its route configuration) and sends one request through the gateway
to the last Service applied (a cold start through the activator). Then the real CLI,
`wakegate apply -f one.yaml --wait` for one new Service, is timed as a process with the
baseline's Services stored and again with all of them. The PUTs are sent from this
process, whose event loop the stack shares. Target: `--bulk` (1,000) Services served
within 15 s both ways.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.local import EXAMPLE, Api, Timeline, host, local_stack, manifest
from bench.stack import table
from bench.timing import Client
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.stack import LocalStack

ZERO_SCALE = {"autoscaling.knative.dev/initial-scale": "0"}
TARGET_S = 15.0
DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _text(docs: Sequence[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=DUMPER)


@dataclass
class Wave:
    label: str
    count: int
    seconds: float
    served: int
    """Services the API reported served."""
    in_gateway: int
    """Of them, those whose host is in the gateway's own route configuration."""
    puts: list[float] = field(default_factory=list)
    """Seconds each PUT took (with `?wait=1`)."""
    batches: list[int] = field(default_factory=list)
    """Services per reconcile batch while it ran."""


@dataclass
class BulkResult:
    way: str
    waves: list[Wave] = field(default_factory=list)
    cli_s: dict[int, float] = field(default_factory=dict)
    """Services stored → seconds `wakegate apply -f one.yaml --wait` took."""
    first_request: tuple[int, float] | None = None
    """(status, seconds) of one request through the gateway to the last Service."""


async def _put(api: Api, text: str, *, wait: bool = True) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    params = {"dir": str(EXAMPLE), "timeout": "120", **({"wait": "1"} if wait else {})}
    async with api.session.put(
        api.base + "/v1/manifests", params=params, data=text, headers=api.auth
    ) as r:
        return r.status, await r.json(), time.monotonic() - t0


def _served(reply: dict[str, Any]) -> list[str]:
    return [
        a["key"].partition("/")[2]
        for a in reply.get("applied", [])
        if a.get("kind") == "Service" and a.get("outcome") == "served"
    ]


async def _in_gateway(stack: LocalStack, names: Sequence[str]) -> int:
    """How many of `names` have their host in the gateway's own route configuration."""
    assert stack.live is not None
    dump = await stack.live.gateway_config_dump()
    domains: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("domains"), list):
                domains.update(str(d) for d in node["domains"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dump or {})
    return sum(1 for name in names if host(name) in domains)


async def wave(
    stack: LocalStack, api: Api, timeline: Timeline, label: str, names: list[str], way: str,
    clients: int,
) -> Wave:  # fmt: skip
    docs = [manifest(name, ZERO_SCALE) for name in names]
    texts = [_text([doc]) for doc in docs] if way != "one file" else [_text(docs)]
    since = time.monotonic_ns()
    t0 = time.monotonic()
    served: list[str] = []
    puts: list[float] = []
    if way == "one file":
        status, reply, took = await _put(api, texts[0])
        if status != 200:
            raise RuntimeError(f"apply of {len(names)} Services: {status} {reply}")
        served += _served(reply)
        puts.append(took)
    elif way == "one by one":
        for text in texts:
            status, reply, took = await _put(api, text, wait=False)
            if status != 200:
                raise RuntimeError(f"apply: {status} {reply}")
            puts.append(took)
        # Every Service again, unchanged, in one PUT ?wait=1: it returns once each
        # applied generation is served.
        status, reply, _ = await _put(api, _text(docs))
        served += _served(reply)
    else:
        pending = iter(texts)

        async def client() -> None:
            for text in pending:
                status, reply, took = await _put(api, text)
                if status != 200:
                    raise RuntimeError(f"apply: {status} {reply}")
                served.extend(_served(reply))
                puts.append(took)

        await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.monotonic() - t0
    batches = [n for t, n, _ in timeline.batches if t >= since]
    return Wave(label, len(names), seconds, len(served), await _in_gateway(stack, served), puts,
                batches)  # fmt: skip


async def _cli_apply(stack: LocalStack, work: Path, name: str) -> float:
    """Seconds `wakegate apply -f FILE --wait` takes, as a process, for one new Service."""
    path = work / f"{name}.yaml"
    path.write_text(_text([manifest(name, ZERO_SCALE)]))
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("wakegate")), "apply", "-f", str(path), "--wait",
        "--api-port", str(stack.api_port), "--data-dir", str(stack.config.data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wakegate apply exited {proc.returncode}: {out.decode()[-400:]}")
    return time.monotonic() - t0


async def bulk(
    work: Path,
    timing: Client,
    way: str,
    *,
    count: int,
    baseline: int,
    clients: int,
    autoscaler: AutoscalerConfig,
) -> BulkResult:
    result = BulkResult(way)
    timeline = Timeline()
    tag = {"one file": "one", "separate": "sep"}.get(way, "seq")
    async with local_stack(
        work / f"bulk-{tag}", timeline, autoscaler=autoscaler, allow_zero_initial_scale=True
    ) as (stack, api):
        small = [f"{tag}-base-{i:02d}" for i in range(baseline)]
        result.waves.append(await wave(stack, api, timeline, "baseline", small, way, clients))
        result.cli_s[baseline] = await _cli_apply(stack, work, f"{tag}-cli-1")
        names = [f"{tag}-{i:04d}" for i in range(count)]
        result.waves.append(await wave(stack, api, timeline, "bulk", names, way, clients))
        result.cli_s[baseline + count + 1] = await _cli_apply(stack, work, f"{tag}-cli-2")
        sent, first, status = await timing.get(stack.config.port, host(names[-1]))
        result.first_request = (status, (first - sent) / 1e9)
    return result


def report_bulk(results: list[BulkResult], clients: int) -> None:
    rows: list[list[object]] = []
    for r in results:
        base = r.waves[0]
        base_per = base.seconds / base.count
        for w in r.waves:
            per = w.seconds / w.count
            verdict = ""
            if w is not base:
                verdict = "met" if w.seconds <= TARGET_S and w.served == w.count else "MISSED"
                verdict = f"≤ {TARGET_S:g} s {verdict}"
            puts = sorted(w.puts)
            rows.append(
                [
                    r.way,
                    f"{w.count:,}",
                    f"{w.seconds:.2f}",
                    f"{per * 1000:.1f}",
                    "baseline" if w is base else f"{per / base_per:.2f}x",
                    f"{w.served:,}",
                    f"{w.in_gateway:,}",
                    f"{len(w.puts):,}",
                    f"{puts[len(puts) // 2] * 1000:.0f}",
                    f"{len(w.batches)} (max {max(w.batches, default=0)})",
                    verdict,
                ]
            )
    header = ["applied as", "Services", "seconds", "ms/Service", "vs base", "served",
              "in gateway", "PUTs", "PUT p50 ms", "reconcile batches", "target"]  # fmt: skip
    print(table(header, rows, left=1))
    for r in results:
        cli = ", ".join(f"{s:.2f} s with {n:,} stored" for n, s in sorted(r.cli_s.items()))
        first = "-" if r.first_request is None else (
            f"{r.first_request[0]} in {r.first_request[1] * 1000:.0f} ms"
        )  # fmt: skip
        print(
            f"{r.way}: `wakegate apply -f one.yaml --wait` (a process) took {cli}; one "
            f"request to the last Service through the gateway (a cold start): {first}"
        )
    print(
        f"'separate': one PUT ?wait=1 per Service, {clients} in flight at once; 'one by one': "
        "one PUT per Service without wait, in turn, then one wait for all. 'served': the "
        "API said so (route ACKed by the gateway, revision Ready); 'in gateway': of those, "
        "hosts found in the gateway's own /config_dump. Each way on a fresh stack; the "
        "baseline ran on it just before."
    )
