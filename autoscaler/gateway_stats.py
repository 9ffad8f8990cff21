"""In-flight requests per revision, read from the Envoy gateway's admin endpoint."""

from __future__ import annotations

import aiohttp

_PREFIX, _SUFFIX = "cluster.", ".upstream_rq_active"
STATS_PATH = "/stats?usedonly&filter=" + r"^cluster\..*\.upstream_rq_active$"


def parse_active_requests(text: str, port_suffix: str = "_80") -> dict[str, float]:
    """`cluster.<ns>/<revision>_80.upstream_rq_active: N` lines → {"ns/revision": N}.

    Envoy writes a cluster name's ':' as '_' in stat names, so the cluster of the
    revision's service port 80 (`ns/revision:80`) appears as `ns/revision_80`.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        cluster = name[len(_PREFIX) : -len(_SUFFIX)]
        if cluster.endswith(port_suffix) and "/" in cluster:
            out[cluster[: -len(port_suffix)]] = out.get(cluster[: -len(port_suffix)], 0.0) + float(
                value
            )
    return out


class GatewayStats:
    """Samples a gateway's per-revision in-flight requests over one pooled connection,
    to the admin interface at `admin_url`, through `unix_socket` when admin listens on
    one (the URL's host is then only a name)."""

    def __init__(self, admin_url: str, *, unix_socket: str | None = None) -> None:
        self.admin_url = admin_url
        self.unix_socket = unix_socket
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self) -> dict[str, float]:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=self.unix_socket) if self.unix_socket else None
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=2)
            )
        async with self._session.get(self.admin_url + STATS_PATH) as resp:
            return parse_active_requests(await resp.text())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
