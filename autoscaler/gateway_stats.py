"""Per-revision load at the Envoy gateway, read from its admin endpoint.

Each revision's cluster (`<namespace>/<revision>:80`) carries every request to the
revision exactly once, whether it goes to the pods or through the activator, so its
`upstream_rq_active` gauge is the revision's concurrency and its `upstream_rq_total`
counter its request count. Other clusters of a revision (those whose names go on after
the port) are internal hops of requests already counted, and are left out.
"""

from __future__ import annotations

from typing import NamedTuple

import aiohttp

_PREFIX = "cluster."
_ACTIVE, _TOTAL = ".upstream_rq_active", ".upstream_rq_total"
STATS_PATH = "/stats?usedonly&filter=" + r"^cluster\..*\.upstream_rq_(active|total)$"


class RevisionLoad(NamedTuple):
    in_flight: float
    """Requests in flight right now."""
    requests: float
    """Requests sent since the cluster was created (a counter)."""


def parse_revision_load(text: str, port_suffix: str = "_80") -> dict[str, RevisionLoad]:
    """`cluster.<ns>/<revision>_80.upstream_rq_active: N` (and `…upstream_rq_total`)
    lines → {"ns/revision": RevisionLoad}.

    Envoy writes a cluster name's ':' as '_' in stat names, so the cluster of the
    revision's service port 80 (`ns/revision:80`) appears as `ns/revision_80`.
    """
    active: dict[str, float] = {}
    total: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if not name.startswith(_PREFIX):
            continue
        for suffix, into in ((_ACTIVE, active), (_TOTAL, total)):
            if name.endswith(suffix):
                cluster = name[len(_PREFIX) : -len(suffix)]
                if cluster.endswith(port_suffix) and "/" in cluster:
                    key = cluster[: -len(port_suffix)]
                    into[key] = into.get(key, 0.0) + float(value)
    return {
        key: RevisionLoad(active.get(key, 0.0), total.get(key, 0.0))
        for key in active.keys() | total.keys()
    }


def parse_active_requests(text: str, port_suffix: str = "_80") -> dict[str, float]:
    """Only the in-flight requests of `parse_revision_load`."""
    return {k: v.in_flight for k, v in parse_revision_load(text, port_suffix).items()}


class GatewayStats:
    """Samples a gateway's per-revision load over one pooled connection, to the admin
    interface at `admin_url`, through `unix_socket` when admin listens on one (the URL's
    host is then only a name)."""

    def __init__(self, admin_url: str, *, unix_socket: str | None = None) -> None:
        self.admin_url = admin_url
        self.unix_socket = unix_socket
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self) -> dict[str, RevisionLoad]:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=self.unix_socket) if self.unix_socket else None
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=2)
            )
        async with self._session.get(self.admin_url + STATS_PATH) as resp:
            resp.raise_for_status()
            return parse_revision_load(await resp.text())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
